"""Strict JSON for the small JSON files keyguard reads (indexes, configs, manifests, plans)."""

from __future__ import annotations

import json
import os
import re
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


def load_json_object(path: str | os.PathLike[str], error: type[SourceError] = SourceError) -> dict[str, Any]:
    """Read a JSON file that must hold an object; every failure is one ``error`` naming the file."""
    path = os.fspath(path)
    raw = read_bounded(path, MAX_JSON_FILE, error=error)
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
