"""Operator logs: JSON lines (or text on a terminal), scrubbed of secrets and PII.

egressguard holds every vendor key and sees every prompt, and its logs go to places
with wider access than Vault (journald, a log shipper, a support ticket). So every log
record is scrubbed where it is made, before any handler sees it -- ours, mitmproxy's
own (its error check, its event log), any added later -- and so is its traceback:

  - values registered at run time with `register_secret`: vendor keys read from
    Vault, Vault tokens, the agent-token HMAC key, sink credentials (registered where
    they are read);
  - what the redaction detector's secret rules (core/redact/rules.yaml) and its
    structured PII rules find (e-mail, phone, card, SSN, IBAN);
  - credentials in auth headers (`Authorization: Bearer ...`, Basic, x-api-key),
    URLs' userinfo and query strings (`?key=...` as Gemini takes it), agent tokens.

`install()` is done once, by `egressguard run` and `egressguard ship`.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import logging
import re
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import IO, Any
from urllib.parse import quote

import orjson

MIN_SECRET_LENGTH = 8  # shorter values would scrub ordinary words out of log lines
MAX_SECRETS = 4096  # rotated keys and renewed tokens add up; the oldest go first
PII_SCRUBBED = ("EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "US_SSN", "IBAN_CODE")
FORMATS = ("auto", "json", "text")

# Set by whoever handles a request (`with logs.request_context(rid): ...`) so the lines
# logged meanwhile carry it; `extra={"request_id": rid}` works too.
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "egressguard_request_id", default=None)


@contextlib.contextmanager
def request_context(request_id: str) -> Iterator[None]:
    """Lines logged inside carry `request_id`."""
    token = REQUEST_ID.set(request_id)
    try:
        yield
    finally:
        REQUEST_ID.reset(token)


_lock = threading.Lock()
_secrets: dict[str, str] = {}  # value (and its URL-encoded form) -> kind, oldest first
_secrets_regex: re.Pattern[str] | None = None

_CREDENTIAL_PATTERNS: tuple[tuple[re.Pattern[str], int, str], ...] = (
    # (pattern, group holding the secret, what it is); headers as printed in text,
    # dicts, tuples and JSON
    (re.compile(r"(?i)\b(?:proxy-)?authorization['\"]?\s*[:=,]\s*['\"]?"
                r"(?:(?:bearer|basic|token|digest)\s+)?([^\s'\",;]+)"), 1, "CREDENTIAL"),
    (re.compile(r"(?i)\b(?:x-api-key|api-key|x-goog-api-key)['\"]?\s*[:=,]\s*['\"]?"
                r"([^\s'\",;]+)"), 1, "CREDENTIAL"),
    # a scheme and a credential-like word: one with a digit, or too long to be prose
    (re.compile(r"(?i)\b(?:bearer|basic)\s+((?=[A-Za-z0-9._~+/-]*[0-9])[A-Za-z0-9._~+/-]{8,}=*"
                r"|[A-Za-z0-9._~+/-]{24,}=*)"), 1, "CREDENTIAL"),
    (re.compile(r"(?i)[?&;](?:key|api[_-]?key|access[_-]?token|token|auth|sig|signature|"
                r"password|secret|client[_-]?secret)=([^&#\s'\"]+)"), 1, "CREDENTIAL"),
    (re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s/:@'\"]*:([^\s/@'\"]+)@"), 1, "PASSWORD"),
    (re.compile(r"\begt1\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"), 0, "AGENT_TOKEN"),
)


def register_secret(value: str | None, kind: str) -> None:
    """Never log `value` (nor its URL-encoded form): it is shown as `<KIND>`. Call it
    where a secret is read; values shorter than MIN_SECRET_LENGTH are ignored."""
    global _secrets_regex
    if not value or len(value) < MIN_SECRET_LENGTH or value in _secrets:
        return
    with _lock:
        for form in {value, quote(value, safe="")}:
            _secrets.pop(form, None)
            _secrets[form] = kind
        while len(_secrets) > MAX_SECRETS:
            del _secrets[next(iter(_secrets))]
        _secrets_regex = None  # rebuilt at the next scrub


def forget_secrets() -> None:
    """Drop every registered value (for tests)."""
    global _secrets_regex
    with _lock:
        _secrets.clear()
        _secrets_regex = None


def scrub(text: str) -> str:
    """`text` with every registered value, credential and detected secret or PII value
    replaced by `<TYPE>`."""
    if not text:
        return text
    text = _scrub_registered(text)
    for pattern, group, kind in _CREDENTIAL_PATTERNS:
        text = pattern.sub(lambda m, g=group, k=kind: _mask_group(m, g, k), text)
    return _scrub_detected(text)


def _scrub_registered(text: str) -> str:
    global _secrets_regex
    regex = _secrets_regex
    if regex is None:
        with _lock:
            if not _secrets:
                return text
            # longest first, so a value is never half-replaced by a shorter one in it
            regex = _secrets_regex = re.compile("|".join(
                re.escape(v) for v in sorted(_secrets, key=len, reverse=True)))
    kinds = _secrets
    return regex.sub(lambda m: f"<{kinds.get(m.group(0), 'SECRET')}>", text)


def _mask_group(match: re.Match[str], group: int, kind: str) -> str:
    value = match.group(group)
    if value.startswith("<") and value.endswith(">"):  # already a mask
        return match.group(0)
    start, end = match.start(group) - match.start(0), match.end(group) - match.start(0)
    whole = match.group(0)
    return f"{whole[:start]}<{kind}>{whole[end:]}"


def _scrub_detected(text: str) -> str:
    from egressguard.core.redact.detect import default_detector

    detector = default_detector()
    findings = detector.find(text, _scrubbed_entities())
    for f in reversed(findings):
        text = f"{text[:f.start]}<{f.entity}>{text[f.end:]}"
    return text


def _scrubbed_entities() -> frozenset[str]:
    global _ENTITIES
    if _ENTITIES is None:
        from egressguard.core.entities import SECRETS

        _ENTITIES = frozenset((*SECRETS, *PII_SCRUBBED))
    return _ENTITIES


_ENTITIES: frozenset[str] | None = None


# -- records -------------------------------------------------------------------------
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message", "asctime", "client", "request_id", "egressguard_scrubbed"}


def scrub_record(record: logging.LogRecord) -> logging.LogRecord:
    """Scrub a record in place, once: its message (args merged in), traceback and
    stack. The traceback is kept as scrubbed text in `exc_text` (what logging's
    formatters print) and `exc_info` is dropped. Extra fields are scrubbed as our
    formatters write them (logging sets them after the record factory ran)."""
    if getattr(record, "egressguard_scrubbed", False):
        return record
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a bad format string still gets logged, scrubbed
        message = f"{record.msg!r} {record.args!r}"
    record.msg, record.args = scrub(message), None
    if record.exc_info and record.exc_info[0] is not None:
        record.exc_text = scrub("".join(traceback.format_exception(*record.exc_info)).rstrip())
    elif record.exc_text:
        record.exc_text = scrub(record.exc_text)
    record.exc_info = None
    if record.stack_info:
        record.stack_info = scrub(record.stack_info)
    record.egressguard_scrubbed = True
    return record


def _scrubbing_factory(make: Callable[..., logging.LogRecord]) -> Callable[..., logging.LogRecord]:
    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        return scrub_record(make(*args, **kwargs))

    factory.egressguard_scrubbing = True  # type: ignore[attr-defined]
    return factory


class ScrubFilter(logging.Filter):
    """Scrubs each record a handler sees (for handlers outside `install`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        scrub_record(record)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC), level, logger, message, request_id when
    known, client (mitmproxy's connection logs), extra fields, exception."""

    def format(self, record: logging.LogRecord) -> str:
        scrub_record(record)
        out: dict[str, Any] = {
            "time": _utc(record.created), "level": record.levelname.lower(),
            "logger": record.name, "message": record.getMessage()}
        if rid := getattr(record, "request_id", None) or REQUEST_ID.get():
            out["request_id"] = rid
        if client := getattr(record, "client", None):
            out["client"] = _address(client)
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value if isinstance(value, int | float | bool | None) \
                    else scrub(str(value))
        if record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = record.stack_info
        return orjson.dumps(out, default=str).decode()


class TextFormatter(logging.Formatter):
    """`TIME LEVEL logger [request id] message`, then the traceback."""

    def format(self, record: logging.LogRecord) -> str:
        scrub_record(record)
        rid = getattr(record, "request_id", None) or REQUEST_ID.get()
        client = getattr(record, "client", None)
        line = " ".join(p for p in (
            _utc(record.created), record.levelname, record.name,
            f"[{rid}]" if rid else "", f"[{_address(client)}]" if client else "",
            record.getMessage()) if p)
        if record.exc_text:
            line = f"{line}\n{record.exc_text}"
        if record.stack_info:
            line = f"{line}\n{record.stack_info}"
        return line


def _utc(created: float) -> str:
    return datetime.datetime.fromtimestamp(created, datetime.UTC).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")


def _address(value: object) -> str:
    if isinstance(value, tuple) and len(value) >= 2:
        host, port = value[0], value[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(value)


# -- installation ---------------------------------------------------------------------
class Installed:
    """What `install` changed, so tests can undo it (`egressguard run` never does)."""

    def __init__(self, handler: logging.Handler, factory: Callable[..., logging.LogRecord],
                 hooks: tuple[Any, Any], levels: dict[str, int],
                 filtered: list[tuple[logging.Handler, logging.Filter]]) -> None:
        self.handler, self._factory, self._hooks, self._levels = handler, factory, hooks, levels
        self._filtered = filtered

    def uninstall(self) -> None:
        logging.getLogger().removeHandler(self.handler)
        for other, scrubber in self._filtered:
            other.removeFilter(scrubber)
        logging.setLogRecordFactory(self._factory)
        sys.excepthook, threading.excepthook = self._hooks
        for name, level in self._levels.items():
            logging.getLogger(name).setLevel(level)


def install(log_format: str = "auto", stream: IO[str] | None = None,
            level: int = logging.INFO) -> Installed:
    """Log to `stream` (stderr) as JSON lines, or text (`auto`: text on a terminal,
    JSON otherwise), egressguard's own loggers from `level`, everyone else's (mitmproxy,
    hvac, asyncio) from WARNING; every record scrubbed; uncaught exceptions logged
    (scrubbed) instead of printed raw by Python."""
    if log_format not in FORMATS:
        raise ValueError(f"log format is one of {', '.join(FORMATS)}; found {log_format!r}")
    stream = stream or sys.stderr
    if log_format == "auto":
        log_format = "text" if _isatty(stream) else "json"
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(ScrubFilter())
    root = logging.getLogger()
    filtered = [(other, ScrubFilter()) for other in root.handlers]
    for other, scrubber in filtered:
        other.addFilter(scrubber)
    root.addHandler(handler)
    previous = logging.getLogRecordFactory()
    if not getattr(previous, "egressguard_scrubbing", False):
        logging.setLogRecordFactory(_scrubbing_factory(previous))
    levels = {name: logging.getLogger(name).level for name in ("", "egressguard")}
    root.setLevel(logging.WARNING)
    logging.getLogger("egressguard").setLevel(level)
    hooks = (sys.excepthook, threading.excepthook)
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread
    return Installed(handler, previous, hooks, levels, filtered)


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _log_uncaught(kind: type[BaseException], value: BaseException,
                  tb: TracebackType | None) -> None:
    logging.getLogger("egressguard").critical("uncaught exception", exc_info=(kind, value, tb))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    logging.getLogger("egressguard").critical(
        "uncaught exception in thread %s", getattr(args.thread, "name", "?"),
        exc_info=(args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback))
