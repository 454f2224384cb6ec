"""Decoding only some top-level fields of a large JSON object, in memory that follows what is kept.

msgspec decodes the top level into raw spans (``msgspec.Raw``: views of the input, nothing built), checking that
the whole document is well-formed JSON; the asked fields are then decoded by the strict decoder, and the rest is
never built. Whatever this cannot prove equal to the strict reading (a lone surrogate escape anywhere, a key listed
twice at the top level, invalid UTF-8, anything msgspec refuses) gives ``None``: the caller decodes the file
strictly, which also writes the error message.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Collection
from typing import Any, Final

try:
    import msgspec

    HAVE_MSGSPEC = True
except ImportError:  # pragma: no cover - the tests hide the module to exercise this
    HAVE_MSGSPEC = False

from keyguard.sources._jsonfile import DuplicateKeyError

# a \uD800-\uDFFF escape, as bytes: maybe half of a surrogate pair (also matches after an escaped backslash: then
# the strict path decides)
_SURROGATE_ESCAPE: Final = re.compile(rb"\\u[dD][89a-fA-F]")
_WS: Final = rb"[ \t\n\r]*"
_OPEN: Final = re.compile(_WS + rb"\{" + _WS)
_KEY: Final = re.compile(rb'("[^"\\]*(?:\\.[^"\\]*)*")' + _WS + rb":" + _WS, re.DOTALL)
_NEXT: Final = re.compile(_WS + rb"([,}])" + _WS)
_UTF8_PIECE: Final = 4 * 1024 * 1024

if HAVE_MSGSPEC:
    _MEMBERS: Any = msgspec.json.Decoder(dict[str, msgspec.Raw])
    _KEY_DECODER: Any = msgspec.json.Decoder(str)
    _ERRORS: tuple[type[BaseException], ...] = (msgspec.DecodeError, msgspec.ValidationError, RecursionError)


def decode_fields(
    raw: bytes, fields: Collection[str], strict: json.JSONDecoder, skipped: object
) -> dict[str, Any] | None:
    """The top-level object of ``raw`` with ``fields`` decoded by ``strict`` and the other values ``skipped``; or
    ``None`` when that is not provably what decoding ``raw`` whole would give (or msgspec is not installed)."""
    if not HAVE_MSGSPEC or _SURROGATE_ESCAPE.search(raw) is not None:
        return None
    document = memoryview(raw)
    if raw.startswith(codecs.BOM_UTF8):  # the strict reading decodes "utf-8-sig"
        document = document[len(codecs.BOM_UTF8) :]
    if not _valid_utf8(document):
        return None
    try:
        members: dict[str, Any] = _MEMBERS.decode(document)
    except _ERRORS:
        return None
    if not _each_key_once(document, members):
        return None
    result: dict[str, Any] = {}
    for key, value in members.items():
        if key not in fields:
            result[key] = skipped
            continue
        try:
            result[key] = strict.decode(bytes(value).decode("utf-8"))
        except (DuplicateKeyError, ValueError, RecursionError):
            return None
    return result


def _valid_utf8(document: memoryview) -> bool:
    """UTF-8 checked a piece at a time (msgspec checks only the strings it builds)."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    try:
        for start in range(0, len(document), _UTF8_PIECE):
            decoder.decode(document[start : start + _UTF8_PIECE])
        decoder.decode(b"", True)
    except UnicodeDecodeError:
        return False
    return True


def _each_key_once(document: memoryview, members: dict[str, Any]) -> bool:
    """Walk the top level member by member: every key once, each value exactly the span msgspec kept for it
    (msgspec keeps a repeated key's last value silently). A document it cannot walk so gives False."""
    match = _OPEN.match(document)
    if match is None:
        return False
    position = match.end()
    if position < len(document) and document[position] == 0x7D:  # "}": an empty object
        return not members
    seen: set[str] = set()
    while True:
        match = _KEY.match(document, position)
        if match is None:
            return False
        try:
            key = _KEY_DECODER.decode(match.group(1))
        except _ERRORS:
            return False
        value = members.get(key)
        if key in seen or value is None:
            return False
        seen.add(key)
        start = match.end()
        end = start + len(value)
        if document[start:end] != memoryview(value):
            return False
        match = _NEXT.match(document, end)
        if match is None:
            return False
        position = match.end()
        if match.group(1) == b"}":
            return len(seen) == len(members)
