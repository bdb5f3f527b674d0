"""Acting on a redaction plan, pseudonyms, re-identification
(`egressguard.core.redact.actions`)."""

from __future__ import annotations

import copy
import json
import pickle
import re
from typing import Any

import orjson
import pytest

from egressguard.core.entities import PII, SECRETS
from egressguard.core.redact import Finding, actions
from egressguard.core.redact import sse as sse_module
from egressguard.core.redact.actions import (
    Outcome,
    Pseudonyms,
    PseudonymStore,
    Reidentifier,
    apply,
    audit_counts,
    conversation_key,
    plan,
)
from egressguard.core.redact.fields import text_slots


def f(entity: str, text: str, value: str, nth: int = 0, score: float = 1.0) -> Finding:
    """A Finding for the nth occurrence of `value` in `text` (what a detector returns)."""
    start = -1
    for _ in range(nth + 1):
        start = text.index(value, start + 1)
    kind = "secret" if entity in SECRETS else "pii"
    return Finding(entity, kind, start, start + len(value), score)


# ---- plan --------------------------------------------------------------------------

def test_plan_spreads_groups_and_a_named_type_wins() -> None:
    got = plan({"pii": "mask", "PERSON": "pseudonymize", "secrets": "block", "URL": "log"})
    assert got["EMAIL_ADDRESS"] == "mask"
    assert got["PERSON"] == "pseudonymize"
    assert got["URL"] == "log"
    assert all(got[s] == "block" for s in SECRETS)
    assert set(got) == set(PII) | set(SECRETS)


def test_plan_refuses_an_unknown_action() -> None:
    with pytest.raises(ValueError, match="EMAIL_ADDRESS: unknown action 'hash'"):
        plan({"EMAIL_ADDRESS": "hash"})


# ---- apply -------------------------------------------------------------------------

TEXT = "Alice Baker (alice@example.com, SSN 078-05-1120) wrote to Bob; see https://x.io"
FINDINGS = [
    f("PERSON", TEXT, "Alice Baker"), f("EMAIL_ADDRESS", TEXT, "alice@example.com"),
    f("US_SSN", TEXT, "078-05-1120"), f("PERSON", TEXT, "Bob"), f("URL", TEXT, "https://x.io"),
]


@pytest.mark.parametrize("name, redact, text, counts, blocked", [
    ("mask everything", {"pii": "mask"},
     "<PERSON> (<EMAIL_ADDRESS>, SSN <US_SSN>) wrote to <PERSON>; see <URL>",
     {("PERSON", "mask"): 2, ("EMAIL_ADDRESS", "mask"): 1, ("US_SSN", "mask"): 1,
      ("URL", "mask"): 1}, set()),
    ("pseudonymize people, mask the rest", {"pii": "mask", "PERSON": "pseudonymize"},
     "<PERSON_1> (<EMAIL_ADDRESS>, SSN <US_SSN>) wrote to <PERSON_2>; see <URL>",
     {("PERSON", "pseudonymize"): 2, ("EMAIL_ADDRESS", "mask"): 1, ("US_SSN", "mask"): 1,
      ("URL", "mask"): 1}, set()),
    ("block leaves the text, names the type", {"US_SSN": "block", "EMAIL_ADDRESS": "mask"},
     "Alice Baker (<EMAIL_ADDRESS>, SSN 078-05-1120) wrote to Bob; see https://x.io",
     {("US_SSN", "block"): 1, ("EMAIL_ADDRESS", "mask"): 1}, {"US_SSN"}),
    ("log leaves the text, counts", {"URL": "log", "PERSON": "log"}, TEXT,
     {("URL", "log"): 1, ("PERSON", "log"): 2}, set()),
    ("types the plan does not name are ignored", {"CREDIT_CARD": "block"}, TEXT, {}, set()),
    ("an empty plan does nothing", {}, TEXT, {}, set()),
])
def test_apply(name: str, redact: dict[str, str], text: str,
               counts: dict[tuple[str, str], int], blocked: set[str]) -> None:
    outcome = apply(TEXT, FINDINGS, plan(redact), Pseudonyms())
    assert outcome.text == text
    assert dict(outcome.counts) == counts
    assert outcome.blocked == blocked
    assert outcome.changed is (text != TEXT)


def test_no_findings_give_back_the_very_text() -> None:
    text = "nothing here"
    assert apply(text, [], plan({"pii": "mask"}), Pseudonyms()).text is text


@pytest.mark.parametrize("name, text, findings, expected, counts", [
    ("a longer span swallows the one inside it", "mail bob.smith@x.io now",
     [Finding("PERSON", "pii", 5, 14), Finding("EMAIL_ADDRESS", "pii", 5, 19)],
     "mail <EMAIL_ADDRESS> now", {("EMAIL_ADDRESS", "mask"): 1}),
    ("overlapping spans: their union goes, the longer names it", "abcdefghij",
     [Finding("PHONE_NUMBER", "pii", 2, 6), Finding("US_SSN", "pii", 4, 9)],
     "ab<US_SSN>j", {("US_SSN", "mask"): 1}),
    ("same length: the higher score names it", "abcdef",
     [Finding("PHONE_NUMBER", "pii", 1, 4, 0.5), Finding("US_SSN", "pii", 1, 4, 0.9)],
     "a<US_SSN>ef", {("US_SSN", "mask"): 1}),
    ("adjacent spans stay two", "abcdef",
     [Finding("US_SSN", "pii", 0, 3), Finding("PHONE_NUMBER", "pii", 3, 6)],
     "<US_SSN><PHONE_NUMBER>", {("US_SSN", "mask"): 1, ("PHONE_NUMBER", "mask"): 1}),
    ("spans past the end are clipped", "abc",
     [Finding("US_SSN", "pii", 1, 99)], "a<US_SSN>", {("US_SSN", "mask"): 1}),
    ("empty and inverted spans are ignored", "abc",
     [Finding("US_SSN", "pii", 2, 2), Finding("US_SSN", "pii", 3, 1),
      Finding("US_SSN", "pii", 5, 9)], "abc", {}),
    ("findings in any order", "a1b2c3",
     [Finding("US_SSN", "pii", 5, 6), Finding("US_SSN", "pii", 1, 2),
      Finding("US_SSN", "pii", 3, 4)], "a<US_SSN>b<US_SSN>c<US_SSN>", {("US_SSN", "mask"): 3}),
    ("a log finding does not shield a masked one", "see http://a@b.io",
     [Finding("URL", "pii", 4, 17), Finding("EMAIL_ADDRESS", "pii", 11, 17)],
     "see http://<EMAIL_ADDRESS>", {("URL", "log"): 1, ("EMAIL_ADDRESS", "mask"): 1}),
])
def test_overlaps_and_odd_spans(name: str, text: str, findings: list[Finding], expected: str,
                                counts: dict[tuple[str, str], int]) -> None:
    outcome = apply(text, findings, {"PERSON": "mask", "EMAIL_ADDRESS": "mask",
                                     "PHONE_NUMBER": "mask", "US_SSN": "mask", "URL": "log"},
                    Pseudonyms())
    assert (outcome.text, dict(outcome.counts)) == (expected, counts)


def test_block_wins_even_inside_a_masked_span() -> None:
    text = "key sk-abc in alice@x.io"
    outcome = apply(text, [Finding("EMAIL_ADDRESS", "pii", 4, 24),
                           f("OPENAI_API_KEY", text, "sk-abc")],
                    {"EMAIL_ADDRESS": "mask", "OPENAI_API_KEY": "block"}, Pseudonyms())
    assert outcome.blocked == {"OPENAI_API_KEY"}
    assert outcome.text == "key <EMAIL_ADDRESS>"


def test_an_unknown_action_raises() -> None:
    with pytest.raises(ValueError, match="unknown redaction action 'hash'"):
        apply("abc", [Finding("US_SSN", "pii", 0, 1)], {"US_SSN": "hash"}, Pseudonyms())


def test_the_outcome_holds_no_values() -> None:
    outcome = apply(TEXT, FINDINGS, plan({"pii": "block"}), Pseudonyms())
    assert outcome.blocked == {"PERSON", "EMAIL_ADDRESS", "US_SSN", "URL"}
    assert "alice" not in repr(outcome.blocked) + repr(dict(outcome.counts))


# ---- pseudonyms --------------------------------------------------------------------

PSEUDO = {"PERSON": "pseudonymize", "EMAIL_ADDRESS": "pseudonymize"}


def test_the_same_value_gets_the_same_pseudonym_across_texts_and_requests() -> None:
    store = PseudonymStore()
    key = conversation_key("agent-a", ["sys", "first"])
    first = [("Ann met Ben.", [("PERSON", "Ann"), ("PERSON", "Ben")]),
             ("Ben wrote ann@x.io", [("PERSON", "Ben"), ("EMAIL_ADDRESS", "ann@x.io")])]
    texts = []
    for text, found in first:  # request 1: two texts
        texts.append(apply(text, [f(e, text, v) for e, v in found], PSEUDO,
                           store.conversation(key)).text)
    assert texts == ["<PERSON_1> met <PERSON_2>.", "<PERSON_2> wrote <EMAIL_ADDRESS_1>"]
    later = "Carl, Ann and Ben"  # request 2 of the same conversation
    outcome = apply(later, [f("PERSON", later, v) for v in ("Carl", "Ann", "Ben")], PSEUDO,
                    store.conversation(key))
    assert outcome.text == "<PERSON_3>, <PERSON_1> and <PERSON_2>"
    assert outcome.tokens == {"<PERSON_1>", "<PERSON_2>", "<PERSON_3>"}
    other = store.conversation(conversation_key("agent-a", ["sys", "another"]))
    assert apply("Ben", [Finding("PERSON", "pii", 0, 3)], PSEUDO, other).text == "<PERSON_1>"


def test_the_same_value_as_another_type_is_another_pseudonym() -> None:
    p = Pseudonyms()
    assert p.pseudonym("PERSON", "Jordan") == "<PERSON_1>"
    assert p.pseudonym("LOCATION", "Jordan") == "<LOCATION_1>"
    assert p.pseudonym("PERSON", "Jordan") == "<PERSON_1>"
    assert p.original("<LOCATION_1>") == "Jordan"
    assert p.original("<PERSON_9>") is None


def test_a_full_conversation_masks_new_values() -> None:
    p = Pseudonyms(max_values=2)
    text = "A B C A"
    outcome = apply(text, [Finding("PERSON", "pii", i, i + 1) for i in (0, 2, 4, 6)],
                    PSEUDO, p)
    assert outcome.text == "<PERSON_1> <PERSON_2> <PERSON> <PERSON_1>"
    assert dict(outcome.counts) == {("PERSON", "pseudonymize"): 3, ("PERSON", "mask"): 1}
    assert len(p) == 2


def test_every_pseudonym_is_short_enough_to_be_held_back_whole() -> None:
    for entity in (*PII, *SECRETS):
        token = f"<{entity}_99999>"
        assert actions.TOKEN.fullmatch(token)
        assert len(token) < actions._MAX_TOKEN


def test_pseudonyms_never_show_values() -> None:
    store = PseudonymStore()
    p = store.conversation("k")
    p.pseudonym("PERSON", "Secret Name")
    for text in (repr(p), str(p), repr(store), str(store)):
        assert "Secret" not in text
    assert repr(p) == "<Pseudonyms: 1 values>"
    for thing in (p, store):
        with pytest.raises(TypeError):
            pickle.dumps(thing)
        with pytest.raises(TypeError):
            copy.copy(thing)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_conversation_unused_for_the_ttl_is_forgotten() -> None:
    clock = Clock()
    store = PseudonymStore(ttl=60, clock=clock)
    first = store.conversation("a")
    first.pseudonym("PERSON", "Ann")
    clock.now += 59
    assert store.conversation("a") is first  # used again: its age starts over
    clock.now += 59
    assert store.conversation("a") is first
    clock.now += 60
    fresh = store.conversation("a")
    assert fresh is not first and len(fresh) == 0
    assert fresh.pseudonym("PERSON", "Bob") == "<PERSON_1>"


def test_expired_conversations_are_dropped_when_others_are_used() -> None:
    clock = Clock()
    store = PseudonymStore(ttl=10, clock=clock)
    for key in "abc":  # used at 1000, 1004, 1008
        store.conversation(key)
        clock.now += 4
    assert len(store) == 2  # at 1012: a is 12 s old, gone; b and c remain
    store.conversation("d")
    clock.now += 3  # 1015: b (11 s) is gone too
    assert len(store) == 2
    clock.now += 100
    assert len(store) == 0


def test_the_least_recently_used_conversation_goes_first() -> None:
    store = PseudonymStore(max_conversations=2)
    a = store.conversation("a")
    store.conversation("b")
    assert store.conversation("a") is a  # a is now the most recent
    store.conversation("c")  # evicts b
    assert len(store) == 2
    assert store.conversation("a") is a
    assert len(store.conversation("b")) == 0


@pytest.mark.parametrize("kwargs", [{"ttl": 0}, {"max_conversations": 0}, {"max_values": -1}])
def test_store_bounds_must_be_positive(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        PseudonymStore(**kwargs)


def test_conversation_keys() -> None:
    key = conversation_key("agent", ["sys", "hello Ann"])
    assert key == conversation_key("agent", ["sys", "hello Ann"])
    assert re.fullmatch(r"[0-9a-f]{32}", key)
    assert key != conversation_key("other-agent", ["sys", "hello Ann"])
    assert key != conversation_key("agent", ["sys", "hello Bob"])
    # the parts are length-prefixed: moving a boundary is another conversation
    assert conversation_key("a", ["ab", "c"]) != conversation_key("a", ["a", "bc"])
    assert conversation_key("a", ["x"]) != conversation_key("ax", [])


def test_audit_counts_sum_a_requests_outcomes_without_values() -> None:
    p = Pseudonyms()
    outcomes = [apply(TEXT, FINDINGS, plan({"pii": "mask", "PERSON": "pseudonymize",
                                            "US_SSN": "block"}), p),
                apply("a@b.io", [Finding("EMAIL_ADDRESS", "pii", 0, 6)], {"EMAIL_ADDRESS": "mask"},
                      p),
                Outcome("x", {})]
    counts = audit_counts(outcomes)
    assert counts == {"EMAIL_ADDRESS": {"mask": 2}, "PERSON": {"pseudonymize": 2},
                      "URL": {"mask": 1}, "US_SSN": {"block": 1}}
    assert list(counts) == sorted(counts)
    assert "alice" not in json.dumps(counts)


# ---- redacting a whole body, the way the stage will -----------------------------------

def test_redacting_every_slot_of_a_body_keeps_it_valid() -> None:
    body = {"model": "gpt-4.1", "temperature": 0.2, "messages": [
        {"role": "user", "content": 'I am "Zoë" <zoe@x.io>'},
        {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {
            "name": "mail", "arguments": json.dumps({"to": "zoe@x.io", "n": 1})}}]},
    ]}
    before = orjson.dumps({k: v for k, v in body.items() if k != "messages"})
    p = Pseudonyms()
    for slot in text_slots("openai", "chat", body):
        text = slot.text
        found = [f("EMAIL_ADDRESS", text, "zoe@x.io")] if "zoe@x.io" in text else []
        outcome = apply(text, found, {"EMAIL_ADDRESS": "pseudonymize"}, p)
        if outcome.changed:
            slot.set(outcome.text)
    wire = orjson.dumps(body)
    again = orjson.loads(wire)
    assert again["messages"][0]["content"] == 'I am "Zoë" <<EMAIL_ADDRESS_1>>'
    assert orjson.loads(again["messages"][1]["tool_calls"][0]["function"]["arguments"]) == \
        {"to": "<EMAIL_ADDRESS_1>", "n": 1}
    assert orjson.dumps({k: v for k, v in again.items() if k != "messages"}) == before


# ---- re-identification: buffered ---------------------------------------------------

NASTY = ['Ann "the Hammer" O\'Hara', "C:\\Users\\ann", "Ann\nLine2\ttab", "Zoë 李 🙂",
         "</script>&<b>", "\\u003c not an escape", "\u2028sep\u2029"]


def conversation(*values: str) -> Pseudonyms:
    p = Pseudonyms()
    for value in values:
        p.pseudonym("PERSON", value)
    return p


@pytest.mark.parametrize("value", NASTY)
def test_buffered_openai_answer_round_trips_any_value(value: str) -> None:
    reid = Reidentifier(conversation(value))
    answer = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1700000000,
              "choices": [{"index": 0, "message": {
                  "role": "assistant", "content": "Hello <PERSON_1>, bye <PERSON_1>.",
                  "tool_calls": [{"id": "c", "type": "function", "function": {
                      "name": "greet", "arguments": json.dumps({"who": "<PERSON_1>"})}}]},
                  "logprobs": None, "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 3, "completion_tokens": 1.5e-07}}
    out = reid.buffered(orjson.dumps(answer))
    got = orjson.loads(out)
    message = got["choices"][0]["message"]
    assert message["content"] == f"Hello {value}, bye {value}."
    assert json.loads(message["tool_calls"][0]["function"]["arguments"]) == {"who": value}
    assert json.loads(out) == got  # the stdlib agrees: valid JSON
    answer["choices"][0]["message"] = message
    assert got == answer  # nothing else changed


@pytest.mark.parametrize("value", NASTY)
def test_buffered_anthropic_and_gemini_answers(value: str) -> None:
    reid = Reidentifier(conversation(value))
    anthropic = {"type": "message", "content": [
        {"type": "text", "text": "For <PERSON_1>:"},
        {"type": "tool_use", "id": "t", "name": "f", "input": {"who": ["<PERSON_1>"]}}]}
    got = orjson.loads(reid.buffered(orjson.dumps(anthropic)))
    assert got["content"][0]["text"] == f"For {value}:"
    assert got["content"][1]["input"] == {"who": [value]}
    gemini = {"candidates": [{"content": {"role": "model", "parts": [
        {"text": "<PERSON_1>!"}, {"functionCall": {"name": "f", "args": {"n": "<PERSON_1>"}}}]}}]}
    got = orjson.loads(reid.buffered(orjson.dumps(gemini)))
    parts = got["candidates"][0]["content"]["parts"]
    assert parts == [{"text": f"{value}!"}, {"functionCall": {"name": "f", "args": {"n": value}}}]


def test_signed_thinking_keeps_its_pseudonyms() -> None:
    reid = Reidentifier(conversation("Ann"))
    answer = {"content": [
        {"type": "thinking", "thinking": "The user <PERSON_1> wants", "signature": "Eq"},
        {"type": "text", "text": "Hi <PERSON_1>"}]}
    got = orjson.loads(reid.buffered(orjson.dumps(answer)))
    assert got["content"][0]["thinking"] == "The user <PERSON_1> wants"
    assert got["content"][1]["text"] == "Hi Ann"
    spaced = b'{"thinking" :  "<PERSON_1>", "text": "<PERSON_1>"}'
    assert reid.buffered(spaced) == b'{"thinking" :  "<PERSON_1>", "text": "Ann"}'
    stream = sse({"type": "content_block_delta", "index": 0,
                  "delta": {"type": "thinking_delta", "thinking": "about <PERSON_1>"}},
                 {"type": "content_block_delta", "index": 1,
                  "delta": {"type": "text_delta", "text": "<PERSON_1>"}})
    assert run(reid, [stream]) == stream.replace(b'"text":"<PERSON_1>"', b'"text":"Ann"')


def test_buffered_leaves_every_other_byte_as_the_vendor_wrote_it() -> None:
    reid = Reidentifier(conversation("Ann"))
    body = (b'{\n  "big": 123456789012345678901234567890,\n  "f": 1.50,\n'
            b'  "text": "hi <PERSON_1>",  "esc": "\\u00e9"\n}')
    assert reid.buffered(body) == body.replace(b"<PERSON_1>", b"Ann")


def test_buffered_json_mode_content_is_escaped_for_its_inner_json() -> None:
    reid = Reidentifier(conversation('Ann "A" B'))
    content = json.dumps({"name": "<PERSON_1>", "note": "x"})
    got = orjson.loads(reid.buffered(orjson.dumps({"content": content, "plain": "<PERSON_1>"})))
    assert json.loads(got["content"]) == {"name": 'Ann "A" B', "note": "x"}
    assert got["plain"] == 'Ann "A" B'


def test_buffered_restores_escaped_angle_brackets() -> None:
    reid = Reidentifier(conversation("Ann"))
    body = b'{"text":"hi \\u003cPERSON_1\\u003E"}'
    assert orjson.loads(reid.buffered(body)) == {"text": "hi Ann"}


def test_buffered_same_object_when_nothing_to_restore() -> None:
    body = orjson.dumps({"text": "hi <b>PERSON_1</b> <UNKNOWN_3>"})
    assert Reidentifier(conversation("Ann")).buffered(body) is body
    plain = orjson.dumps({"text": "no tokens"})
    assert Reidentifier(conversation("Ann")).buffered(plain) is plain
    assert Reidentifier(Pseudonyms()).buffered(body) is body


def test_only_the_requests_own_pseudonyms_are_restored() -> None:
    p = conversation("Ann", "Ben")  # <PERSON_1>, <PERSON_2>
    body = orjson.dumps({"text": "<PERSON_1> and <PERSON_2>"})
    assert orjson.loads(Reidentifier(p, only={"<PERSON_2>"}).buffered(body)) == \
        {"text": "<PERSON_1> and Ben"}
    assert orjson.loads(Reidentifier(p).buffered(body)) == {"text": "Ann and Ben"}
    assert Reidentifier(p, only=()).buffered(body) is body


def test_a_body_that_is_not_json_gets_only_values_that_need_no_escaping() -> None:
    p = conversation("Ann", 'Ben "B"')
    body = b"plain <PERSON_1> and <PERSON_2> {"
    assert Reidentifier(p).buffered(body) == b"plain Ann and <PERSON_2> {"


def test_restore_plain_text() -> None:
    reid = Reidentifier(conversation("Ann"))
    assert reid.restore("<PERSON_1> <PERSON_2> <PERSON>") == "Ann <PERSON_2> <PERSON>"
    assert "Ann" not in repr(reid)


# ---- re-identification: streamed ---------------------------------------------------

def sse(*events: dict[str, Any] | str, named: bool = False, eol: bytes = b"\n") -> bytes:
    out = b""
    for event in events:
        if named and isinstance(event, dict):
            out += b"event: " + event["type"].encode() + eol
        data = event.encode() if isinstance(event, str) else orjson.dumps(event)
        out += b"data: " + data + eol + eol
    return out


def parse_sse(stream: bytes) -> list[Any]:
    """The data of every event, parsed where it is JSON."""
    events = []
    for block in re.split(rb"\r?\n\r?\n", stream):
        for line in block.splitlines():
            if line.startswith(b"data:"):
                payload = line[5:].strip()
                events.append(payload.decode() if payload == b"[DONE]"
                              else orjson.loads(payload))
    return events


def run(reid: Reidentifier, chunks: list[bytes], **kwargs: Any) -> bytes:
    stream = reid.stream(**kwargs)
    out = b"".join(stream(c) for c in chunks)
    return out + stream(b"")


def chat_chunk(content: str | None = None, tool_args: str | None = None,
               index: int = 0) -> dict[str, Any]:
    delta: dict[str, Any] = {}
    if content is not None:
        delta["content"] = content
    if tool_args is not None:
        delta["tool_calls"] = [{"index": 0, "function": {"arguments": tool_args}}]
    return {"choices": [{"index": index, "delta": delta, "finish_reason": None}]}


def _pieces(text: str) -> list[str]:
    """A text as a model streams it: pseudonyms cut into several tokens."""
    out: list[str] = []
    for part in re.split(r"(<[A-Z_]+_\d+>)", text):
        if TOKENISH.fullmatch(part):
            out += [part[:1], part[1:4], part[4:-2], part[-2:]]
        elif part:
            out += [part[i:i + 12] for i in range(0, len(part), 12)]
    return out


TOKENISH = re.compile(r"<[A-Z_]+_\d+>")

OPENAI_STREAM_TEXT = "Dear <PERSON_1>, <PERSON_2> wrote. <b>bold</b> 1 < 2 <PERSON_9> <PERS"
OPENAI_ARGS = json.dumps({"to": "<PERSON_1>", "cc": ["<PERSON_2>"]})


def openai_stream() -> bytes:
    return sse(
        {**chat_chunk(""), "choices": [{"index": 0, "delta": {"role": "assistant",
                                                              "content": ""}}]},
        *(chat_chunk(p) for p in _pieces(OPENAI_STREAM_TEXT)),
        *(chat_chunk(tool_args=p) for p in _pieces(OPENAI_ARGS)),
        {**chat_chunk(), "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        "[DONE]")


def openai_text(events: list[Any]) -> tuple[str, str]:
    text, arguments = "", ""
    for event in events:
        if event == "[DONE]":
            continue
        delta = event["choices"][0]["delta"]
        text += delta.get("content") or ""
        for call in delta.get("tool_calls", []):
            arguments += call["function"]["arguments"]
    return text, arguments


def anthropic_stream() -> bytes:
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": {"id": "msg_1", "content": [],
                                              "usage": {"input_tokens": 5}}},
        {"type": "content_block_start", "index": 0,
         "content_block": {"type": "text", "text": ""}},
    ]
    for i, piece in enumerate(_pieces("Hi <PERSON_1> and <PERSON_2>!")):
        events.append({"type": "content_block_delta", "index": 0,
                       "delta": {"type": "text_delta", "text": piece}})
        if i == 3:
            events.append({"type": "ping"})  # pings come whenever
    events += [{"type": "content_block_stop", "index": 0},
               {"type": "content_block_start", "index": 1, "content_block": {
                   "type": "tool_use", "id": "t", "name": "f", "input": {}}}]
    for piece in _pieces(json.dumps({"who": "<PERSON_2>"})):
        events.append({"type": "content_block_delta", "index": 1,
                       "delta": {"type": "input_json_delta", "partial_json": piece}})
    events += [{"type": "content_block_stop", "index": 1},
               {"type": "message_delta", "delta": {"stop_reason": "tool_use"},
                "usage": {"output_tokens": 9}},
               {"type": "message_stop"}]
    return sse(*events, named=True)


def anthropic_text(events: list[Any]) -> tuple[str, str]:
    text, partial = "", ""
    for event in events:
        if event.get("type") == "content_block_delta":
            text += event["delta"].get("text", "")
            partial += event["delta"].get("partial_json", "")
    return text, partial


def responses_stream() -> bytes:
    events: list[dict[str, Any]] = [{"type": "response.created", "sequence_number": 0,
                                     "response": {"id": "resp_1", "output": []}}]
    full = "Booked for <PERSON_1>."
    for piece in _pieces(full):
        events.append({"type": "response.output_text.delta", "item_id": "msg_1",
                       "output_index": 0, "content_index": 0, "delta": piece})
    events.append({"type": "response.output_text.done", "item_id": "msg_1",
                   "output_index": 0, "content_index": 0, "text": full})
    args = json.dumps({"name": "<PERSON_2>"})
    for piece in _pieces(args):
        events.append({"type": "response.function_call_arguments.delta", "item_id": "fc_1",
                       "output_index": 1, "delta": piece})
    events.append({"type": "response.function_call_arguments.done", "item_id": "fc_1",
                   "output_index": 1, "arguments": args})
    return sse(*events, named=True)


def responses_text(events: list[Any]) -> tuple[str, str, str, str]:
    text = args = ""
    done_text = done_args = ""
    for event in events:
        kind = event["type"]
        if kind == "response.output_text.delta":
            text += event["delta"]
        elif kind == "response.function_call_arguments.delta":
            args += event["delta"]
        elif kind == "response.output_text.done":
            done_text = event["text"]
        elif kind == "response.function_call_arguments.done":
            done_args = event["arguments"]
    return text, args, done_text, done_args


def gemini_stream() -> bytes:
    return sse(*({"candidates": [{"content": {"role": "model", "parts": [{"text": p}]},
                                  "index": 0}]} for p in _pieces("Hello <PERSON_1>, hi")),
               {"candidates": [{"content": {"role": "model", "parts": [
                   {"functionCall": {"name": "f", "args": {"who": "<PERSON_2>"}}}]},
                   "finishReason": "STOP", "index": 0}]}, eol=b"\r\n")


def gemini_text(events: list[Any]) -> tuple[str, Any]:
    text, args = "", None
    for event in events:
        for part in event["candidates"][0]["content"]["parts"]:
            text += part.get("text", "")
            if "functionCall" in part:
                args = part["functionCall"]["args"]
    return text, args


VALUE1, VALUE2 = 'Ann "Q" O\'Hara\\', "Zoë\nLi"


def dumps(obj: Any) -> str:
    """JSON as the model writes it: non-ASCII as is."""
    return json.dumps(obj, ensure_ascii=False)


def expected_openai() -> tuple[str, str]:
    return (OPENAI_STREAM_TEXT.replace("<PERSON_1>", VALUE1).replace("<PERSON_2>", VALUE2),
            dumps({"to": VALUE1, "cc": [VALUE2]}))


STREAMS = {
    "openai": (openai_stream, openai_text, expected_openai),
    "anthropic": (anthropic_stream, anthropic_text,
                  lambda: (f"Hi {VALUE1} and {VALUE2}!", dumps({"who": VALUE2}))),
    "responses": (responses_stream, responses_text,
                  lambda: (f"Booked for {VALUE1}.", dumps({"name": VALUE2}),
                           f"Booked for {VALUE1}.", dumps({"name": VALUE2}))),
    "gemini": (gemini_stream, gemini_text,
               lambda: (f"Hello {VALUE1}, hi", {"who": VALUE2})),
}


@pytest.mark.parametrize("name", STREAMS)
def test_a_stream_restores_pseudonyms_cut_over_events_at_every_split_point(name: str) -> None:
    make, read, expected = STREAMS[name]
    stream = make()
    reid = Reidentifier(conversation(VALUE1, VALUE2))
    whole = run(reid, [stream])
    events = parse_sse(whole)
    assert read(events) == expected()
    assert len(events) == len(parse_sse(stream))  # no event added or lost
    # tool-call arguments are JSON text: restored values keep them parseable
    for field in read(events)[1:]:
        if isinstance(field, str) and field.startswith("{"):
            json.loads(field)
    for cut in range(1, len(stream)):
        assert run(reid, [stream[:cut], stream[cut:]]) == whole, cut


@pytest.mark.parametrize("value", NASTY)
def test_a_stream_round_trips_any_value(value: str) -> None:
    reid = Reidentifier(conversation(value))
    stream = sse(*(chat_chunk(p) for p in _pieces("Hi <PERSON_1>!")),
                 *(chat_chunk(tool_args=p) for p in _pieces(json.dumps({"n": "<PERSON_1>"}))),
                 "[DONE]")
    out = run(reid, [stream])
    text, arguments = openai_text(parse_sse(out))
    assert text == f"Hi {value}!"
    assert json.loads(arguments) == {"n": value}
    assert [json.loads(e) for e in parse_sse_raw(out)] == parse_sse(out)[:-1]  # stdlib agrees


def parse_sse_raw(stream: bytes) -> list[bytes]:
    return [line[5:].strip() for line in stream.splitlines()
            if line.startswith(b"data:") and line[5:].strip() != b"[DONE]"]


@pytest.mark.parametrize("name", STREAMS)
def test_a_stream_fed_byte_by_byte(name: str) -> None:
    make, read, expected = STREAMS[name]
    stream = make()
    reid = Reidentifier(conversation(VALUE1, VALUE2))
    assert run(reid, [stream[i:i + 1] for i in range(len(stream))]) == run(reid, [stream])


def test_a_stream_with_three_chunks_at_every_pair_of_split_points() -> None:
    stream = sse(*({"c": p} for p in ["a <PER", "SON_1", "> b"]))
    reid = Reidentifier(conversation(VALUE1))
    whole = run(reid, [stream])
    assert "".join(e["c"] for e in parse_sse(whole)) == f"a {VALUE1} b"
    for i in range(1, len(stream)):
        for j in range(i + 1, len(stream)):  # an empty chunk would mean the end
            assert run(reid, [stream[:i], stream[i:j], stream[j:]]) == whole


def test_events_without_pseudonyms_pass_byte_for_byte() -> None:
    stream = (b": keep-alive comment\r\n\r\nevent: ping\r\ndata: {\"type\": \"ping\"}\r\n\r\n"
              + sse(chat_chunk("no tokens here"), chat_chunk("a < b"), "[DONE]")
              + b"retry: 10\nid: 7\ndata: {\"x\" : [1, 2.50]}\n\n")
    reid = Reidentifier(conversation(VALUE1))
    assert run(reid, [stream]) == stream
    assert run(Reidentifier(Pseudonyms()), [stream]) == stream


def test_a_changed_event_keeps_its_other_bytes() -> None:
    raw = (b'event: content_block_delta\ndata: {"type":"content_block_delta", "index" : 0,'
           b' "delta": {"type": "text_delta", "text": "hi <PERSON_1>"}, "n": 1.50}\n\n')
    out = run(Reidentifier(conversation("Ann")), [raw])
    assert out == raw.replace(b"<PERSON_1>", b"Ann")


def test_a_start_that_does_not_become_a_pseudonym_goes_on_unchanged() -> None:
    stream = sse(*(chat_chunk(p) for p in ["x <PERSON", "AL stuff", " <PERSON_1", "2> y",
                                           " <", "PERSON_1>"]))
    out = run(Reidentifier(conversation("Ann")), [stream])
    assert openai_text(parse_sse(out))[0] == "x <PERSONAL stuff <PERSON_12> y Ann"


def test_a_start_at_the_end_of_the_stream_is_released_as_it_was() -> None:
    stream = sse(chat_chunk("bye <PERSON_"))  # no [DONE], no more events
    out = run(Reidentifier(conversation("Ann")), [stream])
    assert out == stream


def test_held_events_are_bounded() -> None:
    other = [{"type": "ping"}] * (sse_module.MAX_HELD_EVENTS + 5)
    stream = sse(chat_chunk("wait <PERSON_"), *other, chat_chunk("1> late"))
    reid = Reidentifier(conversation("Ann"))
    feed = reid.stream()
    first = feed(sse(chat_chunk("wait <PERSON_")))
    assert first == b""  # held: the pseudonym may go on in the next event
    out = first
    for event in other:
        out += feed(sse(event))
    assert out  # released once the bound was passed…
    out += feed(sse(chat_chunk("1> late"))) + feed(b"")
    assert out == stream  # …as it was: the pseudonym stays cut, nothing is lost


def test_channels_are_kept_apart() -> None:
    # two choices interleaved: each continues its own text
    stream = sse(chat_chunk("a <PER", index=0), chat_chunk("b <PER", index=1),
                 chat_chunk("SON_1>", index=1), chat_chunk("SON_2>", index=0))
    out = parse_sse(run(Reidentifier(conversation("Ann", "Ben")), [stream]))
    texts = {0: "", 1: ""}
    for event in out:
        choice = event["choices"][0]
        texts[choice["index"]] += choice["delta"]["content"]
    assert texts == {0: "a Ben", 1: "b Ann"}


def test_json_output_streams_escape_for_the_inner_json() -> None:
    value = 'Ann "A"'
    content = json.dumps({"name": "<PERSON_1>"})
    stream = sse(*(chat_chunk(p) for p in _pieces(content)))
    reid = Reidentifier(conversation(value))
    text = openai_text(parse_sse(run(reid, [stream], json_output=True)))[0]
    assert json.loads(text) == {"name": value}
    plain = openai_text(parse_sse(run(reid, [stream])))[0]
    assert plain == content.replace("<PERSON_1>", value)


def test_an_oversized_event_goes_on_untouched(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sse_module, "MAX_EVENT", 100)
    big = sse(chat_chunk("<PERSON_1> " + "x" * 300))
    after = sse(chat_chunk("then <PERSON_1>"))
    reid = Reidentifier(conversation("Ann"))
    feed = reid.stream()
    out = b"".join(feed(big[i:i + 50]) for i in range(0, len(big), 50))
    out += feed(after) + feed(b"")
    assert out == big + after.replace(b"<PERSON_1>", b"Ann")


def test_an_event_with_several_data_lines_goes_on_as_it_is() -> None:
    raw = b'data: {"text":\ndata: "<PERSON_1>"}\n\n'
    assert run(Reidentifier(conversation("Ann")), [raw]) == raw


def test_the_stream_uses_the_pseudonyms_of_its_start() -> None:
    p = conversation("Ann")
    feed = Reidentifier(p).stream()
    p.pseudonym("PERSON", "Ben")  # a later request of the conversation
    out = feed(sse(chat_chunk("<PERSON_1> <PERSON_2>"))) + feed(b"")
    assert openai_text(parse_sse(out))[0] == "Ann <PERSON_2>"


def test_no_pseudonyms_no_work() -> None:
    feed = Reidentifier(Pseudonyms()).stream()
    chunk = b'data: {"text": "<PERSON_1>"}'
    assert feed(chunk) is chunk
