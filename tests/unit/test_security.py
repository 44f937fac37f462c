"""Secrets on disk, the lab PKI, and which etcd errors stop a connect for good."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import grpc
import pytest
from pyetcd import exceptions as etcd_exc

from haagent.config import Config, load_config
from haagent.security import key_file_warnings, mode_warning
from haagent.store.errors import _auth_problem, _tls_problem

PEM = "-----BEGIN PRIVATE KEY-----\nMAA=\n-----END PRIVATE KEY-----\n"


def write(path: Path, text: str, mode: int) -> Path:
    path.write_text(text)
    os.chmod(path, mode)
    return path


def config(tmp_path: Path, etcd: str, mode: int = 0o600) -> Config:
    cfg = tmp_path / "haagent.yaml"
    cfg.write_text(
        "cluster: db\nnode: pg1\n"
        f"etcd:\n{etcd}"
        "vips:\n  - {name: db, address: 198.51.100.200, interface: lo}\n"
    )
    os.chmod(cfg, mode)
    return load_config(cfg)


TLS = (
    '  endpoints: ["https://198.51.100.2:2379"]\n'
    "  tls: {ca: ca.crt, cert: client.crt, key: client.key}\n"
)


@pytest.fixture
def tls_files(tmp_path: Path) -> Path:
    write(tmp_path / "ca.crt", PEM, 0o644)
    write(tmp_path / "client.crt", PEM, 0o644)
    write(tmp_path / "client.key", PEM, 0o600)
    return tmp_path


# --------------------------------------------------------------------------- key_file_warnings


def test_private_key_and_password_file_give_no_warning(tls_files: Path):
    write(tls_files / "pw", "secret\n", 0o600)
    cfg = config(tls_files, TLS + "  username: haagent\n  password_file: pw\n")
    assert key_file_warnings(cfg) == []


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o602, 0o610])
def test_key_open_to_group_or_others_is_named_with_mode_and_fix(tls_files: Path, mode: int):
    key = tls_files / "client.key"
    os.chmod(key, mode)
    warnings = key_file_warnings(config(tls_files, TLS))
    assert len(warnings) == 1, warnings
    w = warnings[0]
    assert "etcd.tls.key" in w and str(key) in w
    assert f"{mode:04o}" in w
    assert f"chmod 600 {key}" in w
    assert str(tls_files / "haagent.yaml") in w  # which config said so
    who = " and ".join(n for n, bits in (("group", 0o070), ("others", 0o007)) if mode & bits)
    assert f": {who} can access it" in w


def test_owner_only_modes_are_fine(tls_files: Path):
    for mode in (0o400, 0o600, 0o700):
        os.chmod(tls_files / "client.key", mode)
        assert key_file_warnings(config(tls_files, TLS)) == [], oct(mode)


def test_public_certificates_are_not_secrets(tls_files: Path):
    os.chmod(tls_files / "ca.crt", 0o666)
    os.chmod(tls_files / "client.crt", 0o666)
    assert key_file_warnings(config(tls_files, TLS)) == []


def test_password_file_open_to_others(tls_files: Path):
    pw = write(tls_files / "etcd.pw", "secret\n", 0o644)
    cfg = config(tls_files, TLS + "  username: haagent\n  password_file: etcd.pw\n")
    assert cfg.etcd.password == "secret"
    (w,) = key_file_warnings(cfg)
    assert "etcd.password_file" in w and str(pw) in w and "0644" in w
    assert f"chmod 600 {pw}" in w


def test_both_key_and_password_file(tls_files: Path):
    os.chmod(tls_files / "client.key", 0o640)
    write(tls_files / "pw", "secret\n", 0o640)
    cfg = config(tls_files, TLS + f"  username: haagent\n  password_file: {tls_files / 'pw'}\n")
    warnings = key_file_warnings(cfg)
    assert [("etcd.tls.key" in w, "etcd.password_file" in w) for w in warnings] == [
        (True, False),
        (False, True),
    ]


def test_inline_password_makes_the_config_file_a_secret(tls_files: Path):
    etcd = TLS + "  username: haagent\n  password: secret\n"
    assert key_file_warnings(config(tls_files, etcd, mode=0o600)) == []
    (w,) = key_file_warnings(config(tls_files, etcd, mode=0o644))
    assert "etcd.password" in w and str(tls_files / "haagent.yaml") in w and "0644" in w


def test_symlink_is_judged_by_its_target(tls_files: Path):
    real = write(tls_files / "real.key", PEM, 0o644)
    (tls_files / "client.key").unlink()
    (tls_files / "client.key").symlink_to(real)
    (w,) = key_file_warnings(config(tls_files, TLS))
    assert "0644" in w


def test_missing_file_is_not_a_warning(tmp_path: Path):
    # check_host reports missing files as errors; this is only about modes.
    assert mode_warning(tmp_path / "nope.key", "etcd.tls.key") is None


def test_no_secrets_no_warnings(tmp_path: Path):
    cfg = config(tmp_path, '  endpoints: ["http://198.51.100.2:2379"]\n', mode=0o644)
    assert key_file_warnings(cfg) == []


def test_cli_warns_but_exit_code_is_unchanged(tls_files: Path):
    os.chmod(tls_files / "client.key", 0o644)
    cfg = tls_files / "haagent.yaml"
    config(tls_files, TLS)
    r = subprocess.run(
        [sys.executable, "-m", "haagent", "check-config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert "warning:" in r.stderr and "chmod 600" in r.stderr
    assert "OK" in r.stdout


# --------------------------------------------------------------------------- connect errors


class FakeRpcError(grpc.RpcError):  # type: ignore[misc]
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def translated(err: grpc.RpcError) -> BaseException:
    """What pyetcd raises for UNAVAILABLE: its own error, the gRPC one as __context__."""
    try:
        try:
            raise err
        except grpc.RpcError:
            raise etcd_exc.ConnectionFailedError() from None
    except etcd_exc.ConnectionFailedError as exc:
        exc.__context__ = err
        out: BaseException = exc
        return out


PREFIX = "/haagent/v1/db/"
SC = grpc.StatusCode

AUTH_CASES: list[tuple[Any, str, str]] = [
    (
        SC.INVALID_ARGUMENT,
        "etcdserver: authentication failed, invalid user ID or password",
        "wrong",
    ),
    (SC.INVALID_ARGUMENT, "etcdserver: user name is empty", "requires authentication"),
    (SC.PERMISSION_DENIED, "etcdserver: permission denied", PREFIX),
    (SC.UNAUTHENTICATED, "etcdserver: invalid auth token", PREFIX),
    (
        SC.UNAUTHENTICATED,
        "Established channel does not have a sufficient security level to transfer call "
        "credential.",
        "https",
    ),
    (SC.FAILED_PRECONDITION, "etcdserver: authentication is not enabled", "authentication is off"),
]


@pytest.mark.parametrize(("code", "details", "says"), AUTH_CASES)
def test_auth_and_permission_errors_are_permanent(code: Any, details: str, says: str):
    reason = _auth_problem(FakeRpcError(code, details), PREFIX)
    assert reason is not None and says in reason and details in reason
    assert _tls_problem(FakeRpcError(code, details)) is None


@pytest.mark.parametrize(
    ("code", "details"),
    [
        (SC.UNAVAILABLE, "failed to connect to all addresses; last error: Connection refused"),
        (SC.UNAVAILABLE, "failed to connect to all addresses; last error: Socket closed"),
        (SC.DEADLINE_EXCEEDED, "Deadline Exceeded"),
        (SC.INTERNAL, "etcdserver: request timed out"),
        (SC.FAILED_PRECONDITION, "etcdserver: some other precondition"),
    ],
)
def test_outages_are_retried(code: Any, details: str):
    for exc in (FakeRpcError(code, details), translated(FakeRpcError(code, details))):
        assert _auth_problem(exc, PREFIX) is None
        assert _tls_problem(exc) is None


def test_tls_trust_failures_name_the_peer_even_through_pyetcd():
    untrusted = (
        "failed to connect to all addresses; last error: UNKNOWN: ipv4:198.51.100.2:2379: Tls "
        "handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:1000007d:SSL "
        "routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED: unable to get local issuer"
    )
    rejected = (
        "failed to connect to all addresses; last error: UNAVAILABLE: "
        "ipv6:[2001:db8:100::2]:2379: Unwrap failed (TSI_DATA_CORRUPTED)"
    )
    got = _tls_problem(translated(FakeRpcError(SC.UNAVAILABLE, untrusted)))
    assert got is not None
    assert "etcd.tls.ca" in got[0] and got[1] == "ipv4:198.51.100.2:2379"
    got = _tls_problem(translated(FakeRpcError(SC.UNAVAILABLE, rejected)))
    assert got is not None
    assert "client certificate" in got[0] and got[1] == "ipv6:[2001:db8:100::2]:2379"
    wrong_name = (
        "failed to connect to all addresses; last error: UNKNOWN: ipv4:198.51.100.2:2379: Custom "
        "verification check failed with error: UNAUTHENTICATED: Hostname Verification Check failed."
    )
    got = _tls_problem(translated(FakeRpcError(SC.UNAVAILABLE, wrong_name)))
    assert got is not None and "does not name the address dialled" in got[0], got
    # gRPC's UNAUTHENTICATED inside UNAVAILABLE's details is not etcd refusing a user.
    assert _auth_problem(translated(FakeRpcError(SC.UNAVAILABLE, wrong_name)), PREFIX) is None
    assert _auth_problem(translated(FakeRpcError(SC.UNAVAILABLE, rejected)), PREFIX) is None


# --------------------------------------------------------------------------- the lab PKI

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


def openssl(*args: str) -> str:
    r = subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    return r.stdout


@needs_openssl
def test_pki_makes_a_ca_server_and_client_certs_with_private_keys(tmp_path: Path):
    from haagent.lab import pki

    addrs = [ip_address("198.51.100.2"), ip_address("2001:db8:100::2")]
    lab = pki.build(tmp_path / "pki", [("etcd", addrs)], ["root", "haagent"])
    server, client = lab.server("etcd"), lab.client("haagent")
    for pair in (lab.ca, server, client, lab.client("root")):
        assert pair.exists()
        assert oct(pair.key.stat().st_mode & 0o777) == oct(0o600)
    text = openssl("x509", "-in", str(server.cert), "-noout", "-text")
    assert "IP Address:198.51.100.2" in text and "IP Address:2001:DB8:100:0:0:0:0:2" in text
    assert "TLS Web Server Authentication" in text
    subject = openssl("x509", "-in", str(client.cert), "-noout", "-subject")
    assert "CN = haagent" in subject
    ok = openssl("verify", "-CAfile", str(lab.ca.cert), str(server.cert), str(client.cert))
    assert ok.count(": OK") == 2
    assert mode_warning(client.key, "etcd.tls.key") is None


@needs_openssl
def test_pki_client_cert_from_another_ca_does_not_verify(tmp_path: Path):
    from haagent.lab import pki

    ours = pki.build(tmp_path / "ours", [], [])
    rogue = pki.build(tmp_path / "rogue", [], ["haagent"])
    r = subprocess.run(
        ["openssl", "verify", "-CAfile", str(ours.ca.cert), str(rogue.client("haagent").cert)],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert r.returncode != 0


def test_pki_rejects_names_that_are_not_file_names(tmp_path: Path):
    from haagent.lab import pki

    with pytest.raises(ValueError):
        pki.LabPKI(tmp_path).client("../x")
