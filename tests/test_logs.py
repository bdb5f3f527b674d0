"""Operator logs: JSON lines, and no secret or PII in any of them (core/logs.py).

Key-shaped values are made at run time; none is committed."""

from __future__ import annotations

import io
import logging
import os
import secrets
import socket
import string
import subprocess
import sys
import threading
from collections.abc import Iterator
from urllib.parse import quote

import orjson
import pytest
from mitmproxy.log import MitmFormatter
from secret_registry import register

from egressguard.core import logs


def random_word(n: int, alphabet: str = string.ascii_letters + string.digits) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(n))


# registered for the secret sweep too: it checks the scrubbing left none in any output
VAULT_TOKEN = register("hvs." + random_word(24), "vault token")
VENDOR_KEY = register("sk-test-" + secrets.token_hex(16), "vendor key")  # no rule knows it
OPENAI_SHAPED = "sk-proj-" + random_word(40)
GITHUB_SHAPED = "ghp_" + random_word(36)
GOOGLE_SHAPED = "AIza" + random_word(35)
AGENT_TOKEN = "egt1." + random_word(40) + "." + random_word(43)


@pytest.fixture(autouse=True)
def registry() -> Iterator[None]:
    logs.forget_secrets()
    logs.register_secret(VAULT_TOKEN, "VAULT_TOKEN")
    logs.register_secret(VENDOR_KEY, "VENDOR_KEY")
    yield
    logs.forget_secrets()


@pytest.fixture
def installed() -> Iterator[tuple[io.StringIO, logging.Logger]]:
    """`logs.install` writing JSON to a buffer; undone afterwards."""
    out = io.StringIO()
    done = logs.install("json", out)
    try:
        yield out, logging.getLogger("egressguard.test")
    finally:
        done.uninstall()


def lines(out: io.StringIO) -> list[dict]:
    return [orjson.loads(line) for line in out.getvalue().splitlines()]


# -- scrub: what is replaced, and what is left alone -------------------------------------
@pytest.mark.parametrize(("text", "expected"), [
    (f"token {VAULT_TOKEN} expired", "token <VAULT_TOKEN> expired"),
    (f"read {VENDOR_KEY}", "read <VENDOR_KEY>"),
    (f"GET /v1/x?api_key={quote(VENDOR_KEY, safe='')}", "GET /v1/x?api_key=<VENDOR_KEY>"),
    (f"Authorization: Bearer {OPENAI_SHAPED}", "Authorization: Bearer <CREDENTIAL>"),
    (f"[('authorization', 'Bearer {AGENT_TOKEN}')]", "[('authorization', 'Bearer <CREDENTIAL>')]"),
    ('{"x-api-key": "secret-value-123"}', '{"x-api-key": "<CREDENTIAL>"}'),
    ("Proxy-Authorization: Basic YWdlbnQtMTplZ3QxLmFiYw==",
     "Proxy-Authorization: Basic <CREDENTIAL>"),
    ("sent Basic YWdlbnQtMTplZ3QxLmFiYw== upstream", "sent Basic <CREDENTIAL> upstream"),
    (f"POST https://generativelanguage.googleapis.com/v1beta/models/g:generateContent"
     f"?key={GOOGLE_SHAPED}&alt=sse failed",
     "POST https://generativelanguage.googleapis.com/v1beta/models/g:generateContent"
     "?key=<CREDENTIAL>&alt=sse failed"),
    ("Redis at redis://:pw-3f9a1c7e@127.0.0.1:6379/0 is down",
     "Redis at redis://:<PASSWORD>@127.0.0.1:6379/0 is down"),
    (f"agent sent {AGENT_TOKEN}", "agent sent <AGENT_TOKEN>"),
    (f"the model wrote {GITHUB_SHAPED}", "the model wrote <GITHUB_TOKEN>"),
    (f"key {OPENAI_SHAPED} refused", "key <OPENAI_API_KEY> refused"),
    ("mail maria.lopez@example.org, call +1 415 555 0100",
     "mail <EMAIL_ADDRESS>, call <PHONE_NUMBER>"),
    ("card 4111 1111 1111 1111 on file", "card <CREDIT_CARD> on file"),
], ids=["vault-token", "vendor-key", "urlencoded", "bearer", "header-tuple", "x-api-key",
        "proxy-basic", "basic", "gemini-query", "redis-url", "agent-token", "github-shape",
        "openai-shape", "email-phone", "card"])  # ids: no generated value in test names
def test_secrets_credentials_and_pii_become_their_type(text: str, expected: str) -> None:
    assert logs.scrub(text) == expected


@pytest.mark.parametrize("text", [
    "policy /srv/p/policy.yaml NOT reloaded (file changed): the last good policy (sha256 "
    "0123456789ab) stays in force. Problems:\n/srv/p/policy.yaml:5:5: unknown key 'modles' "
    "in rule 'typo'; did you mean 'models'?",
    "policy: p.yaml:24:15: warning: tokens_per_day 1412 is below 4096, the output estimate",
    "request 01a24ea8a7547f82bed4d4d2ffaa7ceb refused with 403 (token_expired)",
    "client 127.0.0.1:45678 connected to api.openai.com:443; journal-000012.jsonl rotated",
    "no token key: set egressguard_token_key to the key file",
    "Basic configuration: basic auth is off; Authorization header missing",
])
def test_ordinary_log_lines_are_left_as_they_are(text: str) -> None:
    assert logs.scrub(text) == text


def test_short_values_are_not_registered() -> None:
    """Scrubbing a 4-character value would cut words out of every line."""
    logs.register_secret("abcd", "VAULT_TOKEN")
    assert logs.scrub("abcdef") == "abcdef"


def test_the_longest_registered_value_wins() -> None:
    longer = VENDOR_KEY + "-extended"
    logs.register_secret(longer, "OTHER_KEY")
    assert logs.scrub(f"{longer} and {VENDOR_KEY}") == "<OTHER_KEY> and <VENDOR_KEY>"


# -- records: JSON lines, extra fields, tracebacks -------------------------------------
def test_a_record_is_one_json_line_with_the_documented_fields(installed) -> None:
    out, log = installed
    log.warning("refusing %s request: %s", "openai", f"key {VENDOR_KEY} revoked",
                extra={"request_id": "01ab", "vendor": "openai", "note": VAULT_TOKEN})
    (line,) = lines(out)
    assert line["level"] == "warning" and line["logger"] == "egressguard.test"
    assert line["message"] == "refusing openai request: key <VENDOR_KEY> revoked"
    assert (line["request_id"], line["vendor"], line["note"]) == ("01ab", "openai",
                                                                 "<VAULT_TOKEN>")
    assert line["time"].endswith("Z") and "T" in line["time"]


def test_the_request_context_names_the_request(installed) -> None:
    out, log = installed
    with logs.request_context("01cd"):
        log.error("failed")
    log.error("outside")
    assert [line.get("request_id") for line in lines(out)] == ["01cd", None]


def test_a_traceback_is_scrubbed_and_kept(installed) -> None:
    out, log = installed
    try:
        raise RuntimeError(f"Vault said no to {VAULT_TOKEN} for {VENDOR_KEY}")
    except RuntimeError:
        log.exception("reading the key failed")
    (line,) = lines(out)
    assert "Traceback (most recent call last)" in line["exception"]
    assert "RuntimeError: Vault said no to <VAULT_TOKEN> for <VENDOR_KEY>" in line["exception"]
    assert VAULT_TOKEN not in out.getvalue() and VENDOR_KEY not in out.getvalue()


def test_mitmproxy_lines_and_handlers_added_later_see_only_scrubbed_records(installed) -> None:
    """mitmproxy logs with the client address as an extra field, and adds handlers of
    its own (its error check, the event log); they get the record after scrubbing."""
    out, _ = installed
    later = io.StringIO()
    handler = logging.StreamHandler(later)
    handler.setFormatter(MitmFormatter(colorize=False))
    logging.getLogger().addHandler(handler)
    try:
        try:
            raise ValueError(f"upstream rejected ?key={GOOGLE_SHAPED}")
        except ValueError:
            logging.getLogger("mitmproxy.proxy.server").error(
                f"server connect failed for https://g.example/v1?key={GOOGLE_SHAPED}",
                extra={"client": ("127.0.0.1", 50123)}, exc_info=True)
    finally:
        logging.getLogger().removeHandler(handler)
    (line,) = lines(out)
    assert line["client"] == "127.0.0.1:50123"
    assert line["message"] == "server connect failed for https://g.example/v1?key=<CREDENTIAL>"
    assert "ValueError: upstream rejected ?key=<CREDENTIAL>" in line["exception"]
    assert GOOGLE_SHAPED not in out.getvalue() + later.getvalue()
    assert "?key=<CREDENTIAL>" in later.getvalue()


def test_uncaught_exceptions_are_logged_scrubbed(installed) -> None:
    out, _ = installed
    try:
        raise KeyError(VENDOR_KEY)
    except KeyError as exc:
        sys.excepthook(type(exc), exc, exc.__traceback__)
    thread = threading.Thread(target=lambda: (_ for _ in ()).throw(OSError(VAULT_TOKEN)),
                              name="reader")
    thread.start()
    thread.join()
    first, second = lines(out)
    assert first["level"] == "critical" and "KeyError: '<VENDOR_KEY>'" in first["exception"]
    assert second["message"] == "uncaught exception in thread reader"
    assert "OSError: <VAULT_TOKEN>" in second["exception"]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("stream", "json_lines"), [(io.StringIO(), True),
                                                    (_Terminal(), False)])
def test_auto_format_is_text_on_a_terminal_and_json_otherwise(stream: io.StringIO,
                                                              json_lines: bool) -> None:
    done = logs.install("auto", stream)
    try:
        logging.getLogger("egressguard.test").info("policy reloaded, key %s", VENDOR_KEY)
    finally:
        done.uninstall()
    text = stream.getvalue()
    assert text.startswith("{") == json_lines
    assert "policy reloaded, key <VENDOR_KEY>" in text
    assert json_lines or " INFO egressguard.test policy reloaded" in text


def test_an_unknown_format_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="log format is one of auto, json, text; found 'xml'"):
        logs.install("xml")


def test_uninstall_restores_logging() -> None:
    factory, hook = logging.getLogRecordFactory(), sys.excepthook
    handlers = list(logging.getLogger().handlers)
    logs.install("json", io.StringIO()).uninstall()
    assert logging.getLogRecordFactory() is factory and sys.excepthook is hook
    assert logging.getLogger().handlers == handlers
    assert all(not any(isinstance(f, logs.ScrubFilter) for f in h.filters) for h in handlers)


def test_egressguard_run_logs_json_lines_on_stderr(tmp_path) -> None:
    """mitmproxy's own start-up error, through `egressguard run`'s logging (stderr is
    not a terminal here: JSON)."""
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\nrules:\n  - name: all\n")
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "egressguard.cli", "run", "--quiet",
             "--listen", f"127.0.0.1:{port}", "--policy", str(policy),
             "--state", str(tmp_path / "var"), "--journal", str(tmp_path / "journal"),
             "--certs", str(tmp_path / "certs")],
            capture_output=True, text=True, timeout=60, cwd=tmp_path,
            env={"PATH": os.environ["PATH"], "HOME": str(tmp_path),
                 "VAULT_ADDR": "http://127.0.0.1:9", "VAULT_TOKEN": VAULT_TOKEN})
    records = [orjson.loads(line) for line in result.stderr.splitlines()
               if line.startswith("{")]
    assert result.returncode != 0
    assert records and all({"time", "level", "logger", "message"} <= set(r) for r in records)
    errors = [r for r in records if r["level"] == "error"]
    assert errors and str(port) in errors[0]["message"], result.stderr
    assert VAULT_TOKEN not in result.stdout + result.stderr
