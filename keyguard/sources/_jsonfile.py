"""Strict JSON for the JSON files keyguard reads (indexes, configs, manifests, plans).

Every file is decoded strictly: valid UTF-8, no key listed twice, no ``NaN``/``Infinity``, no lone surrogate
escapes. A caller that needs only some top-level fields (a sharded checkpoint's index needs ``metadata`` and
``weight_map``) names them; a large file is then read through msgspec's decoder, which checks the rest without
building it, so memory follows what is kept, not the file (a 100 MB index padded with an unknown field full of
``{}`` no longer builds 33 million dicts).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Collection
from typing import Any, Final

from keyguard._exceptions import SourceError
from keyguard.sources._readfile import read_bounded

#: Index, config and manifest files are small; anything above this is not one of them.
MAX_JSON_FILE: Final = 512 * 1024 * 1024


class DuplicateKeyError(Exception):
    """Raised inside the decoder when an object lists a key twice (``json.loads`` would keep the last)."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def pairs_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` that builds the dict and refuses duplicate keys."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKeyError(key)
            seen.add(key)
    return obj


def _no_constants(name: str) -> object:
    raise ValueError(f"{name} is not valid JSON")  # json.loads accepts NaN and Infinity; the format does not


STRICT_DECODER: Final = json.JSONDecoder(object_pairs_hook=pairs_without_duplicates, parse_constant=_no_constants)

# a \uD800-\uDFFF escape: half of a surrogate pair, valid only when paired (the decoder joins a pair into one character)
_SURROGATE_ESCAPE: Final = re.compile(r"\\u[dD][89a-fA-F]")


def lone_surrogate(text: str, obj: Any) -> str | None:
    """The first string (key or value) of ``obj``, decoded from the JSON ``text``, that holds a lone UTF-16 surrogate.

    ``json.loads`` turns an unpaired escape such as ``"\\ud800"`` into a string that is not valid Unicode: it cannot
    be printed or written as UTF-8, and the safetensors library (like most JSON parsers) refuses it. The text is
    searched first, so a document without such escapes costs one regular-expression scan.
    """
    if _SURROGATE_ESCAPE.search(text) is None:
        return None
    stack = [obj]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            if not _is_unicode(value):
                return value
        elif isinstance(value, dict):
            for key, item in reversed(value.items()):
                stack.extend((item, key))
        elif isinstance(value, list):
            stack.extend(reversed(value))
    return None


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class _Skipped:
    """The value of a top-level field the caller did not ask for (its key is kept: callers test for presence)."""

    def __repr__(self) -> str:
        return "SKIPPED"


#: What ``load_json_object(..., fields=...)`` gives for the top-level fields it was not asked to decode.
SKIPPED: Final = _Skipped()
#: Files up to this size are decoded whole even when only some fields are asked for (the strict decoder is as fast
#: and the memory small); larger ones go through msgspec when it is installed.
TYPED_ABOVE: int = 8 * 1024 * 1024


def load_json_object(
    path: str | os.PathLike[str], error: type[SourceError] = SourceError, *, fields: Collection[str] | None = None
) -> dict[str, Any]:
    """Read a JSON file that must hold an object; every failure is one ``error`` naming the file.

    With ``fields``, only those top-level fields are decoded: every other top-level key is in the result with the
    value ``SKIPPED``. A file above ``TYPED_ABOVE`` is then read without building the skipped values (msgspec,
    when installed): they are checked to be well-formed JSON, valid UTF-8 and free of lone surrogates, and the top
    level and the decoded fields as strictly as ever, but a key listed twice *inside a skipped value* is not looked
    for. Anything the fast reading cannot prove valid is decoded strictly, for the error message.
    """
    path = os.fspath(path)
    raw = read_bounded(path, MAX_JSON_FILE, error=error)
    if fields is not None and len(raw) > TYPED_ABOVE:
        from keyguard.sources._json_fields import decode_fields

        typed = decode_fields(raw, fields, STRICT_DECODER, SKIPPED)
        if typed is not None:
            return typed
    obj = _load_strict(path, raw, error)
    if fields is not None:
        return {key: value if key in fields else SKIPPED for key, value in obj.items()}
    return obj


def _load_strict(path: str, raw: bytes, error: type[SourceError]) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise error(path, "not-utf8", f"is not valid UTF-8 (byte {exc.start})") from None
    try:
        obj = STRICT_DECODER.decode(text)
    except DuplicateKeyError as exc:
        raise error(path, "duplicate-key", f"lists the key {exc.key!r} more than once", key=exc.key) from None
    except (ValueError, RecursionError) as exc:
        raise error(path, "not-json", f"is not valid JSON ({exc})") from None
    bad = lone_surrogate(text, obj)
    if bad is not None:
        raise error(path, "lone-surrogate", f"holds {bad!r}, a string with an unpaired UTF-16 surrogate escape")
    if not isinstance(obj, dict):
        raise error(path, "not-an-object", f"holds a JSON {type(obj).__name__}, expected an object")
    return obj
