"""Config for health checks, VIP health options and notify hooks: every error class."""

import copy
import os
import pickle
import socket
from pathlib import Path

import pytest
import yaml

from haagent.config import (
    PER_VIP_LIMIT,
    SHELL,
    CheckConfig,
    Config,
    ExecCheckConfig,
    HttpCheckConfig,
    InterfaceCheckConfig,
    NotifyConfig,
    TcpCheckConfig,
    check_host,
    describe,
    load_config,
    parse_config,
    program_problem,
)
from tests.unit.test_config import errors, one_error

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "haagent.example.yaml"

BASE: dict[str, object] = {
    "cluster": "db",
    "node": "pg1",
    "checks": {
        "pg": {"type": "tcp", "port": 5432},
        "web": {"type": "http", "url": "http://127.0.0.1:8080/health"},
        "script": {"type": "exec", "command": ["/bin/true", "--quick"]},
        "link": {"type": "interface"},
    },
    "vips": [
        {"name": "db", "address": "198.51.100.200", "interface": "eth0", "checks": ["pg", "link"]},
        {"name": "plain", "address": "198.51.100.201", "interface": "eth0"},
    ],
}


def _edit(target: object, changes: dict[str, object]) -> None:
    """Set each key of ``changes`` in ``target``; None deletes the key."""
    assert isinstance(target, dict)
    for k, v in changes.items():
        if v is None:
            target.pop(k, None)
        else:
            target[k] = v


def doc(**checks: object) -> dict[str, object]:
    """BASE with checks replaced or added (None deletes one)."""
    d = copy.deepcopy(BASE)
    _edit(d["checks"], checks)
    return d


def with_vip(**kw: object) -> dict[str, object]:
    """BASE with keys of vips[0] replaced (None deletes the key)."""
    d = copy.deepcopy(BASE)
    vips = d["vips"]
    assert isinstance(vips, list)
    _edit(vips[0], kw)
    return d


def check(**body: object) -> dict[str, object]:
    """BASE with one more check, 'x', used by vips[0] so that it must be valid."""
    d = doc(x=body)
    vips = d["vips"]
    assert isinstance(vips, list)
    vips[0]["checks"] = ["pg", "x"]
    return d


# --------------------------------------------------------------------------- happy paths


def test_checks_parse_into_one_frozen_dataclass_per_type_with_defaults():
    cfg = parse_config(BASE)
    pg = cfg.checks["pg"]
    assert pg == TcpCheckConfig(name="pg", port=5432)
    assert isinstance(pg, CheckConfig) and pg.type == "tcp"
    assert (pg.host, pg.interval, pg.timeout, pg.rise, pg.fall) == ("127.0.0.1", 2.0, 1.0, 2, 3)
    web = cfg.checks["web"]
    assert isinstance(web, HttpCheckConfig) and web.type == "http"
    assert (web.method, web.expect_status, web.expect_body, web.tls_verify) == (
        "GET",
        (),
        None,
        True,
    )
    assert cfg.checks["script"] == ExecCheckConfig(name="script", command=("/bin/true", "--quick"))
    link = cfg.checks["link"]
    assert isinstance(link, InterfaceCheckConfig) and link.interface is None
    assert link.interface_for(cfg.vip("db")) == "eth0"
    with pytest.raises(AttributeError):
        pg.port = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.checks["new"] = pg  # type: ignore[index]


def test_vip_health_defaults_and_unused_checks_are_fine():
    cfg = parse_config(BASE)
    db, plain = cfg.vip("db"), cfg.vip("plain")
    assert db.checks == ("pg", "link") and [c.name for c in cfg.vip_checks("db")] == ["pg", "link"]
    assert plain.checks == () and cfg.vip_checks(plain) == ()
    assert plain.hold_down == 5.0 and plain.when_all_unhealthy == "release"
    assert plain.notify == NotifyConfig() and plain.notify.timeout == 10.0
    assert plain.notify.command("acquire") is None


def test_config_with_checks_stays_hashable_picklable_and_copyable():
    cfg = parse_config(BASE)
    assert hash(cfg) == hash(parse_config(BASE)) and cfg == parse_config(BASE)
    assert pickle.loads(pickle.dumps(cfg)) == cfg
    assert copy.deepcopy(cfg) == cfg
    assert cfg.checks == dict(cfg.checks) and repr(cfg.checks).startswith("CheckMap(")
    assert cfg != parse_config(doc(pg={"type": "tcp", "port": 5433}))


def test_old_configs_and_constructors_still_work():
    cfg = parse_config({"vips": [{"name": "v", "address": "198.51.100.10", "interface": "eth0"}]})
    assert dict(cfg.checks) == {} and cfg.vips[0].checks == ()
    assert dict(Config().checks) == {}


def test_every_option_given():
    d = check(
        type="http",
        url="https://[2001:db8::1]:8443/health?full=1",
        method="head",
        expect_status=[200, 204, 200],
        tls_verify=False,
        interval=5,
        timeout=5,
        rise=1,
        fall=1,
    )
    vips = d["vips"]
    assert isinstance(vips, list)
    vips[0].update(
        hold_down=0,
        when_all_unhealthy="keep",
        notify={
            "on_acquire": ["/usr/local/bin/notify", "acquire"],
            "on_release": "/usr/local/bin/notify release",
            "on_fault": "logger -t haagent fault",
            "timeout": 2.5,
        },
    )
    cfg = parse_config(d)
    x = cfg.checks["x"]
    assert isinstance(x, HttpCheckConfig)
    assert x.method == "HEAD" and x.expect_status == (200, 204) and x.tls_verify is False
    assert (x.interval, x.timeout, x.rise, x.fall) == (5.0, 5.0, 1, 1)
    db = cfg.vip("db")
    assert db.hold_down == 0 and db.when_all_unhealthy == "keep"
    assert db.notify == NotifyConfig(
        on_acquire=("/usr/local/bin/notify", "acquire"),
        on_release=(SHELL, "-c", "/usr/local/bin/notify release"),
        on_fault=(SHELL, "-c", "logger -t haagent fault"),
        timeout=2.5,
    )
    assert db.notify.command("release") == (SHELL, "-c", "/usr/local/bin/notify release")


def test_exec_command_string_runs_with_the_shell():
    cfg = parse_config(check(type="exec", command="pg_isready -q || exit 1"))
    x = cfg.checks["x"]
    assert isinstance(x, ExecCheckConfig) and x.command == (SHELL, "-c", "pg_isready -q || exit 1")


def test_expect_status_single_integer_and_status_ok():
    x = parse_config(check(type="http", url="http://h.example:80/", expect_status=503)).checks["x"]
    assert isinstance(x, HttpCheckConfig) and x.expect_status == (503,)
    assert x.status_ok(503) and not x.status_ok(200)
    default = HttpCheckConfig(name="d", url="http://h/")
    assert [default.status_ok(s) for s in (199, 200, 302, 399, 400, 500)] == [
        False,
        True,
        True,
        True,
        False,
        False,
    ]


def test_tcp_host_may_be_a_name_or_an_ipv6_address():
    for host in ("db.example.", "pg-1", "2001:db8::5", "198.51.100.5"):
        x = parse_config(check(type="tcp", host=host, port=1)).checks["x"]
        assert isinstance(x, TcpCheckConfig) and x.host == host


def test_interface_check_with_its_own_interface():
    x = parse_config(check(type="interface", interface="bond0")).checks["x"]
    assert isinstance(x, InterfaceCheckConfig) and x.interface == "bond0"


def test_timeout_may_equal_interval():
    parse_config(check(type="tcp", port=1, interval=1, timeout=1))


# --------------------------------------------------------------------------- check errors


def test_checks_must_be_a_mapping():
    key, reason = one_error({**BASE, "checks": ["pg"], "vips": [BASE["vips"][1]]})  # type: ignore[index]
    assert key == "checks" and "expected a mapping of check names" in reason


def test_check_must_be_a_mapping():
    errs = errors(doc(x="tcp"))
    assert errs == {"checks.x": "expected a mapping with at least 'type', found a string ('tcp')"}


def test_check_name_follows_the_name_rule():
    key, reason = one_error(doc(PG={"type": "tcp", "port": 1}))
    assert key == "checks.PG" and "names are lower-case" in reason


def test_type_is_required():
    key, reason = one_error(check(port=1))
    assert key == "checks.x.type" and reason == "required; one of: tcp, http, exec, interface"


def test_unknown_type_did_you_mean():
    key, reason = one_error(check(type="htpp", url="http://h/"))
    assert key == "checks.x.type"
    assert reason == "'htpp' is not one of tcp, http, exec, interface; did you mean 'http'?"


def test_unknown_type_still_reports_unknown_keys_only():
    errs = errors(check(type="nope", prot=1))
    assert set(errs) == {"checks.x.type", "checks.x.prot"}
    assert "did you mean 'port'" in errs["checks.x.prot"]


def test_key_of_another_type_is_named_as_such():
    key, reason = one_error(check(type="tcp", port=1, url="http://h/"))
    assert key == "checks.x.url"
    assert reason == "'url' belongs to http checks; this check is type 'tcp'"


def test_unknown_key_did_you_mean():
    key, reason = one_error(check(type="tcp", port=1, intervall=3))
    assert key == "checks.x.intervall" and "did you mean 'interval'" in reason


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("interval", 0, "from 0.1 to 3600 seconds, found 0"),
        ("interval", 0.05, "from 0.1 to 3600 seconds, found 0.05"),
        ("interval", 1.0e308, "from 0.1 to 3600 seconds, found 1e+308"),
        ("interval", 10**400, "far out of range: found an integer of 401 digits"),
        ("interval", "2s", "expected a number of seconds, found a string"),
        ("interval", True, "found true/false"),
        ("interval", float("inf"), "expected a finite number"),
        ("timeout", 0, "at least 0.01 seconds, found 0"),
        ("timeout", -1, "at least 0.01 seconds, found -1"),
        ("timeout", float("nan"), "expected a finite number"),
        ("rise", 0, "from 1 to 100, found 0"),
        ("fall", 0, "from 1 to 100, found 0"),
        ("fall", 101, "from 1 to 100, found 101"),
        ("rise", 10**1000, "from 1 to 100, found an integer of 1001 digits"),
        ("rise", 1.5, "expected an integer"),
        ("fall", "3", "expected an integer, found a string"),
    ],
)
def test_common_fields_wrong_type_or_range(field, value, needle):
    key, reason = one_error(check(type="tcp", port=1, **{field: value}))
    assert key == f"checks.x.{field}" and needle in reason


def test_timeout_must_not_exceed_interval_and_says_why():
    key, reason = one_error(check(type="tcp", port=1, interval=1, timeout=1.5))
    assert key == "checks.x.timeout"
    assert "must not be more than interval (1 s), found 1.5" in reason
    assert "never overlap" in reason and "fall x interval" in reason


def test_timeout_against_the_default_interval():
    key, reason = one_error(check(type="tcp", port=1, timeout=3))
    assert key == "checks.x.timeout" and "interval (2 s)" in reason


@pytest.mark.parametrize(
    ("body", "key", "needle"),
    [
        ({"type": "tcp"}, "checks.x.port", "required for tcp checks"),
        ({"type": "tcp", "port": 0}, "checks.x.port", "out of range 1-65535"),
        ({"type": "tcp", "port": 70000}, "checks.x.port", "out of range 1-65535"),
        ({"type": "tcp", "port": "5432"}, "checks.x.port", "expected an integer"),
        ({"type": "tcp", "port": 1, "host": "[::1]"}, "checks.x.host", "without brackets"),
        ({"type": "tcp", "port": 1, "host": "300.1.1.1"}, "checks.x.host", "not a valid IPv4"),
        ({"type": "tcp", "port": 1, "host": "a b"}, "checks.x.host", "not a valid host name"),
        ({"type": "tcp", "port": 1, "host": "2001:db8::g"}, "checks.x.host", "IPv6"),
        ({"type": "tcp", "port": 1, "host": 5}, "checks.x.host", "expected a string"),
        ({"type": "http"}, "checks.x.url", "required for http checks"),
        ({"type": "http", "url": "ftp://h/"}, "checks.x.url", "scheme 'ftp' is not supported"),
        ({"type": "http", "url": "h/health"}, "checks.x.url", "scheme 'none'"),
        ({"type": "http", "url": "http:///x"}, "checks.x.url", "the host is missing"),
        ({"type": "http", "url": "http://u:p@h/"}, "checks.x.url", "credentials"),
        ({"type": "http", "url": "http://h:99999/"}, "checks.x.url", "out of range"),
        ({"type": "http", "url": "http://h:x/"}, "checks.x.url", "'http://h:x/'"),
        ({"type": "http", "url": "http://bad_host/"}, "checks.x.url", "not a valid host"),
        ({"type": "http", "url": "http://h/", "method": "POST"}, "checks.x.method", "GET, HEAD"),
        (
            {"type": "http", "url": "http://h/", "method": "GTE"},
            "checks.x.method",
            "did you mean 'GET'",
        ),
        (
            {"type": "http", "url": "http://h/", "expect_status": 600},
            "checks.x.expect_status",
            "not an HTTP status code",
        ),
        (
            {"type": "http", "url": "http://h/", "expect_status": [200, "204"]},
            "checks.x.expect_status[1]",
            "expected an HTTP status code",
        ),
        (
            {"type": "http", "url": "http://h/", "expect_status": []},
            "checks.x.expect_status",
            "leave it out",
        ),
        (
            {"type": "http", "url": "http://h/", "expect_body": ""},
            "checks.x.expect_body",
            "must not be empty",
        ),
        (
            {"type": "http", "url": "http://h/", "method": "HEAD", "expect_body": "ok"},
            "checks.x.expect_body",
            "HEAD, which has no body",
        ),
        (
            {"type": "http", "url": "http://h/", "tls_verify": False},
            "checks.x.tls_verify",
            "not https, so it would be ignored",
        ),
        (
            {"type": "http", "url": "https://h/", "tls_verify": "no"},
            "checks.x.tls_verify",
            "expected true or false",
        ),
        ({"type": "exec"}, "checks.x.command", "required for exec checks"),
        ({"type": "exec", "command": []}, "checks.x.command", "must not be empty"),
        ({"type": "exec", "command": "  "}, "checks.x.command", "must not be empty"),
        ({"type": "exec", "command": ["", "a"]}, "checks.x.command[0]", "must not be empty"),
        ({"type": "exec", "command": ["/bin/x", 5]}, "checks.x.command[1]", "quote it"),
        ({"type": "exec", "command": {"a": 1}}, "checks.x.command", "expected a list"),
        (
            {"type": "exec", "command": ["/bin/true"], "per_vip": "yes"},
            "checks.x.per_vip",
            "expected true or false",
        ),
        (
            {"type": "exec", "command": ["/bin/true"], "per-vip": True},
            "checks.x.per-vip",
            "did you mean 'per_vip'?",
        ),
        (
            {"type": "tcp", "port": 1, "per_vip": True},
            "checks.x.per_vip",
            "'per_vip' belongs to exec checks; this check is type 'tcp'",
        ),
        ({"type": "interface", "interface": "eth0:1"}, "checks.x.interface", "address labels"),
        ({"type": "interface", "interface": "x" * 16}, "checks.x.interface", "15 bytes"),
    ],
)
def test_type_specific_errors(body, key, needle):
    errs = errors(check(**body))
    assert list(errs) == [key], errs
    assert needle in errs[key], errs[key]


@pytest.mark.parametrize(
    ("body", "key", "needle"),
    [
        ({"type": "http", "url": "http://h/a b"}, "checks.x.url", "contains ' '; percent-encode"),
        ({"type": "http", "url": "http://h/\x7f"}, "checks.x.url", "percent-encode"),
        ({"type": "http", "url": "http://h/" + "a" * 2048}, "checks.x.url", "at most 2048"),
        (
            {"type": "http", "url": "http://h/", "expect_body": "b" * 4097},
            "checks.x.expect_body",
            "at most 4096",
        ),
        (
            {"type": "http", "url": "http://h/", "expect_status": [200] * 101},
            "checks.x.expect_status",
            "101 status codes, more than 100",
        ),
        (
            {"type": "http", "url": "http://h/", "expect_status": 10**400},
            "checks.x.expect_status",
            "an integer of 401 digits is not an HTTP status code",
        ),
        ({"type": "tcp", "port": 10**30}, "checks.x.port", "port an integer of 31 digits is out"),
        ({"type": "tcp", "port": 1, "host": "h" * 256}, "checks.x.host", "at most 255"),
        ({"type": "exec", "command": ["/bin/true", "a\0"]}, "checks.x.command[1]", "NUL"),
        ({"type": "interface", "interface": "\ud800"}, "checks.x.interface", "lone surrogate"),
    ],
)
def test_check_values_are_bounded(body, key, needle):
    errs = errors(check(**body))
    assert list(errs) == [key], errs
    assert needle in errs[key], errs[key]


def test_the_number_of_checks_is_bounded():
    from haagent.config import MAX_CHECKS

    d = doc(**{f"c{i}": {"type": "tcp", "port": 1} for i in range(MAX_CHECKS - 4 + 1)})
    key, reason = one_error(d)  # BASE has 4 checks already; vips[0] names two of them
    assert key == "checks"
    assert reason.startswith(f"{MAX_CHECKS + 1} checks, more than {MAX_CHECKS}: each check")
    parse_config(doc(**{f"c{i}": {"type": "tcp", "port": 1} for i in range(MAX_CHECKS - 4)}))
    key, reason = one_error(with_vip(checks=["pg"] * 65))
    assert key == "vips[0].checks" and reason == "65 checks, more than 64 for one VIP"


def test_every_error_of_a_check_is_reported_at_once():
    errs = errors(check(type="tcp", port=0, rise=0, timeout=9, bogus=1))
    assert set(errs) == {"checks.x.port", "checks.x.rise", "checks.x.timeout", "checks.x.bogus"}


# --------------------------------------------------------------------------- per_vip


def many(n: int, body: dict[str, object]) -> dict[str, object]:
    """BASE with check 'x' = ``body`` used by ``n`` more VIPs, v000 ... (plain ones otherwise)."""
    d = doc(x=body)
    vips = d["vips"]
    assert isinstance(vips, list)
    vips += [
        {
            "name": f"v{i:03d}",
            "address": f"198.18.{i // 200}.{i % 200 + 1}",
            "interface": "eth0",
            "checks": ["x"],
        }
        for i in range(n)
    ]
    return d


def test_exec_checks_are_shared_unless_per_vip():
    shared = parse_config(many(3, {"type": "exec", "command": "check-all"})).checks["x"]
    assert isinstance(shared, ExecCheckConfig) and shared.per_vip is False
    x = parse_config(many(3, {"type": "exec", "command": ["/bin/true"], "per_vip": True}))
    assert x.checks["x"] == ExecCheckConfig(name="x", command=("/bin/true",), per_vip=True)
    assert ExecCheckConfig(name="x", command=("/bin/true",)).per_vip is False


def test_per_vip_is_bounded_and_says_what_to_do_instead():
    body = {"type": "exec", "command": ["/bin/true"], "per_vip": True, "interval": 5}
    parse_config(many(PER_VIP_LIMIT, body))
    key, reason = one_error(many(PER_VIP_LIMIT + 1, body))
    assert key == "checks.x.per_vip"
    assert reason.startswith(
        f"used by {PER_VIP_LIMIT + 1} VIPs (v000, v001, v002, ...), more than {PER_VIP_LIMIT}: "
        "per_vip starts one process per VIP every 5 s; "
    )
    assert "HAAGENT_VIPS" in reason and "split the VIPs" in reason
    # Without per_vip the same VIPs cost one run per interval, whatever their number.
    parse_config(many(200, {"type": "exec", "command": ["/bin/true"]}))


@pytest.mark.parametrize(
    ("command", "shown"),
    [
        ('test "$HAAGENT_STATE" = holder', "$HAAGENT_STATE"),
        ("ping -c1 ${HAAGENT_ADDRESS} && ip link show $HAAGENT_INTERFACE", None),
        (["/usr/local/bin/check", "--vip=$HAAGENT_VIP"], "$HAAGENT_VIP"),
    ],
)
def test_a_shared_command_naming_a_per_vip_variable_is_refused(command, shown):
    key, reason = one_error(many(2, {"type": "exec", "command": command}))
    assert key == "checks.x.command"
    if shown is None:
        shown = "$HAAGENT_ADDRESS and $HAAGENT_INTERFACE"
    assert reason.startswith(
        f"uses {shown}, which a shared run does not set: 2 VIPs use this check (v000, v001) "
        "and it runs once for all of them, with HAAGENT_VIPS and HAAGENT_HOLDING instead; "
    )
    assert reason.endswith("or set per_vip: true to run it once per VIP")


@pytest.mark.parametrize(
    "body",
    [
        {"type": "exec", "command": 'test "$HAAGENT_STATE" = holder', "per_vip": True},
        {"type": "exec", "command": 'for v in $HAAGENT_VIPS; do :; done; echo "$HAAGENT_HOLDING"'},
    ],
)
def test_per_vip_variables_with_per_vip_and_the_lists_when_shared_are_fine(body):
    parse_config(many(5, body))


def test_a_check_used_by_one_vip_keeps_its_per_vip_variables():
    parse_config(many(1, {"type": "exec", "command": 'test "$HAAGENT_STATE" = holder'}))
    parse_config(many(0, {"type": "exec", "command": 'test "$HAAGENT_STATE" = holder'}))


def test_describe_says_when_a_check_runs_per_vip():
    text = describe(parse_config(many(2, {"type": "exec", "command": "true", "per_vip": True})))
    assert "x     exec true: every 2 s, timeout 1 s, rise 2, fall 3, once per VIP" in text
    text = describe(parse_config(many(2, {"type": "exec", "command": "true"})))
    assert "x     exec true: every 2 s, timeout 1 s, rise 2, fall 3" in text
    assert "once per VIP" not in text


# --------------------------------------------------------------------------- VIP errors


def test_unknown_check_did_you_mean():
    key, reason = one_error(with_vip(checks=["pg", "lnk"]))
    assert key == "vips[0].checks[1]" and reason == "unknown check 'lnk'; did you mean 'link'?"


def test_unknown_check_lists_the_defined_ones():
    _, reason = one_error(with_vip(checks=["zzzz"]))
    assert reason == "unknown check 'zzzz'; defined checks: link, pg, script, web"


def test_unknown_check_without_any_checks_defined():
    d = with_vip(checks=["pg"])
    del d["checks"]
    key, reason = one_error(d)
    assert key == "vips[0].checks[0]" and "define it under the top-level checks:" in reason


def test_a_check_listed_twice():
    key, reason = one_error(with_vip(checks=["pg", "link", "pg"]))
    assert key == "vips[0].checks[2]" and "listed twice" in reason


def test_checks_must_be_a_list_of_names():
    key, reason = one_error(with_vip(checks="pg"))
    assert key == "vips[0].checks" and "write a list, e.g. [pg]" in reason
    key, reason = one_error(with_vip(checks=[5]))
    assert key == "vips[0].checks[0]" and "expected a string" in reason


def test_a_vip_using_an_invalid_check_reports_only_the_check():
    d = doc(pg={"type": "tcp"})
    assert errors(d) == {"checks.pg.port": "required for tcp checks"}


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("hold_down", -1, "must be from 0 to 3600 seconds, found -1"),
        ("hold_down", 1e10, "must be from 0 to 3600 seconds, found 1e+10"),
        ("hold_down", "10s", "expected a number of seconds"),
        ("when_all_unhealthy", "kep", "'kep' is not one of release, keep; did you mean 'keep'?"),
        ("when_all_unhealthy", True, "expected a string"),
    ],
)
def test_vip_health_option_errors(field, value, needle):
    key, reason = one_error(with_vip(**{field: value}))
    assert key == f"vips[0].{field}" and needle in reason


def test_keep_without_checks_would_do_nothing():
    key, reason = one_error(with_vip(checks=None, when_all_unhealthy="keep"))
    assert key == "vips[0].when_all_unhealthy" and "no checks" in reason
    parse_config(with_vip(checks=None, when_all_unhealthy="release"))


@pytest.mark.parametrize(
    ("notify", "key", "needle"),
    [
        ({"on_acquir": "x"}, "vips[0].notify.on_acquir", "did you mean 'on_acquire'"),
        ({"on_fault": []}, "vips[0].notify.on_fault", "must not be empty"),
        ({"on_release": 5}, "vips[0].notify.on_release", "expected a list"),
        ({"on_acquire": "x", "timeout": 0}, "vips[0].notify.timeout", "from 0.1 to 3600 seconds"),
        (
            {"on_acquire": "x", "timeout": 1.0e308},
            "vips[0].notify.timeout",
            "from 0.1 to 3600 seconds, found 1e+308",
        ),
        ({"on_acquire": "a\0b"}, "vips[0].notify.on_acquire", "NUL character"),
        ({"on_acquire": ["x", "\ud800"]}, "vips[0].notify.on_acquire[1]", "lone surrogate"),
        ({"on_acquire": ["x"] * 257}, "vips[0].notify.on_acquire", "257 arguments, more than 256"),
        ({"on_acquire": "x" * 8193}, "vips[0].notify.on_acquire", "at most 8192"),
        (
            {"on_acquire": ["x" * 5000, "y" * 5000]},
            "vips[0].notify.on_acquire",
            "10000 characters in all, at most 8192",
        ),
        ("/bin/notify", "vips[0].notify", "expected a mapping"),
    ],
)
def test_notify_errors(notify, key, needle):
    errs = errors(with_vip(notify=notify))
    assert list(errs) == [key] and needle in errs[key], errs


def test_vip_unknown_key_suggests_the_new_keys():
    key, reason = one_error(with_vip(hold_dwn=3))
    assert key == "vips[0].hold_dwn" and "did you mean 'hold_down'" in reason


# --------------------------------------------------------------------------- example and describe


def test_example_file_has_checks_and_notify():
    cfg = load_config(EXAMPLE)
    assert {"pg", "web", "pg-script", "link"} <= set(cfg.checks)
    db = cfg.vip("db")
    assert db.checks and db.notify.on_acquire is not None


def test_describe_lists_used_checks():
    text = describe(parse_config(BASE))
    assert "checks pg, link)" in text
    assert "checks (2 used):" in text
    assert "pg    tcp 127.0.0.1:5432: every 2 s, timeout 1 s, rise 2, fall 3" in text
    assert "link  interface (the VIP's interface)" in text
    assert "web" not in text


# --------------------------------------------------------------------------- host checks


def _host_cfg(tmp_path: Path, *, checks: dict[str, object], notify: object = None) -> Config:
    iface = socket.if_nameindex()[0][1]
    vip: dict[str, object] = {
        "name": "db",
        "address": "198.51.100.200",
        "interface": iface,
        "checks": list(checks),
    }
    if notify is not None:
        vip["notify"] = notify
    data: dict[str, object] = {
        "node": "n1",
        "checks": {**checks, "unused": {"type": "exec", "command": "/nope/x"}},
        "vips": [vip],
    }
    path = tmp_path / "h.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(path)


def test_host_checks_accept_programs_that_exist(tmp_path):
    cfg = _host_cfg(
        tmp_path,
        checks={
            "a": {"type": "exec", "command": ["true"]},
            "b": {"type": "exec", "command": ["/bin/true"]},
            "c": {"type": "exec", "command": "test -e /etc && exit 0"},  # builtins not judged
            "d": {"type": "exec", "command": "/bin/true x"},
            "e": {"type": "interface", "interface": "lo"},
        },
        notify={"on_acquire": "echo hi", "on_fault": ["sh", "-c", "true"]},
    )
    assert check_host(cfg) == []  # "unused" points nowhere but never runs here


def test_host_checks_find_programs_that_cannot_run(tmp_path):
    plain = tmp_path / "not-executable"
    plain.write_text("#!/bin/sh\n")
    plain.chmod(0o644)
    cfg = _host_cfg(
        tmp_path,
        checks={
            "a": {"type": "exec", "command": ["/nonexistent/check"]},
            "b": {"type": "exec", "command": ["no-such-program-haagent"]},
            "c": {"type": "exec", "command": [str(plain)]},
            "d": {"type": "exec", "command": [str(tmp_path)]},
            "e": {"type": "exec", "command": "/nonexistent/check --quick"},
            "f": {"type": "interface", "interface": "nosuch0"},
        },
        notify={"on_release": ["/nonexistent/notify", "release"]},
    )
    got = {e.key: e.reason for e in check_host(cfg)}
    assert got == {
        "checks.a.command": "'/nonexistent/check' does not exist",
        "checks.b.command": "'no-such-program-haagent' is not an executable file in PATH",
        "checks.c.command": f"{str(plain)!r} is not an executable file",
        "checks.d.command": f"{str(tmp_path)!r} is not an executable file",
        "checks.e.command": "'/nonexistent/check' does not exist",
        "checks.f.interface": got["checks.f.interface"],
        "vips[0].notify.on_release": "'/nonexistent/notify' does not exist",
    }
    assert got["checks.f.interface"].startswith("no interface 'nosuch0' on this host (it has: ")
    assert all(e.file == str(tmp_path / "h.yaml") for e in check_host(cfg))


def test_program_problem_shell_quoting():
    assert program_problem((SHELL, "-c", "echo 'unterminated")) is not None
    assert program_problem((SHELL, "-c", "exit 0")) is None
    if os.geteuid() != 0:  # root may execute anything with an x bit, so only as a user
        assert program_problem(("/etc/passwd",)) == "'/etc/passwd' is not an executable file"
