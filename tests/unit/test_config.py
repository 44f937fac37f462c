import copy
import hashlib
import os
import re
import socket
from ipaddress import IPv4Interface, IPv6Address, IPv6Interface
from pathlib import Path

import pytest
import yaml

import haagent.config
from haagent.config import (
    MAX_CONFIG_BYTES,
    MAX_ERRORS,
    MAX_VIPS,
    MAX_YAML_DEPTH,
    NAME_RE,
    AnnounceConfig,
    Config,
    ConfigError,
    ConfigErrors,
    EtcdConfig,
    LeaseConfig,
    TLSConfig,
    VipConfig,
    check_host,
    describe,
    load_config,
    parse_config,
    parse_endpoint,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "haagent.example.yaml"

BASE: dict[str, object] = {
    "cluster": "db",
    "node": "pg1",
    "etcd": {"endpoints": ["http://198.51.100.2:2379"], "timeout": 1.0},
    "lease": {"ttl": 5, "margin": 1.5},
    "announce": {"count": 3, "interval": 0.2, "refresh": 0},
    "vips": [
        {"name": "db", "address": "198.51.100.200/32", "interface": "eth0"},
        {
            "name": "db6",
            "address": "2001:db8:100::200",
            "interface": "eth0",
            "announce": {"count": 5},
        },
    ],
}


def doc(**changes: object) -> dict[str, object]:
    """BASE with top-level keys replaced (None deletes the key)."""
    d = copy.deepcopy(BASE)
    for k, v in changes.items():
        if v is None:
            d.pop(k, None)
        else:
            d[k] = v
    return d


def with_etcd(**kw: object) -> dict[str, object]:
    d = doc()
    etcd = d["etcd"]
    assert isinstance(etcd, dict)
    etcd.update(kw)
    return d


def with_auth(**kw: object) -> dict[str, object]:
    """with_etcd over https, which a username needs."""
    return with_etcd(endpoints=["https://198.51.100.2:2379"], tls={"ca": "/etc/ca.pem"}, **kw)


def errors(data: object, **kw: object) -> dict[str, str]:
    """key -> reason for every error; fails the test if the config is accepted."""
    with pytest.raises(ConfigErrors) as info:
        parse_config(data, "test.yaml", **kw)  # type: ignore[arg-type]
    out: dict[str, str] = {}
    for e in info.value.errors:
        assert e.file == "test.yaml"
        assert e.key not in out, f"two errors for {e.key}: {out.get(e.key)!r} / {e.reason!r}"
        out[e.key] = e.reason
    return out


def one_error(data: object) -> tuple[str, str]:
    errs = errors(data)
    assert len(errs) == 1, errs
    return next(iter(errs.items()))


# --------------------------------------------------------------------------- happy paths


def test_base_parses_into_frozen_dataclasses_with_tuples():
    cfg = parse_config(doc())
    assert cfg.cluster == "db" and cfg.node == "pg1"
    assert cfg.etcd.endpoints == ("http://198.51.100.2:2379",)
    assert isinstance(cfg.vips, tuple)
    db = cfg.vip("db")
    assert db.address == IPv4Interface("198.51.100.200/32")
    assert db.family == 4 and str(db.ip) == "198.51.100.200"
    db6 = cfg.vip("db6")
    assert db6.address == IPv6Interface("2001:db8:100::200/128")
    assert db6.family == 6 and db6.ip == IPv6Address("2001:db8:100::200")
    with pytest.raises(AttributeError):
        cfg.cluster = "x"  # type: ignore[misc]
    with pytest.raises(KeyError):
        cfg.vip("nope")


def test_defaults():
    cfg = parse_config({"vips": [{"name": "v", "address": "198.51.100.10", "interface": "eth0"}]})
    assert cfg.cluster == "default"
    assert cfg.node == socket.gethostname().split(".")[0].lower()
    assert cfg.log_level == "info"
    assert cfg.etcd == EtcdConfig()
    assert cfg.etcd.endpoints == ("http://127.0.0.1:2379",)
    assert cfg.etcd.tls is None and cfg.etcd.username is None and cfg.etcd.password is None
    assert cfg.etcd.timeout == 1.0 and cfg.etcd.retry_interval == 1.0
    assert cfg.lease == LeaseConfig(ttl=5, margin=1.5, keepalive_interval=None)
    assert cfg.lease.interval == 1.0
    assert cfg.announce == AnnounceConfig(count=3, interval=0.2, refresh=0.0, arp_reply=False)
    assert cfg.vips[0].announce == cfg.announce
    assert cfg.vips[0].address.network.prefixlen == 32
    assert cfg.source is None and cfg.digest == ""


def test_default_node_must_be_a_valid_name(monkeypatch):
    monkeypatch.setattr(socket, "gethostname", lambda: "Web_Server-.example.com")
    key, reason = one_error(doc(node=None))
    assert key == "node"
    assert "web_server-" in reason and "set node explicitly" in reason
    monkeypatch.setattr(socket, "gethostname", lambda: "PG2.example.com")
    assert parse_config(doc(node=None)).node == "pg2"


def test_null_sections_mean_defaults():
    cfg = parse_config(doc(etcd=None, lease=None, announce=None) | {"etcd": None})
    assert cfg.etcd == EtcdConfig() and cfg.lease == LeaseConfig()


def test_announce_per_vip_overrides_field_by_field():
    d = doc(announce={"count": 2, "interval": 0.5, "refresh": 30, "arp_reply": True})
    cfg = parse_config(d)
    assert cfg.announce == AnnounceConfig(count=2, interval=0.5, refresh=30.0, arp_reply=True)
    assert cfg.vip("db").announce == cfg.announce
    assert cfg.vip("db6").announce == AnnounceConfig(
        count=5, interval=0.5, refresh=30.0, arp_reply=True
    )


def test_numbers_become_floats_and_log_level_is_normalised():
    cfg = parse_config(doc(log_level="WARNING", lease={"ttl": 10, "margin": 2}))
    assert cfg.log_level == "warning"
    assert isinstance(cfg.lease.margin, float) and cfg.lease.margin == 2.0
    assert cfg.lease.interval == 2.0


def test_explicit_keepalive_interval():
    cfg = parse_config(doc(lease={"ttl": 5, "margin": 1.5, "keepalive_interval": 0.5}))
    assert cfg.lease.interval == 0.5


def test_password_is_not_in_repr():
    cfg = parse_config(with_auth(username="u", password="s3cret-pw"))
    assert cfg.etcd.password == "s3cret-pw"
    assert "s3cret-pw" not in repr(cfg)


# --------------------------------------------------------------------------- endpoints


@pytest.mark.parametrize(
    "url,parsed",
    [
        ("http://198.51.100.2:2379", ("198.51.100.2", 2379, False)),
        ("https://etcd-1.example.net:2379", ("etcd-1.example.net", 2379, True)),
        ("HTTPS://etcd:2379/", ("etcd", 2379, True)),
        ("http://[2001:db8::2]:2379", ("2001:db8::2", 2379, False)),
        ("https://[2001:db8::2]:12379", ("2001:db8::2", 12379, True)),
    ],
)
def test_parse_endpoint(url, parsed):
    assert parse_endpoint(url) == parsed


def test_parsed_endpoints_keeps_order():
    cfg = parse_config(
        with_etcd(
            endpoints=["https://[2001:db8::2]:2379", "https://198.51.100.3:2380"],
            tls={"ca": "/etc/ca.pem"},
        )
    )
    assert cfg.etcd.parsed_endpoints() == (
        ("2001:db8::2", 2379, True),
        ("198.51.100.3", 2380, True),
    )
    assert EtcdConfig().parsed_endpoints() == (("127.0.0.1", 2379, False),)


@pytest.mark.parametrize(
    "url,reason",
    [
        ("ftp://h:1", "use http or https"),
        ("198.51.100.2:2379", "expected http://host:port"),
        ("http://h", "port is required"),
        ("http://h:0", "out of range"),
        ("http://h:65536", "out of range"),
        ("http://h:abc", "not a number"),
        ("http://2001:db8::2:2379", "must be in brackets"),
        ("http://[2001:db8::2]", "port is required"),
        ("http://[2001:db8::zz]:2379", "bad IPv6 address"),
        ("http://[2001:db8::2:2379", "missing ']'"),
        ("http://198.51.100.300:2379", "Octet 300"),
        ("http://h:2379/v3", "no path"),
        ("http://u:p@h:2379", "etcd.username"),
        ("http://:2379", "host is missing"),
        ("http://bad_host:2379", "not a valid host name"),
    ],
)
def test_bad_endpoint(url, reason):
    key, got = one_error(with_etcd(endpoints=["http://198.51.100.2:2379", url]))
    assert key == "etcd.endpoints[1]"
    assert reason in got and url.strip() in got
    with pytest.raises(ValueError, match=re.escape(reason)):
        parse_endpoint(url)


def test_endpoints_shape():
    assert one_error(with_etcd(endpoints=[])) == (
        "etcd.endpoints",
        "at least one endpoint is required",
    )
    key, reason = one_error(with_etcd(endpoints="http://h:2379"))
    assert key == "etcd.endpoints" and "expected a list" in reason and "a string" in reason
    key, reason = one_error(with_etcd(endpoints=["http://h:2379", 2379]))
    assert key == "etcd.endpoints[1]" and "expected a string" in reason
    key, reason = one_error(with_etcd(endpoints=["http://h:2379", "http://H:2379"]))
    assert key == "etcd.endpoints[1]" and "duplicate of etcd.endpoints[0]" in reason


# --------------------------------------------------------------------------- TLS and auth


def test_https_requires_ca():
    key, reason = one_error(with_etcd(endpoints=["http://a:2379", "https://b:2379"]))
    assert key == "etcd.tls.ca"
    assert "etcd.endpoints[1] uses https" in reason
    key, _ = one_error(with_etcd(endpoints=["https://b:2379"], tls={"cert": "c", "key": "k"}))
    assert key == "etcd.tls.ca"


def test_tls_without_https_is_refused():
    key, reason = one_error(with_etcd(tls={"ca": "/ca.pem"}))
    assert key == "etcd.tls" and "no endpoint uses https" in reason


def test_tls_cert_and_key_go_together():
    base = {"endpoints": ["https://b:2379"]}
    key, reason = one_error(with_etcd(**base, tls={"ca": "ca", "cert": "c"}))
    assert key == "etcd.tls.cert" and "etcd.tls.key" in reason
    key, reason = one_error(with_etcd(**base, tls={"ca": "ca", "key": "k"}))
    assert key == "etcd.tls.key" and "etcd.tls.cert" in reason


def test_tls_paths_relative_to_base_dir(tmp_path):
    d = with_etcd(
        endpoints=["https://b:2379"],
        tls={"ca": "ca.pem", "cert": "/abs/c.pem", "key": "k.pem"},
    )
    cfg = parse_config(d, base_dir=tmp_path)
    assert cfg.etcd.tls == TLSConfig(
        ca=tmp_path / "ca.pem", cert=Path("/abs/c.pem"), key=tmp_path / "k.pem"
    )
    assert parse_config(d).etcd.tls == TLSConfig(
        ca=Path("ca.pem"), cert=Path("/abs/c.pem"), key=Path("k.pem")
    )


def test_tls_unknown_key():
    errs = errors(with_etcd(endpoints=["https://b:2379"], tls={"ca": "x", "crt": "y"}))
    assert errs == {"etcd.tls.crt": "unknown key 'crt'; did you mean 'cert'?"}


def test_username_needs_password_and_vice_versa():
    key, reason = one_error(with_etcd(username="u"))
    assert key == "etcd.username" and "etcd.password" in reason
    key, reason = one_error(with_etcd(password="p"))
    assert key == "etcd.password" and "etcd.username" in reason


def test_password_and_password_file_are_exclusive(tmp_path):
    (tmp_path / "pw").write_text("x\n")
    key, reason = one_error(
        with_auth(username="u", password="p", password_file=str(tmp_path / "pw"))
    )
    assert (
        key == "etcd.password_file" and "etcd.password" in reason and "one or the other" in reason
    )


def test_password_file_is_read_and_newline_stripped(tmp_path):
    (tmp_path / "pw").write_text("s3cret\n")
    cfg = parse_config(with_auth(username="u", password_file="pw"), base_dir=tmp_path)
    assert cfg.etcd.password == "s3cret"


def test_password_file_problems(tmp_path):
    key, reason = one_error(with_auth(username="u", password_file=str(tmp_path / "missing")))
    assert key == "etcd.password_file" and "cannot read" in reason and "missing" in reason
    (tmp_path / "empty").write_text("\n")
    key, reason = one_error(with_auth(username="u", password_file=str(tmp_path / "empty")))
    assert key == "etcd.password_file" and "is empty" in reason
    (tmp_path / "big").write_text("x" * 5000)
    key, reason = one_error(with_auth(username="u", password_file=str(tmp_path / "big")))
    assert key == "etcd.password_file" and "larger than 4 KiB" in reason
    (tmp_path / "long").write_text("x" * 2000 + "\n")
    key, reason = one_error(with_auth(username="u", password_file=str(tmp_path / "long")))
    assert key == "etcd.password_file" and "at most 1024" in reason
    key, reason = one_error(with_auth(username="u", password_file=str(tmp_path)))
    assert key == "etcd.password_file" and "not a regular file but a directory" in reason


def test_password_file_fifo_is_refused_without_waiting_for_a_writer(tmp_path):
    fifo = tmp_path / "pw.fifo"
    os.mkfifo(fifo)
    key, reason = one_error(with_auth(username="u", password_file=str(fifo)))
    assert key == "etcd.password_file" and "not a regular file but a FIFO" in reason


@pytest.mark.parametrize(
    "endpoints",
    [["http://198.51.100.2:2379"], ["https://198.51.100.2:2379", "http://198.51.100.3:2379"]],
)
def test_username_over_plain_http_is_refused_with_the_fix(endpoints):
    d = with_etcd(endpoints=endpoints, username="u", password="p")
    if any(e.startswith("https") for e in endpoints):
        d["etcd"]["tls"] = {"ca": "/etc/ca.pem"}  # type: ignore[index]
    key, reason = one_error(d)
    plain = len(endpoints) - 1
    assert key == "etcd.username"
    assert reason.startswith(
        f"username and password need https:// endpoints and etcd.tls: etcd.endpoints[{plain}] "
        f"is {endpoints[plain]!r}, and gRPC will not send etcd's login token over plain http"
    )
    assert "etcd.tls.ca" in reason and "client certificate" in reason
    # The default endpoint is http too.
    d = doc()
    d["etcd"] = {"username": "u", "password": "p"}
    assert one_error(d)[0] == "etcd.username"


# --------------------------------------------------------------------------- lease and timing


def test_ttl_must_be_an_integer_from_2_to_3600():
    key, reason = one_error(doc(etcd={"timeout": 0.2}, lease={"ttl": 1, "margin": 0.4}))
    assert key == "lease.ttl"
    assert reason.startswith("must be from 2 to 3600 seconds, found 1: etcd grants no shorter")
    key, reason = one_error(doc(lease={"ttl": 3601}))
    assert key == "lease.ttl" and "found 3601" in reason
    key, reason = one_error(doc(lease={"ttl": 10**1000}))
    assert key == "lease.ttl" and "found an integer of 1001 digits" in reason
    assert parse_config(doc(lease={"ttl": 3600, "margin": 1.5})).lease.ttl == 3600
    key, reason = one_error(doc(lease={"ttl": 5.5}))
    assert key == "lease.ttl" and "expected an integer" in reason and "5.5" in reason
    key, reason = one_error(doc(lease={"ttl": True}))
    assert key == "lease.ttl" and "true/false" in reason
    key, reason = one_error(doc(lease={"ttl": "5s"}))
    assert key == "lease.ttl" and "a string ('5s')" in reason


def test_ttl_2_is_the_smallest_working_lease():
    cfg = parse_config(doc(etcd={"timeout": 0.2}, lease={"ttl": 2, "margin": 0.5}))
    assert cfg.lease.interval == 0.4


def test_margin_positive_and_below_half_ttl():
    key, reason = one_error(doc(etcd={"timeout": 0.05}, lease={"ttl": 5, "margin": 0.09}))
    assert key == "lease.margin" and "at least 0.1 seconds, found 0.09" in reason
    key, reason = one_error(doc(lease={"ttl": 6, "margin": 3}))
    assert key == "lease.margin" and "less than half of lease.ttl (3 s)" in reason


def test_timeout_must_be_below_margin_and_says_why():
    key, reason = one_error(doc(etcd={"timeout": 1.5}, lease={"ttl": 5, "margin": 1.5}))
    assert key == "etcd.timeout"
    assert "less than lease.margin (1.5 s)" in reason
    assert "expires its lease" in reason
    key, reason = one_error(doc(etcd={"timeout": 0}))
    assert key == "etcd.timeout" and "at least 0.05 seconds, found 0" in reason


def test_timeout_vs_margin_uses_defaults_when_one_side_is_absent():
    key, _ = one_error(doc(etcd={"timeout": 2.0}, lease=None))
    assert key == "etcd.timeout"
    key, _ = one_error(doc(etcd=None, lease={"ttl": 5, "margin": 0.9}))
    assert key == "etcd.timeout"


def test_keepalive_interval_below_ttl_minus_margin():
    key, reason = one_error(doc(lease={"ttl": 5, "margin": 1.5, "keepalive_interval": 3.5}))
    assert key == "lease.keepalive_interval"
    assert "less than lease.ttl - lease.margin (3.5 s)" in reason
    key, reason = one_error(doc(lease={"ttl": 5, "keepalive_interval": 0.01}))
    assert key == "lease.keepalive_interval" and "at least 0.1 seconds, found 0.01" in reason


def test_retry_interval_positive_and_not_bool():
    key, reason = one_error(with_etcd(retry_interval=-1))
    assert key == "etcd.retry_interval" and "from 0.05 to 300 seconds, found -1" in reason
    key, reason = one_error(with_etcd(retry_interval=301))
    assert key == "etcd.retry_interval" and "found 301" in reason
    key, reason = one_error(with_etcd(retry_interval=False))
    assert key == "etcd.retry_interval" and "true/false" in reason


def test_non_finite_numbers_are_refused():
    key, reason = one_error(with_etcd(timeout=float("nan")))
    assert key == "etcd.timeout" and "finite" in reason
    key, reason = one_error(with_etcd(retry_interval=float("inf")))
    assert key == "etcd.retry_interval" and "finite" in reason


def test_integers_beyond_any_float_are_refused_not_overflowed():
    key, reason = one_error(with_etcd(retry_interval=10**400))
    assert key == "etcd.retry_interval"
    assert reason == "far out of range: found an integer of 401 digits"
    key, reason = one_error(with_etcd(retry_interval=-(10**5000)))
    assert key == "etcd.retry_interval" and "about 5000 digits" in reason


# --------------------------------------------------------------------------- announce


@pytest.mark.parametrize(
    "announce,key,reason",
    [
        ({"count": 0}, "announce.count", "from 1 to 100, found 0"),
        ({"count": 1000000000}, "announce.count", "from 1 to 100, found 1000000000"),
        ({"count": 2.5}, "announce.count", "expected an integer"),
        ({"interval": 0}, "announce.interval", "from 0.01 to 10 seconds, found 0"),
        ({"interval": 1.0e-9}, "announce.interval", "from 0.01 to 10 seconds, found 1e-09"),
        ({"interval": 11}, "announce.interval", "from 0.01 to 10 seconds"),
        ({"refresh": -1}, "announce.refresh", "0 (off) or from 1 to 86400 seconds"),
        ({"refresh": 0.5}, "announce.refresh", "0 (off) or from 1 to 86400 seconds"),
        ({"refresh": 1e308}, "announce.refresh", "0 (off) or from 1 to 86400 seconds"),
        ({"arp_reply": "yes"}, "announce.arp_reply", "expected true or false"),
        ({"cuont": 1}, "announce.cuont", "did you mean 'count'?"),
    ],
)
def test_bad_announce(announce, key, reason):
    got_key, got = one_error(doc(announce=announce))
    assert (got_key, reason in got) == (key, True), got
    vip_key = f"vips[0].{key}"
    d = doc()
    vips = d["vips"]
    assert isinstance(vips, list)
    vips[0]["announce"] = announce
    got_key, got = one_error(d)
    assert (got_key, reason in got) == (vip_key, True), got


def test_refresh_of_one_second_is_allowed():
    assert parse_config(doc(announce={"refresh": 1})).announce.refresh == 1.0


# --------------------------------------------------------------------------- names and top level


@pytest.mark.parametrize("name", ["db", "a", "pg-1.primary_x", "0", "a" * 63])
def test_good_names(name):
    assert re.match(NAME_RE, name)
    assert parse_config(doc(cluster=name)).cluster == name


@pytest.mark.parametrize(
    "name,hint",
    [
        ("DB", "lower-case"),
        ("-db", "1-63 characters"),
        ("db-", "1-63 characters"),
        ("a" * 64, "1-63 characters"),
        ("db/x", "1-63 characters"),
        ("d b", "1-63 characters"),
    ],
)
def test_bad_names(name, hint):
    for field in ("cluster", "node"):
        key, reason = one_error(doc(**{field: name}))
        assert key == field and hint in reason and repr(name) in reason


def test_name_given_as_number_says_quote_it():
    key, reason = one_error(doc(node=1))
    assert key == "node" and "an integer (1)" in reason and "quote it" in reason


def test_unknown_top_level_key_with_suggestion():
    assert errors(doc(clustr="x")) == {"clustr": "unknown key 'clustr'; did you mean 'cluster'?"}
    reason = errors(doc(zzz=1))["zzz"]
    assert "unknown key 'zzz'" in reason and "expected one of" in reason and "vips" in reason


def test_unknown_nested_keys():
    errs = errors(doc(lease={"ttl": 5, "marign": 1}, etcd={"endpoint": ["http://a:1"]}))
    assert errs == {
        "lease.marign": "unknown key 'marign'; did you mean 'margin'?",
        "etcd.endpoint": "unknown key 'endpoint'; did you mean 'endpoints'?",
    }


def test_log_level():
    key, reason = one_error(doc(log_level="warn"))
    assert key == "log_level" and "did you mean 'warning'?" in reason
    key, reason = one_error(doc(log_level=3))
    assert key == "log_level" and "expected a string" in reason


@pytest.mark.parametrize("data,found", [(None, "null"), ([1, 2], "a list"), ("x", "a string")])
def test_top_level_must_be_a_mapping(data, found):
    errs = errors(data)
    assert list(errs) == [""]
    assert "must be a mapping" in errs[""] and found in errs[""]


def test_sections_must_be_mappings():
    errs = errors(doc(etcd=["http://a:1"], lease=5, announce="loud"))
    assert errs == {
        "etcd": "expected a mapping, found a list",
        "lease": "expected a mapping, found an integer (5)",
        "announce": "expected a mapping, found a string ('loud')",
    }


# --------------------------------------------------------------------------- vips


def vip_doc(*vips: object) -> dict[str, object]:
    return doc(vips=list(vips))


def V(
    name: str = "v", address: object = "198.51.100.10", interface: object = "eth0", **kw: object
) -> dict[str, object]:
    return {"name": name, "address": address, "interface": interface, **kw}


def test_at_least_one_vip():
    for d in (doc(vips=[]), doc(vips=None), doc() | {"vips": None}):
        key, reason = one_error(d)
        assert key == "vips" and "at least one VIP is required" in reason
    key, reason = one_error(doc(vips={"name": "x"}))
    assert key == "vips" and "expected a list" in reason


@pytest.mark.parametrize(
    "address,expected",
    [
        ("198.51.100.10", IPv4Interface("198.51.100.10/32")),
        ("198.51.100.10/24", IPv4Interface("198.51.100.10/24")),
        ("198.51.100.10/31", IPv4Interface("198.51.100.10/31")),
        ("203.0.113.7/32", IPv4Interface("203.0.113.7/32")),
        ("2001:db8::10", IPv6Interface("2001:db8::10/128")),
        ("2001:DB8::10/64", IPv6Interface("2001:db8::10/64")),
    ],
)
def test_good_addresses(address, expected):
    assert parse_config(vip_doc(V(address=address))).vips[0].address == expected


@pytest.mark.parametrize(
    "address,reason",
    [
        ("198.51.100.300", "Octet 300 (> 255) not permitted"),
        ("198.51.100", "Expected 4 octets"),
        ("2001:db8::zz", "Only hex digits"),
        ("db.example.com", "host names are not allowed"),
        ("198.51.100.10/33", "not a prefix length from 1 to 32"),
        ("2001:db8::1/129", "not a prefix length from 1 to 128"),
        ("198.51.100.10/", "missing prefix length"),
        ("198.51.100.10/0", "/0 prefix"),
        ("198.51.100.0/24", "network address of 198.51.100.0/24"),
        ("198.51.100.255/24", "broadcast address of 198.51.100.0/24"),
        ("2001:db8::/64", "subnet-router anycast address"),
        ("0.0.0.0", "unspecified"),
        ("127.0.0.2", "loopback"),
        ("::1", "loopback"),
        ("224.0.0.18", "multicast"),
        ("fe80::1", "link-local"),
        ("fe80::1%eth0", "scoped"),
        ("255.255.255.255", "broadcast"),
        ("::ffff:198.51.100.10", "plain IPv4"),
    ],
)
def test_bad_addresses(address, reason):
    key, got = one_error(vip_doc(V(address=address)))
    assert key == "vips[0].address"
    assert reason in got and repr(address) in got


def test_address_given_as_number():
    key, reason = one_error(vip_doc(V(address=3325256714)))
    assert key == "vips[0].address" and "expected a string" in reason


def test_required_vip_fields():
    errs = errors(vip_doc(V(), {"name": "w"}, {}))
    assert errs == {
        "vips[1].address": "required",
        "vips[1].interface": "required",
        "vips[2].name": "required",
        "vips[2].address": "required",
        "vips[2].interface": "required",
    }


def test_vip_item_must_be_a_mapping_and_unknown_keys():
    errs = errors(vip_doc(V(), "db", V(name="w", address="198.51.100.11", adress="x")))
    assert errs == {
        "vips[1]": "expected a mapping, found a string ('db')",
        "vips[2].adress": "unknown key 'adress'; did you mean 'address'?",
    }


def test_duplicate_vip_names_and_addresses():
    errs = errors(
        vip_doc(
            V("a", "198.51.100.10"),
            V("a", "198.51.100.11"),
            V("b", "198.51.100.10/24"),
            V("c", "2001:db8::1"),
            V("d", "2001:DB8:0::1/64"),
        )
    )
    assert errs == {
        "vips[1].name": "duplicate VIP name 'a' (also vips[0])",
        "vips[2].address": "198.51.100.10 is already the address of vips[0]",
        "vips[4].address": "2001:db8::1 is already the address of vips[3]",
    }


@pytest.mark.parametrize(
    "interface,reason",
    [
        ("eth0:1", "address labels"),
        ("a" * 16, "longer than 15 bytes"),
        ("eth 0", "white space"),
        ("a/b", "'/'"),
        ("..", "not a valid interface name"),
        ("", "must not be empty"),
    ],
)
def test_bad_interface_names(interface, reason):
    key, got = one_error(vip_doc(V(interface=interface)))
    assert key == "vips[0].interface" and reason in got


def test_all_errors_are_collected_across_sections():
    d = doc(
        cluster="DB",
        log_level="loud",
        etcd={"endpoints": ["http://h"], "timeout": "1"},
        lease={"ttl": 1},
        announce={"count": 0},
        vips=[V(address="198.51.100.300"), V(name="w", address="198.51.100.11", interface=5)],
    )
    assert set(errors(d)) == {
        "cluster",
        "log_level",
        "etcd.endpoints[0]",
        "etcd.timeout",
        "lease.ttl",
        "announce.count",
        "vips[0].address",
        "vips[1].interface",
    }


# --------------------------------------------------------------------------- errors as text


def test_error_strings():
    e = ConfigError("/etc/haagent.yaml", "vips[1].address", "bad")
    assert str(e) == "/etc/haagent.yaml: vips[1].address: bad"
    assert (e.file, e.key, e.reason) == ("/etc/haagent.yaml", "vips[1].address", "bad")
    assert str(ConfigError("f.yaml", "", "cannot read")) == "f.yaml: cannot read"
    errs = ConfigErrors([e, ConfigError("f", "k", "r")])
    assert str(errs) == "/etc/haagent.yaml: vips[1].address: bad\nf: k: r"


# --------------------------------------------------------------------------- files


def write(tmp_path: Path, text: str, name: str = "haagent.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_load_config_sets_source_and_digest(tmp_path):
    p = write(tmp_path, yaml.safe_dump(BASE))
    cfg = load_config(p)
    assert cfg.source == p
    assert cfg.digest == hashlib.sha256(p.read_bytes()).hexdigest()[:12]
    assert re.fullmatch(r"[0-9a-f]{12}", cfg.digest)
    p.write_text(p.read_text() + "# a comment changes the digest\n")
    assert load_config(str(p)).digest != cfg.digest


def test_load_config_errors_name_the_file(tmp_path):
    p = write(tmp_path, yaml.safe_dump(doc(cluster="DB")))
    with pytest.raises(ConfigErrors) as info:
        load_config(p)
    assert [e.file for e in info.value.errors] == [str(p)]
    assert str(info.value).startswith(f"{p}: cluster: ")


def test_load_config_relative_paths_follow_the_file(tmp_path):
    (tmp_path / "pw").write_text("pw\n")
    d = with_auth(username="u", password_file="pw")
    p = write(tmp_path, yaml.safe_dump(d))
    assert load_config(p).etcd.password == "pw"


def test_unreadable_file(tmp_path):
    with pytest.raises(ConfigErrors) as info:
        load_config(tmp_path / "nope.yaml")
    (err,) = info.value.errors
    assert err.key == "" and "cannot read" in err.reason and "No such file" in err.reason


def test_yaml_syntax_error_has_line_and_column(tmp_path):
    p = write(tmp_path, "cluster: db\nvips:\n  - name: a\n   address: x\n")
    with pytest.raises(ConfigErrors) as info:
        load_config(p)
    (err,) = info.value.errors
    assert err.file == str(p)
    assert err.line == 4 and err.column is not None
    assert "line 4, column" in err.reason and "YAML" in err.reason


def test_duplicate_yaml_keys_are_refused(tmp_path):
    p = write(tmp_path, "cluster: db\nlease:\n  ttl: 5\n  ttl: 50\nvips: []\n")
    with pytest.raises(ConfigErrors) as info:
        load_config(p)
    (err,) = info.value.errors
    assert "duplicate key 'ttl' (first at line 3)" in err.reason and err.line == 4


def test_empty_file(tmp_path):
    with pytest.raises(ConfigErrors) as info:
        load_config(write(tmp_path, ""))
    assert "the file is empty" in str(info.value)


def test_not_utf8(tmp_path):
    p = tmp_path / "bin.yaml"
    p.write_bytes(b"cluster: \xff\n")
    with pytest.raises(ConfigErrors, match="not UTF-8"):
        load_config(p)


# --------------------------------------------------------------------------- hostile files


def file_error(path: Path | str) -> ConfigError:
    """The one error of a file that must be refused as a whole."""
    with pytest.raises(ConfigErrors) as info:
        load_config(path)
    (err,) = info.value.errors
    assert err.key == "" and "\n" not in str(err)
    return err


def test_only_regular_files_are_read(tmp_path):
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)  # no writer: a blocking open would hang here
    assert file_error(fifo).reason == "not a regular file but a FIFO (named pipe)"
    assert file_error("/dev/zero").reason == "not a regular file but a character device"
    assert file_error(tmp_path).reason == "not a regular file but a directory"
    link = tmp_path / "link.yaml"
    link.symlink_to(write(tmp_path, yaml.safe_dump(BASE)))
    assert load_config(link).cluster == "db"  # a symlink to a regular file is fine


def test_file_size_is_bounded(tmp_path, monkeypatch):
    p = write(tmp_path, "# x\n" * (MAX_CONFIG_BYTES // 4 + 1))
    assert file_error(p).reason == f"larger than 1 MiB ({MAX_CONFIG_BYTES + 4} bytes)"
    # The boundary itself, on a smaller limit: parsing a whole MiB of YAML takes a second.
    monkeypatch.setattr(haagent.config, "MAX_CONFIG_BYTES", 4096)
    text = yaml.safe_dump(BASE)
    p.write_text(text + "#" * (4096 - len(text)))
    assert load_config(p).cluster == "db"
    p.write_text(text + "#" * (4097 - len(text)))
    assert file_error(p).reason == "larger than 4 KiB (4097 bytes)"


def test_yaml_nesting_is_bounded_with_line_and_column(tmp_path):
    err = file_error(write(tmp_path, "cluster: db\nvips: " + "[" * 5000 + "]" * 5000 + "\n"))
    assert err.line == 2 and err.column is not None
    assert f"nested more than {MAX_YAML_DEPTH} levels deep" in err.reason
    deep = "x: " + "[" * (MAX_YAML_DEPTH - 1) + "]" * (MAX_YAML_DEPTH - 1) + "\n"
    errs = {e.key for e in _load_errors(write(tmp_path, deep))}
    assert "x" in errs  # deep enough to be odd, not so deep that YAML refuses it


def _load_errors(p: Path) -> list[ConfigError]:
    with pytest.raises(ConfigErrors) as info:
        load_config(p)
    return info.value.errors


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (
            "cluster: 2001-13-45\n",
            "line 1, column 10: YAML error: cannot read this value as 'timestamp': month",
        ),
        ("cluster: !!int\n", "cannot read this value as 'int'"),
        ("cluster: !!bool maybe\n", "cannot read this value as 'bool'"),
        ("cluster: !!timestamp x\n", "cannot read this value as 'timestamp'"),
        ("lease: {ttl: 1" + "0" * 5000 + "}\n", "integer written with 5001 characters"),
        ("lease: {ttl: 0x1" + "0" * 5000 + "}\n", "integer written with 5003 characters"),
        ("cluster: a\x00b\n", "line 1, column 11: YAML error: special characters"),
        ("{" + "a: 1, " * 3 + "a: 2}\n", "duplicate key 'a'"),
    ],
)
def test_values_yaml_cannot_build_are_yaml_errors(tmp_path, text, needle):
    assert needle in file_error(write(tmp_path, text)).reason


def test_huge_numbers_reach_their_key(tmp_path):
    p = write(tmp_path, yaml.safe_dump(BASE).replace("ttl: 5", "ttl: 1" + "0" * 1000))
    (err,) = _load_errors(p)
    assert err.key == "lease.ttl" and "found an integer of 1001 digits" in err.reason


def test_strings_are_bounded_and_must_be_text():
    key, reason = one_error(doc(log_level="x" * 256))
    assert key == "log_level" and reason == "too long: 256 characters, at most 255"
    key, reason = one_error(doc(cluster="a" * 10000))
    assert key == "cluster" and "too long" in reason
    key, reason = one_error(vip_doc(V(interface="\ud800")))
    assert key == "vips[0].interface" and "lone surrogate" in reason
    key, reason = one_error(with_auth(username="u", password_file="pw\0x"))
    assert key == "etcd.password_file" and "NUL character" in reason
    key, reason = one_error(with_auth(username="u", password="p" * 1025))
    assert key == "etcd.password" and "at most 1024" in reason
    key, reason = one_error(vip_doc(V(address="1" * 65)))
    assert key == "vips[0].address" and "at most 64" in reason


def test_counts_are_bounded_before_anything_is_judged():
    vips = [V(f"v{i}", f"198.18.{i // 250}.{i % 250 + 1}") for i in range(MAX_VIPS + 1)]
    key, reason = one_error(doc(vips=vips))
    assert key == "vips" and reason.startswith(f"{MAX_VIPS + 1} VIPs, more than {MAX_VIPS}")
    assert len(parse_config(doc(vips=vips[:MAX_VIPS])).vips) == MAX_VIPS
    key, reason = one_error(with_etcd(endpoints=[f"http://h{i}:2379" for i in range(17)]))
    assert key == "etcd.endpoints" and "17 endpoints, more than 16" in reason


def test_errors_are_capped_with_a_count_of_the_rest():
    d = doc()
    d["lease"] = {f"k{i}": 1 for i in range(1000)}
    with pytest.raises(ConfigErrors) as info:
        parse_config(d, "test.yaml")
    errs = info.value.errors
    assert len(errs) == MAX_ERRORS + 1
    assert str(errs[-1]) == (
        "test.yaml: 900 more error(s) not shown; fix the ones above and check again"
    )


def test_every_error_is_one_line_whatever_the_key():
    d: dict[object, object] = {"a\nb": 1, "x" * 1000: 2, 10**5000: 3}
    d.update(doc())
    with pytest.raises(ConfigErrors) as info:
        parse_config(d, "test.yaml")
    lines = [str(e) for e in info.value.errors]
    assert len(lines) == 3 and all("\n" not in line and len(line) < 300 for line in lines)
    assert lines[0].startswith("test.yaml: 'a\\nb': unknown key 'a\\nb'")
    assert "an integer of about 5000 digits: unknown key" in lines[2]


# --------------------------------------------------------------------------- the example file


def test_example_file_loads():
    cfg = load_config(EXAMPLE)
    assert cfg.cluster == "db" and cfg.node == "pg1"
    assert [v.name for v in cfg.vips] == ["db", "db6", "web"]
    assert cfg.vip("db6").announce.count == 5
    assert cfg.vip("db6").announce.interval == cfg.announce.interval
    assert cfg.vip("web").families == (4, 6)


def test_example_file_mentions_every_option():
    text = EXAMPLE.read_text()
    options = [
        "cluster",
        "node",
        "log_level",
        "etcd",
        "endpoints",
        "timeout",
        "retry_interval",
        "tls",
        "ca",
        "cert",
        "key",
        "username",
        "password",
        "password_file",
        "lease",
        "ttl",
        "margin",
        "keepalive_interval",
        "announce",
        "count",
        "interval",
        "refresh",
        "arp_reply",
        "vips",
        "name",
        "address",
        "addresses",
        "interface",
    ]
    missing = [o for o in options if not re.search(rf"^[ #-]*{o}:", text, re.M)]
    assert not missing


def test_example_commented_options_are_valid_when_enabled(tmp_path):
    """Uncommenting TLS and auth in the example (with https endpoints) still validates."""
    text = EXAMPLE.read_text()
    text = re.sub(
        r"^  # (tls:|  ca:|  cert:|  key:|username:|password:)", r"  \1", text, flags=re.M
    )
    text = text.replace('"http://', '"https://')
    cfg = parse_config(yaml.safe_load(text), "example")
    assert cfg.etcd.tls is not None and cfg.etcd.tls.cert is not None
    assert cfg.etcd.username == "haagent" and cfg.etcd.password == "change-me"


# --------------------------------------------------------------------------- host checks


def test_check_host_interfaces(monkeypatch):
    monkeypatch.setattr(socket, "if_nameindex", lambda: [(1, "lo"), (2, "eth0")])
    cfg = parse_config(vip_doc(V("a", interface="eth0"), V("b", "198.51.100.11", "eth9")))
    problems = check_host(cfg)
    assert [(p.key, p.file) for p in problems] == [("vips[1].interface", "<config>")]
    assert "no interface 'eth9'" in problems[0].reason and "eth0, lo" in problems[0].reason


def test_check_host_tls_files(tmp_path, monkeypatch):
    monkeypatch.setattr(socket, "if_nameindex", lambda: [(2, "eth0")])
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n")
    (tmp_path / "c.pem").write_text("not pem")
    d = with_etcd(
        endpoints=["https://b:2379"], tls={"ca": "ca.pem", "cert": "c.pem", "key": "k.pem"}
    )
    p = write(tmp_path, yaml.safe_dump(d))
    problems = {e.key: e for e in check_host(load_config(p))}
    assert set(problems) == {"etcd.tls.cert", "etcd.tls.key"}
    assert "not PEM" in problems["etcd.tls.cert"].reason
    assert "cannot read" in problems["etcd.tls.key"].reason
    assert problems["etcd.tls.key"].file == str(p)


def test_check_host_clean(monkeypatch):
    monkeypatch.setattr(socket, "if_nameindex", lambda: [(2, "eth0")])
    assert check_host(parse_config(doc())) == []


# --------------------------------------------------------------------------- describe


def test_describe_summarises():
    cfg = Config(
        cluster="db",
        node="pg1",
        etcd=EtcdConfig(
            endpoints=("http://198.51.100.2:2379",), username="u", password="hunter2-pw"
        ),
        lease=LeaseConfig(ttl=5, margin=1.5),
        vips=(
            VipConfig("db", IPv4Interface("198.51.100.200/32"), "eth0"),
            VipConfig(
                "db6",
                IPv6Interface("2001:db8::200/128"),
                "eth1",
                AnnounceConfig(count=5, refresh=10),
            ),
        ),
        digest="0123456789ab",
    )
    text = describe(cfg)
    assert "cluster db, node pg1" in text and "0123456789ab" in text
    assert "http://198.51.100.2:2379" in text and "user u" in text
    assert "ttl 5 s" in text and "3.5 s" in text and "margin 1.5 s" in text
    assert "198.51.100.200/32 on eth0" in text
    assert "2001:db8::200/128 on eth1 (announce 5 x 0.2 s, refresh every 10 s)" in text
    assert "hunter2-pw" not in text
    assert "fast failover: on if /etc/haagent/liveness.key exists" in text
    assert len(text.splitlines()) == 7


def test_keepalive_interval_plus_timeout_must_fit_before_the_deadline():
    # 2.5 s between keepalives + 1 s for one to hang = 3.5 s: the deadline (5 - 1.5) is missed.
    key, reason = one_error(doc(lease={"ttl": 5, "margin": 1.5, "keepalive_interval": 2.5}))
    assert key == "lease.keepalive_interval"
    assert "+ etcd.timeout (1 s)" in reason and "single slow keepalive" in reason
    cfg = parse_config(doc(lease={"ttl": 5, "margin": 1.5, "keepalive_interval": 2.4}))
    assert cfg.lease.interval == 2.4


def test_when_etcd_unreachable():
    assert parse_config(doc()).lease.when_etcd_unreachable == "release"
    cfg = parse_config(doc(lease={"ttl": 5, "margin": 1.5, "when_etcd_unreachable": "keep"}))
    assert cfg.lease.when_etcd_unreachable == "keep"
    key, reason = one_error(doc(lease={"when_etcd_unreachable": "kep"}))
    assert key == "lease.when_etcd_unreachable" and "keep" in reason


def _l2(*vips: dict[str, object]) -> dict[str, object]:
    return doc(
        vips=[
            {"address": f"198.51.100.{200 + i}", "interface": "eth0", **v}
            for i, v in enumerate(vips)
        ]
    )


def test_layer2_defaults_and_derived_vrid():
    from haagent.config import derived_vrid

    cfg = parse_config(
        _l2({"name": "a"}, {"name": "b", "vmac": True}, {"name": "c", "bind": False})
    )
    a, b, c = cfg.vips
    assert (a.vmac, a.bind) == (False, True)
    assert b.vmac and b.vrid == derived_vrid("b") and 1 <= b.vrid <= 255
    assert c.bind is False


def test_layer2_errors():
    key, reason = one_error(_l2({"name": "a", "vmac": True, "bind": False}))
    assert key == "vips[0].vmac" and "choose one" in reason
    key, reason = one_error(_l2({"name": "a", "vrid": 7}))
    assert key == "vips[0].vrid" and "vmac" in reason
    key, reason = one_error(_l2({"name": "a", "vmac": True, "vrid": 256}))
    assert key == "vips[0].vrid" and "from 1 to 255, found 256" in reason
    key, reason = one_error(
        _l2({"name": "a", "vmac": True, "vrid": 9}, {"name": "b", "vmac": True, "vrid": 9})
    )
    assert key == "vips[1].vrid" and "already used by VIP 'a'" in reason


# --------------------------------------------------------------------------- several addresses


def test_addresses_make_one_vip_with_its_first_address_as_primary():
    cfg = parse_config(
        vip_doc(
            {
                "name": "web",
                "addresses": ["198.51.100.10/24", "2001:db8::10", "203.0.113.10"],
                "interface": "eth0",
            },
            V("one", "198.51.100.11"),
        )
    )
    web, one = cfg.vips
    assert web.address == IPv4Interface("198.51.100.10/24")
    assert web.extra_addresses == (
        IPv6Interface("2001:db8::10/128"),
        IPv4Interface("203.0.113.10/32"),
    )
    assert web.addresses == (web.address, *web.extra_addresses)
    assert [str(ip) for ip in web.ips] == ["198.51.100.10", "2001:db8::10", "203.0.113.10"]
    assert web.families == (4, 6) and web.family == 4
    # A single address, however written, is the VIP it always was.
    assert one.addresses == (one.address,) and one.extra_addresses == () and one.families == (4,)
    listed = parse_config(vip_doc({**V(address=None), "addresses": ["198.51.100.10"]}))
    assert listed.vips[0] == parse_config(vip_doc(V())).vips[0]
    assert "198.51.100.10/24, 2001:db8::10/128, 203.0.113.10/32 on eth0" in describe(cfg)


def test_vip_config_keeps_its_positional_constructor():
    v = VipConfig("db", IPv4Interface("198.51.100.10/32"), "eth0", AnnounceConfig(count=2))
    assert v.addresses == (IPv4Interface("198.51.100.10/32"),) and v.announce.count == 2
    w = VipConfig(
        "db", IPv4Interface("198.51.100.10/32"), "eth0", extra_addresses=(IPv6Interface("::2/128"),)
    )
    assert w.families == (4, 6) and w.addresses_text == "198.51.100.10/32, ::2/128"


def test_address_and_addresses_together_is_one_error():
    key, reason = one_error(vip_doc(V(addresses=["2001:db8::10"])))
    assert key == "vips[0].addresses"
    assert "either address (one) or addresses (a list)" in reason


@pytest.mark.parametrize(
    "addresses,key,reason",
    [
        ("198.51.100.10", "vips[0].addresses", "write a list, or use address for one"),
        ({"a": 1}, "vips[0].addresses", "expected a list of addresses, found a mapping"),
        ([], "vips[0].addresses", "at least one address"),
        (
            [f"198.51.100.{i}" for i in range(1, 18)],
            "vips[0].addresses",
            "17 addresses, more than 16",
        ),
        (["198.51.100.10", 7], "vips[0].addresses[1]", "expected a string"),
        (["198.51.100.10", "2001:db8::zz"], "vips[0].addresses[1]", "Only hex digits"),
        (["198.51.100.0/24"], "vips[0].addresses[0]", "network address"),
        (["fe80::1", "198.51.100.10"], "vips[0].addresses[0]", "link-local"),
        (
            ["198.51.100.10", "2001:db8::1", "198.51.100.10/24"],
            "vips[0].addresses[2]",
            "198.51.100.10 is listed twice (also vips[0].addresses[0])",
        ),
    ],
)
def test_bad_address_lists(addresses, key, reason):
    got_key, got = one_error(vip_doc({**V(address=None), "addresses": addresses}))
    assert got_key == key and reason in got, got


def test_sixteen_addresses_are_accepted():
    many = [f"198.51.100.{i}" for i in range(1, 9)] + [f"2001:db8::{i}" for i in range(1, 9)]
    vip = parse_config(vip_doc({**V(address=None), "addresses": many})).vips[0]
    assert len(vip.addresses) == 16 and vip.families == (4, 6)


def test_neither_address_nor_addresses():
    assert errors(vip_doc({"name": "v", "interface": "eth0"})) == {"vips[0].address": "required"}


def test_every_address_is_unique_across_the_whole_config():
    errs = errors(
        vip_doc(
            V("a", "198.51.100.10"),
            {"name": "b", "addresses": ["2001:db8::1", "198.51.100.10/24"], "interface": "eth0"},
            {"name": "c", "addresses": ["203.0.113.1", "2001:DB8::1/64"], "interface": "eth0"},
            V("d", "203.0.113.1"),
        )
    )
    assert errs == {
        "vips[1].addresses[1]": "198.51.100.10 is already the address of vips[0]",
        "vips[2].addresses[1]": (
            "2001:db8::1 is already an address of vips[1] (vips[1].addresses[0])"
        ),
        "vips[3].address": "203.0.113.1 is already an address of vips[2] (vips[2].addresses[0])",
    }


def test_vmac_vrid_is_unique_per_family_for_every_family_a_vip_uses():
    v4 = {"name": "a", "address": "198.51.100.10", "vmac": True, "vrid": 9}
    v6 = {"name": "b", "address": "2001:db8::10", "vmac": True, "vrid": 9}
    both = {"name": "c", "addresses": ["198.51.100.11", "2001:db8::11"], "vmac": True, "vrid": 9}
    two4 = {"name": "d", "addresses": ["198.51.100.12", "198.51.100.13"], "vmac": True, "vrid": 8}

    def cfg(*vips: dict[str, object]) -> dict[str, object]:
        return doc(vips=[{"interface": "eth0", **v} for v in vips])

    # One VRID per family: an IPv4-only and an IPv6-only VIP may share it, and two addresses
    # of one family of one VIP share their VIP's vmac.
    parsed = parse_config(cfg(v4, v6, two4))
    assert [v.families for v in parsed.vips] == [(4,), (6,), (4,)]
    assert parse_config(cfg(both)).vips[0].families == (4, 6)
    # A v4+v6 VIP needs the VRID free in both families.
    for other in (v4, v6):
        key, reason = one_error(cfg(other, both))
        family = 4 if other is v4 else 6
        assert key == "vips[1].vrid", (key, reason)
        assert f"VRID 9 (IPv{family}) is already used by VIP {other['name']!r}" in reason
    key, reason = one_error(cfg(both, {**v6, "vrid": 9}))
    assert key == "vips[1].vrid" and "(IPv6) is already used by VIP 'c'" in reason
