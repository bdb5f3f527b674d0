"""Private files: key material on disk is 0600 from its first byte, and a key file that
others can read or write is refused rather than used.

One helper for every key egressguard keeps in a file: the interception CA key, the
agent-token HMAC key, the checkpoint signing key. A copy of any of them lets someone
else impersonate vendors, mint tokens or sign a rewritten journal, so `egressguard run`
refuses to start on an exposed one and says how to fix it.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

# group or others may read, write or execute: a private file has none of these
EXPOSING_BITS = 0o077


class KeyFileExposed(PermissionError):
    """A key file that others can read or write; the message names path, mode and fix."""


def exposure(mode: int) -> str | None:
    """How a file with `mode` is open to others ("read", "read or written", ...), or
    None when it is private."""
    if not mode & EXPOSING_BITS:
        return None
    how = [verb for verb, bits in (("read", 0o044), ("written", 0o022)) if mode & bits]
    return " or ".join(how) or "opened"


def check_mode(path: Path, mode: int, what: str, why: str) -> None:
    """Raise KeyFileExposed if `mode` lets group or others at the file."""
    how = exposure(mode)
    if how is not None:
        raise KeyFileExposed(
            f"the {what} {path} can be {how} by others (mode {stat.S_IMODE(mode):o}): "
            f"{why}; run `chmod 600 {path}`")


def check_private(path: Path, what: str, why: str) -> None:
    """Raise KeyFileExposed if the file at `path` is open to others (FileNotFoundError
    if there is none)."""
    check_mode(path, path.stat().st_mode, what, why)


def read_private(path: Path, what: str, why: str) -> bytes:
    """The bytes of a private file; the mode is checked on the open file itself, so a
    file swapped in between check and read cannot slip through."""
    fd = os.open(path, os.O_RDONLY)
    with os.fdopen(fd, "rb") as f:
        check_mode(path, os.fstat(fd).st_mode, what, why)
        return f.read()


def create_private(path: Path, data: bytes) -> bool:
    """Write `data` to a new file at `path`, 0600 whatever the umask (O_CREAT|O_EXCL
    with the mode, never chmod afterwards), in a 0700 folder if it has to make one.

    The file appears whole (written and fsynced beside it, then hard-linked into
    place), so a second process starting at the same moment never reads half a key.
    Returns False, and leaves the file alone, if `path` already exists."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            return False
        return True
    finally:
        temporary.unlink(missing_ok=True)
