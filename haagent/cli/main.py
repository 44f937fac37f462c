"""The ``haagent`` command line: run the agent, check a config, drive the lab."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from haagent import __version__
from haagent.logs import LOG_FORMATS, setup_logging

if TYPE_CHECKING:
    from haagent.config import Config, ConfigError

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2


def _load(path: Path) -> Config | None:
    """The config, or None after printing every error in it."""
    from haagent.config import ConfigErrors, load_config

    try:
        return load_config(path)
    except ConfigErrors as exc:
        for err in exc.errors:
            print(f"error: {err}", file=sys.stderr)
        return None


def _error_json(err: ConfigError) -> dict[str, str]:
    return {"file": err.file, "key": err.key, "reason": err.reason}


def cmd_check_config(args: argparse.Namespace) -> int:
    from haagent.config import ConfigErrors, check_host, describe, load_config
    from haagent.security import key_file_warnings

    problems: list[ConfigError] = []
    cfg: Config | None = None
    try:
        cfg = load_config(args.file)
    except ConfigErrors as exc:
        problems = exc.errors
    if cfg is not None and not args.no_host_checks:  # file modes are facts of this host too
        problems = check_host(cfg)
        for warning in key_file_warnings(cfg):
            print(f"warning: {warning}", file=sys.stderr)
    if args.json:
        # One object whatever happened, so that a script never has to parse stderr.
        print(
            json.dumps(
                {
                    "file": str(args.file),
                    "ok": not problems,
                    "errors": [_error_json(p) for p in problems],
                    "digest": cfg.digest if cfg is not None else None,
                }
            )
        )
        return EXIT_ERROR if problems else EXIT_OK
    for p in problems:
        print(f"error: {p}", file=sys.stderr)
    if problems or cfg is None:
        return EXIT_ERROR
    # A file name that is not UTF-8 (it came from argv) must not make print() fail.
    shown = str(args.file).encode("utf-8", "backslashreplace").decode("utf-8")
    print(describe(cfg))
    print(f"{shown}: OK")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from haagent.agent.loop import Agent, AgentError
    from haagent.config import check_host
    from haagent.net.addresses import NetError
    from haagent.security import key_file_warnings
    from haagent.store import StoreError

    cfg = _load(args.config)
    if cfg is None:
        return EXIT_ERROR
    setup_logging(args.log_level or cfg.log_level, args.log_format, node=cfg.node)
    log = logging.getLogger("haagent")
    problems = check_host(cfg)
    if problems:
        for p in problems:
            log.error("%s", p)
        return EXIT_ERROR
    for warning in key_file_warnings(cfg):
        log.warning("%s", warning)
    try:
        return Agent(cfg, state_dir=Path(args.state_dir), log_level=args.log_level).run()
    except (AgentError, StoreError, NetError) as exc:
        log.error("%s", exc)
        return EXIT_ERROR


def cmd_cleanup(args: argparse.Namespace) -> int:
    from haagent.net.addresses import AddressManager, NetError
    from haagent.net.placement import Placement, foreign_text

    cfg = _load(args.config)
    if cfg is None:
        return EXIT_ERROR
    status = EXIT_OK
    with AddressManager() as net, contextlib.closing(Placement(net)) as place:
        try:
            foreign = place.foreign(cfg.vips)
        except NetError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_ERROR
        for vip in cfg.vips:
            try:
                # Every address of the VIP, haagent's own entries only, never the host's; one
                # that cannot be removed does not keep the others.
                removed = place.remove(vip)
            except NetError as exc:
                print(f"error: vip {vip.name}: {exc}", file=sys.stderr)
                status = EXIT_ERROR
                continue
            state = "removed" if removed else "not bound"
            if vip.name in foreign:
                state += (
                    f"; left alone: {foreign_text(foreign[vip.name])}, configured outside haagent"
                )
            print(f"vip {vip.name} ({place.shown(vip)}): {state}")
    return status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="haagent",
        description=(
            "Keep virtual IPs highly available on plain Linux hosts. One agent per host "
            "campaigns for each VIP on an etcd lease; the winner binds the address and "
            "announces it with gratuitous ARP / unsolicited neighbour advertisements."
        ),
    )
    parser.add_argument("--version", action="version", version=f"haagent {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="run the agent in the foreground",
        description=(
            "Run the agent: connect to etcd, campaign for every configured VIP, bind the ones "
            "won. SIGTERM or SIGINT hands every VIP over and exits. SIGHUP re-reads the config "
            "file: unchanged VIPs are not touched, removed ones are released, new ones join, "
            "and a file with errors is refused while the old config stays in force."
        ),
    )
    run.add_argument("-c", "--config", required=True, type=Path, help="YAML config file")
    run.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], help="override log_level"
    )
    run.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="text lines, or JSON lines (ts, level, node, event, vip, reason, msg) for a log "
        "pipeline (default: %(default)s)",
    )
    run.add_argument(
        "--state-dir",
        default="/run/haagent",
        help="where the per-node lease file lives (default: %(default)s)",
    )
    run.set_defaults(func=cmd_run)

    check = sub.add_parser(
        "check-config",
        help="validate a config file (exit 0 if valid, 1 if not)",
        description=(
            "Validate a config file: syntax, every key and value, and, unless --no-host-checks, "
            "what only this host can tell (interfaces exist, the programs of exec checks and "
            "notify hooks can start, TLS files readable) and secret files open to group or "
            "others (a warning, not an error). --json prints one JSON object whatever happened."
        ),
    )
    check.add_argument("file", type=Path)
    check.add_argument(
        "--no-host-checks", action="store_true", help="skip checks against this host"
    )
    check.add_argument("--json", action="store_true", help="machine-readable result")
    check.set_defaults(func=cmd_check_config)

    cleanup = sub.add_parser(
        "cleanup",
        help="remove every configured VIP address from this host",
        description=(
            "Remove every VIP address of the config that haagent bound (exact address and "
            "prefix, marked as haagent's: docs/net.md) from this host, whoever holds it. Meant "
            "for the service manager after the agent stopped or died (systemd: "
            "ExecStopPost=haagent cleanup -c FILE): an agent that is not running holds nothing. "
            "Do not run it while the agent runs."
        ),
    )
    cleanup.add_argument("-c", "--config", required=True, type=Path, help="YAML config file")
    cleanup.set_defaults(func=cmd_cleanup)

    # etcd commands (no agent needed), read-only and operator ones, and version: one module
    # each (drain.py adds undrain too).
    from haagent.cli import drain, members, move, status, version, watch

    for module in (status, members, watch, move, drain, version):
        module.add_parser(sub)

    try:
        from haagent.lab.cli import add_lab_parser
    except ImportError:  # pragma: no cover - the lab ships with the package
        pass
    else:
        add_lab_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
