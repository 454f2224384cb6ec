"""Strict JSON for the small JSON files keyguard reads (indexes, configs, manifests, plans)."""

from __future__ import annotations

import json
import os
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
    if not isinstance(obj, dict):
        raise error(path, "not-an-object", f"holds a JSON {type(obj).__name__}, expected an object")
    return obj
