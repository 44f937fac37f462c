"""The cluster's heartbeat key: a file only the agent's user may read, the same on every host."""

from __future__ import annotations

import os
import stat

from haagent.config import MIN_LIVENESS_KEY, Config

MAX_KEY = 4096


class KeyProblem(Exception):
    """Why fast failover cannot run with this key file (one line, with the fix)."""


def load_key(cfg: Config) -> bytes | None:
    """The key, or None when fast failover is off: disabled, or left to default and the
    default file is absent (then the agent says so once at start). KeyProblem when it is
    asked for (or the file exists) but cannot be used."""
    lv = cfg.liveness
    if lv.enabled is False:
        return None
    if cfg.lease.when_etcd_unreachable == "keep":
        if lv.enabled:
            raise KeyProblem(
                "liveness.enabled is true but lease.when_etcd_unreachable is keep: a holder "
                "that keeps its VIPs through an etcd outage cannot also promise to drop them "
                "when its peers stop hearing it; choose one"
            )
        return None
    path = lv.key_file
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if lv.enabled:
            raise KeyProblem(
                f"liveness key file {path} does not exist; create it on every host with the "
                f"same content: head -c 32 /dev/urandom > {path}; chmod 600 {path}"
            ) from None
        return None
    except OSError as exc:
        raise KeyProblem(f"cannot read liveness key file {path}: {exc.strerror}") from None
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise KeyProblem(
            f"liveness key file {path} has mode {stat.S_IMODE(st.st_mode):04o}: anyone who "
            f"reads it can forge heartbeats; run: chmod 600 {path}"
        )
    try:
        with open(path, "rb") as f:
            key = f.read(MAX_KEY + 1)
    except OSError as exc:
        raise KeyProblem(f"cannot read liveness key file {path}: {exc.strerror}") from None
    key = key.strip()
    if not MIN_LIVENESS_KEY <= len(key) <= MAX_KEY:
        raise KeyProblem(
            f"liveness key file {path} holds {len(key)} bytes; it needs {MIN_LIVENESS_KEY} to "
            f"{MAX_KEY}: head -c 32 /dev/urandom > {path}"
        )
    return key
