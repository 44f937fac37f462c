import json

import pytest

from haagent.cluster.schema import (
    HEALTHY,
    UNREADABLE,
    Health,
    HealthState,
    Holder,
    Keys,
    MemberRecord,
    ParsedKey,
    Request,
    SchemaError,
)

K = Keys("db")


def test_key_layout():
    assert K.prefix == "/haagent/v1/db/"
    assert K.member("pg1") == "/haagent/v1/db/members/pg1"
    assert K.holder("vip1") == "/haagent/v1/db/vips/vip1/holder"
    assert K.request("vip1") == "/haagent/v1/db/vips/vip1/request"


@pytest.mark.parametrize(
    "key,parsed",
    [
        (b"/haagent/v1/db/members/pg1", ParsedKey("member", "pg1")),
        ("/haagent/v1/db/vips/v/holder", ParsedKey("holder", "v")),
        ("/haagent/v1/db/vips/v/request", ParsedKey("request", "v")),
        ("/haagent/v1/db/vips/v/other", None),
        ("/haagent/v1/db/members/", None),
        ("/haagent/v1/dbx/members/a", None),
        ("/haagent/v1/db/foreign", None),
        (b"/haagent/v1/db/\xff/x", None),
    ],
)
def test_parse(key, parsed):
    assert K.parse(key) == parsed


def test_holder_round_trip_and_schema_field():
    rec = Holder(node="pg1", lease=0x1F, since=1700000000.123, epoch=17, reason="key absent")
    raw = rec.to_json()
    assert b'"schema":"haagent.holder/v1"' in raw and b'"lease":"1f"' in raw
    assert Holder.from_json(raw) == rec


def test_holder_lease_and_revision_come_from_the_key_not_the_json():
    raw = Holder(node="pg1", lease=0x1F, epoch=3).to_json()
    h = Holder.from_kv(raw, lease=0x2A, create_revision=9)
    assert (h.node, h.lease, h.create_revision, h.readable) == ("pg1", 0x2A, 9, True)


def test_unreadable_holder_keeps_the_key_metadata_and_says_why():
    h = Holder.from_kv(b"garbage", lease=7, create_revision=12)
    assert h.node == UNREADABLE and not h.readable
    assert (h.lease, h.create_revision) == (7, 12)
    assert h.problem is not None and "not JSON" in h.problem


def test_member_round_trip():
    rec = MemberRecord(
        node="pg1",
        address="198.51.100.11",
        version="0.1.0",
        started=1.5,
        config_digest="abc",
        lease=255,
        vips=("db",),
        health={"db": HEALTHY, "db6": Health(HealthState.UNHEALTHY, "check pg failed")},
    )
    raw = rec.to_json()
    assert b'"health":{"db":"healthy","db6":"unhealthy: check pg failed"}' in raw
    assert MemberRecord.from_json(raw) == rec


@pytest.mark.parametrize(
    "text,state,reason",
    [
        ("healthy", HealthState.HEALTHY, ""),
        ("unknown", HealthState.UNKNOWN, ""),
        ("unhealthy: check pg failed: refused", HealthState.UNHEALTHY, "check pg failed: refused"),
        ("unhealthy", HealthState.UNHEALTHY, ""),
        ("ok", HealthState.UNKNOWN, "unrecognised health 'ok'"),
    ],
)
def test_health_text_is_parsed_into_a_typed_value(text, state, reason):
    h = Health.from_text(text)
    assert (h.state, h.reason) == (state, reason)
    if state is not HealthState.UNKNOWN or text == "unknown":
        assert h.to_text() == text


def test_request_round_trip_and_refusals():
    r = Request(action="move", to="h2", by="ops@bastion", at=12.5)
    assert Request.from_json(r.to_json(), revision=4) == Request(
        "move", "h2", "ops@bastion", 12.5, 4
    )
    with pytest.raises(SchemaError, match="unknown action"):
        Request.from_json(b'{"schema":"haagent.request/v1","action":"explode"}')
    with pytest.raises(SchemaError, match="'to'"):
        Request.from_json(b'{"schema":"haagent.request/v1","action":"move","to":5}')


@pytest.mark.parametrize(
    "raw,msg",
    [
        (b"garbage", "not JSON"),
        (b"[1]", "JSON object"),
        (b'{"schema":"haagent.holder/v9"}', "schema"),
        (b'{"schema":"haagent.holder/v1","node":"a"}', "missing"),
        (
            b'{"schema":"haagent.holder/v1","node":"a","since":1,"epoch":true,"reason":"","lease":"1"}',
            "epoch",
        ),
        (
            b'{"schema":"haagent.holder/v1","node":"a","since":1,"epoch":1,"reason":"","lease":"zz"}',
            "hexadecimal",
        ),
    ],
)
def test_malformed_holder_is_refused_with_reason(raw, msg):
    with pytest.raises(SchemaError, match=msg):
        Holder.from_json(raw)


def test_member_with_wrong_schema_is_refused():
    with pytest.raises(SchemaError):
        MemberRecord.from_json(b'{"schema":"haagent.holder/v1"}')


@pytest.mark.parametrize(
    "key",
    [
        "/haagent/v1/db/members/h1\nFORGED LINE",
        "/haagent/v1/db/vips/UPPER/holder",
        "/haagent/v1/db/vips/a\x1b[31m/holder",
        "/haagent/v1/db/members/" + "x" * 64,
        "/haagent/v1/db/vips/v\n/holder",  # a trailing newline, which "$" would let through
    ],
)
def test_keys_with_names_haagent_never_writes_are_not_ours(key):
    assert K.parse(key) is None


def test_records_naming_an_impossible_node_are_refused():
    raw = Holder(node="h1", lease=1).to_json().replace(b'"h1"', b'"h1\\nINFO forged"')
    with pytest.raises(SchemaError, match="not a valid node name"):
        Holder.from_json(raw)


@pytest.mark.parametrize(
    "schema,newer",
    [
        ("haagent.holder/v2", True),
        ("haagent.holder/v10", True),
        ("haagent.holder/v0", False),
        ("haagent.holder/vx", False),
        ("haagent.member/v2", False),
        (7, False),
    ],
)
def test_a_newer_schema_of_the_same_record_is_told_apart_from_garbage(schema, newer):
    raw = json.dumps({"schema": schema}).encode()
    with pytest.raises(SchemaError) as err:
        Holder.from_json(raw)
    assert err.value.newer is newer
    assert Holder.from_kv(raw, 5, 1).newer is newer


def test_a_name_with_a_trailing_newline_is_not_a_name():
    from haagent.cluster.schema import valid_name

    assert valid_name("db") and not valid_name("db\n") and not valid_name("db\n\n")
