"""``haagent version``: this haagent, its Python and its etcd client library."""

from __future__ import annotations

import argparse
import json
import platform
from importlib import metadata
from typing import Any

from haagent import __version__
from haagent.cluster.schema import HOLDER_SCHEMA, MEMBER_SCHEMA, RELEASED_SCHEMA, REQUEST_SCHEMA


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "version",
        help="print haagent's version, Python's and the etcd client's (--json)",
        description="Print the versions of haagent, Python and the etcd client library, and "
        "the etcd record schemas this haagent reads and writes (docs/keys.md).",
        epilog="examples:\n  haagent version\n  haagent version --json | jq -r .haagent",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(func=cmd_version)


def versions() -> dict[str, Any]:
    try:
        etcd_client: str | None = metadata.version("etcd-sdk-python")
    except metadata.PackageNotFoundError:
        etcd_client = None
    return {
        "haagent": __version__,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "etcd_client": etcd_client,
        "schemas": [HOLDER_SCHEMA, MEMBER_SCHEMA, REQUEST_SCHEMA, RELEASED_SCHEMA],
    }


def cmd_version(args: argparse.Namespace) -> int:
    v = versions()
    if args.json:
        print(json.dumps(v))
        return 0
    print(f"haagent {v['haagent']}")
    print(f"Python {v['python']} ({v['implementation']})")
    print(f"etcd client: etcd-sdk-python {v['etcd_client'] or 'not installed'}")
    print(f"schemas: {', '.join(v['schemas'])}")
    return 0
