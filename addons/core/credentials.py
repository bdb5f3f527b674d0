"""Credential swap: find what the agent presented, strip every credential, inject the real key.

Pure functions over header and query lists (name, value); the inject addon adapts a
mitmproxy request to them. Only headers and query parameters are ever touched: a
placeholder quoted inside a request *body* is data and is never replaced.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable

from egressguard.core.secret import Secret
from egressguard.core.tokens import PREFIX as TOKEN_PREFIX
from egressguard.core.vendors import Vendor

Pairs = list[tuple[str, str]]

# Never forwarded upstream, whatever the vendor.
_ALWAYS_STRIPPED = frozenset({"proxy-authorization", "proxy-connection"})
_SCHEMES = ("bearer ", "basic ", "token ")
_MIN_CARRIED = 16  # shorter presented values are not searched for in other headers


def _bare(value: str) -> str:
    """The credential without an auth scheme word (`Bearer x` -> `x`)."""
    value = value.strip()
    low = value[:7].lower()
    for scheme in _SCHEMES:
        if low.startswith(scheme):
            return value[len(scheme):].strip()
    return value


def presented(headers: Iterable[tuple[str, str]], query: Iterable[tuple[str, str]],
              vendor: Vendor) -> list[str]:
    """Every credential value the agent sent in a place this vendor reads one from."""
    found = [_bare(v) for k, v in headers if k.lower() in vendor.credential_headers and v]
    found += [v for k, v in query if k in vendor.credential_query and v]
    return found


def strip(headers: Iterable[tuple[str, str]], vendor: Vendor,
          presented: Collection[str] = ()) -> Pairs:
    """Headers without any credential (any case, any number of duplicates), nor any
    header that carries an egressguard token or a value the agent `presented` as a
    credential elsewhere (a placeholder in `X-Whatever` must not reach the vendor)."""
    drop = vendor.credential_headers | _ALWAYS_STRIPPED
    carried = _carriers(presented)
    return [(k, v) for k, v in headers if k.lower() not in drop and not carried(v)]


def strip_query(query: Iterable[tuple[str, str]], vendor: Vendor,
                presented: Collection[str] = ()) -> Pairs:
    carried = _carriers(presented)
    return [(k, v) for k, v in query if k not in vendor.credential_query and not carried(v)]


def needs_query_strip(query: Iterable[tuple[str, str]], vendor: Vendor,
                      presented: Collection[str] = ()) -> bool:
    carried = _carriers(presented)
    return any(k in vendor.credential_query or carried(v) for k, v in query)


def _carriers(presented: Collection[str]) -> Callable[[str], bool]:
    """Does a value carry a token, or a presented credential long enough not to be
    an everyday word?"""
    values = tuple(p for p in presented if len(p) >= _MIN_CARRIED)
    return lambda v: TOKEN_PREFIX in v or any(p in v for p in values)


def inject(headers: Pairs, vendor: Vendor, secret: Secret, host: str) -> Pairs:
    """`headers` (already stripped) plus the real key in the vendor's own scheme.

    Raises PermissionError if `host` is not one the key is bound to.
    """
    value = vendor.inject.value(secret.reveal_for(host))
    return [*headers, (vendor.inject.header, value)]


REDACTED = b"[redacted by egressguard]"


class KeyScrubber:
    """Removes any echo of real keys from a response body, also across stream chunks.

    Streaming: bytes are passed on immediately except a tail that could be the start
    of a key (at most len(key)-1 bytes, and only if it actually matches a key prefix),
    so ordinary SSE events are never delayed.
    """

    def __init__(self, keys: Iterable[bytes]) -> None:
        self._keys = tuple(k for k in keys if k)
        self._held = b""

    def __call__(self, chunk: bytes) -> bytes:
        """mitmproxy stream callable: an empty chunk marks the end of the body."""
        if not self._keys:
            return chunk
        if not chunk:
            out, self._held = self._held, b""
            return self.scrub(out)
        data = self.scrub(self._held + chunk)
        keep = self._partial_tail(data)
        self._held = data[len(data) - keep:] if keep else b""
        return data[: len(data) - keep]

    def scrub(self, data: bytes) -> bytes:
        for key in self._keys:
            if key in data:
                data = data.replace(key, REDACTED)
        return data

    def _partial_tail(self, data: bytes) -> int:
        """Length of the longest suffix of `data` that is a proper prefix of a key."""
        best = 0
        for key in self._keys:
            for n in range(min(len(key) - 1, len(data)), best, -1):
                if data.endswith(key[:n]):
                    best = n
                    break
        return best
