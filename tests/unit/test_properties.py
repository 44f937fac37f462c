"""Properties over hostile input: whatever a file or an etcd value holds, the parser and the
decoders answer with their own error type, never a traceback, and what they accept is safe to
use later.

Bounded to a few seconds in all: modest ``max_examples``, no deadline (a slow CI machine is not
a failure). The strategies aim at what broke before: integers beyond any float, NaN and
infinities, strings too long or not text (NUL, lone surrogates), deep nesting, YAML that Python
cannot build, files that never end.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from haagent.cluster.schema import (
    HOLDER_SCHEMA,
    MEMBER_SCHEMA,
    REQUEST_SCHEMA,
    Holder,
    Keys,
    MemberRecord,
    ParsedKey,
    Request,
    SchemaError,
    valid_name,
)
from haagent.config import (
    NOTIFY_KINDS,
    Config,
    ConfigError,
    ConfigErrors,
    check_host,
    describe,
    load_config,
    parse_config,
)
from haagent.decide import purge, startup
from haagent.decide.lease import LeaseClock
from haagent.decide.reload import diff_vips

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------- hostile values

HUGE_INTS = st.sampled_from([2**53 + 1, 2**63, 2**64, 10**308, 10**309, 10**400, 10**4299])
NUMBERS = st.one_of(
    st.integers(min_value=-(10**6), max_value=10**6),
    HUGE_INTS,
    HUGE_INTS.map(lambda v: -v),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1e-9, 1e-300, 5e-324, 1e308, 1.7976931348623157e308]),
)
# Lone surrogates come out of YAML's "\ud800"; hypothesis leaves them out unless asked.
NOT_TEXT = st.characters(categories=["Cs"]) | st.sampled_from(["\0", "\n", "\x7f", " "])
STRINGS = st.one_of(
    st.text(max_size=12),
    st.text(st.characters(categories=["Cs", "Cc", "L", "N", "P", "Z"]), max_size=12),
    st.tuples(st.text(max_size=4), NOT_TEXT, st.text(max_size=4)).map("".join),
    st.sampled_from(
        [
            "",
            "  ",
            "5s",
            "eth0:1",
            "/dev/zero",
            "http://[::1]:99999999999999999999/",
            "https://h:2379",
            "198.51.100.300",
            "a" * 256,
            "b" * 5000,
            "1" * 4400,
            "$HAAGENT_VIP",
        ]
    ),
    st.integers(min_value=1, max_value=70_000).map(lambda n: "x" * n),
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, STRINGS)
KNOWN_KEYS = st.sampled_from(
    [
        "cluster", "node", "log_level", "etcd", "lease", "announce", "checks", "vips",
        "endpoints", "timeout", "retry_interval", "tls", "ca", "cert", "key", "username",
        "password", "password_file", "ttl", "margin", "keepalive_interval",
        "when_etcd_unreachable", "count", "interval", "refresh", "arp_reply", "name",
        "address", "interface", "hold_down", "when_all_unhealthy", "notify", "vmac", "vrid",
        "bind", "type", "rise", "fall", "host", "port", "url", "method", "expect_status",
        "expect_body", "tls_verify", "command", "per_vip", "on_acquire", "on_release",
        "on_fault",
    ]
)  # fmt: skip
KEYS = st.one_of(KNOWN_KEYS, st.none(), st.booleans(), NUMBERS, STRINGS)


def nested(depth: int, leaf: object) -> object:
    """``depth`` levels of alternating lists and mappings around ``leaf``."""
    for i in range(depth):
        leaf = [leaf] if i % 2 else {"vips": leaf}
    return leaf


TREES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=4),
    max_leaves=16,
) | st.builds(nested, st.integers(min_value=1, max_value=3000), SCALARS)


# --------------------------------------------------------------------------- a valid base


BASE: dict[str, Any] = {
    "cluster": "db",
    "node": "pg1",
    "log_level": "info",
    "etcd": {
        "endpoints": ["https://198.51.100.2:2379", "https://[2001:db8::2]:2379"],
        "timeout": 0.5,
        "retry_interval": 1.0,
        "tls": {"ca": "/etc/haagent/ca.pem"},
        "username": "haagent",
        "password": "secret",
    },
    "lease": {"ttl": 5, "margin": 1.5, "keepalive_interval": 1.0, "when_etcd_unreachable": "keep"},
    "announce": {"count": 3, "interval": 0.2, "refresh": 0, "arp_reply": False},
    "checks": {
        "pg": {"type": "tcp", "host": "127.0.0.1", "port": 5432, "interval": 2, "timeout": 1},
        "web": {
            "type": "http",
            "url": "https://127.0.0.1:8443/health",
            "method": "GET",
            "expect_status": [200, 204],
            "expect_body": "ok",
            "tls_verify": True,
            "rise": 2,
            "fall": 3,
        },
        "script": {"type": "exec", "command": ["/bin/true", "--quick"], "per_vip": True},
        "link": {"type": "interface", "interface": "eth0"},
    },
    "vips": [
        {
            "name": "db",
            "address": "198.51.100.200",
            "interface": "eth0",
            "checks": ["pg", "web", "script", "link"],
            "hold_down": 5,
            "when_all_unhealthy": "keep",
            "announce": {"count": 5, "refresh": 30},
            "notify": {"on_acquire": ["/bin/true", "up"], "on_release": "true", "timeout": 10},
        },
        {
            "name": "db6",
            "address": "2001:db8:100::200/64",
            "interface": "eth0",
            "vmac": True,
            "vrid": 7,
        },
    ],
}


def node_paths(obj: object, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every node of the tree (the root excepted), as the keys and indexes leading to it."""
    items = (
        obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    )
    for k, v in items:
        yield (*prefix, k)
        yield from node_paths(v, (*prefix, k))


PATHS = list(node_paths(BASE))
DELETE = object()


def mutated(changes: list[tuple[tuple[Any, ...], object]]) -> dict[str, Any]:
    """BASE with the node at each path replaced (or deleted); paths that vanished are skipped."""
    d = copy.deepcopy(BASE)
    for path, value in changes:
        parent: Any = d
        try:
            for k in path[:-1]:
                parent = parent[k]
            if value is DELETE:
                del parent[path[-1]]
            else:
                parent[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue
    return d


MUTATIONS = st.lists(
    st.tuples(st.sampled_from(PATHS), TREES | st.just(DELETE)), min_size=1, max_size=3
)


def test_the_base_is_valid_so_that_mutations_test_one_thing_at_a_time():
    cfg = parse_config(BASE)
    assert_safe_to_run(cfg)


# --------------------------------------------------------------------------- what must hold


def assert_one_line_errors(exc: ConfigErrors) -> None:
    assert exc.errors
    for err in exc.errors:
        assert isinstance(err, ConfigError)
        text = str(err)
        assert "\n" not in text and "\r" not in text, text
        assert len(text) < 2000, text[:200]
        text.encode("utf-8")  # printable to any UTF-8 terminal


def assert_safe_to_run(cfg: Config) -> None:
    """What the agent computes from an accepted config cannot overflow, hang or crash."""
    lease = cfg.lease
    assert 2 <= lease.ttl <= 3600
    assert 0.1 <= lease.margin < lease.ttl / 2 and cfg.etcd.timeout < lease.margin
    assert lease.interval >= 0.1
    assert lease.interval + cfg.etcd.timeout < lease.ttl - lease.margin
    durations = [cfg.etcd.timeout, cfg.etcd.retry_interval, lease.margin, lease.interval]
    durations.append(float(lease.ttl))
    for vip in [*cfg.vips]:
        a = vip.announce
        assert 1 <= a.count <= 100 and 0.01 <= a.interval <= 10
        assert a.refresh == 0 or 1 <= a.refresh <= 86400
        assert 0 <= vip.hold_down <= 3600 and 0.1 <= vip.notify.timeout <= 3600
        assert not vip.vmac or 1 <= vip.vrid <= 255
        durations += [a.interval, a.refresh, a.count * a.interval, vip.hold_down]
        durations.append(vip.notify.timeout)
        for kind in NOTIFY_KINDS:
            command = vip.notify.command(kind)
            for arg in command or ():
                os.fsencode(arg)  # what subprocess does: no NUL, no surrogate
                assert "\0" not in arg
    for check in cfg.checks.values():
        assert 0.1 <= check.interval <= 3600 and 0.01 <= check.timeout <= check.interval
        assert 1 <= check.rise <= 100 and 1 <= check.fall <= 100
        durations += [check.interval, check.timeout, check.interval * check.fall]
    now = time.monotonic()
    for d in durations:
        assert math.isfinite(d) and 0 <= d < threading.TIMEOUT_MAX
        assert now + d > now or d == 0
    clock = LeaseClock(ttl=lease.ttl, margin=lease.margin)
    clock.acknowledged(1, now, lease.ttl)
    lifetime = clock.address_lifetime(now)
    assert lifetime is not None and 1 <= lifetime + lease.ttl < 2**32 - 1  # kernel valid_lft
    assert len(cfg.vips) <= 4096 and len(cfg.checks) <= 1024
    describe(cfg).encode("utf-8")
    assert all(isinstance(p, ConfigError) for p in check_host(cfg))
    diff_vips(parse_config(BASE).vips, cfg.vips)


def parse_or_errors(data: object) -> Config | None:
    try:
        cfg = parse_config(data, "hostile.yaml")
    except ConfigErrors as exc:
        assert_one_line_errors(exc)
        return None
    assert_safe_to_run(cfg)
    return cfg


# --------------------------------------------------------------------------- config trees


@FAST
@given(tree=TREES | st.dictionaries(KNOWN_KEYS, TREES, max_size=6))
def test_parse_config_raises_only_config_errors_on_any_tree(tree: object) -> None:
    parse_or_errors(tree)


@FAST
@given(changes=MUTATIONS)
def test_a_valid_config_with_hostile_values_is_refused_or_safe(
    changes: list[tuple[tuple[Any, ...], object]],
) -> None:
    parse_or_errors(mutated(changes))


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(min_value=0, max_value=9000),
    item=st.sampled_from([{"name": "v"}, "x", None, 10**400]),
)
def test_long_lists_are_refused_by_their_length_not_item_by_item(n: int, item: object) -> None:
    d = copy.deepcopy(BASE)
    d["vips"] = [item] * n  # the same object n times, as YAML aliases give
    d["etcd"]["endpoints"] = [item] * (n % 40)
    d["checks"]["script"]["command"] = ["x"] * (n % 400 + 1)
    started = time.monotonic()
    parse_or_errors(d)
    assert time.monotonic() - started < 2


# --------------------------------------------------------------------------- files


BASE_TEXT = yaml.safe_dump(BASE, sort_keys=False)
YAML_BITS = st.sampled_from(
    [
        "[", "]", "{", "}", ": ", ", ", "- ", "? ", "&a ", "*a", "<<: *a", "!!binary ", "!!set ",
        "!!omap ", "!!python/object:os.system ", "!!int", "!!float", "!!bool", "!!timestamp",
        "!!null", "!!str", "!!seq", "!!map", "!!pairs", "2001-13-45",
        "2001-02-29", ".nan", ".inf", "-.inf", "0x" + "f" * 40, "0b101", "0o17", "1:2:3",
        "1_000", "1" * 5000, "1.0e+400", "~", "--- ", "...", "%YAML 1.1\n", "%TAG ! tag:x,\n",
        "\ufeff", "\x00", "\x85", "\u2028", "\t", "\n", "\n  ", "'", '"', '"\\ud800"',
        '"\\x00"', "|\n", ">-\n", "#", "ttl: ", "vips: ", "lease: ", "\\",
    ]
)  # fmt: skip
YAML_TEXT = st.lists(YAML_BITS | st.text(max_size=6), max_size=40).map("".join)


@st.composite
def spliced(draw: st.DrawFn) -> bytes:
    """The valid file with a stretch of it replaced by junk."""
    n = len(BASE_TEXT)
    i = draw(st.integers(0, n))
    j = draw(st.integers(i, min(n, i + 80)))
    return (BASE_TEXT[:i] + draw(YAML_TEXT) + BASE_TEXT[j:]).encode("utf-8", "surrogatepass")


FILE_BYTES = st.one_of(
    st.binary(max_size=300),
    YAML_TEXT.map(lambda t: t.encode("utf-8", "surrogatepass")),
    spliced(),
    st.integers(1, 3000).map(lambda n: b"x: " + b"[" * n + b"\n"),
    st.integers(1, 3000).map(lambda n: b"".join(b"  " * i + b"a:\n" for i in range(n % 200))),
)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hostile")


@FAST
@given(data=FILE_BYTES)
def test_load_config_raises_only_config_errors_on_any_bytes(scratch: Path, data: bytes) -> None:
    path = scratch / "hostile.yaml"
    path.write_bytes(data)
    try:
        cfg = load_config(path)
    except ConfigErrors as exc:
        assert_one_line_errors(exc)
        assert all(e.file == str(path) for e in exc.errors)
    else:
        assert_safe_to_run(cfg)


# --------------------------------------------------------------------------- etcd records

JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**300, max_value=10**320),  # beyond a float's range
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.text(st.characters(categories=["Cs", "Cc", "L", "N"]), max_size=8),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=12,
)
# Version suffixes: digits of every script ("v²" once crashed _newer), and near misses.
SCHEMAS = st.one_of(
    st.sampled_from([HOLDER_SCHEMA, MEMBER_SCHEMA, REQUEST_SCHEMA]),
    st.tuples(
        st.sampled_from(["haagent.holder/v", "haagent.member/v", "haagent.request/v", "x/v"]),
        st.text(alphabet="0123456789x/v-", max_size=8)
        | st.text(st.characters(categories=["Nd", "No", "Nl"]), min_size=1, max_size=3),
    ).map("".join),
    JSON_SCALARS,
)
RECORDS: dict[str, dict[str, Any]] = {
    "holder": json.loads(Holder("pg1", 0x1F, since=1.5, epoch=7, reason="won").to_json()),
    "member": json.loads(
        MemberRecord("pg1", "198.51.100.11", "0.1.0", 1.0, "0123456789ab", 0x1F, ("db",)).to_json()
    ),
    "request": json.loads(Request("move", to="pg2", by="root@x", at=1.0).to_json()),
}


@st.composite
def records(draw: st.DrawFn) -> bytes:
    """A valid record of some kind with some fields replaced, removed or added."""
    record = dict(RECORDS[draw(st.sampled_from(sorted(RECORDS)))])
    for name in draw(st.lists(st.sampled_from([*sorted(record), "extra"]), max_size=4)):
        choice = draw(st.integers(0, 2))
        if choice == 0:
            record.pop(name, None)
        elif name == "schema":
            record[name] = draw(SCHEMAS)
        else:
            record[name] = draw(JSON_VALUES)
    text = json.dumps(record, ensure_ascii=draw(st.booleans()))
    return text.encode("utf-8", "surrogatepass")


RAW = st.one_of(
    st.binary(max_size=200),
    JSON_VALUES.map(lambda v: json.dumps(v).encode()),
    records(),
    st.sampled_from([b"", b"null", b"NaN", b"{", b'{"schema": "haagent.holder/v9999999"}']),
)


def decode_all(raw: bytes) -> None:
    for decode in (Holder.from_json, MemberRecord.from_json, Request.from_json):
        with contextlib.suppress(SchemaError):
            decode(raw)


@FAST
@given(raw=RAW, lease=st.integers(0, 2**64), rev=st.integers(0, 2**63), purged=st.none())
def test_records_decode_or_raise_schema_error_and_decisions_never_raise(
    raw: bytes, lease: int, rev: int, purged: None
) -> None:
    decode_all(raw)
    holder = Holder.from_kv(raw, lease, rev)  # never raises
    assert holder.readable or holder.node == "(unreadable)"
    assert holder.readable == (holder.problem is None)
    if holder.readable:
        assert valid_name(holder.node) and isinstance(holder.epoch, int)
        assert isinstance(holder.since, float) and isinstance(holder.reason, str)
    for revision in (purged, rev, rev + 1):
        d = purge.purge_holder(holder, revision)
        assert isinstance(d.yes, bool) and isinstance(d.reason, str)
    assert isinstance(startup.keep_bound_address(holder, "pg1", lease).reason, str)
    try:
        member = MemberRecord.from_json(raw)
    except SchemaError:
        member = None
    assert isinstance(startup.adopt_lease(lease, member).reason, str)


@FAST
@given(
    key=st.one_of(
        st.binary(max_size=80),
        st.tuples(st.sampled_from([b"", b"/haagent/v1/db/"]), st.binary(max_size=60)).map(b"".join),
        st.tuples(
            st.sampled_from(["/haagent/v1/db/members/", "/haagent/v1/db/vips/"]),
            st.text(st.characters(categories=["Cs", "Cc", "L", "N", "P"]), max_size=20),
            st.sampled_from(["", "/holder", "/request", "/x", "/holder/"]),
        ).map("".join),
    )
)
def test_key_parsing_never_raises(key: bytes | str) -> None:
    parsed = Keys("db").parse(key)
    assert parsed is None or (isinstance(parsed, ParsedKey) and valid_name(parsed.name))


# --------------------------------------------------------------------------- found by the above
# Regressions: both raised something other than SchemaError until fixed.


def test_deeply_nested_json_is_a_schema_error() -> None:
    holder = Holder.from_kv(b"[" * 100_000, 1, 1)
    assert not holder.readable


def test_a_huge_number_in_a_record_is_a_schema_error() -> None:
    record = dict(RECORDS["holder"], since=10**400)
    assert not Holder.from_kv(json.dumps(record).encode(), 1, 1).readable


def test_a_schema_version_with_a_non_ascii_digit_is_a_schema_error() -> None:
    record = dict(RECORDS["holder"], schema="haagent.holder/v\u00b2")
    holder = Holder.from_kv(json.dumps(record).encode(), 1, 1)
    assert not holder.readable and not holder.newer
