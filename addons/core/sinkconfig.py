"""The sinks file: where audit records are shipped, as strict, versioned YAML.

    version: 1
    sinks:
      - name: siem                     # the sink's cursor file is named after it
        type: syslog                   # syslog | splunk_hec | http
        address: siem.example.com:6514
        transport: tls                 # tls (default) | tcp
        ca: /etc/egressguard/siem-ca.pem
        format: cef                    # json (default) | cef
      - name: splunk
        type: splunk_hec
        url: https://splunk.example.com:8088
        token_env: SPLUNK_HEC_TOKEN    # or token_file: /run/secrets/hec-token
        index: ai_egress
        ack: true                      # delivered only once Splunk says it is indexed
      - name: elastic
        type: http
        url: https://es.example.com:9200/_bulk
        format: elastic_bulk           # ndjson (default) | elastic_bulk
        mapping: ecs                   # native (default) | ocsf | ecs
        auth_env: ES_API_KEY           # sent as `Authorization: <value>`
        gzip: true

Secrets (HEC tokens, API keys) never sit in the file: `*_env` names an environment
variable and `*_file` a file holding the value. Every problem is reported at its
file:line:column, all of them in one go, as for policies.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from egressguard.core.yamlsource import ConfigError, Document, Reader, read_source

VERSION = 1
TYPES = ("syslog", "splunk_hec", "http")
MAPPINGS = ("native", "ocsf", "ecs")
FACILITIES = {name: n for n, name in enumerate((
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron",
    "authpriv", "ftp", "ntp", "security", "console", "solaris-cron", "local0", "local1",
    "local2", "local3", "local4", "local5", "local6", "local7"))}
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_COMMON = ("name", "type", "mapping", "batch", "timeout", "retry")
_KEYS = {
    "syslog": (*_COMMON, "address", "transport", "ca", "server_name", "client_cert",
               "client_key", "format", "facility", "app_name", "hostname"),
    "splunk_hec": (*_COMMON, "url", "token_env", "token_file", "index", "sourcetype",
                   "source", "host", "ack", "ack_timeout", "ca", "verify_tls", "gzip"),
    "http": (*_COMMON, "url", "format", "index", "gzip", "headers", "auth_header",
             "auth_env", "auth_file", "ca", "verify_tls"),
}
_BATCH = ("max_records", "max_bytes", "max_wait")
_RETRY = ("initial", "max")


@dataclass(frozen=True, slots=True)
class Batch:
    max_records: int = 500
    max_bytes: int = 1 << 20
    max_wait: float = 0.5  # seconds a record may wait for others to share its request


@dataclass(frozen=True, slots=True)
class Retry:
    initial: float = 0.5  # the first wait after a failure; doubles up to `max`, jittered
    max: float = 30.0


@dataclass(frozen=True, slots=True)
class SinkSpec:
    """One sink as configured; `options` holds the type's own keys, checked."""

    name: str
    type: str
    mapping: str = "native"
    batch: Batch = Batch()
    timeout: float = 10.0
    retry: Retry = Retry()
    options: MappingProxyType[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def option(self, key: str, default: Any = None) -> Any:
        return self.options.get(key, default)


@dataclass(frozen=True, slots=True)
class SinksConfig:
    source: str
    sinks: tuple[SinkSpec, ...] = ()

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.sinks]


def load_sinks(path: Path) -> SinksConfig:
    """The sinks file at `path`; ConfigError listing every problem."""
    text, _ = read_source(path, "the sinks file")
    return parse_sinks(text, str(path))


def parse_sinks(text: str, source: str) -> SinksConfig:
    doc = Document(text, source)
    reader = _SinksReader(doc)
    config = reader.config()
    problems = sorted([*doc.problems, *reader.problems], key=lambda p: (p.line, p.column))
    if problems:
        raise ConfigError(problems)
    return config


class _SinksReader(Reader):
    def config(self) -> SinksConfig:
        data = self.doc.data
        if not isinstance(data, dict):
            self.problem((), "a sinks file is a mapping: `version: 1` and `sinks:`")
            return SinksConfig(self.doc.source)
        self.keys(data, (), ("version", "sinks"), "the sinks file")
        if type(data.get("version")) is not int or data.get("version") != VERSION:
            self.problem(("version",), f"`version: {VERSION}` is required (found "
                         f"{data.get('version')!r})")
        items = data.get("sinks")
        if not isinstance(items, list):
            self.problem(("sinks",), "`sinks` is a list of sinks (name, type, ...)")
            return SinksConfig(self.doc.source)
        sinks, seen = [], set()
        for i, item in enumerate(items):
            spec = self.sink(item, ("sinks", i))
            if spec is None:
                continue
            if spec.name in seen:
                self.problem(("sinks", i, "name"), f"sink {spec.name!r} is defined twice: "
                             "names must be unique (each has its own cursor)")
            seen.add(spec.name)
            sinks.append(spec)
        return SinksConfig(self.doc.source, tuple(sinks))

    def sink(self, item: Any, path: tuple[str | int, ...]) -> SinkSpec | None:
        spec = self.mapping(item, path, "a sink")
        name, kind = spec.get("name"), spec.get("type")
        if not isinstance(name, str) or not _NAME.match(name):
            self.problem((*path, "name"), "a sink needs a `name`: lower-case letters, digits, "
                         f"- and _ (it names the sink's cursor file); found {name!r}")
            name = None
        if kind not in TYPES:
            self.problem((*path, "type"), f"`type` is one of {', '.join(TYPES)}; found {kind!r}")
            return None
        label = f"sink {name!r}" if name else "a sink"
        self.keys(spec, path, _KEYS[kind], f"{label} ({kind})")
        options = getattr(self, kind)(spec, path, label)
        if name is None:
            return None
        return SinkSpec(
            name=name, type=kind,
            mapping=self.choice(spec, (*path, "mapping"), MAPPINGS, "native"),
            batch=self.batch(spec.get("batch"), (*path, "batch")),
            timeout=self.duration(spec["timeout"], (*path, "timeout")) or 10.0
            if "timeout" in spec else 10.0,
            retry=self.retry(spec.get("retry"), (*path, "retry")),
            options=MappingProxyType(options))

    # -- per type ------------------------------------------------------------------
    def syslog(self, spec: dict[str, Any], path: tuple[str | int, ...],
               label: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        address = spec.get("address")
        host, _, port = str(address).rpartition(":") if isinstance(address, str) else ("", "", "")
        if address is None:
            self.problem(path, f"{label} needs `address`: host:port of the syslog receiver")
        elif not host or not port.isdigit() or not 0 < int(port) < 65536:
            self.problem((*path, "address"), f"{label}: `address` is host:port (e.g. "
                         f"siem.example.com:6514); found {address!r}")
        else:
            out["host"], out["port"] = host.strip("[]"), int(port)
        out["transport"] = self.choice(spec, (*path, "transport"), ("tls", "tcp"), "tls")
        out["format"] = self.choice(spec, (*path, "format"), ("json", "cef"), "json")
        facility = spec.get("facility", "local0")
        if facility not in FACILITIES and not (type(facility) is int and 0 <= facility <= 23):
            self.problem((*path, "facility"), f"{label}: `facility` is a syslog facility name "
                         f"(local0 ... local7, auth, daemon, ...) or 0-23; found {facility!r}")
        out["facility"] = FACILITIES.get(facility, facility if type(facility) is int else 16)
        out["app_name"] = self.text(spec, (*path, "app_name"), "egressguard", 48)
        out["hostname"] = self.text(spec, (*path, "hostname"), None, 255)
        out["server_name"] = self.text(spec, (*path, "server_name"), None, 255)
        self.tls_files(spec, path, out, ("ca", "client_cert", "client_key"))
        if out["transport"] == "tcp" and any(k in spec for k in ("ca", "client_cert",
                                                                 "client_key", "server_name")):
            self.problem((*path, "transport"), f"{label}: TLS settings given with "
                         "`transport: tcp`; use `transport: tls`")
        if ("client_cert" in spec) != ("client_key" in spec):
            self.problem(path, f"{label}: `client_cert` and `client_key` go together")
        return out

    def splunk_hec(self, spec: dict[str, Any], path: tuple[str | int, ...],
                   label: str) -> dict[str, Any]:
        out = {"url": self.url(spec, path, label)}
        out["token"] = self.secret_source(spec, path, label, "token")
        out["index"] = self.text(spec, (*path, "index"), None, 80)
        out["sourcetype"] = self.text(spec, (*path, "sourcetype"), "egressguard:audit", 120)
        out["source"] = self.text(spec, (*path, "source"), "egressguard", 120)
        out["host"] = self.text(spec, (*path, "host"), None, 255)
        out["ack"] = self.boolean(spec, (*path, "ack"), False)
        out["ack_timeout"] = self.duration(spec["ack_timeout"], (*path, "ack_timeout")) \
            if "ack_timeout" in spec else 60.0
        out["gzip"] = self.boolean(spec, (*path, "gzip"), False)
        out["verify_tls"] = self.boolean(spec, (*path, "verify_tls"), True)
        self.tls_files(spec, path, out, ("ca",))
        return out

    def http(self, spec: dict[str, Any], path: tuple[str | int, ...],
             label: str) -> dict[str, Any]:
        out = {"url": self.url(spec, path, label)}
        out["format"] = self.choice(spec, (*path, "format"), ("ndjson", "elastic_bulk"),
                                    "ndjson")
        out["index"] = self.text(spec, (*path, "index"), "egressguard-audit", 255)
        out["gzip"] = self.boolean(spec, (*path, "gzip"), False)
        out["verify_tls"] = self.boolean(spec, (*path, "verify_tls"), True)
        headers = self.mapping(spec.get("headers"), (*path, "headers"), "`headers`")
        for key, value in headers.items():
            if not isinstance(value, str):
                self.problem((*path, "headers", key), f"{label}: header {key} must be text")
            elif key.lower() in ("authorization", "x-api-key", "api-key"):
                self.problem((*path, "headers", key), f"{label}: a credential does not belong "
                             "in this file: use auth_header with auth_env or auth_file")
        out["headers"] = {k: v for k, v in headers.items() if isinstance(v, str)}
        out["auth_header"] = self.text(spec, (*path, "auth_header"), "Authorization", 80)
        out["auth"] = self.secret_source(spec, path, label, "auth", required=False)
        self.tls_files(spec, path, out, ("ca",))
        return out

    # -- pieces --------------------------------------------------------------------
    def url(self, spec: dict[str, Any], path: tuple[str | int, ...], label: str) -> str:
        value = spec.get("url")
        parts = urlsplit(value) if isinstance(value, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            self.problem((*path, "url"), f"{label}: `url` is an http(s) URL; found {value!r}")
            return ""
        return str(value)

    def secret_source(self, spec: dict[str, Any], path: tuple[str | int, ...], label: str,
                      what: str, required: bool = True) -> tuple[str, str] | None:
        """("env", NAME) or ("file", PATH): where a credential is read from at start."""
        given = [k for k in (f"{what}_env", f"{what}_file") if k in spec]
        if len(given) > 1 or (required and not given):
            self.problem(path, f"{label}: give exactly one of {what}_env (an environment "
                         f"variable) or {what}_file (a file holding it)")
            return None
        if not given:
            return None
        value = spec[given[0]]
        if not isinstance(value, str) or not value:
            self.problem((*path, given[0]), f"{label}: `{given[0]}` is a name or a path")
            return None
        return ("env" if given[0].endswith("_env") else "file", value)

    def tls_files(self, spec: dict[str, Any], path: tuple[str | int, ...], out: dict[str, Any],
                  keys: tuple[str, ...]) -> None:
        for key in keys:
            if key in spec:
                value = spec[key]
                if not isinstance(value, str) or not value:
                    self.problem((*path, key), f"`{key}` is the path of a PEM file")
                out[key] = value if isinstance(value, str) else None

    def text(self, spec: dict[str, Any], path: tuple[str | int, ...], default: str | None,
             longest: int) -> str | None:
        value = spec.get(path[-1], default)
        if value is not None and (not isinstance(value, str) or not value
                                  or len(value) > longest or not value.isprintable()):
            self.problem(path, f"`{path[-1]}` is printable text of at most {longest} "
                         f"characters; found {value!r}")
            return default
        return value

    def batch(self, value: Any, path: tuple[str | int, ...]) -> Batch:
        spec = self.mapping(value, path, "`batch`")
        self.keys(spec, path, _BATCH, "batch")
        default = Batch()
        return Batch(
            max_records=self.positive_int(spec["max_records"], (*path, "max_records"),
                                          "`max_records`") or default.max_records
            if "max_records" in spec else default.max_records,
            max_bytes=self.size(spec["max_bytes"], (*path, "max_bytes")) or default.max_bytes
            if "max_bytes" in spec else default.max_bytes,
            max_wait=self.duration(spec["max_wait"], (*path, "max_wait")) or default.max_wait
            if "max_wait" in spec else default.max_wait)

    def retry(self, value: Any, path: tuple[str | int, ...]) -> Retry:
        spec = self.mapping(value, path, "`retry`")
        self.keys(spec, path, _RETRY, "retry")
        default = Retry()
        initial = self.duration(spec["initial"], (*path, "initial")) or default.initial \
            if "initial" in spec else default.initial
        longest = self.duration(spec["max"], (*path, "max")) or default.max \
            if "max" in spec else default.max
        if longest < initial:
            self.problem(path, "`retry.max` is the longest wait: at least `retry.initial`")
        return Retry(initial, max(initial, longest))
