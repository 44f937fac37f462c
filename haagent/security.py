"""Checks on the secrets a config points at: warnings, never errors.

A TLS client key or a password file is the agent's etcd identity. Anyone on the host who can
read it can act as every haagent in the cluster (docs/security.md says what that allows), so
:func:`key_file_warnings` flags such files when group or others have any access to them.
``haagent run`` logs these warnings and ``haagent check-config`` prints them; neither fails
because of them.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from haagent.config import Config

__all__ = ["key_file_warnings", "mode_warning"]


def mode_warning(path: Path, what: str) -> str | None:
    """A warning if ``path`` (followed through symlinks) is open to group or others.

    None if the file is private or cannot be examined (missing files are check_host's job).
    """
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return None
    if not mode & 0o077:
        return None
    who = " and ".join(name for name, bits in (("group", 0o070), ("others", 0o007)) if mode & bits)
    return (
        f"{what} {str(path)!r} has mode {mode:04o}: {who} can access it, and whoever reads it "
        f"can act as this agent in etcd; run: chmod 600 {path}"
    )


def key_file_warnings(cfg: Config) -> list[str]:
    """Warnings about etcd secrets in files that group or others can access.

    Looks at ``etcd.tls.key``, ``etcd.password_file`` and, when it holds ``etcd.password``
    itself, the config file.
    """
    source = str(cfg.source) if cfg.source is not None else "<config>"
    etcd = cfg.etcd
    checks: list[tuple[Path, str]] = []
    if etcd.tls is not None and etcd.tls.key is not None:
        checks.append((etcd.tls.key, "etcd.tls.key"))
    if etcd.password_file is not None:
        checks.append((etcd.password_file, "etcd.password_file"))
    elif etcd.password is not None and cfg.source is not None:
        checks.append((cfg.source, "the config file (it holds etcd.password)"))
    return [
        f"{source}: {warning}"
        for path, what in checks
        if (warning := mode_warning(path, what)) is not None
    ]
