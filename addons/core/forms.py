"""multipart/form-data bodies, read strictly: the fields an upload names (`model`,
`purpose`) and the file it carries, so a policy can govern them.

Strict on purpose. A lenient parser and the vendor's may split the same bytes into
different parts (a preamble, a second `purpose`, a part with a transfer encoding), and
then egressguard would check one upload while the vendor stores another. Everything
the SDKs send (httpx, requests, curl) is accepted; anything ambiguous raises
`FormError` with what is wrong, which the caller turns into a 400.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_BOUNDARY = re.compile(r'(?i);\s*boundary=(?:"([^"]{1,70})"|([^\s;"]{1,70}))')
_DISPOSITION = re.compile(
    r'(?i)^form-data; *name="([^"\\]*)"(?:; *filename="([^"\\]*)")?$')
_PART_HEADERS = frozenset({"content-disposition", "content-type"})


class FormError(ValueError):
    """The body is not an unambiguous multipart/form-data body."""


@dataclass(frozen=True, slots=True)
class Part:
    name: str
    data: bytes = field(repr=False)  # may be what the policy protects
    filename: str | None = None
    head: bytes = b""  # the part's header lines as sent, to write the part back

    @property
    def text(self) -> str | None:
        """The value of a plain field; None for a file or bytes that are not UTF-8."""
        if self.filename is not None:
            return None
        try:
            return self.data.decode()
        except UnicodeDecodeError:
            return None


def is_form(content_type: str) -> bool:
    return content_type.lower().lstrip().startswith("multipart/form-data")


def boundary_of(content_type: str) -> str:
    m = _BOUNDARY.search(content_type)
    if m is None:
        raise FormError("multipart/form-data without a boundary of 1 to 70 characters")
    return m.group(1) or m.group(2)


def parse(content_type: str, body: bytes) -> dict[str, Part]:
    """The parts of a multipart/form-data `body` by name, in order."""
    delimiter = b"--" + boundary_of(content_type).encode("latin-1")
    if not body.startswith(delimiter + b"\r\n"):
        raise FormError("the body must start with its boundary (no preamble)")
    end = b"\r\n" + delimiter + b"--"
    if body.endswith(end + b"\r\n"):
        body = body[:-2]
    if not body.endswith(end):
        raise FormError("the body must end with its closing boundary (no epilogue)")
    chunks = body[len(delimiter) + 2:-len(end)].split(b"\r\n" + delimiter + b"\r\n")
    if body.count(b"\r\n" + delimiter) != len(chunks):
        raise FormError("the boundary appears inside a part (or with padding after it)")
    parts: dict[str, Part] = {}
    for chunk in chunks:
        part = _part(chunk)
        if part.name in parts:
            raise FormError(f"the field {part.name!r} is sent twice")
        parts[part.name] = part
    return parts


def _part(chunk: bytes) -> Part:
    head, sep, data = chunk.partition(b"\r\n\r\n")
    if not sep:
        raise FormError("a part has no blank line after its headers")
    disposition = None
    for line in head.split(b"\r\n"):
        name, colon, value = line.decode("latin-1").partition(":")
        name = name.strip().lower()
        if not colon or name not in _PART_HEADERS:
            raise FormError(f"a part has a header other than Content-Disposition and "
                            f"Content-Type ({name or line[:40]!r})")
        if name == "content-disposition":
            if disposition is not None:
                raise FormError("a part has two Content-Disposition headers")
            disposition = _DISPOSITION.match(value.strip())
            if disposition is None:
                raise FormError("a part's Content-Disposition is not `form-data; "
                                'name="…"[; filename="…"]`')
    if disposition is None:
        raise FormError("a part has no Content-Disposition")
    return Part(disposition.group(1), data, disposition.group(2), head)


def with_part(content_type: str, parts: dict[str, Part], name: str, data: bytes) -> bytes:
    """The body again, part `name` carrying `data` instead; FormError if `data` holds
    the boundary (it would end the part early)."""
    delimiter = b"--" + boundary_of(content_type).encode("latin-1")
    if delimiter in data:
        raise FormError("the new content of the part holds the boundary")
    out = []
    for part in parts.values():
        out += [delimiter, b"\r\n", part.head, b"\r\n\r\n",
                data if part.name == name else part.data, b"\r\n"]
    return b"".join([*out, delimiter, b"--\r\n"])
