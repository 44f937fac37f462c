"""A throwaway certificate authority for the lab, made with the ``openssl`` command line.

:func:`build` writes, into one directory, a CA, one server certificate per etcd member (with
subject alternative names for the member's lab IPv4 and IPv6 addresses) and client
certificates whose common name is an etcd user name. etcd 3.4 started with
``--client-cert-auth`` takes that common name as the user when a request carries no password
token, so a client certificate *is* an etcd identity.

Keys are EC P-256 (fast to make, accepted by etcd's Go TLS stack and by gRPC) and written with
mode 0600 from the first byte. Nothing here touches the network; every ``openssl`` call is
bounded by a timeout. The certificates are for tests only: short-lived, no revocation, and the
CA key lies next to them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

OPENSSL = "openssl"
OPENSSL_TIMEOUT = 20.0
DAYS = 7  # lab certificates outlive any test run, and nothing else
CA_NAME = "haagent lab CA"

# Names become file names and certificate subjects: keep them boring.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")

__all__ = [
    "CertPair",
    "LabPKI",
    "PKIError",
    "build",
    "make_ca",
    "make_client_cert",
    "make_server_cert",
]


class PKIError(RuntimeError):
    """openssl is missing, failed or timed out."""


@dataclass(frozen=True)
class CertPair:
    """A PEM certificate and its PEM private key (mode 0600)."""

    cert: Path
    key: Path

    def exists(self) -> bool:
        return self.cert.is_file() and self.key.is_file()


def _check_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise ValueError(f"certificate name must match {_NAME_RE.pattern}, not {name!r}")
    return name


def _openssl(argv: Sequence[str], *, cwd: Path) -> None:
    exe = shutil.which(OPENSSL)
    if exe is None:
        raise PKIError("openssl not found (apt-get install openssl)")
    # No OPENSSL_CONF or RANDFILE from the caller's environment changes what we make.
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENSSL")}
    try:
        proc = subprocess.run(
            [exe, *argv],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=OPENSSL_TIMEOUT,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise PKIError(f"openssl {argv[0]}: timed out after {OPENSSL_TIMEOUT}s") from None
    if proc.returncode != 0:
        raise PKIError(f"openssl {' '.join(argv)}: exit {proc.returncode}: {proc.stderr.strip()}")


def _new_key(path: Path) -> None:
    """An EC P-256 private key, created 0600 (never readable by others, not even briefly)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    _openssl(
        ["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path)],
        cwd=path.parent,
    )
    os.chmod(path, 0o600)  # openssl keeps the existing file's mode; make sure anyway


def _sign(ca: CertPair, csr: Path, out: Path, extensions: Iterable[str], days: int) -> None:
    ext = out.with_suffix(".ext")
    ext.write_text("".join(f"{line}\n" for line in extensions))
    try:
        _openssl(
            [
                "x509",
                "-req",
                "-in",
                str(csr),
                "-CA",
                str(ca.cert),
                "-CAkey",
                str(ca.key),
                "-set_serial",
                str(int.from_bytes(os.urandom(8), "big")),
                "-days",
                str(days),
                "-sha256",
                "-extfile",
                str(ext),
                "-out",
                str(out),
            ],
            cwd=out.parent,
        )
    finally:
        ext.unlink(missing_ok=True)
        csr.unlink(missing_ok=True)


def _csr(key: Path, common_name: str, out: Path) -> None:
    _openssl(
        ["req", "-new", "-key", str(key), "-subj", f"/CN={common_name}", "-out", str(out)],
        cwd=out.parent,
    )


def make_ca(directory: Path, name: str = "ca", *, days: int = DAYS) -> CertPair:
    """A self-signed CA: ``<directory>/<name>.crt`` and ``<name>.key``."""
    _check_name(name)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    pair = CertPair(directory / f"{name}.crt", directory / f"{name}.key")
    _new_key(pair.key)
    _openssl(
        [
            "req",
            "-x509",
            "-new",
            "-key",
            str(pair.key),
            "-subj",
            f"/CN={CA_NAME} {name}",
            "-days",
            str(days),
            "-sha256",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-out",
            str(pair.cert),
        ],
        cwd=directory,
    )
    return pair


def make_server_cert(
    ca: CertPair,
    directory: Path,
    name: str,
    addresses: Sequence[IPv4Address | IPv6Address],
    *,
    dns: Sequence[str] = (),
    days: int = DAYS,
) -> CertPair:
    """A server certificate for ``addresses`` (IP SANs) signed by ``ca``.

    It carries ``clientAuth`` as well as ``serverAuth``: with ``--client-cert-auth`` etcd 3.4's
    own HTTP gateway dials the gRPC server with the server certificate as its client
    certificate.
    """
    pair = LabPKI(directory).server(name)  # checks the name
    if name == "ca":
        raise ValueError("'ca' is the CA's own file name")
    if not addresses and not dns:
        raise ValueError("a server certificate needs at least one address or DNS name")
    _new_key(pair.key)
    csr = pair.cert.with_suffix(".csr")
    _csr(pair.key, name, csr)
    sans = [f"IP:{a}" for a in addresses] + [f"DNS:{d}" for d in dns]
    _sign(
        ca,
        csr,
        pair.cert,
        [
            "basicConstraints=critical,CA:FALSE",
            "keyUsage=critical,digitalSignature,keyEncipherment",
            "extendedKeyUsage=serverAuth,clientAuth",
            f"subjectAltName={','.join(sans)}",
        ],
        days,
    )
    return pair


def make_client_cert(
    ca: CertPair, directory: Path, common_name: str, *, days: int = DAYS
) -> CertPair:
    """A client certificate with CN = ``common_name`` (for etcd: the user name)."""
    pair = LabPKI(directory).client(common_name)  # checks the name
    _new_key(pair.key)
    csr = pair.cert.with_suffix(".csr")
    _csr(pair.key, common_name, csr)
    _sign(
        ca,
        csr,
        pair.cert,
        [
            "basicConstraints=critical,CA:FALSE",
            "keyUsage=critical,digitalSignature",
            "extendedKeyUsage=clientAuth",
        ],
        days,
    )
    return pair


@dataclass(frozen=True)
class LabPKI:
    """Where the lab's certificates live; paths only, so a re-attached lab finds them again.

    The one place that names the files: the make_* functions write where these point."""

    directory: Path

    @property
    def ca(self) -> CertPair:
        return CertPair(self.directory / "ca.crt", self.directory / "ca.key")

    def server(self, name: str) -> CertPair:
        _check_name(name)
        return CertPair(self.directory / f"{name}.crt", self.directory / f"{name}.key")

    def client(self, user: str) -> CertPair:
        _check_name(user)
        return CertPair(
            self.directory / f"client-{user}.crt", self.directory / f"client-{user}.key"
        )

    def ensure_client(self, user: str) -> CertPair:
        """The client certificate of ``user``, made now if it does not exist yet."""
        pair = self.client(user)
        if not pair.exists():
            pair = make_client_cert(self.ca, self.directory, user)
        return pair


def build(
    directory: Path,
    servers: Iterable[tuple[str, Sequence[IPv4Address | IPv6Address]]],
    users: Iterable[str],
    *,
    days: int = DAYS,
) -> LabPKI:
    """Make a CA, a server certificate per ``(name, addresses)`` and a client one per user."""
    pki = LabPKI(directory)
    make_ca(directory, days=days)
    for name, addresses in servers:
        make_server_cert(pki.ca, directory, name, addresses, days=days)
    for user in users:
        make_client_cert(pki.ca, directory, user, days=days)
    return pki
