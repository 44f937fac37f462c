"""The first message on the fence's pipe: how to reach etcd (both ends use it)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from haagent.config import EtcdConfig, TLSConfig


def setup_message(cluster: str, etcd: EtcdConfig) -> dict[str, object]:
    """What the fence needs to revoke a lease: the agent's etcd settings, password included
    (the pipe is private to the two processes; it never goes on a command line)."""
    tls = etcd.tls
    return {
        "setup": {
            "cluster": cluster,
            "endpoints": list(etcd.endpoints),
            "tls": None
            if tls is None
            else {k: None if v is None else str(v) for k, v in vars(tls).items()},
            "username": etcd.username,
            "password": etcd.password,
            "timeout": etcd.timeout,
            "retry_interval": etcd.retry_interval,
        }
    }


def etcd_from_setup(setup: Mapping[str, Any]) -> tuple[str, EtcdConfig]:
    """The inverse of :func:`setup_message` (its ``setup`` part): (cluster, etcd settings)."""
    tls = setup.get("tls")
    return str(setup["cluster"]), EtcdConfig(
        endpoints=tuple(str(e) for e in setup["endpoints"]),
        tls=None
        if not isinstance(tls, dict)
        else TLSConfig(**{k: None if v is None else Path(v) for k, v in tls.items()}),
        username=setup.get("username"),
        password=setup.get("password"),
        timeout=float(setup.get("timeout", 1.0)),
        retry_interval=float(setup.get("retry_interval", 1.0)),
    )
