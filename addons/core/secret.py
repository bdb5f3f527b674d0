"""Real vendor keys as a type that cannot be printed, bound to the hosts it may reach."""

from __future__ import annotations

from dataclasses import dataclass, field

from egressguard.core.vendors import host_matches, normalize_host


@dataclass(frozen=True, slots=True)
class SecretLocation:
    """Where a key is read from: KV v2 mount, path under it, and field."""

    mount: str
    path: str
    field: str


@dataclass(frozen=True, slots=True)
class SecretRef:
    """Where a key came from: what audit records and logs may show."""

    path: str
    version: int | None

    def __str__(self) -> str:
        return f"{self.path}@v{self.version}" if self.version is not None else self.path


@dataclass(frozen=True, slots=True)
class Secret:
    """A real key. `repr`/`str` never show it; `reveal_for(host)` hands it out only for
    the hosts of the vendor it belongs to."""

    _value: str = field(repr=False)
    ref: SecretRef
    hosts: tuple[str, ...]

    def __repr__(self) -> str:
        return f"Secret(<redacted>, ref={self.ref})"

    __str__ = __repr__

    def reveal_for(self, host: str) -> str:
        host = normalize_host(host)
        if not any(host_matches(p, host) for p in self.hosts):
            raise PermissionError(f"key {self.ref} is not bound to host {host!r}")
        return self._value

    def fingerprint_bytes(self) -> bytes:
        """The raw value as bytes, for scrubbing echoes out of responses only."""
        return self._value.encode()
