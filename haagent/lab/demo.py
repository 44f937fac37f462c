"""`make demo`: a three-host cluster on this machine, a v4 and a v6 VIP, one failover, watched.

Builds the lab, starts an agent and a responder on every host, shows who holds what, then stops
the holder of the IPv4 VIP with SIGTERM while a client keeps probing, and shows the VIP move and
the client keep reaching it. Tears everything down unless --keep is given.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv6Address

from rich.console import Console
from rich.table import Table

from haagent.lab.topology import Lab, Node
from haagent.lab.wait import poll_until

PORT = 7000
console = Console()


def _holder(lab: Lab, ip: IPv4Address | IPv6Address) -> Node | None:
    held = [h for h in lab.hosts if ip in lab.bound(h)]
    return held[0] if len(held) == 1 else None


def _wait_holder(
    lab: Lab, ip: IPv4Address | IPv6Address, timeout: float = 15, *, not_on: Node | None = None
) -> Node:
    """The single host that has ``ip`` bound, once there is one (and it is not ``not_on``)."""

    def holder() -> Node | None:
        h = _holder(lab, ip)
        return h if h != not_on else None

    found = poll_until(holder, timeout, 0.1)
    if found is None:
        raise SystemExit(
            f"no single holder of {ip} after {timeout}s; see the agent logs in {lab.workdir}"
        )
    return found


def _show(lab: Lab, vips: dict[str, IPv4Address | IPv6Address], title: str) -> None:
    table = Table(title=title)
    table.add_column("host")
    table.add_column("namespace")
    table.add_column("address")
    for name in vips:
        table.add_column(f"{name}")
    for h in lab.hosts:
        bound = lab.bound(h)
        table.add_row(
            h.role,
            h.netns,
            str(h.ipv4),
            *["[bold green]holder[/]" if ip in bound else "-" for ip in vips.values()],
        )
    console.print(table)


def _probe(lab: Lab, ip: IPv4Address | IPv6Address, seconds: float) -> subprocess.Popen[bytes]:
    out = lab.workdir / f"probe-{ip.version}.jsonl"
    return lab.start_probe(ip, out, port=PORT, interval=0.005, duration=seconds)


def _summarise(lab: Lab, ip: IPv4Address | IPv6Address) -> None:
    from haagent.lab.probe import read_records, summarize

    s = summarize(read_records(lab.workdir / f"probe-{ip.version}.jsonl"))
    gap = "n/a" if s.longest_gap_ms is None else f"{s.longest_gap_ms:.0f} ms"
    console.print(
        f"client probes to {ip}: {s.answered}/{s.sent} answered, longest gap {gap}, "
        f"answered by {' → '.join(s.responders) or 'nobody'}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m haagent.lab.demo", description=__doc__)
    p.add_argument(
        "--keep", action="store_true", help="leave the lab running and print how to poke at it"
    )
    args = p.parse_args(argv)

    lab = Lab(hosts=3)
    console.rule("[bold]haagent demo")
    console.print("building the lab: switch, etcd, 3 hosts, 1 client (network namespaces)…")
    lab.up()
    try:
        vips: dict[str, IPv4Address | IPv6Address] = {"web4": lab.vip4(0), "web6": lab.vip6(0)}
        agents: dict[str, subprocess.Popen[bytes]] = {}
        for h in lab.hosts:
            lab.start_responder(h, PORT)
            cfg = lab.write_agent_config(
                h, [(n, str(ip)) for n, ip in vips.items()], ttl=3, margin=1.0
            )
            agents[h.role] = lab.start_agent(h, cfg)
        holder4 = _wait_holder(lab, vips["web4"])
        _wait_holder(lab, vips["web6"])
        _show(lab, vips, "who holds what")

        console.print(
            f"client probes both VIPs every 5 ms; stopping [bold]{holder4.role}[/] (SIGTERM)…"
        )
        probes = [_probe(lab, ip, 4.0) for ip in vips.values()]
        time.sleep(1.0)
        agents[holder4.role].send_signal(signal.SIGTERM)
        new4 = _wait_holder(lab, vips["web4"], not_on=holder4)
        console.print(f"web4 moved: {holder4.role} → [bold green]{new4.role}[/]")
        for proc in probes:
            proc.wait(timeout=15)
        _show(lab, vips, "after the failover")
        for ip in vips.values():
            _summarise(lab, ip)
        console.print(f"agent logs: {lab.workdir}/<host>.agent.log")
        if args.keep:
            console.rule("lab left running")
            # As `haagent lab up` prints them: neither iputils' ping nor a `haagent` on PATH
            # can be assumed, and commands must stay on one line to be copy-pasted.
            py = shlex.quote(sys.executable)
            hints = [
                f"ip netns exec {lab.client.netns} {py} -m haagent.lab.probe --ping"
                f" --target {vips['web4']}",
                f"ip -n {new4.netns} addr show eth0",
                f"{py} -m haagent lab status --id {lab.lab_id}",
                f"{py} -m haagent lab down --id {lab.lab_id}",
            ]
            print("\n".join(f"  {h}" for h in hints))
            return 0
    except BaseException:
        lab.down()
        raise
    if not args.keep:
        lab.down()
        console.print("lab removed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
