"""Redaction: find PII and secrets in what an agent sends, act on the policy's plan.

    detect   Finding spans in a text (patterns and validators from rules.yaml, evasion
             normalisation); NER entities come from egressguard.backends.ner
    fields   every text field a vendor would read, per API, found and replaced in place
    actions  mask / pseudonymize / block / log a text's findings; re-identification of
             pseudonyms in answers, buffered and streamed
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Finding:
    """One entity found in a text: `text[start:end]` (character offsets into the text
    as given, before any normalisation)."""

    entity: str  # Presidio-compatible name or a secret type (egressguard.core.entities)
    kind: str  # "pii" or "secret"
    start: int
    end: int
    score: float = 1.0
