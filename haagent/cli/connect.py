"""How the CLI's etcd commands reach etcd: options, environment variables and an agent config
become one :class:`Target`, and a connection to it.

They run from any machine that can reach etcd, with no agent socket: everything they show is
in etcd (docs/keys.md). The read-only ones (status, members, watch) need only *read*
permission on the cluster's prefix (docs/security.md, "A read-only role for the CLI"), so
their connection proves reading, never writing — unlike the agent's :meth:`Store.connect`,
which proves both. The operator commands (move, drain, undrain) connect the same way and
decide on what they read; only a write they decided on needs write permission (docs/security.md,
"An operator role"), and :func:`writing` turns its refusal into one line naming the key.

Every failure becomes a :class:`CliError`: one line, no traceback, naming the endpoint and why.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import textwrap
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from haagent.cli.picture import Picture, build
from haagent.cluster.schema import ROOT, Keys, valid_name
from haagent.cluster.view import ClusterView
from haagent.config import EtcdConfig

EXIT_OK = 0  # move/drain/undrain: done, or so already
EXIT_PROBLEM = 1  # status: a VIP is not held; move/drain: the cluster's state refuses it now
EXIT_ERROR = 2  # etcd cannot be read or written, bad options, unknown cluster, VIP or node

DEFAULT_TIMEOUT = 2.0  # seconds per etcd call: a CLI is not bound by an agent's lease margin

# option dest -> environment variable; an option given on the command line wins.
ENV = {
    "config": "HAAGENT_CONFIG",
    "endpoints": "HAAGENT_ENDPOINTS",
    "cacert": "HAAGENT_CACERT",
    "cert": "HAAGENT_CERT",
    "key": "HAAGENT_KEY",
    "user": "HAAGENT_USER",
    "password_file": "HAAGENT_PASSWORD_FILE",
    "cluster": "HAAGENT_CLUSTER",
}

# Config key names in messages from haagent.config, as the options that set them here.
_KEY_TO_OPTION = (
    ("etcd.password_file", "--password-file"),
    ("etcd.password", "--password-file"),
    ("etcd.username", "--user"),
    ("etcd.endpoints", "--endpoints"),
    ("etcd.tls.cert", "--cert"),
    ("etcd.tls.key", "--key"),
    ("etcd.tls.ca", "--cacert"),
    ("etcd.tls", "--cacert"),
)

CONNECTION_HELP = """\
connection (each also from an environment variable; an option wins over it):
  -c/--config FILE       endpoints, TLS, user and cluster of an agent config   HAAGENT_CONFIG
  --endpoints URL,...    etcd client URLs (default http://127.0.0.1:2379)     HAAGENT_ENDPOINTS
  --cacert/--cert/--key  CA bundle; client certificate and key (CN = user)    HAAGENT_CACERT, …
  --user, --password-file FILE  etcd user and a file holding its password     HAAGENT_USER, …
  --cluster NAME         the cluster (default: the config's, else "default")  HAAGENT_CLUSTER
Reading needs only an etcd role with read permission on /haagent/v1/<cluster>/."""

# The operator commands' line in place of the last one above.
WRITE_HELP = (
    "Needs an etcd role with read permission on /haagent/v1/<cluster>/ and write permission\n"
    'on {what} (docs/security.md, "An operator role").'
)


class CliError(Exception):
    """A failure the user can fix: printed as one line, exit code 2."""


@dataclass(frozen=True)
class Target:
    etcd: EtcdConfig
    cluster: str

    @property
    def keys(self) -> Keys:
        return Keys(self.cluster)


def add_connection_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("connection")
    group.add_argument("-c", "--config", type=Path, help="take etcd settings from an agent config")
    group.add_argument("--endpoints", help="comma-separated etcd client URLs")
    group.add_argument("--cacert", type=Path, help="CA bundle that signed etcd's certificate")
    group.add_argument("--cert", type=Path, help="client certificate (its CN is the etcd user)")
    group.add_argument("--key", type=Path, help="the client certificate's private key")
    group.add_argument("--user", help="etcd user name (needs --password-file and https)")
    group.add_argument("--password-file", type=Path, help="file holding the etcd password")
    group.add_argument("--cluster", help="cluster name")
    group.add_argument(
        "--etcd-timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help="seconds per etcd call (default: %(default)s)",
    )


def subcommand(
    sub: Any, name: str, *, help: str, description: str, examples: str, writes: str | None = None
) -> argparse.ArgumentParser:
    """A subparser in the etcd commands' common style: description, examples, options.
    ``writes``: the keys an operator command writes, for the permission line."""
    connection = CONNECTION_HELP
    if writes is not None:
        connection = connection.rsplit("\n", 1)[0] + "\n" + WRITE_HELP.format(what=writes)
    epilog = f"examples:\n{textwrap.indent(examples.strip(), '  ')}\n\n{connection}"
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser


def _option(args: argparse.Namespace, dest: str, env: Mapping[str, str]) -> Any:
    value = getattr(args, dest, None)
    if value is None and env.get(ENV[dest]):
        text = env[ENV[dest]]
        return text if dest in ("endpoints", "user", "cluster") else Path(text)
    return value


def _flagged(reason: str) -> str:
    for key, option in _KEY_TO_OPTION:
        reason = reason.replace(key, option)
    return reason


def resolve(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> Target:
    """Options, then environment variables, then the agent config (``--config``)."""
    from haagent.config import ConfigErrors, _Collector, _parse_etcd, load_config

    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    cluster: str | None = None
    config = _option(args, "config", env)
    if config is not None:
        try:
            cfg = load_config(config)
        except ConfigErrors as exc:
            first = exc.errors[0] if exc.errors else "unreadable"
            raise CliError(f"--config: {first}") from None
        cluster = cfg.cluster
        raw = _raw_etcd(cfg.etcd)
    endpoints = _option(args, "endpoints", env)
    if endpoints is not None:
        raw["endpoints"] = [e.strip() for e in str(endpoints).split(",") if e.strip()]
    tls = dict(raw.get("tls") or {})
    for dest, key in (("cacert", "ca"), ("cert", "cert"), ("key", "key")):
        value = _option(args, dest, env)
        if value is not None:
            tls[key] = str(value)
    if tls:
        raw["tls"] = tls
    user = _option(args, "user", env)
    if user is not None:
        raw["username"] = user
    password_file = _option(args, "password_file", env)
    if password_file is not None:
        raw.pop("password", None)
        raw["password_file"] = str(password_file)
    col = _Collector("options", Path.cwd())
    etcd, _ = _parse_etcd(col, raw)
    errors = col.all_errors()
    if errors:
        err = errors[0]
        raise CliError(_flagged(f"{err.key}: {err.reason}" if err.key else err.reason))
    cluster = _option(args, "cluster", env) or cluster or "default"
    assert cluster is not None
    if not valid_name(cluster):
        raise CliError(f"--cluster: {cluster[:80]!r} is not a cluster name")
    timeout = getattr(args, "etcd_timeout", None) or DEFAULT_TIMEOUT
    if not 0.05 <= timeout <= 300:
        raise CliError("--etcd-timeout: must be between 0.05 and 300 seconds")
    return Target(replace(etcd, timeout=timeout, retry_interval=1.0), cluster)


def _raw_etcd(etcd: EtcdConfig) -> dict[str, Any]:
    """An EtcdConfig as the mapping it was parsed from, so options can override parts of it."""
    raw: dict[str, Any] = {"endpoints": list(etcd.endpoints)}
    if etcd.tls is not None:
        raw["tls"] = {
            k: str(v)
            for k, v in (("ca", etcd.tls.ca), ("cert", etcd.tls.cert), ("key", etcd.tls.key))
            if v is not None
        }
    if etcd.username is not None:
        raw["username"] = etcd.username
    if etcd.password_file is not None:
        raw["password_file"] = str(etcd.password_file)
    elif etcd.password is not None:
        raw["password"] = etcd.password
    return raw


# --------------------------------------------------------------------------- connecting

# gRPC's words for the common reasons, shortened for a one-line message.
_REASONS = (
    (re.compile(r"Connection refused", re.I), "connection refused"),
    (re.compile(r"No route to host", re.I), "no route to host"),
    (re.compile(r"Network is unreachable", re.I), "network unreachable"),
    (re.compile(r"DNS resolution failed|Name or service not known", re.I), "name not resolved"),
    (re.compile(r"Deadline Exceeded|timed out|Timeout", re.I), "no answer in time"),
)


def explain(exc: BaseException, target: Target) -> str:
    """One line for a failed etcd call: auth refused, TLS mismatch, or unreachable and why."""
    from haagent.store.errors import _rpc_error, _tls_problem, describe_error

    prefix = target.keys.prefix
    rpc = _rpc_error(exc)
    details = rpc[2] if rpc is not None else ""
    code = getattr(rpc[0], "name", "") if rpc is not None else ""
    what = rpc[1] if rpc is not None else describe_error(exc)
    if code == "UNAUTHENTICATED" and "security level" in details:
        return f"--user/--password-file need https:// endpoints and --cacert ({what})"
    if code == "INVALID_ARGUMENT" and "authentication failed" in details:
        return f"auth refused: wrong --user or password ({what})"
    if code == "INVALID_ARGUMENT" and "user name is empty" in details:
        return (
            "auth refused: etcd requires authentication; give --user and --password-file, "
            f"or a client certificate (--cert/--key) whose CN is an etcd user ({what})"
        )
    if code in ("PERMISSION_DENIED", "UNAUTHENTICATED"):
        return (
            f"auth refused: this etcd user may not read {prefix}; grant its role read on that "
            f"prefix ({what})"
        )
    if code == "FAILED_PRECONDITION" and "authentication is not enabled" in details:
        return f"--user is set but authentication is off in etcd ({what})"
    tls = _tls_problem(exc)
    if tls is not None:
        return _flagged(tls[0].replace("etcd.tls.cert/key", "--cert/--key"))
    for pattern, short in _REASONS:
        if pattern.search(details) or pattern.search(str(exc)):
            return short  # gRPC's own wording adds nothing but noise here
    return what


def _endpoints(etcd: EtcdConfig, only: int | None = None) -> list[Any]:
    """pyetcd endpoints as the agent's store builds them (haagent/store/client.py)."""
    import grpc
    import pyetcd

    from haagent.store.client import _grpc_options

    creds = None
    tls = etcd.tls
    if tls is not None:
        try:
            creds = grpc.ssl_channel_credentials(
                tls.ca.read_bytes() if tls.ca else None,
                tls.key.read_bytes() if tls.key else None,
                tls.cert.read_bytes() if tls.cert else None,
            )
        except OSError as exc:
            raise CliError(f"cannot read {exc.filename}: {exc.strerror}") from None
    parsed = etcd.parsed_endpoints()
    chosen = parsed if only is None else (parsed[only],)
    return [
        pyetcd.Endpoint(
            f"[{host}]" if ":" in host else host,
            port,
            secure=secure,
            creds=creds if secure else None,
            time_retry=etcd.retry_interval,
            opts=_grpc_options(),
        )
        for host, port, secure in chosen
    ]


def _client(etcd: EtcdConfig, endpoints: list[Any]) -> Any:
    import pyetcd

    return pyetcd.MultiEndpointEtcd3Client(
        endpoints=endpoints,
        timeout=etcd.timeout,
        user=etcd.username,
        password=etcd.password,
        failover=True,
    )


def open_store(target: Target) -> Any:
    """A :class:`~haagent.store.client.Store` connected for reading only.

    Each endpoint is tried on its own first, so that a failure names the endpoint and its
    reason; the store's client then spans every endpoint (the one that answered first), so the
    watch fails over when that member goes away.
    """
    import logging

    from haagent.store.client import Store
    from haagent.store.errors import ETCD_ERRORS

    # The store logs warnings for keys it ignores and watch breaks; the commands report what
    # matters themselves, on stdout, in their own format.
    logging.getLogger("haagent.store").setLevel(logging.ERROR)
    etcd = target.etcd
    failures: list[str] = []
    first: int | None = None
    for i, url in enumerate(etcd.endpoints):
        try:
            probe = _client(etcd, _endpoints(etcd, i))
        except ETCD_ERRORS as exc:
            failures.append(f"{url}: {explain(exc, target)}")
            if explain(exc, target).startswith(("auth refused", "--user")):
                raise CliError(f"etcd {url}: {explain(exc, target)}") from None
            continue
        try:
            probe.status()
            # Prove read permission on the prefix (all any command here needs), nothing more.
            probe.get_prefix_response(target.keys.prefix, limit=1, keys_only=True)
        except ETCD_ERRORS as exc:
            why = explain(exc, target)
            if why.startswith(("auth refused", "--user")):
                raise CliError(f"etcd {url}: {why}") from None
            failures.append(f"{url}: {why}")
            continue
        finally:
            probe.close()
        first = i
        break
    if first is None:
        raise CliError("etcd not reachable: " + "; ".join(failures))
    order = [first, *(i for i in range(len(etcd.endpoints)) if i != first)]
    endpoints = [ep for i in order for ep in _endpoints(etcd, i)]
    store = Store(etcd, target.keys)
    try:
        store._client = _client(etcd, endpoints)
    except ETCD_ERRORS as exc:
        raise CliError(f"etcd {etcd.endpoints[first]}: {explain(exc, target)}") from None
    return store


def list_clusters(store: Any) -> list[str] | None:
    """Cluster names found under /haagent/v1/, None if this user may not list them."""
    from haagent.store.errors import ETCD_ERRORS

    try:
        resp = store.client.get_prefix_response(f"{ROOT}/", keys_only=True)
    except ETCD_ERRORS:
        return None
    names = set()
    for kv in resp.kvs:
        rest = kv.key.decode("utf-8", "replace")[len(ROOT) + 1 :]
        name = rest.split("/", 1)[0]
        if valid_name(name):
            names.add(name)
    return sorted(names)


def unknown_cluster(store: Any, cluster: str) -> CliError:
    found = list_clusters(store)
    if found is None:
        listing = " (this etcd user may not list the others)"
    elif found:
        listing = f"; clusters found: {', '.join(found)}"
    else:
        listing = "; no haagent cluster in this etcd"
    return CliError(f"unknown cluster {cluster!r}: no keys under {ROOT}/{cluster}/{listing}")


def run_guarded(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """A command that turns every expected failure into one line on stderr and exit code 2."""

    def wrapper(args: argparse.Namespace) -> int:
        from haagent.store.errors import ETCD_ERRORS

        try:
            return func(args)
        except CliError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_ERROR
        except ETCD_ERRORS as exc:
            # The connection was proven; etcd went away (or refused) in the middle.
            target = getattr(args, "_target", None)
            why = explain(exc, target) if target is not None else str(exc)
            print(f"error: etcd: {why}", file=sys.stderr)
            return EXIT_ERROR
        except BrokenPipeError:  # `haagent status | head`
            return EXIT_OK

    return wrapper


def connect(args: argparse.Namespace) -> tuple[Target, Any]:
    target = resolve(args)
    args._target = target
    return target, open_store(target)


def snapshot(store: Any, target: Target) -> ClusterView:
    """One range read of the cluster's prefix; an empty one is an unknown cluster."""
    view: ClusterView = store.snapshot()
    if build(view, target.cluster).empty:
        raise unknown_cluster(store, target.cluster)
    return view


# --------------------------------------------------------------------------- writing


def write_refused(exc: BaseException, target: Target, key: str) -> str:
    """One line for a failed write: the permission it lacks, named, or why etcd failed."""
    from haagent.store.errors import _rpc_error

    rpc = _rpc_error(exc)
    if rpc is not None and getattr(rpc[0], "name", "") == "PERMISSION_DENIED":
        return (
            f"auth refused: this etcd user may not write {key}; grant its role readwrite on "
            f'that key (docs/security.md, "An operator role") ({rpc[1]})'
        )
    return explain(exc, target)


@contextlib.contextmanager
def writing(target: Target, key: str) -> Iterator[None]:
    """Around a write of ``key``: a refusal by etcd becomes one CliError line naming it."""
    from haagent.store.errors import ETCD_ERRORS

    try:
        yield
    except ETCD_ERRORS as exc:
        raise CliError(f"etcd: {write_refused(exc, target, key)}") from None


def read_picture(args: argparse.Namespace) -> tuple[Target, Picture]:
    """Connect, read the cluster's prefix once, and close: what status and members show.
    An empty picture is an unknown cluster (CliError listing the clusters there are)."""
    target, store = connect(args)
    try:
        picture = build(snapshot(store, target), target.cluster)
    finally:
        store.close()
    return target, picture
