#!/usr/bin/env python3
"""A live map VIP -> holder of one haagent cluster, from etcd alone (docs/keys.md).

One range read of the cluster's prefix, then a watch from that read's revision + 1; after a
broken stream the watch resumes from the last revision seen + 1, and if etcd compacted that
revision away, it reads everything again. Prints the whole map as one JSON line at start and
after every change. Needs only the etcd client haagent uses (etcd-sdk-python, ``pyetcd``) and
read permission on ``/haagent/v1/<cluster>/``.

    python3 watch_holders.py --endpoint 10.0.0.5:2379 --cluster db
    python3 watch_holders.py --endpoint 10.0.0.5:2379 --cacert ca.crt --cert ro.crt --key ro.key
"""

from __future__ import annotations

import argparse
import json
import queue
import time
from typing import Any

import pyetcd
from pyetcd import events, exceptions


def vip_of(key: bytes, prefix: str) -> str | None:
    """The VIP of a ``vips/<vip>/holder`` key; None for every other key."""
    parts = key.decode("utf-8", "replace")[len(prefix) :].split("/")
    return parts[1] if len(parts) == 3 and parts[0] == "vips" and parts[2] == "holder" else None


def holder_of(value: bytes) -> str:
    """The node a holder record names. The key exists either way: nobody else can take it."""
    try:
        record = json.loads(value)
    except ValueError:
        return "(unreadable)"
    if not isinstance(record, dict) or not str(record.get("schema")).startswith("haagent.holder/"):
        return "(unreadable)"
    return str(record.get("node"))


def read_all(client: Any, prefix: str) -> tuple[dict[str, str], int]:
    resp = client.get_prefix_response(prefix)
    holders = {vip: holder_of(kv.value) for kv in resp.kvs if (vip := vip_of(kv.key, prefix))}
    return holders, int(resp.header.revision)


def show(holders: dict[str, str], revision: int, why: str) -> None:
    print(json.dumps({"revision": revision, "why": why, "holders": dict(sorted(holders.items()))}))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--endpoint", default="127.0.0.1:2379", help="host:port of one etcd member")
    p.add_argument("--cluster", required=True)
    p.add_argument("--cacert")
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--count", type=int, help="exit after this many changes")
    args = p.parse_args()
    host, _, port = args.endpoint.rpartition(":")
    client = pyetcd.client(
        host=host.strip("[]"), port=int(port), ca_cert=args.cacert, cert_key=args.key,
        cert_cert=args.cert, timeout=2,
    )  # fmt: skip
    prefix = f"/haagent/v1/{args.cluster}/"
    holders, revision = read_all(client, prefix)
    show(holders, revision, "read")
    changes = 0
    while args.count is None or changes < args.count:
        inbox: queue.Queue[Any] = queue.Queue()
        try:
            watch_id = client.add_watch_prefix_callback(
                prefix, inbox.put, start_revision=revision + 1
            )
        except exceptions.RevisionCompactedError:
            # What we would have missed is gone from etcd's history: read the present again.
            holders, revision = read_all(client, prefix)
            show(holders, revision, "re-read after compaction")
            continue
        except exceptions.Etcd3Exception:
            time.sleep(1)  # etcd unreachable: try again, from the same revision
            continue
        while args.count is None or changes < args.count:
            item = inbox.get()
            if isinstance(item, BaseException):
                break  # the stream broke (etcd restarted, compaction): watch again
            for ev in item.events:
                vip = vip_of(ev.key, prefix)
                if vip is None:
                    continue
                if isinstance(ev, events.DeleteEvent):
                    holders.pop(vip, None)
                else:
                    holders[vip] = holder_of(ev.value)
                changes += 1
                show(holders, int(ev.mod_revision), "watch")
            revision = max(revision, int(item.header.revision))
        client.cancel_watch(watch_id)
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:
        raise SystemExit(0) from None
