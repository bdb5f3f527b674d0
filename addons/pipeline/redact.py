"""Redaction of what an agent sends, on the deciding rule's plan.

Every text field the vendor would read (`redact.fields`) is scanned: patterns and
validators for secrets and structured PII (`redact.detect`), Presidio NER for
PERSON/LOCATION only when the plan names them (`backends.ner`, in a worker thread).
Findings are cached per text by content digest, so the history a conversation
re-sends on every turn costs a dictionary lookup. Then per finding: mask,
pseudonymize (restored in the answer by ResponseWatch), block (the request is
refused, naming the entity types, never the values) or log (counted). The plan's
secret types are also looked for in the vendor's answer (`answers.SecretMask`, applied
by ResponseWatch).
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from mitmproxy import http

from egressguard.backends.ner import NerEngine, NerUnavailable
from egressguard.core import entities
from egressguard.core.errors import PolicyDenied
from egressguard.core.redact import Finding, actions, answers, fields
from egressguard.core.redact.detect import Detector, default_detector
from egressguard.pipeline import flowstate

log = logging.getLogger(__name__)
_CACHE_ENTRIES = 16384


@dataclass(slots=True)
class BodyScan:
    """What a plan found and did in one request body (which it edited in place)."""

    counts: dict[str, dict[str, int]]  # for the audit record: never values
    blocked: list[str]  # entity types the plan blocks: the request must be refused
    changed: bool  # the body must be serialised again
    reidentifier: actions.Reidentifier | None  # pseudonyms to restore in the answer


class Redact:
    def __init__(self, detector: Detector | None = None, ner: NerEngine | None = None) -> None:
        self.detector = detector
        self.ner = ner
        self.pseudonyms = actions.PseudonymStore()
        self._found: OrderedDict[bytes, list[Finding]] = OrderedDict()
        self._outcomes: OrderedDict[Hashable, actions.Outcome] = OrderedDict()

    def done(self) -> None:
        if self.ner is not None:
            self.ner.close()

    @flowstate.fail_closed
    async def request(self, flow: http.HTTPFlow) -> None:
        if not flowstate.is_live_request(flow):
            return
        decision = flow.metadata.get(flowstate.DECISION)
        if decision is None or decision.rule is None or not decision.rule.plan:
            return
        policy = flow.metadata[flowstate.POLICY]
        if decision.rule.answers:  # set first: an answer to any request of the rule is read
            flow.metadata[flowstate.ANSWER_MASK] = answers.SecretMask(
                policy.detector or self.detector or default_detector(), decision.rule.answers)
        vendor = flow.metadata[flowstate.DESTINATION].vendor
        body = flow.metadata[flowstate.REQUEST].body
        endpoint = flow.metadata[flowstate.ASK].endpoint  # classified once, by Enforce
        rule = decision.rule.name
        if flow.request.raw_content and (body is None or not fields.covered(vendor.api,
                                                                            endpoint)):
            flowstate.refuse(flow, PolicyDenied(
                f"policy rule {rule!r} redacts {', '.join(sorted(decision.rule.redact))}, and "
                f"egressguard cannot read the text of this {endpoint} request to "
                f"{flow.request.path.split('?')[0]}", reason="redaction_not_possible"))
            return
        if body is None:
            return
        try:
            scan = await self.scan(body, vendor.api, endpoint, decision.rule.plan,
                                   decision.agent or "", policy.detector, policy.digest)
        except NerUnavailable as err:
            log.warning("refusing a request: %s", err.message)
            flowstate.refuse(flow, err)
            return
        flow.metadata[flowstate.REDACTIONS] = scan.counts or None
        if scan.blocked:
            flowstate.refuse(flow, PolicyDenied(
                f"the request contains {', '.join(scan.blocked)}, which policy rule {rule!r} "
                "does not let leave; remove it and send again", reason="redaction_blocked"))
            return
        if scan.changed:
            flow.request.content = orjson.dumps(body)
        if scan.reidentifier is not None:
            flow.metadata[flowstate.REIDENTIFY] = (
                scan.reidentifier, fields.json_output(vendor.api, endpoint, body))

    async def scan(self, body: Any, api: str, endpoint: str, plan: Mapping[str, str],
                   agent: str, detector: Detector | None = None, policy: str = ""
                   ) -> BodyScan:
        """The plan over every text field of `body` (a parsed request of `api` to
        `endpoint`), edited in place; no flow needed (the benchmark calls this too).
        `detector`/`policy`: the policy's own detector, if it has `detectors`, and its
        digest. Raises NerUnavailable when the plan needs NER and it cannot run."""
        # a conversation's pseudonyms outlive the request only when the plan makes some
        opening = fields.opening(api, endpoint, body) \
            if actions.PSEUDONYMIZE in plan.values() else None
        pseudonyms = self.pseudonyms.conversation(actions.conversation_key(agent, opening)) \
            if opening else actions.Pseudonyms()
        return await self.scan_slots(fields.text_slots(api, endpoint, body), plan, pseudonyms,
                                     detector, policy)

    async def scan_slots(self, slots: Iterable[fields.Slot], plan: Mapping[str, str],
                         pseudonyms: actions.Pseudonyms, detector: Detector | None = None,
                         policy: str = "") -> BodyScan:
        """`scan` over texts the caller found, with pseudonyms it keeps: a Realtime
        session's client events (`pipeline.websocket`), one conversation per session."""
        outcomes = [o for slot in slots
                    if (o := await self._redact(slot, plan, pseudonyms, detector, policy))
                    is not None]
        tokens = frozenset().union(*(o.tokens for o in outcomes))
        return BodyScan(
            counts=actions.audit_counts(outcomes),
            blocked=sorted({t for o in outcomes for t in o.blocked}),
            changed=any(o.changed for o in outcomes),
            reidentifier=actions.Reidentifier(pseudonyms, only=tokens) if tokens else None)

    async def _redact(self, slot: fields.Slot, plan: Mapping[str, str],
                      pseudonyms: actions.Pseudonyms, detector: Detector | None,
                      policy: str) -> actions.Outcome | None:
        text = slot.text
        digest, found = self._structured(text, plan, detector, policy)
        if ner := entities.NER.intersection(plan):
            if self.ner is None:
                self.ner = NerEngine()
            found = sorted([*found, *await self.ner.find(text, ner)], key=lambda f: f.start)
        if not found:
            return None
        # the same text, findings and actions give the same outcome: a conversation's
        # history is masked once, not on every turn (pseudonyms: within its conversation)
        acts = tuple((f.start, f.end, f.entity, plan[f.entity]) for f in found)
        key = (digest, acts, pseudonyms.serial if actions.PSEUDONYMIZE in plan.values() else 0)
        outcome = self._outcomes.get(key)
        if outcome is None:
            outcome = actions.apply(text, found, plan, pseudonyms)
            self._outcomes[key] = outcome
            if len(self._outcomes) > _CACHE_ENTRIES:
                self._outcomes.popitem(last=False)
        else:
            self._outcomes.move_to_end(key)
        if outcome.changed:
            slot.set(outcome.text)
        return outcome

    def _structured(self, text: str, plan: Mapping[str, str], detector: Detector | None,
                    policy: str) -> tuple[bytes, list[Finding]]:
        """The text's digest, and its pattern findings of every type in `plan`, cached
        by that digest (keyed with the policy's: its own `detectors` may find more)."""
        digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16,
                                 person=b"egressguard")
        if detector is not None:
            digest.update(policy.encode())
        key = digest.digest()
        found = self._found.get(key)
        if found is None:
            detector = detector or self.detector or default_detector()
            found = detector.find(text)  # every type: the cache serves every plan
            self._found[key] = found
            if len(self._found) > _CACHE_ENTRIES:
                self._found.popitem(last=False)
        else:
            self._found.move_to_end(key)
        return key, [f for f in found if f.entity in plan]
