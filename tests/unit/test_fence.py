"""The fence: its decisions (pure), the incremental protocol, the agent's end of the pipe, its
gRPC call over h2 and the netlink it speaks itself. The lab tests show it removing real
addresses and revoking real leases (tests/lab/test_fence_process.py)."""

import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
from ipaddress import IPv4Interface, ip_interface
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from haagent.addrmark import IFA_PROTO, PROTO
from haagent.config import EtcdConfig, TLSConfig
from haagent.fence import netlink, rpc
from haagent.fence.client import FenceClient, Known, encode
from haagent.fence.etcd import LeaseRevoker
from haagent.fence.setup import Endpoint, EtcdSettings, setup_message
from haagent.fence.state import Address, Fence, parse_addresses
from haagent.lab.wait import wait_until

V4 = ("eth0", ip_interface("198.51.100.200/32"))
V6 = ("eth0", ip_interface("2001:db8::200/128"))
WIRE = [["eth0", "198.51.100.200/32"], ["eth0", "2001:db8::200/128"]]
MSG = {"deadline": 10.0, "add": WIRE}


def many(n: int, names: tuple[str, str] = ("eth0", "eth1")) -> list[Address]:
    """n distinct addresses as the agent lists them: IPv4 and IPv6 alternating while the
    documentation range lasts (250), IPv6 after that."""
    return [
        (names[0], ip_interface(f"203.0.113.{i // 2 + 1}/32"))
        if i % 2 == 0 and i < 500
        else (names[1], ip_interface(f"2001:db8:f::{i:x}/128"))
        for i in range(n)
    ]


# ------------------------------------------------------------------ decisions (state.py)


def test_nothing_to_do_without_addresses():
    f = Fence()
    f.update({"deadline": 1.0})
    assert f.timeout(5.0) is None
    assert f.due(5.0) == ([], "")


def test_waits_until_the_deadline_then_removes_everything_once():
    f = Fence()
    f.update(MSG)
    assert f.timeout(4.0) == 6.0
    assert f.due(9.99) == ([], "")
    addresses, reason = f.due(10.25)
    assert addresses == [V4, V6]
    assert reason == "lease deadline passed 250 ms ago and the agent did not act"
    assert f.due(11.0) == ([], "")
    assert f.timeout(11.0) is not None  # the revoke is still to come, not the deadline


def test_newer_deadline_postpones():
    f = Fence()
    f.update(MSG)
    f.update({"deadline": 20.0})
    assert f.due(15.0) == ([], "")
    assert f.due(20.0)[0] == [V4, V6]


def test_addresses_without_a_deadline_are_due_at_once():
    f = Fence()
    f.update({"deadline": None, "add": WIRE})
    assert f.timeout(0.0) is None
    assert f.due(0.0)[0] == [V4, V6]


def test_exit_message_stops_and_keeps_nothing_to_remove_by_itself():
    f = Fence()
    f.update(MSG)
    assert f.update({"exit": True}) is False


def test_take_on_agent_death_returns_everything_once():
    f = Fence()
    f.update(MSG)
    assert f.take() == [V4, V6]
    assert f.take() == []


def test_hold_keeps_addresses_past_any_deadline_until_told_otherwise():
    f = Fence()
    f.update({"deadline": None, "hold": True, "add": WIRE})
    assert f.timeout(100.0) is None
    assert f.due(100.0) == ([], "")
    f.update({"deadline": 10.0, "hold": False})  # back to normal: that deadline applies
    assert f.due(100.0)[0] == [V4, V6]


def test_absent_fields_keep_their_value():
    f = Fence()
    f.update({"deadline": 10.0, "hold": True, "lease": 7, "add": WIRE})
    f.update({"deadline": 11.0})
    assert (f.deadline, f.hold, f.lease, f.addresses) == (11.0, True, 7, [V4, V6])
    f.update({"remove": WIRE[:1]})
    assert (f.deadline, f.hold, f.lease, f.addresses) == (11.0, True, 7, [V6])
    f.update({"remove": WIRE[:1], "add": WIRE[1:]})  # neither listed twice nor an error
    assert f.addresses == [V6]


def test_remembers_the_lease_it_revokes_after_acting():
    f = Fence()
    f.update({**MSG, "lease": 0x1234})
    assert f.lease == 0x1234
    f.update({"lease": None})  # the agent lost its lease: nothing to revoke
    assert f.lease is None
    for bad in ("1234", True, -5, 1.5):  # not an etcd lease id
        f.update({"lease": bad})
        assert f.lease is None


def test_malformed_items_are_skipped_not_fatal():
    f = Fence()
    f.update({"add": [["eth0", "not-an-ip"], ["eth0"], "eth0", [1, "198.51.100.1/32"], *WIRE]})
    assert f.addresses == [V4, V6]
    f.update({"deadline": "soon"})
    assert f.deadline is None
    assert parse_addresses("nonsense") == []


def test_setup_message_changes_nothing_else():
    f = Fence()
    f.update({**MSG, "lease": 7})
    message = setup_message("db", EtcdConfig())
    assert f.update(json.loads(json.dumps(message))) is True
    assert f.setup == message["setup"]
    assert (f.lease, f.deadline, f.addresses) == (7, 10.0, [V4, V6])


def test_after_the_deadline_a_silent_agent_loses_its_lease_a_speaking_one_does_not():
    f = Fence()
    f.update({"setup": {"cluster": "db", "endpoints": [], "timeout": 0.5}})
    f.update({**MSG, "lease": 7})
    assert f.due(10.0)[0] == [V4, V6]  # removal cannot wait
    assert f.timeout(10.0) == 0.75  # revocation can: etcd.timeout + slack
    assert f.revoke_due(10.7) is None
    assert f.revoke_due(10.75) == 7
    assert f.revoke_due(11.0) is None  # once

    f.update({**MSG, "lease": 7})  # bound again: guarded again
    assert f.due(10.0)[0] == [V4, V6]
    f.update({"deadline": None, "remove": WIRE})  # the agent released by itself
    assert f.revoke_due(20.0) is None
    assert f.timeout(20.0) is None


def test_after_acting_the_list_stays_the_agents_and_a_new_deadline_guards_it_again():
    """The agent sends changes only, so the fence must not forget what it removed: the
    agent may bind it again (a late bind, or after regaining its lease)."""
    f = Fence()
    f.update({"deadline": 10.0, "lease": 7, "add": WIRE})
    assert f.due(10.0)[0] == [V4, V6]
    assert f.addresses == [V4, V6]
    assert f.due(10.5) == ([], "")  # done for this deadline
    f.update({"deadline": 20.0})  # a keepalive answered after all: still holding both
    assert f.due(19.0) == ([], "")
    assert f.due(20.0)[0] == [V4, V6]
    f.update({"remove": WIRE[:1]})
    assert f.take() == [V6]  # its death removes what it still lists, removed before or not


def test_a_mass_release_after_the_deadline_costs_each_address_once_more_at_most():
    n = 500
    wire = [[i, str(a)] for i, a in many(n)]
    f = Fence()
    f.update({"deadline": 10.0, "lease": 7, "add": wire})
    assert len(f.due(10.0)[0]) == n
    # The agent reaches the same deadline: no valid lease, then one unbind at a time.
    f.update({"deadline": None})
    returned = len(f.due(10.1)[0])  # guarded again by the change: removed again, once
    for item in wire:
        f.update({"remove": [item]})
        returned += len(f.due(10.2)[0])
    assert returned == n  # not n * n / 2
    assert f.addresses == []


# ------------------------------------------------------------- the protocol (client.py)


def test_the_first_message_is_the_whole_state_then_only_changes():
    addresses = many(1000)
    known = Known()
    first = known.diff(100.0, dict.fromkeys(addresses), False, 0x7587869)
    assert first == {
        "deadline": 100.0,
        "lease": 0x7587869,
        "add": [[i, str(a)] for i, a in addresses],
    }
    known = Known(100.0, False, 0x7587869, dict.fromkeys(addresses))
    keepalive = known.diff(101.234567, dict.fromkeys(addresses), False, 0x7587869)
    assert encode(keepalive) == b'{"deadline":101.234567}\n'
    bind = known.diff(100.0, dict.fromkeys([*addresses, V4]), False, 0x7587869)
    assert bind == {"add": [["eth0", "198.51.100.200/32"]]}
    unbind = known.diff(100.0, dict.fromkeys(addresses[1:]), False, 0x7587869)
    assert unbind == {"remove": [["eth0", "203.0.113.1/32"]]}
    assert known.diff(100.0, None, True, None) == {"lease": None, "hold": True}
    assert known.diff(100.0, dict.fromkeys(addresses), False, 0x7587869) == {}


def _model(f: Fence) -> tuple[object, ...]:
    return (f.deadline, f.hold, f.lease, sorted(map(str, f.addresses)))


POOL = many(12)
STATES = st.tuples(
    st.one_of(st.none(), st.floats(0, 1e6, allow_nan=False)),
    st.lists(st.sampled_from(POOL), unique=True, max_size=12),
    st.booleans(),
    st.one_of(st.none(), st.integers(1, 2**63 - 1)),
    st.booleans(),  # the fence died before this state: a new one starts from nothing
)


@settings(max_examples=150, deadline=None)
@given(st.lists(STATES, min_size=1, max_size=25))
def test_differences_leave_the_fence_knowing_exactly_the_agents_state(states):
    fence, known = Fence(), Known()
    for deadline, addresses, hold, lease, restarted in states:
        if restarted:
            fence, known = Fence(), Known()
        wanted = dict.fromkeys(addresses)
        message = known.diff(deadline, wanted, hold, lease)
        if message:
            assert fence.update(json.loads(encode(message))) is True
        known = Known(deadline, hold, lease, wanted)
        assert _model(fence) == (deadline, hold, lease, sorted(map(str, addresses)))


# ---------------------------------------------------------- the client and its process


COPY = """
import os, sys
out = open(sys.argv[1], "ab")
while chunk := os.read(0, 65536):
    out.write(chunk)
    out.flush()
"""
# A fence whose first incarnation is alive but has closed its end of the pipe (the marker
# file says it has).
BROKEN_ONCE = """
import os, sys, time
if not os.path.exists(sys.argv[2]):
    os.close(0)
    open(sys.argv[2], "w").close()
    time.sleep(30)
out = open(sys.argv[1], "ab")
while chunk := os.read(0, 65536):
    out.write(chunk)
    out.flush()
"""


def _lines(path: Path, count: int, timeout: float = 10.0) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text() if path.exists() else ""
        lines = [json.loads(line) for line in text.splitlines()]
        if len(lines) >= count:
            return lines
        time.sleep(0.02)
    raise AssertionError(f"{path} has {text!r}, not {count} lines")


SETUP: dict[str, object] = {
    "setup": {"cluster": "t", "endpoints": ["http://127.0.0.1:1"], "timeout": 0.2}
}


def copying(out: Path, setup: dict[str, object] | None = SETUP) -> FenceClient:
    """A started client whose "fence" appends all it reads to ``out``."""
    client = FenceClient(setup, command=[sys.executable, "-c", COPY, str(out)])
    client.start()
    return client


def kill(client: FenceClient) -> int:
    """SIGKILL the client's fence and reap it; its pid."""
    proc = client._proc
    assert proc is not None
    proc.kill()
    proc.wait(timeout=10)
    return proc.pid


def test_client_sends_the_setup_then_differences(tmp_path: Path):
    out = tmp_path / "got"
    client = copying(out)
    try:
        client.tell(50.0, [V4], lease=9)
        client.tell(51.0, [V4], lease=9)  # a keepalive
        client.tell(51.0, [V4], lease=9)  # nothing new: nothing sent
        client.tell(51.0, [V4, V6], lease=9)  # a bind
        lines = _lines(out, 4)
        assert lines == [
            SETUP,
            {"deadline": 50.0, "lease": 9, "add": [WIRE[0]]},
            {"deadline": 51.0},
            {"add": [WIRE[1]]},
        ]
    finally:
        client.stop()


def test_update_sends_only_the_change_and_a_new_fence_everything(tmp_path: Path):
    """What the agent calls per bind, unbind and keepalive: no whole-list comparison."""
    out = tmp_path / "got"
    client = copying(out)
    try:
        client.update(50.0, add=[V4], lease=9)  # a bind
        client.update(51.0, lease=9)  # a keepalive
        client.update(51.0, add=[V4], lease=9)  # already guarded: nothing sent
        client.update(51.0, add=[V6], remove=[V4], lease=9)
        assert _lines(out, 4) == [
            SETUP,
            {"deadline": 50.0, "lease": 9, "add": [WIRE[0]]},
            {"deadline": 51.0},
            {"remove": [WIRE[0]], "add": [WIRE[1]]},
        ]
        kill(client)
        out.unlink()
        client.update(52.0, lease=9)  # the new fence learns the whole state
        assert _lines(out, 2) == [SETUP, {"deadline": 52.0, "lease": 9, "add": [WIRE[1]]}]
    finally:
        client.stop()


def test_a_dead_fence_is_replaced_even_when_nothing_changed(tmp_path: Path, caplog):
    out = tmp_path / "got"
    client = copying(out)
    try:
        client.tell(50.0, [V4, V6], lease=9)
        _lines(out, 2)
        first = kill(client)
        out.unlink()
        client.tell(50.0, [V4, V6], lease=9)  # the same state: the new fence still learns it
        assert client.pid != first
        assert _lines(out, 2) == [SETUP, {"deadline": 50.0, "lease": 9, "add": WIRE}]
        assert "fence process is gone (exit status -9); starting a new one" in caplog.text
    finally:
        client.stop()


def test_a_failed_write_restarts_the_fence_and_sends_it_everything(tmp_path: Path, caplog):
    out, marker = tmp_path / "got", tmp_path / "broke"
    command = [sys.executable, "-c", BROKEN_ONCE, str(out), str(marker)]
    client = FenceClient(None, command=command)
    client.start()
    try:
        wait_until(marker.exists, 10, 0.01, what="the first fence to close its stdin")
        broken = client.pid
        client.tell(50.0, [V4], lease=9)  # alive, but the write fails: EPIPE
        assert client.pid != broken
        assert _lines(out, 1) == [{"deadline": 50.0, "lease": 9, "add": [WIRE[0]]}]
        assert "cannot reach the fence process (Broken pipe)" in caplog.text
    finally:
        client.stop()


def test_a_fence_that_cannot_be_restarted_is_logged_not_raised(tmp_path: Path, caplog):
    client = copying(tmp_path / "got", None)
    try:
        client._command = [str(tmp_path / "no-such-program")]
        kill(client)
        client.tell(50.0, [V4], lease=9)  # must not raise
        assert "cannot start a new fence process: No such file or directory" in caplog.text
    finally:
        client.stop()


def test_a_stuck_fence_costs_a_bounded_wait_and_is_replaced(tmp_path: Path, caplog):
    stuck = [sys.executable, "-c", "import time; time.sleep(30)"]
    client = FenceClient(None, command=stuck, write_timeout=0.1)
    client.start()
    first = client.pid
    try:
        started = time.monotonic()
        client.tell(50.0, many(40000))  # more than the pipe holds
        assert time.monotonic() - started < 5
        assert client.pid != first
        assert "it read nothing for 0.1s" in caplog.text
    finally:
        client.stop()


class CountedInterface(IPv4Interface):
    """An address that counts how often it is hashed: each comparison of lists hashes it."""

    hashed = 0

    def __hash__(self) -> int:
        CountedInterface.hashed += 1
        return super().__hash__()


def test_the_same_tuple_again_is_not_compared(tmp_path: Path):
    out = tmp_path / "got"
    client = copying(out, None)
    try:
        held = tuple(("eth0", CountedInterface(f"203.0.113.{i}/32")) for i in range(1, 11))
        client.tell(50.0, held)
        before = CountedInterface.hashed
        client.tell(51.0, held)
        assert CountedInterface.hashed == before
        lines = _lines(out, 2)
        assert lines[1] == {"deadline": 51.0}
        assert client._known.addresses == dict.fromkeys(held)
    finally:
        client.stop()


# ------------------------------------------------------------------- the fence process


def test_the_fence_process_is_light_and_exits_cleanly_when_its_agent_dies():
    """Runs the real program without root: an interface that does not exist has nothing to
    remove, and an etcd that refuses connections is one warning, not a traceback."""
    heavy = ("grpc", "pyetcd", "google.protobuf", "pyroute2", "yaml", "tenacity", "ssl")
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, haagent.fence.program\n"
            f"print([m for m in {heavy!r} + ('haagent.store', 'haagent.net', 'haagent.config')"
            " if m in sys.modules])",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert probe.stdout.strip() == "[]", probe

    absent = many(200, ("hxnone0", "hxnone1"))  # interfaces of no namespace
    state = Known().diff(time.monotonic() + 60, dict.fromkeys(absent), False, 0x1234)
    with subprocess.Popen(
        [sys.executable, "-m", "haagent.fence"],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        try:
            # Then end-of-file, as when the agent dies.
            _, err = proc.communicate(encode(SETUP) + encode(state) + b"[1]\n", timeout=30)
        finally:
            proc.kill()  # a no-op once it exited; a fence that hangs is not left behind
    text = err.decode()
    assert proc.returncode == 0, text
    assert "Traceback" not in text
    assert "fence ignored a malformed message (3 bytes)" in text
    assert "fence could not reach etcd to revoke lease 1234 (" in text
    assert "fence removed" not in text


# ------------------------------------------------------------------- settings (setup.py)


def test_etcd_settings_survive_the_pipe():
    etcd = EtcdConfig(
        endpoints=("https://198.51.100.2:2379", "https://[2001:db8::2]:2379"),
        tls=TLSConfig(ca=Path("/etc/haagent/ca.pem"), cert=Path("/c.pem"), key=None),
        username="haagent",
        password="s3cret",
        timeout=0.5,
        retry_interval=2.0,
    )
    setup = json.loads(json.dumps(setup_message("db", etcd)))["setup"]
    settings = EtcdSettings.from_setup(setup)
    assert settings.endpoints == (
        Endpoint("198.51.100.2", 2379, True),
        Endpoint("2001:db8::2", 2379, True),
    )
    assert str(settings.endpoints[1]) == "https://[2001:db8::2]:2379"
    assert (settings.ca, settings.cert, settings.key) == ("/etc/haagent/ca.pem", "/c.pem", None)
    assert (settings.username, settings.password, settings.timeout) == ("haagent", "s3cret", 0.5)
    assert "s3cret" not in repr(settings)


@pytest.mark.parametrize(
    "setup",
    [
        {"endpoints": []},
        {"endpoints": ["127.0.0.1:2379"]},
        {"endpoints": ["ftp://127.0.0.1:2379"]},
        {"endpoints": ["http://127.0.0.1:notaport"]},
        {"endpoints": ["http://127.0.0.1:2379"], "timeout": 0},
    ],
)
def test_unusable_settings_say_why(setup):
    with pytest.raises(ValueError, match=r"endpoint|timeout"):
        EtcdSettings.from_setup(setup)


# ------------------------------------------------------------------- gRPC over h2 (rpc.py)


def test_grpc_answers_become_messages_or_one_line_errors():
    ok = {":status": "200", "grpc-status": "0"}
    assert rpc._grpc_result(ok, b"\x00\x00\x00\x00\x02\x0a\x00") == b"\x0a\x00"
    gone = {":status": "200", "grpc-status": "5", "grpc-message": "etcdserver:%20lease%20gone"}
    with pytest.raises(rpc.CallError, match=r"^NOT_FOUND: etcdserver: lease gone$") as caught:
        rpc._grpc_result(gone, b"")
    assert caught.value.status == rpc.NOT_FOUND
    with pytest.raises(rpc.ConnectionLost, match="HTTP status 400"):
        rpc._grpc_result({":status": "400"}, b"")
    with pytest.raises(rpc.ConnectionLost, match="no gRPC status"):
        rpc._grpc_result({":status": "200"}, b"")


def test_protobuf_fields_round_trip_lease_ids_and_tokens():
    lease = 0x7FFF_FFFF_FFFF_FFFF
    message = rpc.pb_field(1, lease) + rpc.pb_field(2, b"tok.42") + rpc.pb_field(3, 0)
    assert rpc.pb_fields(message) == {1: lease, 2: b"tok.42", 3: 0}
    assert rpc.pb_field(1, 0x1234) == b"\x08\xb4\x24"
    with pytest.raises(ValueError, match="truncated"):
        rpc.pb_fields(rpc.pb_field(2, b"tok.42")[:-1])


# One scripted answer: (grpc-status, grpc-message, message), "reset", "goaway", "close",
# "silent" (no answer) or "ping" (a PING first, then the next answer).
Answer = tuple[int, str, bytes] | str
REVOKE = "/etcdserverpb.Lease/LeaseRevoke"


class FakeEtcd:
    """A gRPC server on h2's server side, on loopback, that answers calls from a script and
    records them as (path, request message, headers)."""

    def __init__(self, answers: list[Answer]) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[str, bytes, dict[str, str]]] = []
        self.connections = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._socks: list[socket.socket] = []
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def close(self) -> None:
        """Stop listening, end every connection and join every thread, so that nothing
        outlives the test (closing a socket wakes neither accept() nor recv() elsewhere)."""
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self._threads[0].join(5)  # the accepting one
        for sock in self._socks:  # complete: nothing is accepted any more
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(5)
            assert not thread.is_alive(), "a thread of the fake etcd did not end"
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            self._socks.append(sock)
            self._threads.append(threading.Thread(target=self._serve, args=(sock,), daemon=True))
            self._threads[-1].start()

    def _serve(self, sock: socket.socket) -> None:
        with sock, contextlib.suppress(OSError):  # OSError: the client or close() ended it
            self._converse(sock)

    def _converse(self, sock: socket.socket) -> None:
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        )
        conn.initiate_connection()
        sock.sendall(conn.data_to_send())
        requests: dict[int, tuple[dict[str, str], bytearray]] = {}
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return
            for event in conn.receive_data(chunk):
                if isinstance(event, h2.events.RequestReceived):
                    fields = {str(n): str(v) for n, v in event.headers or ()}
                    requests[event.stream_id] = (fields, bytearray())
                elif isinstance(event, h2.events.DataReceived):
                    requests[event.stream_id][1].extend(event.data)
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    headers, body = requests.pop(event.stream_id)
                    self.calls.append((headers[":path"], bytes(body[5:]), headers))
                    if self._answer(conn, event.stream_id) == "close":
                        sock.sendall(conn.data_to_send())
                        return
            sock.sendall(conn.data_to_send())

    def _answer(self, conn: h2.connection.H2Connection, stream: int) -> str:
        answer = self.answers.pop(0) if self.answers else (0, "", b"")
        if answer == "ping":
            conn.ping(b"12345678")
            answer = self.answers.pop(0) if self.answers else (0, "", b"")
        if answer == "reset":
            conn.reset_stream(stream, error_code=2)
        elif answer == "goaway":
            conn.close_connection(error_code=0, additional_data=b"shutting down")
        elif isinstance(answer, tuple):
            status, message, body = answer
            conn.send_headers(stream, [(":status", "200"), ("content-type", "application/grpc")])
            if status == 0:
                conn.send_data(stream, b"\x00" + len(body).to_bytes(4, "big") + body)
            trailers = [("grpc-status", str(status))]
            conn.send_headers(stream, trailers + [("grpc-message", message)] * bool(message), True)
        return str(answer)


@pytest.fixture
def fake_etcd():
    servers: list[FakeEtcd] = []

    def start(*answers: Answer) -> FakeEtcd:
        servers.append(FakeEtcd(list(answers)))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def test_a_call_returns_the_answer_and_errors_keep_the_connection(fake_etcd):
    etcd = fake_etcd((0, "", b"\x0a\x00"), "ping", (5, "etcdserver: lease%20gone", b""))
    conn = rpc.Connection("127.0.0.1", etcd.port, 2.0)
    try:
        answer = conn.call(REVOKE, rpc.pb_field(1, 7), [], 1.0)
        assert answer == b"\x0a\x00"
        with pytest.raises(rpc.CallError, match=r"^NOT_FOUND: etcdserver: lease gone$"):
            conn.call(REVOKE, rpc.pb_field(1, 8), [("token", "t.1")], 1.0)
        assert conn.closed is None
    finally:
        conn.close()
    (path, message, headers), second = etcd.calls
    assert (path, rpc.pb_fields(message)) == (REVOKE, {1: 7})
    assert headers["content-type"] == "application/grpc" and headers["te"] == "trailers"
    assert headers[":authority"] == f"127.0.0.1:{etcd.port}" and "token" not in headers
    assert second[2]["token"] == "t.1"


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        ("reset", r"etcd reset the call \(HTTP/2 error code 2\)"),
        ("goaway", r"GOAWAY, error code 0, shutting down"),
        ("close", "etcd closed the connection"),
        ("silent", "etcd did not answer in time"),
    ],
)
def test_a_call_without_an_answer_loses_the_connection(fake_etcd, answer, why):
    etcd = fake_etcd(answer)
    conn = rpc.Connection("127.0.0.1", etcd.port, 2.0)
    started = time.monotonic()
    with pytest.raises(rpc.ConnectionLost, match=why):
        conn.call(REVOKE, rpc.pb_field(1, 7), [], 0.3)
    assert time.monotonic() - started < 2
    assert conn.closed is not None
    with pytest.raises(rpc.ConnectionLost):
        conn.call(REVOKE, rpc.pb_field(1, 7), [], 0.3)


def test_connecting_to_no_http2_server_times_out():
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, says nothing
        started = time.monotonic()
        with pytest.raises(rpc.ConnectionLost, match="in time"):
            rpc.Connection("127.0.0.1", silent.getsockname()[1], 0.3)
        assert time.monotonic() - started < 2


def _revoker(etcd: FakeEtcd, **more) -> LeaseRevoker:
    setup = {"endpoints": [f"http://127.0.0.1:{etcd.port}"], "timeout": 0.5, **more}
    return LeaseRevoker(EtcdSettings.from_setup(setup))


def test_the_revoker_revokes_reports_a_gone_lease_and_reconnects(fake_etcd, caplog):
    caplog.set_level("INFO", logger="haagent.fence")
    etcd = fake_etcd("close", (0, "", b""), (5, "etcdserver: requested lease not found", b""))
    revoker = _revoker(etcd)
    try:
        assert revoker.revoke(0x1234, "its agent died") is True  # after a reconnect
        assert revoker.revoke(0x1234, "again") is False
    finally:
        revoker.close()
    assert etcd.connections == 2
    assert [rpc.pb_fields(m) for _, m, _ in etcd.calls] == [{1: 0x1234}] * 3
    assert "fence revoked lease 1234 (its agent died): the other hosts take over now" in caplog.text
    assert "lease 1234 was already gone" in caplog.text


def test_a_password_revoker_logs_in_again_when_its_token_expired(fake_etcd, caplog):
    caplog.set_level("INFO", logger="haagent.fence")
    login = (0, "", rpc.pb_field(1, b"header") + rpc.pb_field(2, b"tok.1"))
    expired = (16, "etcdserver: invalid auth token", b"")
    relogin = (0, "", rpc.pb_field(2, b"tok.2"))
    etcd = fake_etcd(login, expired, relogin, (0, "", b""))
    revoker = _revoker(etcd, username="haagent", password="s3cret")
    try:
        assert revoker.revoke(0x99, "its agent died") is True
    finally:
        revoker.close()
    paths = [(path, headers.get("token")) for path, _, headers in etcd.calls]
    assert paths == [
        ("/etcdserverpb.Auth/Authenticate", None),
        ("/etcdserverpb.Lease/LeaseRevoke", "tok.1"),
        ("/etcdserverpb.Auth/Authenticate", None),
        ("/etcdserverpb.Lease/LeaseRevoke", "tok.2"),
    ]
    assert rpc.pb_fields(etcd.calls[0][1]) == {1: b"haagent", 2: b"s3cret"}
    assert "fence logs in to etcd again: UNAUTHENTICATED: etcdserver: invalid auth token" in (
        caplog.text
    )
    assert "fence revoked lease 99 (its agent died)" in caplog.text


def test_a_wrong_password_stops_the_revoker_trying(fake_etcd, caplog):
    etcd = fake_etcd((3, "etcdserver: authentication failed, invalid user ID or password", b""))
    revoker = _revoker(etcd, username="haagent", password="wrong")
    try:
        assert revoker.revoke(0x99, "its agent died") is False
    finally:
        revoker.close()
    assert len(etcd.calls) == 1
    assert "authentication failed: wrong etcd.username or password" in caplog.text
    assert "fence could not reach etcd to revoke lease 99" in caplog.text


# ------------------------------------------------------------------------------ netlink


def test_netlink_messages_and_address_entries_parse():
    packed = bytes([198, 51, 100, 200])
    entry = (
        netlink._IFADDRMSG.pack(2, 24, 0, 0, 7)
        + netlink._attr(netlink.IFA_ADDRESS, bytes([198, 51, 100, 255]))
        + netlink._attr(netlink.IFA_LOCAL, packed)
    )
    header = netlink._HEADER.pack(16 + len(entry), netlink.RTM_NEWADDR, 2, 5, 0)
    done = netlink._HEADER.pack(20, netlink.NLMSG_DONE, 2, 5, 0) + b"\0" * 4
    messages = list(netlink._messages(header + entry + done + b"\x01\x02"))
    assert [(kind, seq) for kind, seq, _ in messages] == [(netlink.RTM_NEWADDR, 5), (3, 5)]
    assert netlink._entry(messages[0][2]) == netlink._Entry(7, 24, packed, 0)
    six = netlink._IFADDRMSG.pack(10, 64, 0, 0, 3) + netlink._attr(netlink.IFA_ADDRESS, b"\1" * 16)
    assert netlink._entry(six) == netlink._Entry(3, 64, b"\1" * 16, 0)
    marked = six + netlink._attr(IFA_PROTO, bytes([PROTO]))
    assert netlink._entry(marked) == netlink._Entry(3, 64, b"\1" * 16, PROTO)


def test_removing_from_an_interface_that_does_not_exist_is_nothing_to_do():
    with netlink.AddressRemover() as net:
        address = ("hxnone0", ip_interface("198.51.100.200/32"))
        assert net.remove([address]) == [netlink.Outcome(address, False)]
