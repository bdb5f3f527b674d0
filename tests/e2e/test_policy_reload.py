"""Policy hot reload through the real proxy: a changed file takes effect, an invalid one
is refused and audited while the last good policy stays in force, a request under way
keeps the rules it started with, and `egressguard run` refuses an invalid policy.

The proxy is `egressguard run --policy FILE` (real OpenBao, the local TLS fake vendor);
each test restarts it on its own policy file, and the agent is the openai SDK. Every
wait is on a condition and bounded; where a test shows that something does *not*
happen, it keeps checking for several poll intervals (`holds_for`).
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest

from egressguard.tools.procs import free_port, wait_until
from egressguard.tools.stack import Stack
from tests.e2e.conftest import OpenAIFactory

pytestmark = pytest.mark.e2e

HELLO = [{"role": "user", "content": "hi"}]
REQUEST_ID = "x-egressguard-request-id"
DEFAULT_POLL = 1.0  # seconds: `egressguard run --policy-poll`'s default
RELOAD_TIMEOUT = 10 * DEFAULT_POLL  # a change must be in force well within this
CLI_TIMEOUT = 30.0  # `egressguard run` on a bad policy must have exited by then

# The refused rewrite: a misspelt key (line 5) and a key given twice (line 7).
BROKEN = """\
version: 1
rules:
  - name: typo-and-duplicate
    match: {vendors: [openai]}
    modles: [gpt-4o]
    models: [gpt-4o-mini]
    models: [gpt-4o]
"""
BROKEN_PROBLEMS = (
    ":5:5: unknown key 'modles' in rule 'typo-and-duplicate'; did you mean 'models'?",
    ":7:5: duplicate key 'models' (first defined on line 6)",
)
NOT_UTF8 = b"version: 1\n# caf\xe9 (Latin-1, as an old editor saves it)\nrules:\n  - name: x\n"
NOT_UTF8_PROBLEMS = (":2:6: policy is not UTF-8 text (byte 0xe9)",)
PRICES = """\
version: 1
currency: USD
prices:
  openai:
    gpt-4o: {input: 2.50, output: 10.00}
    gpt-4o-mini: {input: 0.15, output: 0.60}
"""


# -- policies, and the ways a file gets rewritten ------------------------------------------
def openai_rule(name: str, models: tuple[str, ...] | None = None, streaming: bool = True,
                prices: str | None = None) -> str:
    """A policy of one rule for OpenAI: `models` (None: any), streaming allowed or not,
    and a price table (a file next to the policy) if `prices` names one."""
    lines = ["version: 1", *([f"prices: {prices}"] if prices else []), "rules:",
             f"  - name: {name}", "    match: {vendors: [openai]}"]
    if models is not None:
        lines.append(f"    models: [{', '.join(models)}]")
    if not streaming:
        lines.append("    streaming: false")
    return "\n".join(lines) + "\n"


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def replace_atomically(path: Path, text: str | bytes) -> None:
    """What editors and config tools do: a new file, renamed over the old one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(text.encode() if isinstance(text, str) else text)
    os.replace(tmp, path)


def write_in_place(path: Path, text: str) -> None:
    """Truncate and rewrite the same inode, as `cat new.yaml > policy.yaml` does."""
    path.write_text(text)


def swap_configmap(path: Path, text: str) -> None:
    """What the kubelet does to a mounted ConfigMap: `path` is a symlink through `..data`,
    and `..data` is swapped atomically to a new directory holding the new version."""
    root = path.parent
    version = root / f"..{time.time_ns()}"
    version.mkdir()
    (version / path.name).write_text(text)
    (root / "..data_tmp").symlink_to(version.name)
    os.replace(root / "..data_tmp", root / "..data")
    if not path.is_symlink():
        path.symlink_to(f"..data/{path.name}")


Writer = Callable[[Path, str], None]


# -- talking to the proxy, reading what it wrote -------------------------------------------
@dataclass(frozen=True)
class Outcome:
    """What the agent got back for one request."""

    status: int
    request_id: str
    body: dict[str, Any]


def ask(client: openai.OpenAI, model: str) -> Outcome:
    """One chat completion; a refusal is an outcome, not an exception."""
    try:
        raw = client.chat.completions.with_raw_response.create(model=model, messages=HELLO)
    except openai.APIStatusError as exc:
        return Outcome(exc.status_code, exc.response.headers[REQUEST_ID], exc.response.json())
    return Outcome(raw.status_code, raw.headers[REQUEST_ID], raw.http_response.json())


def wait_for_status(client: openai.OpenAI, model: str, status: int, why: str) -> Outcome:
    """Ask again until the answer has `status`, for at most RELOAD_TIMEOUT seconds."""
    return wait_until(lambda: (o := ask(client, model)).status == status and o,
                      timeout=RELOAD_TIMEOUT, interval=0.2, what=why)


def holds_for(seconds: float, check: Callable[[], None], interval: float = 0.25) -> None:
    """Run `check` (it asserts) again and again for `seconds`: showing that something
    does not happen takes as long as it would have taken to happen."""
    deadline = time.monotonic() + seconds
    while True:
        check()
        if time.monotonic() >= deadline:
            return
        time.sleep(interval)


def assert_refused_by(outcome: Outcome, rule: str, code: str) -> None:
    """A 403 in OpenAI's own error shape whose message names the deciding rule."""
    assert outcome.status == 403, outcome
    error = outcome.body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["code"] == code and f"policy rule {rule!r}" in error["message"], error


def fields(record: dict[str, Any], *names: str) -> tuple[Any, ...]:
    return tuple(record[name] for name in names)


def record_of(stack: Stack, request_id: str) -> dict[str, Any]:
    """The one journal record of a request (a stream's lands just after its last event)."""
    return wait_until(
        lambda: next((r for r in stack.records() if r["id"] == request_id), None),
        timeout=5, what=f"the record of request {request_id}")


def policy_records(stack: Stack, since: int = 0) -> list[dict[str, Any]]:
    """The journal's records of reloads (done or refused) from record number `since`."""
    return [r for r in stack.records()[since:] if r["kind"] == "policy"]


def wait_policy_record(stack: Stack, digest: str, since: int = 0) -> dict[str, Any]:
    """The record of a reload (done or refused) of the file whose sha256 is `digest`."""
    return wait_until(
        lambda: next((r for r in policy_records(stack, since) if r["policy"] == digest), None),
        timeout=RELOAD_TIMEOUT, what=f"a policy record for sha256 {digest[:12]}")


def journal_order(stack: Stack, *record_ids: str) -> list[int]:
    ids = [r["id"] for r in stack.records()]
    return [ids.index(i) for i in record_ids]


def sighup(stack: Stack) -> None:
    stack.signal_proxy(signal.SIGHUP)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "egressguard.cli", *args],
                          capture_output=True, text=True, timeout=CLI_TIMEOUT, check=False,
                          env={**os.environ, **(env or {})})


# -- fixtures ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """OpenBao and the fake vendor for the module; each test restarts the proxy."""
    with Stack(tmp_path_factory.mktemp("reload")) as s:
        yield s


StartProxy = Callable[..., Path]


@pytest.fixture
def start_proxy(stack: Stack, keys: dict[str, str], tmp_path: Path) -> StartProxy:
    """Restart the proxy on a new policy file, in its own directory as a mount is.

    `write` puts the file there, `beside` are files to put next to it first (a price
    table), `poll` is `--policy-poll` (None: the default).
    """

    def start(text: str, write: Writer = replace_atomically, poll: float | None = None,
              beside: dict[str, str] | None = None) -> Path:
        path = tmp_path / "policy" / "policy.yaml"
        path.parent.mkdir()
        for name, content in (beside or {}).items():
            (path.parent / name).write_text(content)
        write(path, text)
        stack.stop_proxy()
        stack.policy = path
        stack.proxy_args = () if poll is None else ("--policy-poll", str(poll))
        stack.start_proxy()
        return path

    return start


# -- a changed file ------------------------------------------------------------------------
@pytest.mark.parametrize("write", [replace_atomically, write_in_place, swap_configmap])
def test_a_changed_policy_file_is_in_force_within_the_poll_interval(
    stack: Stack, start_proxy: StartProxy, openai_client: OpenAIFactory, write: Writer
) -> None:
    """Polling notices the file changed, however it was rewritten: the new rules decide
    the next requests, the journal records the reload with the new file's sha256, and
    request records from then on name the new digest and rule."""
    path = start_proxy(openai_rule("mini-only", ("gpt-4o-mini",)), write=write)
    old = sha256_of(path)
    client = openai_client(api_key=stack.token("reload-agent"))
    refused = ask(client, "gpt-4o")
    assert_refused_by(refused, "mini-only", "model_not_allowed")
    assert fields(record_of(stack, refused.request_id), "policy", "rule") == (old, "mini-only")
    assert ask(client, "gpt-4o-mini").status == 200
    mark = len(stack.records())

    write(path, openai_rule("mini-and-4o", ("gpt-4o-mini", "gpt-4o")))
    new = sha256_of(path)
    allowed = wait_for_status(client, "gpt-4o", 200, "gpt-4o to be allowed by the new file")

    [loaded] = policy_records(stack, mark)
    assert fields(loaded, "decision", "reason", "policy", "path") == \
        ("allow", "policy_loaded", new, str(path))
    after = [record_of(stack, o.request_id) for o in (allowed, ask(client, "gpt-4o-mini"))]
    assert [fields(r, "decision", "policy", "rule") for r in after] == \
        [("allow", new, "mini-and-4o")] * 2
    reload_at, allowed_at = journal_order(stack, loaded["id"], allowed.request_id)
    assert reload_at < allowed_at


def test_sighup_reloads_when_polling_is_off(
    stack: Stack, start_proxy: StartProxy, openai_client: OpenAIFactory
) -> None:
    """With `--policy-poll 0` a changed file is left alone for as long as polling would
    have taken several times over; SIGHUP reloads it, and the record says SIGHUP did."""
    path = start_proxy(openai_rule("mini-only-hup", ("gpt-4o-mini",)), poll=0)
    client = openai_client(api_key=stack.token("hup-agent"))
    assert_refused_by(ask(client, "gpt-4o"), "mini-only-hup", "model_not_allowed")
    mark = len(stack.records())

    replace_atomically(path, openai_rule("hup-wider", ("gpt-4o-mini", "gpt-4o")))
    holds_for(3 * DEFAULT_POLL, lambda: assert_refused_by(
        ask(client, "gpt-4o"), "mini-only-hup", "model_not_allowed"))
    assert policy_records(stack, mark) == []

    sighup(stack)
    allowed = wait_for_status(client, "gpt-4o", 200, "gpt-4o to be allowed after SIGHUP")
    [loaded] = policy_records(stack, mark)
    assert fields(loaded, "decision", "policy", "message") == \
        ("allow", sha256_of(path), "reloaded (SIGHUP)")
    assert record_of(stack, allowed.request_id)["rule"] == "hup-wider"


# -- an invalid file -----------------------------------------------------------------------
@pytest.mark.parametrize("prices", [None, "prices.yaml"], ids=["plain", "with-price-table"])
def test_an_invalid_rewrite_is_refused_once_and_the_last_good_policy_stays(
    stack: Stack, start_proxy: StartProxy, openai_client: OpenAIFactory, prices: str | None
) -> None:
    """A broken file changes nothing for agents, for as long as it stays broken; the
    operator finds every problem, with file:line:column, in the log and in one
    policy/deny record (not one per poll); the journal still verifies; once the file
    is fixed it is reloaded as usual."""
    path = start_proxy(openai_rule("mini-only-kept", ("gpt-4o-mini",), prices=prices),
                       beside={prices: PRICES} if prices else None)
    good = sha256_of(path)
    client = openai_client(api_key=stack.token("steady-agent"))
    mark, log_mark = len(stack.records()), len(stack.proxy_output())

    replace_atomically(path, BROKEN)
    refused = wait_policy_record(stack, sha256_of(path), mark)
    assert fields(refused, "decision", "reason", "path") == ("deny", "policy_invalid", str(path))
    for problem in BROKEN_PROBLEMS:
        assert f"{path}{problem}" in refused["message"]
    log = wait_until(lambda: (t := stack.proxy_output()[log_mark:]) and "Problems:" in t and t,
                     timeout=5, what="the refused reload in the proxy log")
    assert (f"policy {path} NOT reloaded (file changed): the last good policy "
            f"(sha256 {good[:12]}) stays in force") in log
    for problem in BROKEN_PROBLEMS:
        assert f"{path}{problem}" in log

    decided = []
    holds_for(3 * DEFAULT_POLL, lambda: decided.append(ask(client, "gpt-4o")))
    decided.append(ask(client, "gpt-4o-mini"))
    for outcome in decided[:-1]:
        assert_refused_by(outcome, "mini-only-kept", "model_not_allowed")
    assert decided[-1].status == 200
    assert {record_of(stack, o.request_id)["policy"] for o in decided} == {good}
    assert len(policy_records(stack, mark)) == 1  # refused once, not at every poll
    verify = run_cli("audit", "verify", str(stack.journal))
    assert verify.returncode == 0 and "chain intact" in verify.stdout, verify.stdout + verify.stderr

    replace_atomically(path, openai_rule("fixed", ("gpt-4o-mini", "gpt-4o"), prices=prices))
    loaded = wait_policy_record(stack, sha256_of(path), mark)
    assert fields(loaded, "decision", "reason") == ("allow", "policy_loaded")
    assert record_of(stack, ask(client, "gpt-4o").request_id)["rule"] == "fixed"
    assert [r["reason"] for r in policy_records(stack, mark)] == \
        ["policy_invalid", "policy_loaded"]


# -- a request under way -------------------------------------------------------------------
def test_a_stream_under_way_finishes_under_the_policy_it_started_with(
    stack: Stack, start_proxy: StartProxy, openai_client: OpenAIFactory
) -> None:
    """A reload in the middle of a stream does not touch it: it completes, and its record
    names the old rule and digest; a request started after the reload is refused."""
    path = start_proxy(openai_rule("streams-welcome"), poll=0)  # reloads on cue: SIGHUP
    old = sha256_of(path)
    client = openai_client(api_key=stack.token("midstream-agent"))
    mark = len(stack.records())

    with client.chat.completions.with_streaming_response.create(
        model="slow-stream", messages=HELLO, stream=True  # the fake pauses between events
    ) as raw:
        rid = raw.headers[REQUEST_ID]
        chunks = iter(raw.parse())
        text = [next(chunks).choices[0].delta.content or ""]

        replace_atomically(path, openai_rule("no-streams", streaming=False))
        sighup(stack)
        reload = wait_policy_record(stack, sha256_of(path), mark)
        late = openai_client(api_key=stack.token("late-agent"))
        with pytest.raises(openai.PermissionDeniedError) as caught:
            late.chat.completions.create(model="slow-stream", messages=HELLO, stream=True)
        assert caught.value.response.json()["error"]["code"] == "streaming_not_allowed"
        assert "policy rule 'no-streams'" in caught.value.message

        text += [c.choices[0].delta.content or "" for c in chunks if c.choices]

    assert "".join(text) == "Hello from fake openai"
    assert fields(record_of(stack, rid), "status", "decision", "rule", "policy") == \
        (200, "allow", "streams-welcome", old)
    reload_at, stream_at = journal_order(stack, reload["id"], rid)
    assert reload_at < stream_at  # the stream's record was written after the reload


# -- start-up ------------------------------------------------------------------------------
@pytest.mark.parametrize("content, problems", [
    pytest.param(BROKEN.encode(), BROKEN_PROBLEMS, id="typo-and-duplicate"),
    pytest.param(NOT_UTF8, NOT_UTF8_PROBLEMS, id="not-utf8"),
])
def test_run_refuses_to_start_on_an_invalid_policy(
    tmp_path: Path, content: bytes, problems: tuple[str, ...]
) -> None:
    """`egressguard run` exits 2 at once, printing every problem as file:line:column
    (a file that is not UTF-8 too: the place of the first bad byte)."""
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(content)
    nowhere = f"http://127.0.0.1:{free_port()}"  # a Vault address: never reached
    done = run_cli("run", "--quiet", "--policy", str(bad),
                   "--listen", f"127.0.0.1:{free_port()}", "--state", str(tmp_path / "var"),
                   "--journal", str(tmp_path / "journal"), "--certs", str(tmp_path / "certs"),
                   env={"VAULT_ADDR": nowhere, "VAULT_TOKEN": "placeholder"})

    assert done.returncode == 2, done.stdout + done.stderr
    assert f"invalid policy {bad}" in done.stderr and "Traceback" not in done.stderr
    assert re.search(rf"^{re.escape(str(bad))}:\d+:\d+: ", done.stderr, re.MULTILINE)
    for problem in problems:
        assert f"{bad}{problem}" in done.stderr


# -- files that are not policies at all, and files a policy reads ------------------------
def test_a_file_that_is_not_utf8_is_refused_and_polling_goes_on(
    stack: Stack, start_proxy: StartProxy
) -> None:
    """Bytes that are not UTF-8 are one more invalid file: refused, audited, and the next
    good version of the file is picked up by polling as usual."""
    path = start_proxy(openai_rule("before-latin1"))
    mark = len(stack.records())

    replace_atomically(path, NOT_UTF8)
    refused = wait_policy_record(stack, sha256_of(path), mark)
    assert fields(refused, "decision", "reason") == ("deny", "policy_invalid")
    assert refused["message"] == f"{path}{NOT_UTF8_PROBLEMS[0]}"

    replace_atomically(path, openai_rule("after-latin1"))
    loaded = wait_policy_record(stack, sha256_of(path), mark)
    assert loaded["decision"] == "allow"


def test_a_changed_price_table_is_in_force_after_a_reload(
    stack: Stack, start_proxy: StartProxy, openai_client: OpenAIFactory
) -> None:
    """The price table is part of the policy: a model whose price is removed can no
    longer be held to a spend limit, so it is refused once the change is reloaded."""
    policy = openai_rule("priced", prices="prices.yaml") + \
        "teams:\n  budgeted: {limits: {spend_per_day: 100}}\n"
    path = start_proxy(policy, beside={"prices.yaml": PRICES})
    client = openai_client(api_key=stack.token("priced-agent", team="budgeted"))
    assert ask(client, "gpt-4o").status == 200

    (path.parent / "prices.yaml").write_text(PRICES.replace("    gpt-4o: ", "    gpt-4.1: "))
    refused = wait_for_status(client, "gpt-4o", 403, "gpt-4o to lose its price")
    assert refused.body["error"]["code"] == "no_price"
