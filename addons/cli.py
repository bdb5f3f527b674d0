"""The `egressguard` command: run, ca, token, secrets, audit, doctor, demo."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import re
import sys
from pathlib import Path

from egressguard.core import tokens

_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def duration(text: str) -> int:
    """`90s`, `15m`, `12h`, `30d`, `2w` -> seconds."""
    m = _DURATION.match(text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 30m, 12h or 30d")
    return int(m.group(1)) * _UNITS[m.group(2)]


def port_number(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1-65535)")
    return int(text)


def seconds(text: str) -> float:
    """A number of seconds, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (0 or more)")
    return value


def listen_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host.strip("[]"), port_number(port)


def fail(message: str, code: int = 2) -> int:
    print(f"egressguard: {message}", file=sys.stderr)
    return code


# -- run ----------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    from egressguard.core import logs
    from egressguard.tools.serve import ServeConfig, serve, use_local_vault

    try:
        logs.install(args.log_format)
    except ValueError as exc:  # a bad EGRESSGUARD_LOG_FORMAT
        return fail(str(exc))
    os.environ["EGRESSGUARD_LOG_FORMAT"] = args.log_format  # the shipper it starts, too
    host, port = args.listen
    config = ServeConfig(
        listen_host=host, listen_port=port, policy=args.policy, journal=args.journal,
        state=args.state, certs=args.certs, upstream_map=args.upstream_map or [],
        upstream_ca=args.upstream_ca, secret_ttl=args.secret_ttl,
        vault_timeout=args.vault_timeout, limits_store=args.limits_store,
        cache_store=args.cache_store,
        policy_poll=args.policy_poll, sinks=args.sinks, node=args.node,
        signing_key=args.signing_key or str(args.state / "audit-signing.key"),
        metrics_listen="{}:{}".format(*args.metrics_listen) if args.metrics_listen else "",
        shutdown_grace=args.shutdown_grace, otlp_endpoint=args.otlp_endpoint,
        journal_options={
            "egressguard_journal_segment_bytes": args.journal_segment_bytes,
            "egressguard_journal_segment_age": args.journal_segment_age,
            "egressguard_checkpoint_records": args.checkpoint_records,
            "egressguard_checkpoint_seconds": args.checkpoint_seconds,
            "egressguard_journal_max_bytes": args.journal_max_bytes,
            "egressguard_journal_retention": args.journal_retention,
            "egressguard_journal_when_full": args.journal_when_full},
        limit_options=_limit_options(args),
        banner=not args.quiet)
    if args.local_vault:
        from egressguard.tools.localvault import LocalVaultError

        try:
            use_local_vault(args.state, args.local_vault_port)
        except LocalVaultError as exc:
            return fail(str(exc))
    return asyncio.run(serve(config))


def _limit_options(args: argparse.Namespace) -> dict[str, object]:
    from egressguard.pipeline.guard import limit_options

    return limit_options(
        max_request_body=args.max_request_body, max_response_body=args.max_response_body,
        idle_timeout=args.idle_timeout, max_header_bytes=args.max_header_bytes,
        max_headers=args.max_headers, max_sse_line=args.max_sse_line,
        header_timeout=args.header_timeout, body_timeout=args.body_timeout,
        max_agent_connections=args.max_agent_connections,
        max_stream_resets=args.max_stream_resets, auth_failures=args.auth_failures,
        auth_window=args.auth_window)


def cmd_ship(args: argparse.Namespace) -> int:
    from egressguard.core import logs
    from egressguard.tools import ship

    try:
        logs.install(args.log_format)
    except ValueError as exc:  # a bad EGRESSGUARD_LOG_FORMAT
        return fail(str(exc))
    return ship.main(args.journal, args.sinks, args.node, args.parent_pid)


def _column_docs() -> str:
    from egressguard.tools.auditquery import column_docs

    return column_docs()


def size(text: str) -> int:
    """`64MiB`, `10GB`, `4096` -> bytes."""
    from egressguard.core.yamlsource import Reader

    m = Reader.SIZE.match(text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 64MiB or 10GB")
    return int(m.group(1)) * Reader.SIZE_UNITS[m.group(2)]


# -- ca -------------------------------------------------------------------------------
def cmd_ca_init(args: argparse.Namespace) -> int:
    from egressguard.core.keyfiles import KeyFileExposed
    from egressguard.tools import ca

    existed = ca.CaFiles(args.certs).exists()
    try:
        files = ca.init(args.certs)
    except KeyFileExposed as exc:
        return fail(str(exc))
    print(f"{'using existing' if existed else 'created'} CA {files.cert.resolve()}",
          file=sys.stderr)
    print(files.cert.resolve())
    return 0


def cmd_ca_path(args: argparse.Namespace) -> int:
    from egressguard.tools import ca

    files = ca.CaFiles(args.certs)
    if not files.exists():
        return fail(f"no CA in {args.certs}; create it with `egressguard ca init`")
    print((files.bundle if args.bundle else files.cert).resolve())
    return 0


# -- token ------------------------------------------------------------------------------
def _authority(state: Path) -> tokens.TokenAuthority:
    key = tokens.load_or_create_key(state / "token.key")
    return tokens.TokenAuthority(key, tokens.RevocationList(state / "revoked-tokens"))


def cmd_token_issue(args: argparse.Namespace) -> int:
    try:
        token, principal = _authority(args.state).issue(args.agent, args.team, args.ttl)
    except ValueError as exc:
        return fail(str(exc))
    print(f"token {principal.token_id} for agent {principal.agent!r}"
          f"{f' (team {principal.team!r})' if principal.team else ''}, expires in "
          f"{args.ttl}s", file=sys.stderr)
    print(token)
    return 0


def cmd_token_revoke(args: argparse.Namespace) -> int:
    """Revoke by id, or by the token itself (its id is what gets stored)."""
    token_id = args.token
    if tokens.looks_like_token(token_id):
        from egressguard.core.errors import IdentityRequired

        try:
            token_id = _authority(args.state).verify(token_id).token_id
        except IdentityRequired as exc:
            if exc.reason != "token_revoked":
                return fail(f"cannot revoke: {exc.message}")
            token_id = tokens.claims_id(args.token)
    if not tokens.TOKEN_ID.fullmatch(token_id):
        return fail(f"{token_id!r} is neither a token nor a token id (16 hex digits, "
                    "as printed by `egressguard token issue`)")
    tokens.RevocationList(args.state / "revoked-tokens").add(token_id, args.note or "")
    print(f"revoked {token_id}; running proxies refuse it from the next request",
          file=sys.stderr)
    return 0


# -- secrets ----------------------------------------------------------------------------
def cmd_secrets_put(args: argparse.Namespace) -> int:
    from egressguard.backends.vault import VaultConfig, VaultStore
    from egressguard.core import policy as policy_mod
    from egressguard.core.errors import SecretUnavailable
    from egressguard.core.vendors import catalogue
    from egressguard.core.yamlsource import ConfigError

    vendor = catalogue().by_name(args.vendor)
    if vendor is None:
        return fail(f"unknown vendor {args.vendor!r}; known: {', '.join(catalogue().names)}")
    try:
        pol = policy_mod.load(args.policy)
    except ConfigError as exc:
        return fail(f"invalid policy:\n{exc}")
    where = pol.secrets.location_for(vendor.name, args.agent, args.team)
    value = (sys.stdin.readline() if not sys.stdin.isatty()
             else getpass.getpass(f"{vendor.name} API key (input hidden): ")).strip()
    if not value:
        return fail("no key given on stdin")
    try:
        _admin_vault_env(args.state)
        store = VaultStore(VaultConfig.from_env())
    except SecretUnavailable as exc:
        return fail(exc.message)
    try:
        version = store.write(where, value)
    except Exception as exc:  # noqa: BLE001 - hvac/requests errors: say what, not the key
        return fail(f"could not store the key at {where.mount}/{where.path} in Vault at "
                    f"{store.config.addr}: {_vault_failure(exc)}")
    finally:
        store.close()
    print(f"stored {vendor.name} key at {where.mount}/{where.path} (version {version})",
          file=sys.stderr)
    return 0


def _vault_failure(exc: Exception) -> str:
    import hvac.exceptions
    import requests

    if isinstance(exc, requests.ConnectionError):
        return "Vault did not answer (is it running, is VAULT_ADDR right?)"
    if isinstance(exc, requests.Timeout):
        return "Vault did not answer in time"
    if isinstance(exc, hvac.exceptions.Forbidden):
        return "permission denied (check VAULT_TOKEN and its policy)"
    if isinstance(exc, hvac.exceptions.VaultDown):
        return "Vault is sealed"
    return type(exc).__name__


def _admin_vault_env(state: Path) -> None:
    """Without VAULT_ADDR, write to the local OpenBao with its admin token."""
    if os.environ.get("VAULT_ADDR"):
        return
    from egressguard.tools.localvault import LocalVault, LocalVaultError

    try:
        creds = LocalVault(state / "openbao").credentials()
    except LocalVaultError as exc:
        raise SystemExit(fail(f"{exc} (set VAULT_ADDR/VAULT_TOKEN, or start the proxy "
                              "once with `make run`)")) from None
    os.environ["VAULT_ADDR"], os.environ["VAULT_TOKEN"] = creds.addr, creds.admin_token


# -- audit ------------------------------------------------------------------------------
def cmd_audit_tail(args: argparse.Namespace) -> int:
    from egressguard.tools import auditcli

    return auditcli.tail(args.journal, args.lines, args.json)


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from egressguard.tools import auditcli

    return auditcli.verify(args.paths, args.pubkey)


def cmd_audit_pubkey(args: argparse.Namespace) -> int:
    from egressguard.tools import auditcli

    return auditcli.pubkey(args.signing_key or str(args.state / "audit-signing.key"))


def _audit_db(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from egressguard.tools.auditdb import AuditDB, cache_for

    paths = getattr(args, "paths", None) or [args.journal]
    db = AuditDB(paths, None if args.no_cache else cache_for(paths))
    for skipped in db.skipped:
        print(f"egressguard: {skipped}", file=sys.stderr)
    return db


def _filters(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from egressguard.tools.auditquery import Filters

    return Filters(since=args.since, until=args.until, agent=args.agent or [],
                   team=args.team or [], vendor=args.vendor or [], model=args.model or [],
                   decision=args.decision or [], rule=args.rule or [],
                   entity=args.entity or [], status=args.status or [],
                   cache=args.cache or [])


def _output(args: argparse.Namespace) -> str:
    return "json" if args.json else "csv" if args.csv else "table"


def _auditor(command):  # type: ignore[no-untyped-def]
    """Run an auditor's command: input problems become one line and exit 2."""
    def run(args: argparse.Namespace) -> int:
        from egressguard.tools.auditdb import AuditDataError

        try:
            with _audit_db(args) as db:
                return int(command(db, args))
        except AuditDataError as exc:
            return fail(str(exc))
        except BrokenPipeError:  # `| head`
            return 0
    return run


@_auditor
def cmd_audit_query(db, args: argparse.Namespace) -> int:  # type: ignore[no-untyped-def]
    from egressguard.tools import auditquery

    columns = [c for group in args.columns or [] for c in group.split(",") if c] or None
    return auditquery.query(db, _filters(args), columns, _output(args), args.limit)


@_auditor
def cmd_audit_stats(db, args: argparse.Namespace) -> int:  # type: ignore[no-untyped-def]
    from egressguard.tools import auditquery

    return auditquery.stats(db, _filters(args), args.by or [], _output(args))


@_auditor
def cmd_audit_sql(db, args: argparse.Namespace) -> int:  # type: ignore[no-untyped-def]
    from egressguard.tools import auditquery

    return auditquery.sql(db, args.statement, _output(args))


@_auditor
def cmd_audit_export(db, args: argparse.Namespace) -> int:  # type: ignore[no-untyped-def]
    from egressguard.tools import auditquery

    return auditquery.export(db, _filters(args), args.format, args.out)


@_auditor
def cmd_audit_report(db, args: argparse.Namespace) -> int:  # type: ignore[no-untyped-def]
    from egressguard.tools import auditreport

    return auditreport.report(db, _filters(args), args.html)


def cmd_audit_sinks(args: argparse.Namespace) -> int:
    from egressguard.tools import auditcli

    return auditcli.sinks(args.journal, args.sinks)


# -- policy ----------------------------------------------------------------------------
def cmd_policy_lint(args: argparse.Namespace) -> int:
    from egressguard.tools import policycli

    return policycli.lint(args.file, args.strict)


def cmd_policy_test(args: argparse.Namespace) -> int:
    from egressguard.tools import policycli

    return policycli.test(args.target)


def cmd_policy_explain(args: argparse.Namespace) -> int:
    from egressguard.tools import policycli

    request: dict[str, object] = {}
    if args.request is not None:
        text = sys.stdin.read() if str(args.request) == "-" else args.request.read_text()
        try:
            request = policycli.request_from_file(text)
        except ValueError as exc:
            return fail(str(exc))
    flags = {"agent": args.agent, "team": args.team, "vendor": args.vendor,
             "host": args.host, "method": args.method, "path": args.path,
             "model": args.model, "max_tokens": args.max_tokens,
             "body_bytes": args.body_bytes, "tools": args.tool or None,
             "stream": True if args.stream else None}
    request.update({k: v for k, v in flags.items() if v is not None})
    return policycli.explain(args.policy, request)


# -- scan -------------------------------------------------------------------------------
def cmd_scan(args: argparse.Namespace) -> int:
    from egressguard.tools import scancli

    return scancli.scan(args.file, args.redact, args.policy)


def cmd_doctor(args: argparse.Namespace) -> int:
    from egressguard.tools import doctor

    return doctor.main(doctor.Options(
        policy=args.policy, state=args.state, certs=args.certs, journal=args.journal,
        sinks=args.sinks, signing_key=args.signing_key or "",
        max_clock_skew=args.max_clock_skew, vault_timeout=args.vault_timeout))


def cmd_demo(args: argparse.Namespace) -> int:
    from egressguard.tools import demo

    return demo.main()


LOG_FORMAT: dict[str, object] = {
    "choices": ("auto", "json", "text"),
    "default": os.environ.get("EGRESSGUARD_LOG_FORMAT", "auto"),
    "help": "log lines on stderr as JSON objects or text; auto (default): text on a "
            "terminal, JSON otherwise. Secrets and PII are scrubbed either way (env "
            "EGRESSGUARD_LOG_FORMAT)"}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="egressguard", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    state = argparse.ArgumentParser(add_help=False)
    state.add_argument("--state", type=Path, default=Path("var"),
                       help="state directory: token key, revocations, local OpenBao (var)")
    certs = argparse.ArgumentParser(add_help=False)
    certs.add_argument("--certs", type=Path, default=Path("certs"), help="CA directory")
    pol = argparse.ArgumentParser(add_help=False)
    pol.add_argument("--policy", type=Path, default=Path("policies/default.yaml"))

    r = sub.add_parser("run", parents=[state, certs, pol], help="run the proxy")
    r.add_argument("--listen", type=listen_address, default=("127.0.0.1", 8080),
                   metavar="HOST:PORT")
    r.add_argument("--journal", type=Path, default=Path("var/journal"), metavar="DIR")
    r.add_argument("--upstream-map", action="append", metavar="HOST=ADDR:PORT",
                   help="reach HOST at ADDR:PORT instead (repeatable)")
    r.add_argument("--upstream-ca", type=Path, metavar="FILE",
                   help="also trust this CA for upstream connections")
    r.add_argument("--local-vault", action="store_true",
                   help="start a local OpenBao under --state unless VAULT_ADDR is set")
    r.add_argument("--local-vault-port", type=port_number, default=8200, metavar="PORT",
                   help="loopback port of the local OpenBao (default 8200)")
    r.add_argument("--secret-ttl", type=float, default=60.0, metavar="SECONDS")
    r.add_argument("--vault-timeout", type=float, default=2.0, metavar="SECONDS")
    r.add_argument("--policy-poll", type=float, default=1.0, metavar="SECONDS",
                   help="how often to check the policy file for changes (0: reload on "
                   "SIGHUP only; default 1)")
    r.add_argument("--limits-store", default=os.environ.get("EGRESSGUARD_LIMITS_STORE", ""),
                   metavar="URL", help="redis://HOST:PORT/DB to share rate limits and budgets "
                   "between replicas (default: this process only; env EGRESSGUARD_LIMITS_STORE)")
    r.add_argument("--cache-store", default=os.environ.get("EGRESSGUARD_CACHE_STORE", ""),
                   metavar="URL", help="redis://HOST:PORT/DB to share cached answers between "
                   "replicas, for rules with `cache:` (default: this process only; env "
                   "EGRESSGUARD_CACHE_STORE)")
    r.add_argument("--node", metavar="NAME", help="this instance's name in its audit records "
                   "(default: the host name)")
    r.add_argument("--signing-key", metavar="FILE|vault:MOUNT/PATH#FIELD",
                   help="Ed25519 key that signs journal checkpoints (default "
                   "STATE/audit-signing.key, created 0600 on first start)")
    r.add_argument("--metrics-listen", metavar="HOST:PORT",
                   type=lambda text: listen_address(text) if text else None,
                   default=os.environ.get("EGRESSGUARD_METRICS_LISTEN", ""),
                   help="serve /metrics (Prometheus), /healthz and /readyz on this address, "
                   "apart from the proxy port (default: off; env EGRESSGUARD_METRICS_LISTEN)")
    r.add_argument("--sinks", type=Path, metavar="FILE",
                   help="ship audit records to the SIEM sinks this file names (starts "
                   "`egressguard ship` beside the proxy)")
    journal_group = r.add_argument_group("audit journal")
    journal_group.add_argument("--journal-segment-bytes", type=size, default=64 << 20,
                               metavar="SIZE", help="start a new journal file past this "
                               "size (default 64MiB)")
    journal_group.add_argument("--journal-segment-age", type=duration, default=3600,
                               metavar="DURATION", help="... or after this long (default 1h)")
    journal_group.add_argument("--checkpoint-records", type=int, default=1000, metavar="N",
                               help="a signed checkpoint every N records (default 1000)")
    journal_group.add_argument("--checkpoint-seconds", type=float, default=60.0,
                               metavar="SECONDS", help="... and SECONDS after a record "
                               "(default 60)")
    journal_group.add_argument("--journal-max-bytes", type=size, default=0, metavar="SIZE",
                               help="disk cap of the journal (default: none)")
    journal_group.add_argument("--journal-retention", type=duration, default=0,
                               metavar="DURATION", help="keep journal files every sink has "
                               "this long (default: for ever)")
    journal_group.add_argument("--journal-when-full", choices=("drop-delivered", "refuse"),
                               default="drop-delivered", help="at the disk cap: remove the "
                               "oldest files every sink has, or nothing; requests that "
                               "cannot be recorded are refused either way")
    limits = r.add_argument_group("limits and timeouts (see README: Limits)")
    limits.add_argument("--max-request-body", type=size, default=16 << 20, metavar="SIZE",
                        help="largest request body (default 16MiB; 413 past it)")
    limits.add_argument("--max-response-body", type=size, default=64 << 20, metavar="SIZE",
                        help="largest answer, decoded (default 64MiB; 502 past it)")
    limits.add_argument("--max-header-bytes", type=size, default=64 << 10, metavar="SIZE",
                        help="largest request head (default 64KiB; 431 past it)")
    limits.add_argument("--max-headers", type=int, default=100, metavar="N",
                        help="most header fields in a request (default 100; 431 past it)")
    limits.add_argument("--max-sse-line", type=size, default=4 << 20, metavar="SIZE",
                        help="longest line of a streamed answer (default 4MiB)")
    limits.add_argument("--header-timeout", type=float, default=30.0, metavar="SECONDS",
                        help="time to send a whole request head (default 30)")
    limits.add_argument("--body-timeout", type=float, default=300.0, metavar="SECONDS",
                        help="time to send a whole request body (default 300)")
    limits.add_argument("--idle-timeout", type=int, default=600, metavar="SECONDS",
                        help="close a connection silent this long either way (default 600)")
    limits.add_argument("--max-agent-connections", type=int, default=256, metavar="N",
                        help="connections one agent may hold open (default 256; 0: no limit)")
    limits.add_argument("--max-stream-resets", type=int, default=200, metavar="N",
                        help="HTTP/2 streams one connection may reset (default 200)")
    limits.add_argument("--auth-failures", type=int, default=10, metavar="N",
                        help="failed token checks per client address before it must wait "
                        "(default 10; 0: no limit)")
    limits.add_argument("--auth-window", type=float, default=60.0, metavar="SECONDS",
                        help="... counted in windows of this long (default 60)")
    r.add_argument("--shutdown-grace", type=seconds, default=30.0, metavar="SECONDS",
                   help="on SIGTERM or SIGINT, stop listening and give requests and streams "
                   "in flight this long to finish before cutting them off (default 30)")
    r.add_argument("--otlp-endpoint", metavar="URL",
                   default=os.environ.get("EGRESSGUARD_OTLP_ENDPOINT", ""),
                   help="send one OpenTelemetry span per request over OTLP/HTTP to URL, e.g. "
                   "http://collector:4318/v1/traces (`env`: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
                   "); default off; env EGRESSGUARD_OTLP_ENDPOINT")
    r.add_argument("--quiet", action="store_true", help="no start-up banner")
    r.add_argument("--log-format", **LOG_FORMAT)
    r.set_defaults(func=cmd_run)

    sh = sub.add_parser("ship", help="forward the audit journal to SIEM sinks (at least "
                        "once; `run --sinks` starts it for you)")
    sh.add_argument("--journal", type=Path, default=Path("var/journal"), metavar="DIR")
    sh.add_argument("--sinks", type=Path, required=True, metavar="FILE")
    sh.add_argument("--node", metavar="NAME", help="host name in syslog and HEC events")
    sh.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)
    sh.add_argument("--log-format", **LOG_FORMAT)
    sh.set_defaults(func=cmd_ship)

    c = sub.add_parser("ca", help="the interception CA").add_subparsers(dest="ca", required=True)
    c.add_parser("init", parents=[certs], help="create the CA if missing").set_defaults(
        func=cmd_ca_init)
    cp = c.add_parser("path", parents=[certs], help="print the CA file agents trust")
    cp.add_argument("--bundle", action="store_true",
                    help="print the bundle of system roots + our CA (for SSL_CERT_FILE)")
    cp.set_defaults(func=cmd_ca_path)

    t = sub.add_parser("token", help="agent tokens").add_subparsers(dest="token", required=True)
    ti = t.add_parser("issue", parents=[state], help="mint a token (printed on stdout)")
    ti.add_argument("--agent", required=True)
    ti.add_argument("--team")
    ti.add_argument("--ttl", type=duration, default=duration("30d"), metavar="DURATION")
    ti.set_defaults(func=cmd_token_issue)
    tr = t.add_parser("revoke", parents=[state], help="revoke a token (by id or the token)")
    tr.add_argument("token", metavar="TOKEN_OR_ID")
    tr.add_argument("--note")
    tr.set_defaults(func=cmd_token_revoke)

    s = sub.add_parser("secrets", help="vendor keys in Vault").add_subparsers(
        dest="secrets", required=True)
    sp = s.add_parser("put", parents=[state, pol], help="store a vendor key read from stdin")
    sp.add_argument("vendor")
    sp.add_argument("--team")
    sp.add_argument("--agent")
    sp.set_defaults(func=cmd_secrets_put)

    a = sub.add_parser("audit", help="the audit journal").add_subparsers(dest="audit",
                                                                        required=True)
    at = a.add_parser("tail", help="show recent records")
    at.add_argument("--journal", type=Path, default=Path("var/journal"))
    at.add_argument("-n", "--lines", type=int, default=20)
    at.add_argument("--json", action="store_true", help="raw records, one JSON per line")
    at.set_defaults(func=cmd_audit_tail)
    av = a.add_parser("verify", help="check chains, files and signed checkpoints; non-zero "
                      "exit on any problem")
    av.add_argument("paths", type=Path, nargs="+", metavar="PATH",
                    help="journal directories or files (plain or .gz), oldest first")
    av.add_argument("--pubkey", type=Path, metavar="FILE",
                    help="PEM public key that signs the checkpoints (`audit pubkey`)")
    av.set_defaults(func=cmd_audit_verify)
    ap = a.add_parser("pubkey", parents=[state], help="print the public key auditors "
                      "verify checkpoints with")
    ap.add_argument("--signing-key", metavar="FILE|vault:PATH#FIELD",
                    help="the journal's signing key (default STATE/audit-signing.key)")
    ap.set_defaults(func=cmd_audit_pubkey)
    source = argparse.ArgumentParser(add_help=False)
    source.add_argument("paths", type=Path, nargs="*", metavar="PATH",
                        help="journal folders or files (default: --journal)")
    source.add_argument("--journal", type=Path, default=Path("var/journal"))
    source.add_argument("--no-cache", action="store_true",
                        help="read every file afresh (no cache under ~/.cache/egressguard)")
    select = argparse.ArgumentParser(add_help=False)
    select.add_argument("--since", metavar="TIME", help="ISO time, or 30m, 24h, 7d, 2w ago")
    select.add_argument("--until", metavar="TIME", help="ISO time, or 30m, 24h, 7d, 2w ago")
    for name, what in (("agent", "agent name"), ("team", "team"), ("vendor", "vendor"),
                       ("model", "model"), ("decision", "allow or deny"),
                       ("rule", "deciding rule"),
                       ("entity", "records with redactions of this entity type"),
                       ("status", "HTTP status (403) or class (5xx)"),
                       ("cache", "cache status: hit, miss or bypass")):
        select.add_argument(f"--{name}", action="append", metavar=name.upper(),
                            help=f"{what} (repeatable: any of them)")
    shape = argparse.ArgumentParser(add_help=False)
    kind = shape.add_mutually_exclusive_group()
    kind.add_argument("--json", action="store_true", help="NDJSON, one object per row")
    kind.add_argument("--csv", action="store_true", help="CSV with a header")
    aq = a.add_parser("query", parents=[source, select, shape],
                      help="records matching the filters, by time")
    aq.add_argument("--columns", action="append", metavar="A,B,...",
                    help="columns to show (see `audit sql --help`)")
    aq.add_argument("--limit", type=int, metavar="N",
                    help="at most N rows (a table shows 100 unless told)")
    aq.set_defaults(func=cmd_audit_query)
    ast = a.add_parser("stats", parents=[source, select, shape],
                       help="requests, denials, redactions, tokens, spend, latency by ...")
    ast.add_argument("--by", action="append", metavar="DIM[,DIM]",
                     help="agent, team, vendor, model, day, rule, node, decision, reason, "
                     "status, kind or host (repeatable; default agent)")
    ast.set_defaults(func=cmd_audit_stats)
    asq = a.add_parser("sql", parents=[source, shape], help="SQL over the `records` table",
                       epilog="columns of `records`:\n" + _column_docs(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    asq.add_argument("statement", metavar="SQL")
    asq.set_defaults(func=cmd_audit_sql)
    journal_only = argparse.ArgumentParser(add_help=False)
    journal_only.add_argument("--journal", type=Path, default=Path("var/journal"))
    journal_only.add_argument("--no-cache", action="store_true",
                              help="read every file afresh")
    aex = a.add_parser("export", parents=[journal_only, select],
                       help="a time range with a manifest, verifiable with `audit verify`")
    aex.add_argument("--format", choices=("jsonl", "csv", "parquet"), default="jsonl")
    aex.add_argument("out", type=Path, metavar="OUT", help="a new (or empty) folder")
    aex.set_defaults(func=cmd_audit_export)
    arp = a.add_parser("report", parents=[source, select],
                       help="one self-contained HTML page: spend, requests, denials, rules, "
                       "redactions, latency, with charts")
    arp.add_argument("--html", type=Path, required=True, metavar="FILE")
    arp.set_defaults(func=cmd_audit_report)
    asi = a.add_parser("sinks", help="how far each sink has got, and whether it is failing")
    asi.add_argument("--journal", type=Path, default=Path("var/journal"))
    asi.add_argument("--sinks", type=Path, metavar="FILE", help="the sinks file")
    asi.set_defaults(func=cmd_audit_sinks)

    pc = sub.add_parser("policy", help="lint, test and explain policies").add_subparsers(
        dest="policy_command", required=True)
    pl = pc.add_parser("lint", help="report every problem in a policy file")
    pl.add_argument("file", type=Path, metavar="FILE")
    pl.add_argument("--strict", action="store_true", help="warnings fail too")
    pl.set_defaults(func=cmd_policy_lint)
    pt = pc.add_parser("test", help="run policy test cases (*.test.yaml)")
    pt.add_argument("target", type=Path, nargs="?", default=Path("policies"), metavar="DIR",
                    help="a test file or a directory searched for *.test.yaml (policies)")
    pt.set_defaults(func=cmd_policy_test)
    pe = pc.add_parser("explain", parents=[pol], help="show how the policy decides a request")
    pe.add_argument("--request", type=Path, metavar="FILE",
                    help="request description in YAML (- for stdin); flags override it")
    pe.add_argument("--agent")
    pe.add_argument("--team")
    pe.add_argument("--vendor")
    pe.add_argument("--host")
    pe.add_argument("--method")
    pe.add_argument("--path")
    pe.add_argument("--model")
    pe.add_argument("--max-tokens", type=int)
    pe.add_argument("--body-bytes", type=int)
    pe.add_argument("--tool", action="append", help="a tool the request offers (repeatable)")
    pe.add_argument("--stream", action="store_true")
    pe.set_defaults(func=cmd_policy_explain)

    sc = sub.add_parser("scan", help="find PII and secrets in a text: JSON offsets, or "
                        "the text redacted")
    sc.add_argument("file", type=Path, nargs="?", metavar="FILE",
                    help="the text to scan (default, or -: standard input)")
    sc.add_argument("--redact", action="store_true",
                    help="print the text with each finding replaced by <ENTITY>")
    sc.add_argument("--policy", type=Path, metavar="FILE",
                    help="only the entity types this policy's redaction plans name")
    sc.set_defaults(func=cmd_scan)

    dr = sub.add_parser("doctor", parents=[state, certs, pol],
                        help="check a deployment (CA, key files, Vault and its token, vendor "
                        "keys, policy, sinks, journal, clock) and say what to fix")
    dr.add_argument("--journal", type=Path, default=Path("var/journal"), metavar="DIR")
    dr.add_argument("--sinks", type=Path, metavar="FILE", help="check these SIEM sinks")
    dr.add_argument("--signing-key", metavar="FILE|vault:MOUNT/PATH#FIELD",
                    help="the checkpoint signing key (default STATE/audit-signing.key)")
    dr.add_argument("--max-clock-skew", type=float, default=10.0, metavar="SECONDS",
                    help="warn when this host's clock and Vault's differ by more (10)")
    dr.add_argument("--vault-timeout", type=float, default=3.0, metavar="SECONDS")
    dr.set_defaults(func=cmd_doctor)

    sub.add_parser("demo", help="the whole path on this machine, no vendor account "
                   "needed").set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
