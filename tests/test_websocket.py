"""OpenAI Realtime over a WebSocket: the frame logic (`egressguard.core.realtime`) as
tables, and the addons (`egressguard.pipeline.websocket`) driven through the whole
pipeline: the upgrade's credential and model, every frame each way, the close record."""

from __future__ import annotations

import base64
import random
import secrets
import string
from collections.abc import Callable
from importlib import resources
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator
from mitmproxy import command, http
from mitmproxy import flow as mflow
from mitmproxy.websocket import WebSocketData, WebSocketMessage
from wsproto.frame_protocol import Opcode

from egressguard.core import chain, realtime, records
from egressguard.core.credentials import REDACTED
from egressguard.core.errors import EgressError, PolicyDenied
from egressguard.core.redact import actions, answers
from egressguard.core.redact.detect import default_detector
from egressguard.pipeline import flowstate

OPENAI = "api.openai.com"
EMAIL = "maria.lopez@example.org"
PHONE = "(415) 555-0199"  # a fictional 555 number


def ssn() -> str:
    """An SSN-shaped value made at run time (none is committed)."""
    rng = random.SystemRandom()
    return f"{rng.randint(100, 599)}-{rng.randint(10, 99)}-{rng.randint(1000, 9999)}"


def github_token() -> str:
    return "ghp_" + "".join(secrets.choice(string.ascii_letters + string.digits)
                            for _ in range(36))


def event(kind: str, **fields: Any) -> bytes:
    return orjson.dumps({"type": kind, **fields})


def delta(text: str, kind: str = "response.output_text.delta", item: str = "item_1") -> bytes:
    return event(kind, event_id="ev", response_id="resp_1", item_id=item, output_index=0,
                 content_index=0, delta=text)


def user_item(*parts: dict[str, Any], event_id: str = "evt_1") -> bytes:
    return event("conversation.item.create", event_id=event_id,
                 item={"type": "message", "role": "user", "content": list(parts)})


def text_part(text: str) -> dict[str, Any]:
    return {"type": "input_text", "text": text}


# ---- the upgrade -------------------------------------------------------------------

@pytest.mark.parametrize("offered, kept, found", [
    (["realtime, openai-insecure-api-key.TOKEN, openai-beta.realtime-v1"],
     ["realtime", "openai-beta.realtime-v1"], ["TOKEN"]),
    (["realtime", "OpenAI-Insecure-API-Key.A", "openai-insecure-api-key.B"],
     ["realtime"], ["A", "B"]),
    (["realtime,,openai-organization.org-1"], ["realtime", "openai-organization.org-1"], []),
    ([""], [], []),
])
def test_a_key_subprotocol_is_taken_out_of_the_offer(offered: list[str], kept: list[str],
                                                     found: list[str]) -> None:
    assert realtime.split_subprotocols(offered) == (kept, found)


@pytest.mark.parametrize("query, model", [
    ([("model", "gpt-realtime")], "gpt-realtime"),
    ([("model", "gpt-realtime"), ("model", "gpt-realtime")], "gpt-realtime"),
    ([("api-version", "2025-04-01"), ("deployment", "rt-prod")], "rt-prod"),
    ([("model", "")], None),
    ([], None),
])
def test_the_model_a_session_names_in_its_url(query: list[tuple[str, str]],
                                              model: str | None) -> None:
    assert realtime.query_model(query) == model


def test_two_models_in_one_url_are_ambiguous() -> None:
    with pytest.raises(ValueError, match=r"the URL names 2 models \(a, b\)"):
        realtime.query_model([("model", "a"), ("deployment", "b")])


# ---- frames from the agent -----------------------------------------------------------

@pytest.mark.parametrize("client_event, texts", [
    ({"type": "session.update", "session": {
        "instructions": "be brief", "tools": [{"type": "function", "name": "f",
                                               "description": "not read"}],
        "input_audio_transcription": {"model": "whisper-1", "prompt": "beta prompt"},
        "audio": {"input": {"transcription": {"prompt": "ga prompt"}}}}},
     ["be brief", "beta prompt", "ga prompt"]),
    ({"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [
        text_part("typed"), {"type": "input_audio", "transcript": "spoken"},
        {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}]}},
     ["typed", "spoken"]),
    ({"type": "conversation.item.create", "item": {
        "type": "function_call_output", "call_id": "call_1", "output": '{"to": "x"}'}},
     ['{"to": "x"}']),
    ({"type": "conversation.item.create", "item": {
        "type": "function_call", "call_id": "call_1", "name": "send",
        "arguments": '{"to": "x", "body": "y"}'}},
     ["x", "y"]),
    ({"type": "response.create", "response": {
        "instructions": "answer in French", "metadata": {"ticket": "t-1"},
        "input": [{"type": "message", "role": "user", "content": [text_part("out of band")]},
                  {"type": "item_reference", "id": "item_9"}]}},
     ["answer in French", "out of band", "t-1"]),
    ({"type": "input_audio_buffer.append", "audio": "AAAA"}, []),
    ({"type": "response.cancel", "event_id": "e"}, []),
    # a type this version does not know: every string but ids, settings and audio
    ({"type": "conversation.note.create", "event_id": "e", "item_id": "i", "model": "m",
      "note": {"text": "read me", "tags": ["and me"], "audio": "AAAA"}},
     ["read me", "and me"]),
])
def test_every_text_the_vendor_reads_is_a_slot(client_event: dict[str, Any],
                                               texts: list[str]) -> None:
    assert sorted(s.text for s in realtime.event_slots(client_event)) == sorted(texts)


def test_a_slot_edits_the_event_in_place() -> None:
    frame = realtime.read_agent_frame(user_item(text_part("hello")), True, plan={}, rule="r",
                                      model="m")
    [slot] = frame.slots
    slot.set("bonjour")
    assert frame.event["item"]["content"][0]["text"] == "bonjour"
    assert frame.event_id == "evt_1"


PLAN = {"EMAIL_ADDRESS": "mask"}
AUDIO = {"type": "input_audio", "audio": base64.b64encode(b"\x00" * 8).decode()}


@pytest.mark.parametrize("data, is_text, plan, reason, message", [
    (b"{" + b" " * realtime.MAX_FRAME + b"}", True, {}, "frame_too_large",
     f"the frame is {realtime.MAX_FRAME + 2} bytes; egressguard reads frames of up to "
     f"{realtime.MAX_FRAME} bytes"),
    (b"hello", True, {}, "frame_not_json",
     "the frame is not a JSON event (unexpected character, expected a JSON value at byte 0); "
     "nothing of it was forwarded"),
    (b"[1, 2]", True, {}, "frame_not_json",
     "the frame is not a JSON object with a `type`; nothing of it was forwarded"),
    (b"\x00\x01", False, PLAN, "redaction_not_possible",
     "policy rule 'voice' redacts EMAIL_ADDRESS, and egressguard cannot read a binary "
     "frame for them, so it was not forwarded; send text, or ask for a rule without "
     "`redact` for voice sessions"),
    (event("input_audio_buffer.append", audio="AAAA"), True, PLAN, "redaction_not_possible",
     "policy rule 'voice' redacts EMAIL_ADDRESS, and egressguard cannot read audio "
     "(input_audio_buffer.append) for them, so it was not forwarded; send text, or ask for "
     "a rule without `redact` for voice sessions"),
    (user_item(text_part("hi"), AUDIO), True, PLAN, "redaction_not_possible",
     "policy rule 'voice' redacts EMAIL_ADDRESS, and egressguard cannot read audio "
     "(conversation.item.create: a input_audio part) for them, so it was not forwarded; "
     "send text, or ask for a rule without `redact` for voice sessions"),
    (event("session.update", session={"model": "gpt-4o-realtime-preview"}), True, {},
     "model_change_refused",
     "the session was allowed for model 'gpt-realtime'; session.update cannot change it to "
     "'gpt-4o-realtime-preview': open a new session with ?model="),
])
def test_frames_egressguard_refuses_and_why(data: bytes, is_text: bool, plan: dict[str, str],
                                            reason: str, message: str) -> None:
    with pytest.raises(EgressError) as info:
        realtime.read_agent_frame(data, is_text, plan=plan, rule="voice", model="gpt-realtime")
    assert (info.value.reason, info.value.message) == (reason, message)


@pytest.mark.parametrize("data, is_text", [
    (b"\x00\x01", False),  # binary and audio go on where the rule redacts nothing
    (event("input_audio_buffer.append", audio="AAAA"), True),
    (event("session.update", session={"model": "gpt-realtime", "instructions": "x"}), True),
])
def test_frames_that_go_on(data: bytes, is_text: bool) -> None:
    realtime.read_agent_frame(data, is_text, plan={}, rule="plain", model="gpt-realtime")


def test_an_error_event_is_what_the_openai_sdk_parses() -> None:
    err = PolicyDenied("the event contains US_SSN, which policy rule 'voice' does not let "
                       "leave", reason="redaction_blocked")
    sent = orjson.loads(realtime.error_event(err, "evt_7"))
    assert sent["type"] == "error" and sent["event_id"].startswith("event_egressguard_")
    assert sent["error"] == {"message": err.message, "type": "invalid_request_error",
                             "param": None, "code": "redaction_blocked", "event_id": "evt_7"}


# ---- frames from the vendor ----------------------------------------------------------

def pseudonymised(value: str = EMAIL) -> tuple[actions.Pseudonyms, str]:
    pseudonyms = actions.Pseudonyms()
    token = pseudonyms.pseudonym("EMAIL_ADDRESS", value)
    assert token is not None
    return pseudonyms, token


def run(vendor: realtime.VendorEvents, frames: list[bytes]) -> list[dict[str, Any]]:
    out = [f for data in frames for f in vendor.feed(data, True)]
    assert all(is_text for _, is_text in out)
    return [orjson.loads(data) for data, _ in out]


def deltas(events: list[dict[str, Any]], kind: str = "response.output_text.delta") -> str:
    return "".join(e["delta"] for e in events if e["type"] == kind)


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 17, 100])
def test_a_pseudonym_split_over_deltas_comes_back_whole(size: int) -> None:
    pseudonyms, token = pseudonymised()
    text = f"I wrote to {token}, and again to {token}."
    vendor = realtime.VendorEvents([], [realtime.SessionRestore(pseudonyms)])
    frames = [delta(text[i:i + size]) for i in range(0, len(text), size)]
    got = run(vendor, [*frames, event("response.output_text.done", item_id="item_1",
                                      output_index=0, content_index=0, text=text)])
    assert deltas(got) == f"I wrote to {EMAIL}, and again to {EMAIL}."
    assert len(got) == len(frames) + 1  # every event, in order, none added
    assert got[-1]["text"] == f"I wrote to {EMAIL}, and again to {EMAIL}."


def test_audio_goes_through_untouched_and_in_its_place() -> None:
    pseudonyms, token = pseudonymised()
    audio = [event("response.output_audio.delta", item_id="item_1", delta=f"QUJD{i}===")
             for i in range(4)]
    transcript = [delta(p, "response.output_audio_transcript.delta") for p in
                  ("call ", token[:4], token[4:], " now")]
    frames = [f for pair in zip(transcript, audio, strict=True) for f in pair]
    vendor = realtime.VendorEvents([], [realtime.SessionRestore(pseudonyms)])
    out = [data for f in frames for data, _ in vendor.feed(f, True)]
    assert [o for o in out if b"audio.delta" in o] == audio  # byte for byte
    kinds = [orjson.loads(o)["type"] for o in out]
    assert kinds == [orjson.loads(f)["type"] for f in frames]
    assert deltas([orjson.loads(o) for o in out], "response.output_audio_transcript.delta") \
        == f"call {EMAIL} now"


def test_an_event_whose_type_is_not_first_is_read_all_the_same() -> None:
    pseudonyms, token = pseudonymised()
    vendor = realtime.VendorEvents([], [realtime.SessionRestore(pseudonyms)])
    audio = orjson.dumps({"item_id": "item_1", "delta": "PEVNQUlMX0FERFJFU1NfMT4=",
                          "type": "response.output_audio.delta"})
    text = orjson.dumps({"item_id": "item_1", "delta": token, "type": "x.delta"})
    done = orjson.dumps({"response": {"usage": {"input_tokens": 2, "output_tokens": 1}},
                         "type": "response.done"})
    out = [d for f in (audio, text, done) for d, _ in vendor.feed(f, True)]
    assert out[0] == audio and orjson.loads(out[1])["delta"] == EMAIL
    assert vendor.usage.as_record() == {"input_tokens": 2, "output_tokens": 1}


def test_a_delta_that_may_end_in_a_pseudonym_waits_until_another_kind_of_event() -> None:
    pseudonyms, token = pseudonymised()
    vendor = realtime.VendorEvents([], [realtime.SessionRestore(pseudonyms)])
    cut = delta("see " + token[:5])
    assert vendor.feed(cut, True) == []  # held: the next delta may complete it
    done = event("response.output_text.done", item_id="item_1", text="see " + token[:5])
    assert vendor.feed(done, True) == [(cut, True), (done, True)]  # complete: as it stands


def test_a_frame_that_is_not_an_event_waits_for_nothing_and_nothing_passes_it() -> None:
    pseudonyms, token = pseudonymised()
    vendor = realtime.VendorEvents([], [realtime.SessionRestore(pseudonyms)])
    cut = delta("to " + token[:3])
    assert vendor.feed(cut, True) == []
    assert vendor.feed(b"not json", True) == [(cut, True), (b"not json", True)]
    assert vendor.feed(delta("x"), True) == [(delta("x"), True)]
    assert vendor.feed(cut, True) == []
    assert vendor.feed(b"\x00bin", False) == [(cut, True), (b"\x00bin", False)]
    assert vendor.finish() == []


def test_an_event_with_line_breaks_is_sent_compact() -> None:
    pseudonyms, token = pseudonymised()
    vendor = realtime.VendorEvents([], [realtime.SessionRestore(pseudonyms)])
    pretty = orjson.dumps({"type": "conversation.item.added", "item": {"content": [
        {"type": "input_text", "text": f"mail {token}"}]}}, option=orjson.OPT_INDENT_2)
    [(data, is_text)] = vendor.feed(pretty, True)
    assert is_text and orjson.loads(data)["item"]["content"][0]["text"] == f"mail {EMAIL}"


def test_a_real_key_echoed_in_a_frame_is_scrubbed() -> None:
    key = "sk-test-" + secrets.token_hex(16)
    for stages in ((), (realtime.SessionRestore(actions.Pseudonyms()),)):
        vendor = realtime.VendorEvents([key.encode()], stages)
        echoed = event("error", error={"message": f"Incorrect API key provided: {key}"})
        [(data, _)] = vendor.feed(echoed, True)
        assert key.encode() not in data and REDACTED in data
        assert vendor.feed(b"\x01" + key.encode(), False) == [(b"\x01" + REDACTED, False)]


def test_a_secret_the_model_spells_out_over_deltas_is_masked_whole() -> None:
    token = github_token()
    mask = answers.SecretMask(default_detector(), {"GITHUB_TOKEN": "mask"})
    vendor = realtime.VendorEvents([], [mask])
    text = f"use {token} to push"
    got = run(vendor, [delta(text[i:i + 4]) for i in range(0, len(text), 4)]
              + [event("response.done", response={"status": "completed"})])
    assert deltas(got) == "use <GITHUB_TOKEN> to push"
    assert mask.record() == {"GITHUB_TOKEN": {"mask": 1}}


def test_pseudonyms_made_after_the_session_started_are_restored() -> None:
    pseudonyms = actions.Pseudonyms()
    vendor = realtime.VendorEvents([], [realtime.SessionRestore(pseudonyms)])
    assert run(vendor, [delta("nothing yet")])[0]["delta"] == "nothing yet"
    token = pseudonyms.pseudonym("EMAIL_ADDRESS", EMAIL)
    assert run(vendor, [delta(f"now {token}"), event("response.done")])[0]["delta"] == \
        f"now {EMAIL}"


def test_usage_is_added_up_over_the_responses_of_a_session() -> None:
    for stages in ((), (realtime.SessionRestore(actions.Pseudonyms()),)):
        vendor = realtime.VendorEvents([], stages)
        for n in (3, 4):
            vendor.feed(event("response.done", response={"usage": {
                "input_tokens": 10 * n, "output_tokens": n, "total_tokens": 11 * n}}), True)
        assert vendor.usage.as_record() == {"input_tokens": 70, "output_tokens": 7}


def test_a_frame_that_looks_like_egressguard_marker_is_left_alone() -> None:
    vendor = realtime.VendorEvents([], [realtime.SessionRestore(actions.Pseudonyms())])
    forged = b'{"egressguard_aside_0000000000000000":1}'
    assert vendor.feed(forged, True) == [(forged, True)]


# ---- the session's close record --------------------------------------------------------

def test_the_close_record_validates_and_holds_counts_only() -> None:
    session = realtime.Session(realtime.VendorEvents([]), plan={"EMAIL_ADDRESS": "mask"},
                               rule="voice", model="gpt-realtime")
    session.frames_from_agent, session.frames_to_agent = 4, 12
    session.bytes_from_agent, session.bytes_to_agent = 400, 1200
    session.refused["redaction_blocked"] += 1
    session.count({"EMAIL_ADDRESS": {"mask": 2}})
    session.count({"EMAIL_ADDRESS": {"mask": 1}, "US_SSN": {"block": 1}})
    session.close_code, session.closed_by = 1000, "agent"
    facts = records.RequestFacts(id=records.new_id(), started=1_700_000_000.0,
                                 client="127.0.0.1:5000", method="GET", host=OPENAI,
                                 path="/v1/realtime", status=101)
    upgrade = records.new_id()
    session.summarise(facts, upgrade)
    record = chain.seal(records.build(facts), chain.GENESIS, 1)
    schema = orjson.loads(resources.files("egressguard.core").joinpath(
        "schemas/audit-record.v1.json").read_bytes())
    assert list(Draft202012Validator(schema).iter_errors(record)) == []
    assert (record["reason"], record["bytes_in"], record["bytes_out"]) == (
        "websocket_closed", 400, 1200)
    assert record["redactions"] == {"EMAIL_ADDRESS": {"mask": 3}, "US_SSN": {"block": 1}}
    assert record["websocket"] == {"upgrade_id": upgrade, "frames_from_agent": 4,
                                   "frames_to_agent": 12, "refused": {"redaction_blocked": 1},
                                   "close_code": 1000, "closed_by": "agent"}


# ---- the addons, through the whole pipeline --------------------------------------------

POLICY = """\
version: 1
agents:
  voice-bot: {}
  plain-bot: {}
rules:
  - name: voice
    match: {agents: [voice-bot]}
    models: [gpt-realtime]
    redact: {EMAIL_ADDRESS: pseudonymize, PHONE_NUMBER: mask, US_SSN: block,
             GITHUB_TOKEN: mask}
  - name: plain
    match: {agents: [plain-bot]}
"""


@pytest.fixture
def policy_yaml() -> str:
    return POLICY


class Injected:
    """mitmproxy's `inject.websocket` for a flow with no connection behind it: what the
    addon sends the agent is kept, and handed back through `websocket_message` as
    mitmproxy hands back a message it injected."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, bool]] = []
        self.flow: mflow.Flow | None = None

    @command.command("inject.websocket")
    def inject_websocket(self, flow: mflow.Flow, to_client: bool, message: bytes,
                         is_text: bool = True) -> None:
        assert to_client
        self.flow = flow
        self.sent.append((message, is_text))


class Session:
    """A Realtime session through the pipeline, frame by frame."""

    def __init__(self, pipeline: Any, flow: http.HTTPFlow, injected: Injected) -> None:
        self.pipeline, self.flow, self.injected = pipeline, flow, injected
        self.agent_got: list[bytes] = []  # what reached the agent, in order

    def _message(self, data: bytes, from_client: bool, is_text: bool = True,
                 injected: bool = False) -> WebSocketMessage:
        assert self.flow.websocket is not None
        message = WebSocketMessage(Opcode.TEXT if is_text else Opcode.BINARY, from_client,
                                   data, injected=injected)
        self.flow.websocket.messages.append(message)
        self.pipeline.hook("websocket_message", self.flow)
        return message

    def _deliver_injected(self) -> None:
        while self.injected.sent:
            data, is_text = self.injected.sent.pop(0)
            message = self._message(data, False, is_text, injected=True)
            assert not message.dropped
            self.agent_got.append(message.content)

    def agent(self, data: bytes, is_text: bool = True) -> bytes | None:
        """A frame from the agent: what the vendor receives (None: dropped)."""
        message = self._message(data, True, is_text)
        self._deliver_injected()
        return None if message.dropped else message.content

    def vendor(self, data: bytes) -> None:
        message = self._message(data, False)
        if not message.dropped:
            self.agent_got.append(message.content)
        self._deliver_injected()

    def close(self) -> None:
        assert self.flow.websocket is not None
        self.flow.websocket.close_code, self.flow.websocket.closed_by_client = 1000, True
        self.pipeline.hook("websocket_end", self.flow)


@pytest.fixture
def injected(pipeline: Any) -> Injected:
    found = Injected()
    pipeline.tctx.master.addons.add(found)
    return found


def upgrade(pipeline: Any, agent: str = "voice-bot", query: str = "?model=gpt-realtime",
            headers: list[tuple[str, str]] | None = None) -> http.HTTPFlow:
    if headers is None:
        headers = [("Authorization", f"Bearer {pipeline.token(agent)}")]
    flow = pipeline.request(pipeline.tunnel(OPENAI), f"/v1/realtime{query}", method="GET",
                            headers=[("Upgrade", "websocket"), ("Connection", "Upgrade"),
                                     ("Sec-WebSocket-Version", "13"),
                                     ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
                                     *headers])
    flow.websocket = WebSocketData()  # mitmproxy sets it once the vendor answers 101
    pipeline.run(flow, upstream=pipeline.Upstream(
        status=101, headers={"upgrade": "websocket", "connection": "Upgrade"}, chunks=()))
    return flow


def open_session(pipeline: Any, injected: Injected, **kw: Any) -> Session:
    flow = upgrade(pipeline, **kw)
    assert flow.response is not None and flow.response.status_code == 101
    pipeline.hook("websocket_start", flow)
    return Session(pipeline, flow, injected)


def refusal(flow: http.HTTPFlow) -> tuple[int, str, str]:
    assert flow.response is not None
    error = orjson.loads(flow.response.content)["error"]
    return flow.response.status_code, error["code"], error["message"]


def test_a_browser_key_subprotocol_identifies_and_never_leaves(pipeline: Any) -> None:
    token = pipeline.token("plain-bot")
    flow = upgrade(pipeline, "plain-bot", headers=[(
        "Sec-WebSocket-Protocol",
        f"realtime, openai-insecure-api-key.{token}, openai-beta.realtime-v1")])
    assert flow.response is not None and flow.response.status_code == 101
    sent = flow.request.headers
    assert sent.get_all("authorization") == [f"Bearer {pipeline.REAL_KEYS['openai']}"]
    assert sent.get_all("sec-websocket-protocol") == ["realtime, openai-beta.realtime-v1"]
    assert not any(token in v for _, v in sent.items(multi=True))
    [record] = pipeline.records()
    assert (record["agent"], record["model"], record["status"]) == (
        "plain-bot", "gpt-realtime", 101)


def test_a_real_key_offered_as_a_subprotocol_is_refused(pipeline: Any) -> None:
    real = "sk-proj-" + secrets.token_urlsafe(30)
    flow = upgrade(pipeline, headers=[
        ("Sec-WebSocket-Protocol", f"realtime, openai-insecure-api-key.{real}")])
    status, code, _ = refusal(flow)
    assert (status, code) == (403, "real_key_presented")
    assert real not in pipeline.journal_bytes().decode()


@pytest.mark.parametrize("query, status, code, message", [
    ("?model=gpt-4o-realtime-preview", 403, "model_not_allowed",
     "model 'gpt-4o-realtime-preview' is not allowed; allowed: gpt-realtime (policy rule "
     "'voice')"),
    ("", 400, "model_missing",
     "a realtime session must name its model in the URL (/v1/realtime?model=NAME): "
     "egressguard's policy decides by it"),
    ("?model=gpt-realtime&model=gpt-4o-realtime-preview", 400, "model_ambiguous",
     "the URL names 2 models (gpt-4o-realtime-preview, gpt-realtime): name one model"),
])
def test_the_policy_decides_by_the_model_in_the_url(pipeline: Any, query: str, status: int,
                                                    code: str, message: str) -> None:
    flow = upgrade(pipeline, query=query)
    assert refusal(flow) == (status, code, message)
    assert pipeline.store.asked == []  # refused before any key was fetched


def test_agent_text_is_redacted_and_the_answer_restored(pipeline: Any,
                                                        injected: Injected) -> None:
    session = open_session(pipeline, injected)
    sent = session.agent(user_item(text_part(f"mail {EMAIL} or call {PHONE}")))
    assert sent is not None
    vendor_saw = orjson.loads(sent)["item"]["content"][0]["text"]
    assert vendor_saw == "mail <EMAIL_ADDRESS_1> or call <PHONE_NUMBER>"
    answer = "Sure, I will mail <EMAIL_ADDRESS_1> today."
    for i in range(0, len(answer), 3):  # the pseudonym arrives in pieces
        session.vendor(delta(answer[i:i + 3]))
    session.vendor(event("response.done", response={"usage": {
        "input_tokens": 20, "output_tokens": 9}}))
    got = [orjson.loads(f) for f in session.agent_got]
    assert deltas(got) == f"Sure, I will mail {EMAIL} today."
    assert [g["type"] for g in got][-1] == "response.done"
    assert session.flow.metadata[flowstate.WEBSOCKET].in_flight == 0
    session.close()
    upgrade_record, closed = pipeline.records()
    assert closed["websocket"]["upgrade_id"] == upgrade_record["id"]
    assert closed["redactions"] == {"EMAIL_ADDRESS": {"pseudonymize": 1},
                                    "PHONE_NUMBER": {"mask": 1}}
    assert closed["usage"] == {"input_tokens": 20, "output_tokens": 9}
    assert (closed["websocket"]["frames_from_agent"], closed["websocket"]["frames_to_agent"]) \
        == (1, len(got))
    journal = pipeline.journal_bytes().decode()
    assert EMAIL not in journal and "555-0199" not in journal


def test_a_blocked_entity_drops_the_frame_and_the_session_goes_on(pipeline: Any,
                                                                  injected: Injected) -> None:
    number = ssn()
    session = open_session(pipeline, injected)
    assert session.agent(user_item(text_part(f"my ssn is {number}"), event_id="evt_9")) is None
    [error] = [orjson.loads(f) for f in session.agent_got]
    assert error["type"] == "error" and error["error"]["event_id"] == "evt_9"
    assert error["error"]["code"] == "redaction_blocked"
    assert error["error"]["message"] == (
        "the event contains US_SSN, which policy rule 'voice' does not let leave; it was "
        "not forwarded: remove it and send again")
    assert session.agent(user_item(text_part("no numbers this time"))) is not None
    assert session.agent(event("input_audio_buffer.append", audio="AAAA")) is None
    assert orjson.loads(session.agent_got[-1])["error"]["code"] == "redaction_not_possible"
    session.close()
    closed = pipeline.records()[-1]
    assert closed["websocket"]["refused"] == {"redaction_blocked": 1,
                                              "redaction_not_possible": 1}
    assert closed["redactions"] == {"US_SSN": {"block": 1}}
    assert number not in pipeline.journal_bytes().decode()


def test_a_session_without_a_plan_passes_frames_and_scrubs_the_key(
        pipeline: Any, injected: Injected) -> None:
    session = open_session(pipeline, injected, agent="plain-bot")
    frame = user_item(text_part(f"mail {EMAIL}"))
    assert session.agent(frame) == frame
    real = pipeline.REAL_KEYS["openai"]
    session.vendor(event("error", error={"message": f"bad key {real}"}))
    assert real.encode() not in session.agent_got[0] and REDACTED in session.agent_got[0]


def test_a_frame_whose_processing_fails_is_dropped_never_sent_raw(
        pipeline: Any, injected: Injected, monkeypatch: pytest.MonkeyPatch) -> None:
    session = open_session(pipeline, injected)

    def broken(*_: Any, **__: Any) -> Callable[..., Any]:
        raise RuntimeError("boom")

    monkeypatch.setattr(realtime, "read_agent_frame", broken)
    assert session.agent(user_item(text_part(f"mail {EMAIL}"))) is None
    assert orjson.loads(session.agent_got[-1])["error"]["code"] == "internal_error"
