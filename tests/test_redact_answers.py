"""Secrets in vendor answers (`egressguard.core.redact.answers`) and where a streamed
text's end must wait (`detect.StreamGate`): masked in buffered answers and in streams
cut anywhere, counted, and ordinary prose never held back.

Key-shaped values come from the evaluation set's generators at test time (seeded): none
is real, and nothing resembling one is committed.
"""

from __future__ import annotations

import base64
import json
import random
import re
from typing import Any

import orjson
import pytest
import redaction_eval as ev

from egressguard.core import entities
from egressguard.core.redact.actions import Pseudonyms, Reidentifier
from egressguard.core.redact.answers import SecretMask
from egressguard.core.redact.detect import default_detector
from egressguard.core.redact.sse import SseRewriter

RNG = random.Random(20261207)
OPENAI_KEY = ev._openai(random.Random(1))[0]
AWS_KEY = ev._aws(RNG)[0]
GITHUB = ev._github(RNG)[0]
JWT = ev._jwt(RNG)[0]
PEM = ev._pem(RNG)[0]
SECRET_PLAN = entities.answer_plan(entities.expand({"secrets": "block"}))


def mask(plan: dict[str, str] | None = None) -> SecretMask:
    return SecretMask(default_detector(), SECRET_PLAN if plan is None else plan)


def leaked(secret: str, text: str, window: int = 12) -> bool:
    """Whether any `window` characters of the secret's body reached `text`."""
    body = secret.split("-", 2)[-1] if secret.startswith("sk-") else secret
    body = re.sub(r"\s", "", body)
    return any(body[i:i + window] in re.sub(r"\s", "", text)
               for i in range(0, len(body) - window + 1))


# ---- the plan ----------------------------------------------------------------------

def test_the_answer_plan_masks_what_requests_redact_and_logs_what_they_log() -> None:
    plan = entities.answer_plan(entities.expand(
        {"secrets": "block", "JWT": "log", "AWS_ACCESS_KEY": "pseudonymize", "pii": "mask"}))
    assert plan["OPENAI_API_KEY"] == "mask"
    assert plan["AWS_ACCESS_KEY"] == "mask"
    assert plan["JWT"] == "log"
    assert set(plan) == set(entities.SECRETS)  # PII is not looked for in answers


# ---- buffered ----------------------------------------------------------------------

def openai_answer(content: str) -> bytes:
    return orjson.dumps({"id": "chatcmpl-" + "x1Y2" * 8, "object": "chat.completion",
                         "model": "gpt-4o-mini", "choices": [{"index": 0, "message": {
                             "role": "assistant", "content": content}}],
                         "usage": {"prompt_tokens": 12345678901234567890}})


@pytest.mark.parametrize("secret, entity", [
    (OPENAI_KEY, "OPENAI_API_KEY"), (AWS_KEY, "AWS_ACCESS_KEY"), (GITHUB, "GITHUB_TOKEN"),
    (JWT, "JWT"), (PEM, "PRIVATE_KEY")])
def test_a_buffered_answer_has_its_secret_masked_and_counted(secret: str, entity: str) -> None:
    m = mask()
    body = openai_answer(f"Use this: {secret}.")
    out = m.buffered(body)
    assert orjson.loads(out)["choices"][0]["message"]["content"] == f"Use this: <{entity}>."
    assert not leaked(secret, out.decode())
    assert m.record() == {entity: {"mask": 1}}
    # every other byte as the vendor wrote it: the integer beyond 64 bits too
    assert out.replace(f"<{entity}>".encode(), b"") == \
        body.replace(json.dumps(secret)[1:-1].encode(), b"")


def test_tool_call_arguments_stay_valid_json_with_a_mask_inside() -> None:
    arguments = json.dumps({"token": GITHUB, "repo": "acme/app"})
    body = orjson.dumps({"choices": [{"message": {"tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "clone", "arguments": arguments}}]}}]})
    out = orjson.loads(mask().buffered(body))
    args = json.loads(out["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"])
    assert args == {"token": "<GITHUB_TOKEN>", "repo": "acme/app"}


def test_a_logged_type_is_counted_and_left_alone() -> None:
    m = mask({"JWT": "log"})
    body = openai_answer(f"token {JWT}")
    assert m.buffered(body) is body
    assert m.record() == {"JWT": {"log": 1}}


def test_types_outside_the_plan_are_not_looked_for() -> None:
    m = mask({"AWS_ACCESS_KEY": "mask"})
    body = openai_answer(f"{GITHUB} and {AWS_KEY}")
    assert orjson.loads(m.buffered(body))["choices"][0]["message"]["content"] == \
        f"{GITHUB} and <AWS_ACCESS_KEY>"


def test_the_vendors_ids_and_signatures_are_not_read() -> None:
    signature = base64.b64encode(OPENAI_KEY.encode()).decode()  # decodes to a key!
    body = orjson.dumps({"id": OPENAI_KEY, "content": [
        {"type": "thinking", "thinking": "hmm", "signature": signature}]})
    m = mask()
    assert m.buffered(body) is body
    assert m.record() is None


def test_text_and_binary_bodies() -> None:
    m = mask()
    assert m.buffered(f"plain {AWS_KEY}\n".encode()) == b"plain <AWS_ACCESS_KEY>\n"
    binary = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
    assert m.buffered(binary) is binary


def test_nothing_found_gives_back_the_very_body() -> None:
    body = openai_answer("The weather is mild; order ORD-1234-5678 ships 2026-12-08.")
    m = mask()
    assert m.buffered(body) is body
    assert m.record() is None


@pytest.mark.parametrize("how", ["fullwidth", "zero_width", "base64", "hex", "percent"])
def test_evasions_in_answers_are_masked(how: str) -> None:
    rng = random.Random(5)
    disguised = {
        "fullwidth": lambda s: ev._fullwidth(rng, s),
        "zero_width": lambda s: ev._zero_width(rng, s),
        "base64": lambda s: base64.b64encode(s.encode()).decode(),
        "hex": lambda s: s.encode().hex(),
        "percent": lambda s: "".join(f"%{b:02X}" for b in s.encode()),
    }[how](AWS_KEY)
    m = mask()
    out = orjson.loads(m.buffered(openai_answer(f"here: {disguised} ok")))
    assert out["choices"][0]["message"]["content"] == "here: <AWS_ACCESS_KEY> ok"


# ---- streamed ----------------------------------------------------------------------

def chat_event(text: str, index: int = 0) -> bytes:
    return b"data: " + orjson.dumps({
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "gpt-4o-mini",
        "choices": [{"index": index, "delta": {"content": text}, "finish_reason": None}]}) + \
        b"\n\n"


def anthropic_event(text: str) -> bytes:
    return b"event: content_block_delta\ndata: " + orjson.dumps({
        "type": "content_block_delta", "index": 0,
        "delta": {"type": "text_delta", "text": text}}) + b"\n\n"


def gemini_event(text: str) -> bytes:
    return b"data: " + orjson.dumps({"candidates": [{"content": {
        "role": "model", "parts": [{"text": text}]}, "index": 0}]}) + b"\r\n\r\n"


def responses_event(text: str) -> bytes:
    return b"event: response.output_text.delta\ndata: " + orjson.dumps({
        "type": "response.output_text.delta", "item_id": "msg_1", "output_index": 0,
        "content_index": 0, "delta": text}) + b"\n\n"


def texts(stream: bytes) -> str:
    """The text an SDK would assemble from the stream's deltas."""
    out = ""
    for block in re.split(rb"\r?\n\r?\n", stream):
        for line in block.splitlines():
            if not line.startswith(b"data: {"):
                continue
            doc = orjson.loads(line[6:])
            if "choices" in doc:
                out += doc["choices"][0]["delta"].get("content") or ""
            elif "candidates" in doc:
                out += "".join(p.get("text", "") for p in doc["candidates"][0]["content"]["parts"])
            elif doc.get("type") == "content_block_delta":
                out += doc["delta"]["text"]
            else:
                out += doc.get("delta", "")
    return out


def pieces(text: str, size: int) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)]


def run(stages: list[Any], chunks: list[bytes]) -> bytes:
    feed = SseRewriter(stages)
    return b"".join(feed(c) for c in chunks) + feed(b"")


SHAPES = {"openai": chat_event, "anthropic": anthropic_event, "gemini": gemini_event,
          "responses": responses_event}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("size", [1, 3, 4, 7, 16])
@pytest.mark.parametrize("secret, entity", [
    (OPENAI_KEY, "OPENAI_API_KEY"), (AWS_KEY, "AWS_ACCESS_KEY"), (JWT, "JWT"),
    (GITHUB, "GITHUB_TOKEN")])
def test_a_secret_streamed_a_few_characters_per_event_never_reaches_the_agent(
        shape: str, size: int, secret: str, entity: str) -> None:
    event = SHAPES[shape]
    text = f"Sure, the key is {secret}. Keep it safe."
    m = mask()
    out = run([m], [event(p) for p in pieces(text, size)])
    assert texts(out) == f"Sure, the key is <{entity}>. Keep it safe."
    assert not leaked(secret, out.decode())
    assert m.record() == {entity: {"mask": 1}}
    assert len(re.findall(rb"\r?\n\r?\n", out)) == len(pieces(text, size))  # none lost


def test_a_pem_key_streamed_line_by_line_is_masked_whole() -> None:
    text = f"Here is the key:\n{PEM}\nDone."
    out = run([mask()], [chat_event(p) for p in pieces(text, 5)])
    assert texts(out) == "Here is the key:\n<PRIVATE_KEY>\nDone."


def test_an_assigned_password_streamed_in_tokens_is_masked() -> None:
    value = ev._generic(random.Random(3))[0]
    text = f'Set DB_PASSWORD="{value}" in the env file.'
    out = run([mask()], [chat_event(p) for p in re.findall(r"\S*\s*", text) if p])
    assert texts(out) == 'Set DB_PASSWORD="<GENERIC_SECRET>" in the env file.'


def test_the_same_output_for_any_chunking_of_the_bytes() -> None:
    stream = b"".join(chat_event(p) for p in pieces(f"a {AWS_KEY} b {GITHUB} c", 5))
    whole = run([mask()], [stream])
    assert b"<AWS_ACCESS_KEY>" in whole and b"<GITHUB_TOKEN>" in whole
    for cut in range(1, len(stream), 7):
        assert run([mask()], [stream[:cut], stream[cut:]]) == whole, cut


def test_ordinary_prose_is_never_held_back() -> None:
    words = re.findall(r"\S+\s*", "The weather today is mild and dry. We expect rain on "
                                  "Thursday, then clear skies over the weekend.")
    feed = SseRewriter([mask()])
    for word in words:
        event = chat_event(word)
        assert feed(event) == event, word  # out at once, byte for byte
    assert feed(b"") == b""


def test_held_text_of_an_unfinished_run_goes_out_at_the_end() -> None:
    feed = SseRewriter([mask()])
    assert feed(chat_event("see AKIA")) == b""  # may become a key
    assert texts(feed(b"")) == "see AKIA"  # the stream ended: it did not


def test_channels_are_scanned_apart() -> None:
    half = len(AWS_KEY) // 2
    stream = [chat_event("a " + AWS_KEY[:half], 0), chat_event("b " + GITHUB, 1),
              chat_event(AWS_KEY[half:] + " c", 0)]
    out = run([mask()], stream)
    by_choice: dict[int, str] = {0: "", 1: ""}
    for line in out.split(b"\n\n"):
        if line.startswith(b"data: "):
            choice = orjson.loads(line[6:])["choices"][0]
            by_choice[choice["index"]] += choice["delta"]["content"]
    assert by_choice == {0: "a <AWS_ACCESS_KEY> c", 1: "b <GITHUB_TOKEN>"}


def test_secrets_masked_and_pseudonyms_restored_in_one_stream() -> None:
    pseudonyms = Pseudonyms()
    pseudonyms.pseudonym("PERSON", "Ann")
    text = f"<PERSON_1> asked; the key is {AWS_KEY}."
    out = run([mask(), Reidentifier(pseudonyms)], [chat_event(p) for p in pieces(text, 3)])
    assert texts(out) == "Ann asked; the key is <AWS_ACCESS_KEY>."


def test_the_vendors_own_fields_in_a_stream_are_left_alone() -> None:
    event = b"data: " + orjson.dumps({"id": OPENAI_KEY, "choices": [
        {"index": 0, "delta": {"content": "hi"}}]}) + b"\n\n"
    assert run([mask()], [event]) == event


# ---- the gate ----------------------------------------------------------------------

GATE = default_detector().gate(entities.SECRETS)


@pytest.mark.parametrize("before, text, held", [
    ("", "The weather is mild", ""),
    ("", "the key is sk-pr", "sk-pr"),
    ("", "export TOKEN=", "TOKEN="),  # an assignment: its value comes next
    ("", "id AKIA", "AKIA"),
    ("", "a long run deadbeef0123", "deadbeef0123"),  # hex that may decode to a key
    ("", "internationalization", ""),  # a long plain word is not an encoded run
    ("", "-----BEGIN RSA PRIV", "-----BEGIN RSA PRIV"),
    ("the task", "s", ""),  # `s` inside a word: no key starts mid-word
    ("the key is ", "s", "s"),  # at a word's start it may
    ("", "sk-proj-" + "Ab1" * 10, "sk-proj-" + "Ab1" * 10),  # complete, may go on
    ("", "sk-proj-" + "Ab1" * 10 + "\n", "sk-proj-" + "Ab1" * 10 + "\n"),
    ("", "sk-proj-" + "Ab1" * 10 + " ok", ""),
])
def test_pending(before: str, text: str, held: str) -> None:
    assert text[GATE.pending(text, before):] == held


def test_pending_maps_normalised_text_back() -> None:
    text = "key: \uff53\uff4b\uff0d\uff50\uff52"  # fullwidth sk-pr
    assert text[GATE.pending(text):] == "\uff53\uff4b\uff0d\uff50\uff52"


def test_maybe() -> None:
    assert not GATE.maybe("The weather today is mild and dry.")
    assert GATE.maybe(f"key {AWS_KEY}")
    assert GATE.maybe("caf\u00e9")  # to be normalised first: the detector decides
