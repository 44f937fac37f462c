"""Failure modes: what is done to the holder, and how it is undone after the trial.

To add a mode: write an ``inject`` and a ``restore`` taking the driver and the holder's
node, and add a :class:`Mode` to :data:`MODES`. A mode that knows where the VIP should go
(``move``) gives a ``prepare`` too: run before the trial's window opens, it returns the
expected new holder per VIP address, and a trial that ends elsewhere is noted. ``window``
says what the failover has to wait for: a graceful handover, a timeout (``hard``: lease TTL,
VRRP master-down interval) or a failing health check (``health``: the check's fall) — it
sets how long the benchmark waits before calling the failover "none". ``rejoin`` says
whether the disturbed host has to rejoin the cluster after the restore (a restart, a new
lease) or only become healthy again. ``systems`` names the systems the mode applies to.

``expect`` is what the mode calls right: ``"move"`` (another host takes the VIP over: the
failover is measured) or ``"stay"`` (the VIP must stay where it is: a partition that leaves
the holder serving and confirmed, or a broken standby; bench/evaluate.py reports "stayed" or
"moved" and the client gap, two holders and two answering, and a move is the system's
failure). ``victim`` says whom the failure is done to: the VIP's ``holder``, or a
``standby`` (:meth:`Driver.standby`: the host that would take the VIP over). Partitions are
nftables drops in the disturbed host's namespace (haagent.lab.partition), by the node
addresses of its peers (and etcd): the client always reaches it.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from bench.systems import (
    CHECK_FALL,
    HAAGENT_CHECK_INTERVAL,
    HAAGENT_HOLD_DOWN,
    KEEPALIVED_SCRIPT_INTERVAL,
    Driver,
    HaagentDriver,
    Timing,
    fail_flag,
)
from haagent.lab import partition
from haagent.lab.topology import Node

Action = Callable[[Driver, Node], None]
Prepare = Callable[[Driver, Node], Mapping[str, str]]  # -> VIP address: expected new holder
ALL_SYSTEMS = frozenset({"haagent", "keepalived"})


@dataclass(frozen=True)
class Mode:
    name: str
    description: str
    window: Literal["graceful", "hard", "health"]
    inject: Action
    restore: Action
    systems: frozenset[str] = ALL_SYSTEMS
    rejoin: bool = True
    prepare: Prepare | None = None
    expect: Literal["move", "stay"] = "move"
    victim: Literal["holder", "standby"] = "holder"

    def wait(self, timing: Timing) -> float:
        """How long the benchmark waits for another host to bind the VIP."""
        windows = {"graceful": timing.graceful, "hard": timing.hard, "health": timing.health}
        return windows[self.window]


# ------------------------------------------------------------------------- injections


def _sigterm(driver: Driver, host: Node) -> None:
    # The daemon alone, as an init system would stop it: ending its children is its job.
    driver.proc(host).send_signal(signal.SIGTERM)


def _sigkill(driver: Driver, host: Node) -> None:
    driver.signal_group(host, signal.SIGKILL)


def _sigkill_cut(driver: Driver, host: Node) -> None:
    driver.signal_group(host, signal.SIGKILL)
    driver.lab.cut_link(host)


def _cut(driver: Driver, host: Node) -> None:
    driver.lab.cut_link(host)


def _sigstop(driver: Driver, host: Node) -> None:
    driver.signal_group(host, signal.SIGSTOP)


def _etcd_partition(driver: Driver, host: Node) -> None:
    driver.lab.block_etcd(host)


def _peers_cut(driver: Driver, host: Node) -> None:
    partition.cut_peers(driver.lab, host)


def _peers_cut_out(driver: Driver, host: Node) -> None:
    partition.cut_peers(driver.lab, host, "out")


def _etcd_peers_cut(driver: Driver, host: Node) -> None:
    partition.cut_etcd_and_peers(driver.lab, host)


def _deaf(driver: Driver, host: Node) -> None:
    # UDP (haagent's heartbeats) and VRRP (keepalived's adverts) from the peers.
    partition.break_receive(driver.lab, host, protocols=("udp", "vrrp"))


def _fail_check(driver: Driver, host: Node) -> None:
    fail_flag(driver.lab, host).touch()


def _haagent(driver: Driver) -> HaagentDriver:
    if not isinstance(driver, HaagentDriver):
        raise TypeError(f"mode move is haagent's only, not {driver.system}'s")
    return driver


def _plan_move(driver: Driver, host: Node) -> Mapping[str, str]:
    return _haagent(driver).plan_move(host)


def _move(driver: Driver, host: Node) -> None:
    _haagent(driver).move(host)


# ------------------------------------------------------------------------- restores


def _restart(driver: Driver, host: Node) -> None:
    driver.wait_gone(host)
    driver.start(host)


def _restore_link_restart(driver: Driver, host: Node) -> None:
    driver.lab.restore_link(host)
    _restart(driver, host)


def _restore_link(driver: Driver, host: Node) -> None:
    driver.lab.restore_link(host)


def _sigcont(driver: Driver, host: Node) -> None:
    driver.signal_group(host, signal.SIGCONT)


def _unblock_etcd(driver: Driver, host: Node) -> None:
    driver.lab.unblock_etcd(host)


def _heal(driver: Driver, host: Node) -> None:
    partition.heal(driver.lab, host)


def _pass_check(driver: Driver, host: Node) -> None:
    fail_flag(driver.lab, host).unlink(missing_ok=True)


def _clear_move(driver: Driver, host: Node) -> None:
    _haagent(driver).clear_moves()


MODES: dict[str, Mode] = {
    m.name: m
    for m in (
        Mode(
            "sigterm",
            "SIGTERM to the holder's daemon: a graceful stop (haagent hands over, keepalived "
            "sends priority 0); restarted after the trial",
            window="graceful",
            inject=_sigterm,
            restore=_restart,
        ),
        Mode(
            "move",
            "an operator moves the VIP (haagent only): a move request (vips/<vip>/request, "
            "what `haagent move` writes) to the host ranked next after the holder; the holder "
            "hands over as on SIGTERM, but stays up; the request is deleted after the trial "
            "(`haagent move --clear`; with preempt off the VIP stays where it went)",
            window="graceful",
            inject=_move,
            restore=_clear_move,
            systems=frozenset({"haagent"}),
            rejoin=False,
            prepare=_plan_move,
        ),
        Mode(
            "sigkill",
            "SIGKILL of the daemon's whole process group; host and link stay up; restarted "
            "after the trial",
            window="hard",
            inject=_sigkill,
            restore=_restart,
        ),
        Mode(
            "sigkill+cut",
            "SIGKILL of the process group, then the holder's switch port down (a host "
            "crash); link up and daemon restarted after the trial",
            window="hard",
            inject=_sigkill_cut,
            restore=_restore_link_restart,
        ),
        Mode(
            "cut",
            "the holder's switch port down, daemon running (it loses clients, peers and "
            "etcd); link up after the trial",
            window="hard",
            inject=_cut,
            restore=_restore_link,
        ),
        Mode(
            "sigstop",
            "SIGSTOP of the daemon's process group (a frozen daemon); SIGCONT after the trial",
            window="hard",
            inject=_sigstop,
            restore=_sigcont,
        ),
        Mode(
            "etcd-partition",
            "nftables drop between the holder and etcd; clients still reach it; lifted "
            "after the trial",
            window="hard",
            inject=_etcd_partition,
            restore=_unblock_etcd,
            systems=frozenset({"haagent"}),
        ),
        Mode(
            "peers-cut",
            "nftables drop of all IP both ways between the holder and the other hosts; "
            "clients and etcd still reach it, so it stays a confirmed holder: the VIP must "
            "stay (keepalived: VRRP between the pair is cut); lifted after the trial",
            window="hard",
            inject=_peers_cut,
            restore=_heal,
            rejoin=False,
            expect="stay",
        ),
        Mode(
            "peers-cut-out",
            "the asymmetric partition: what the holder sends the other hosts is dropped, "
            "what they send it arrives; clients and etcd fine: the VIP must stay; lifted "
            "after the trial",
            window="hard",
            inject=_peers_cut_out,
            restore=_heal,
            rejoin=False,
            expect="stay",
        ),
        Mode(
            "etcd+peers-cut",
            "nftables drop both ways between the holder and etcd and the other hosts; the "
            "client still reaches it: it must give the VIP up and another host take it "
            "(keepalived: the same as peers-cut, etcd is not its business); lifted after "
            "the trial",
            window="hard",
            inject=_etcd_peers_cut,
            restore=_heal,
        ),
        Mode(
            "standby-deaf",
            "one standby (the host that would take over) receives no datagram from its "
            "peers (UDP and VRRP dropped on its input; it still sends, etcd and clients "
            "fine): the VIP must stay on the holder; lifted after the trial",
            window="hard",
            inject=_deaf,
            restore=_heal,
            rejoin=False,
            expect="stay",
            victim="standby",
        ),
        Mode(
            "health",
            "the holder's health check starts failing (a flag file appears; haagent: exec "
            f"check every {HAAGENT_CHECK_INTERVAL:g} s, keepalived: vrrp_script every "
            f"{KEEPALIVED_SCRIPT_INTERVAL:g} s, its minimum; fall {CHECK_FALL} for both); "
            "the file is removed after the trial and the host is back once healthy (haagent: "
            f"and its hold-down of {HAAGENT_HOLD_DOWN:g} s is over)",
            window="health",
            inject=_fail_check,
            restore=_pass_check,
            rejoin=False,
        ),
    )
}
