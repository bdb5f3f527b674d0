"""What the tests used that must never show up in a log or a record: vendor keys, Vault
tokens, passwords and PII samples, each with its kind. `tests/test_zz_secret_sweep.py`
looks for every one of them, at the end of the session, in everything the suite wrote.

Register a value where a test makes it: `key = register(fake_key(), "vendor key")`.
`tests/conftest.py` registers the credentials of the fixtures it sees (a `Stack`'s or
an `OpenBaoDev`'s root token, a server's password) and keeps, for the sweep, each
test's captured output and what a fake SIEM received during it.

Import it as `secret_registry` (tests/ is on sys.path under every way of running
pytest). Test packages are imported twice in one session (`e2e.conftest` and
`tests.e2e.conftest`), so the state lives in one place whatever name this module was
imported under.
"""

from __future__ import annotations

import sys
from typing import Any

MIN_LENGTH = 8  # shorter values would match by chance


def _shared(name: str, default: Any) -> Any:
    """This process's one copy of a piece of state, whichever module name got here first."""
    for module_name in ("secret_registry", "tests.secret_registry"):
        module = sys.modules.get(module_name)
        if module is not None and module is not sys.modules.get(__name__) and \
                hasattr(module, name):
            return getattr(module, name)
    return default


VALUES: dict[str, str] = _shared("VALUES", {})  # value -> kind
CAPTURED: list[tuple[str, str]] = _shared("CAPTURED", [])  # (where, text) kept in memory


def register(value: str, kind: str) -> str:
    """Remember `value` (a key, token, password or PII sample) under `kind`; returns it."""
    if isinstance(value, str) and len(value) >= MIN_LENGTH:
        VALUES.setdefault(value, kind)
    return value


def register_credentials_of(thing: object) -> None:
    """The credentials a fixture's value holds: a `Stack`'s or an `OpenBaoDev`'s root
    token, a server's password (found by shape, as test helpers are imported under
    two module names)."""
    vault = getattr(thing, "vault", None)
    for holder in (thing, vault):
        token = getattr(holder, "root_token", None)
        if isinstance(token, str):
            register(token, "vault token")
    password = getattr(thing, "password", None)
    if isinstance(password, str):
        register(password, "password")


def capture(where: str, text: str) -> None:
    """Keep text a test produced that no file holds (captured output, what a fake SIEM
    received) for the sweep."""
    if text:
        CAPTURED.append((where, text))
