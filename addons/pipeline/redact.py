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


class Redact:
    def __init__(self, detector: Detector | None = None, ner: NerEngine | None = None) -> None:
        self.detector = detector
        self.ner = ner
        self.pseudonyms = actions.PseudonymStore()
        self._found: OrderedDict[bytes, list[Finding]] = OrderedDict()

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
        plan = decision.rule.plan
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
        # a conversation's pseudonyms outlive the request only when the plan makes some
        opening = fields.opening(vendor.api, endpoint, body) \
            if actions.PSEUDONYMIZE in plan.values() else None
        pseudonyms = self.pseudonyms.conversation(actions.conversation_key(
            decision.agent or "", opening)) if opening else actions.Pseudonyms()
        try:
            outcomes = [o for slot in fields.text_slots(vendor.api, endpoint, body)
                        if (o := await self._redact(slot, plan, pseudonyms, policy.detector,
                                                    policy.digest)) is not None]
        except NerUnavailable as err:
            log.warning("refusing a request: %s", err.message)
            flowstate.refuse(flow, err)
            return
        counts = actions.audit_counts(outcomes)
        flow.metadata[flowstate.REDACTIONS] = counts or None
        if blocked := sorted({t for o in outcomes for t in o.blocked}):
            flowstate.refuse(flow, PolicyDenied(
                f"the request contains {', '.join(blocked)}, which policy rule {rule!r} does "
                "not let leave; remove it and send again", reason="redaction_blocked"))
            return
        if any(o.changed for o in outcomes):
            flow.request.content = orjson.dumps(body)
        if tokens := frozenset().union(*(o.tokens for o in outcomes)):
            flow.metadata[flowstate.REIDENTIFY] = (
                actions.Reidentifier(pseudonyms, only=tokens),
                fields.json_output(vendor.api, endpoint, body))

    async def _redact(self, slot: fields.Slot, plan: dict[str, str],
                      pseudonyms: actions.Pseudonyms, detector: Detector | None,
                      policy: str) -> actions.Outcome | None:
        text = slot.text
        found = self._structured(text, plan, detector, policy)
        if ner := entities.NER.intersection(plan):
            if self.ner is None:
                self.ner = NerEngine()
            found = sorted([*found, *await self.ner.find(text, ner)], key=lambda f: f.start)
        if not found:
            return None
        outcome = actions.apply(text, found, plan, pseudonyms)
        if outcome.changed:
            slot.set(outcome.text)
        return outcome

    def _structured(self, text: str, plan: dict[str, str], detector: Detector | None,
                    policy: str) -> list[Finding]:
        """Pattern findings of every type in `plan`, cached by the text's digest (and
        the policy's: its own `detectors` may find more)."""
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
        return [f for f in found if f.entity in plan]
