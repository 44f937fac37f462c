import dataclasses
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
    Released,
    Request,
    SchemaError,
    VipSpec,
    failing_checks,
    health_from_dict,
    health_to_dict,
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


# --------------------------------------------------------------------------- v1 additions
# (issue 12: VIP specs, structured health, why a holder left). New fields are optional on
# read, ignored by older readers, and a record decoded and encoded again gives the same bytes
# (the agent compares its own member record by bytes: agent/core.py _own_member_changed).

SPEC = VipSpec("198.51.100.200", 24, "eth0", "vmac", ("pg", "web"))


def full_member() -> MemberRecord:
    return MemberRecord(
        node="pg1",
        address="198.51.100.11",
        version="0.1.0",
        started=1.5,
        config_digest="abc",
        lease=255,
        vips=("db", "db6"),
        health={
            "db": HEALTHY,
            "db6": Health(
                HealthState.UNHEALTHY,
                "check pg failed: connection refused (3/3); check web failed: HTTP 500",
            ),
        },
        vip_specs={"db": SPEC, "db6": VipSpec("2001:db8::10", 128, "eth1", "announce-only")},
    )


def test_member_with_specs_and_structured_health_round_trips_byte_for_byte():
    rec = full_member()
    raw = rec.to_json()
    again = MemberRecord.from_json(raw)
    assert again == rec and again.to_json() == raw
    data = json.loads(raw)
    assert data["schema"] == "haagent.member/v1"  # additions, not a new version
    assert data["vip_specs"]["db"] == {
        "address": "198.51.100.200",
        "prefix": 24,
        "interface": "eth0",
        "mode": "vmac",
        "checks": ["pg", "web"],
    }
    assert data["health"]["db6"].startswith("unhealthy: check pg failed")  # the v1 text stays
    assert data["health_state"]["db6"]["failing"] == [
        {"check": "pg", "detail": "connection refused (3/3)"},
        {"check": "web", "detail": "HTTP 500"},
    ]
    assert data["health_state"]["db"] == {"state": "healthy", "reason": ""}


def test_an_old_member_record_without_the_new_fields_still_reads():
    raw = json.dumps(
        {
            "schema": "haagent.member/v1",
            "node": "pg1",
            "address": None,
            "version": "0.0.9",
            "started": 1.0,
            "config_digest": "x",
            "lease": "ff",
            "vips": ["db"],
            "draining": False,
            "health": {"db": "unhealthy: check pg failed: refused"},
        }
    ).encode()
    m = MemberRecord.from_json(raw)
    assert m.vip_specs == {} and m.health["db"].reason == "check pg failed: refused"


def test_structured_health_wins_and_malformed_new_fields_are_dropped_not_fatal():
    data = json.loads(full_member().to_json())
    data["health"]["db"] = "unknown"  # disagrees: the structured form is the newer one
    data["health_state"]["db6"] = {"state": "sideways"}  # unreadable: the text is used
    data["vip_specs"]["db6"] = {"address": 3}  # dropped
    data["future_field"] = {"anything": [1, 2]}  # unknown fields are ignored
    m = MemberRecord.from_json(json.dumps(data).encode())
    assert m.health["db"] == HEALTHY
    assert m.health["db6"].state is HealthState.UNHEALTHY
    assert set(m.vip_specs) == {"db"}
    junk: object
    for junk in ([], "x", {"db": 1}):
        data["vip_specs"] = junk
        data["health_state"] = junk
        assert MemberRecord.from_json(json.dumps(data).encode()).node == "pg1"


def test_holder_may_carry_the_vip_spec_and_older_holders_read_without_it():
    h = Holder("pg1", 0x1F, since=1.5, epoch=7, reason="won", spec=SPEC)
    assert Holder.from_json(h.to_json()) == h
    plain = Holder("pg1", 0x1F, since=1.5, epoch=7, reason="won")
    assert b"spec" not in plain.to_json() and Holder.from_json(plain.to_json()).spec is None
    data = json.loads(h.to_json())
    data["spec"] = "garbage"
    assert Holder.from_json(json.dumps(data).encode()).spec is None


def test_released_carries_why_the_holder_left_optionally():
    r = Released("pg1", 41, 2.5, reason="unhealthy: check pg failed: refused")
    assert Released.from_json(r.to_json()) == r
    old = b'{"schema":"haagent.released/v1","node":"pg1","create_revision":41,"at":2.5}'
    assert Released.from_json(old) == Released("pg1", 41, 2.5)
    assert Released.from_json(old.replace(b"}", b',"reason":7}')).reason == ""


def test_health_structured_form_and_failing_checks():
    h = Health(HealthState.UNHEALTHY, "check a.b failed: x; y; check c failed: z")
    assert failing_checks(h) == (("a.b", "x; y"), ("c", "z"))
    assert failing_checks(HEALTHY) == ()
    for value in (HEALTHY, h, Health(HealthState.UNKNOWN, "waiting for check pg (1/2)")):
        assert health_from_dict(health_to_dict(value)) == value
    assert health_from_dict({"state": "healthy", "reason": 3}) is None
    assert health_from_dict(None) is None


def test_vip_spec_of_config_names_the_mode():
    from haagent.config import parse_config

    cfg = parse_config(
        {
            "cluster": "db",
            "node": "h1",
            "vips": [
                {"name": "a", "address": "198.51.100.200/24", "interface": "eth0"},
                {"name": "b", "address": "2001:db8::5", "interface": "eth0", "vmac": True},
                {"name": "c", "address": "198.51.100.201", "interface": "eth0", "bind": False},
            ],
        }
    )
    specs = {v.name: VipSpec.of_config(v) for v in cfg.vips}
    assert specs["a"] == VipSpec("198.51.100.200", 24, "eth0", "node-mac")
    assert specs["b"].mode == "vmac" and specs["b"].prefix == 128
    assert specs["c"].mode == "announce-only"


def test_vip_spec_of_a_vip_with_several_addresses_round_trips():
    from haagent.config import parse_config

    vip = parse_config(
        {
            "node": "h1",
            "vips": [
                {
                    "name": "web",
                    "addresses": ["198.51.100.200/24", "2001:db8::5"],
                    "interface": "eth0",
                }
            ],
        }
    ).vips[0]
    spec = VipSpec.of_config(vip)
    assert (spec.address, spec.prefix, spec.extra) == ("198.51.100.200", 24, ("2001:db8::5/128",))
    assert spec.cidrs == ("198.51.100.200/24", "2001:db8::5/128")
    data = spec.to_dict()
    # Old readers take address/prefix (the first address) and ignore the list.
    assert data["address"] == "198.51.100.200" and data["prefix"] == 24
    assert data["addresses"] == ["198.51.100.200/24", "2001:db8::5/128"]
    assert VipSpec.from_dict(json.loads(json.dumps(data))) == spec
    rec = dataclasses.replace(full_member(), vip_specs={"web": spec})
    again = MemberRecord.from_json(rec.to_json())
    assert again.vip_specs["web"] == spec and again.to_json() == rec.to_json()
    # A single address writes no list: records of such VIPs stay byte for byte as before.
    assert "addresses" not in SPEC.to_dict()


@pytest.mark.parametrize(
    "addresses",
    [
        "198.51.100.200/24",
        {"0": "198.51.100.200/24"},
        [],
        ["198.51.100.200/24"],
        ["198.51.100.201/24", "2001:db8::5/128"],  # does not start with the spec's address
        ["198.51.100.200/24", 5],
        ["198.51.100.200/24", None],
        ["198.51.100.200/24", ""],
        ["198.51.100.200/24", "x" * 65],
        ["198.51.100.200/24"] + ["2001:db8::5/128"] * 16,  # 17 > 16
    ],
)
def test_vip_spec_with_a_malformed_address_list_keeps_its_first_address(addresses):
    data = {**SPEC.to_dict(), "addresses": addresses}
    spec = VipSpec.from_dict(data)
    assert spec == SPEC and spec is not None and spec.cidrs == ("198.51.100.200/24",)
