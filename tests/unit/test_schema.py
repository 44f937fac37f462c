import pytest

from haagent.schema import HolderRecord, Keys, MemberRecord, ParsedKey, SchemaError

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
    rec = HolderRecord(node="pg1", since=1700000000.123, epoch=17, reason="key absent", lease=0x1F)
    raw = rec.to_json()
    assert b'"schema":"haagent.holder/v1"' in raw and b'"lease":"1f"' in raw
    assert HolderRecord.from_json(raw) == rec


def test_member_round_trip():
    rec = MemberRecord(
        node="pg1",
        address="198.51.100.11",
        version="0.1.0",
        started=1.5,
        config_digest="abc",
        lease=255,
        vips=("db",),
        health={"db": "ok"},
    )
    assert MemberRecord.from_json(rec.to_json()) == rec


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
        HolderRecord.from_json(raw)


def test_member_with_wrong_schema_is_refused():
    with pytest.raises(SchemaError):
        MemberRecord.from_json(b'{"schema":"haagent.holder/v1"}')
