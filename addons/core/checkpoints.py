"""Signed checkpoints of the audit chain: what they hold, how they are signed, checked.

A checkpoint is a record of its own (`kind: checkpoint`), chained like any other, whose
`checkpoint` field says which records it covers and carries an Ed25519 signature over
the whole record — `seq` and `prev_hash` (the hash of the record before it) included —
except `hash` and the signature itself. Whoever rewrites history must recompute every
hash after the change, and then the checkpoints' `prev_hash` no longer matches their
signatures; checkpoints are shipped to the SIEM too, so the original hashes are also
kept out of the writer's reach.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ALGORITHM = "ed25519"
REASONS = ("count", "interval", "rotation", "shutdown")


def key_id(public: Ed25519PublicKey) -> str:
    """First 16 hex digits of the SHA-256 of the raw public key."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def fields(reason: str, segment: int, first_seq: int, records: int,
           public: Ed25519PublicKey) -> dict[str, Any]:
    """A record's `checkpoint` field, unsigned (`sign` fills the signature in)."""
    if reason not in REASONS:
        raise ValueError(f"checkpoint reason {reason!r} is not one of {REASONS}")
    return {"reason": reason, "segment": segment, "first_seq": first_seq,
            "records": records, "key_id": key_id(public), "algorithm": ALGORITHM,
            "signature": None}


def payload(record: dict[str, Any]) -> bytes:
    """What is signed: the record's canonical JSON without `hash`, its signature null."""
    body = {k: v for k, v in record.items() if k != "hash"}
    body["checkpoint"] = {**body["checkpoint"], "signature": None}
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def sign(record: dict[str, Any], key: Ed25519PrivateKey) -> None:
    """Sign a checkpoint record whose `seq` and `prev_hash` are set (before `hash`)."""
    record["checkpoint"]["signature"] = base64.b64encode(key.sign(payload(record))).decode()


def signature_ok(record: dict[str, Any], public: Ed25519PublicKey) -> bool:
    checkpoint = record.get("checkpoint")
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("signature"), str):
        return False
    try:
        public.verify(base64.b64decode(checkpoint["signature"], validate=True), payload(record))
    except (InvalidSignature, ValueError):
        return False
    return True


def load_public_key(pem: bytes) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM; ValueError naming what it is instead."""
    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"not an Ed25519 public key but {type(key).__name__}")
    return key


def public_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.PEM,
                               serialization.PublicFormat.SubjectPublicKeyInfo)
