"""``load_json_object(path, fields=...)``: a large JSON file read through msgspec, only the asked fields decoded,
agrees with the strict reading of the whole file (values, errors and their messages), on real files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from keyguard._exceptions import SourceError
from keyguard.sources import _json_fields, _jsonfile
from keyguard.sources._jsonfile import SKIPPED, load_json_object

pytestmark = pytest.mark.skipif(not _json_fields.HAVE_MSGSPEC, reason="the large-file reading needs msgspec")

FIELDS = ("metadata", "weight_map")
DOCUMENTS: list[bytes] = [
    b"{}",
    b" \n{ } \t",
    b'{"weight_map": {"a": "x"}}',
    b'\xef\xbb\xbf{"weight_map": {"a": "x"}}',  # a byte order mark, as "utf-8-sig" reads it
    b'{"metadata":{"total_size":3},"weight_map":{"a":"x","b":"y"},"extra":[1,2.5,-0,1e999,null,true,{"k":[]}]}',
    b'{ "extra" : { "weight_map" : 1 } , "weight_map" : { } }',  # a field's name inside a skipped value
    b'{"caf\\u00e9": 1, "weight_map": {"\\u00e9\\n": "\\"x\\""}}',
    '{"notes": "caf\u00e9 \u2603", "weight_map": {}}'.encode(),
    b'{"weight_map": {}, "weight_map": {}}',  # refused: a repeated top-level key
    b'{"weight_map": {}, "extra": 1, "extra": 1}',
    b'{"weight_map": {"a": "x", "a": "y"}}',
    b'{"weight_map": {"\\ud800": "x"}}',
    b'{"weight_map": {"\\ud83d\\ude00": "x"}}',  # a surrogate pair is fine (the strict path decides)
    b'{"extra": "\\\\ud800", "weight_map": {}}',  # an escaped backslash then "ud800": not an escape
    b'{"extra": NaN, "weight_map": {}}',
    b'{"extra": [Infinity], "weight_map": {}}',
    b'{"extra": "\xff", "weight_map": {}}',
    b'{"extra": "a\x01b", "weight_map": {}}',
    b'{"extra": 01, "weight_map": {}}',
    b'{"weight_map": {}} x',
    b'{"weight_map": {}',
    b"[1, 2]",
    b'"weight_map"',
    b"",
    b'{"extra": ' + b"[" * 3000 + b"]" * 3000 + b', "weight_map": {}}',
]


def _read(path: Path, *, large: bool, monkeypatch: pytest.MonkeyPatch) -> Any:
    with monkeypatch.context() as patch:
        if large:
            patch.setattr(_jsonfile, "TYPED_ABOVE", 0)
        try:
            return load_json_object(path, fields=FIELDS)
        except SourceError as exc:
            return (exc.problem, str(exc))


@pytest.mark.parametrize("document", DOCUMENTS, ids=range(len(DOCUMENTS)))
def test_the_large_file_reading_agrees_with_the_strict_one(
    tmp_path: Path, document: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "doc.json"
    path.write_bytes(document)
    strict = _read(path, large=False, monkeypatch=monkeypatch)
    assert _read(path, large=True, monkeypatch=monkeypatch) == strict
    if isinstance(strict, dict):
        assert all(value is SKIPPED for key, value in strict.items() if key not in FIELDS)
        full = json.loads(document.decode("utf-8-sig"))
        assert list(strict) == list(full)
        assert all(strict[key] == full[key] for key in FIELDS if key in full)
    else:
        assert strict[1].startswith(f"{path}: ")


def test_skipped_values_are_not_built(tmp_path: Path) -> None:
    path = tmp_path / "doc.json"
    path.write_bytes(b'{"weight_map": {"a": "x"}, "padding": [' + b",".join([b"{}"] * 100_000) + b"]}")
    raw = path.read_bytes()
    members = _json_fields.decode_fields(raw, FIELDS, _jsonfile.STRICT_DECODER, SKIPPED)
    assert members == {"weight_map": {"a": "x"}, "padding": SKIPPED}


def test_a_key_repeated_inside_a_skipped_value_is_only_looked_for_by_the_strict_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The one difference, documented: a large file's skipped values are checked to be JSON, not for keys listed
    twice inside them (finding those needs every object built). Files up to ``TYPED_ABOVE``, and every file where
    msgspec is not installed, are read strictly."""
    path = tmp_path / "doc.json"
    path.write_bytes(b'{"weight_map": {"a": "x"}, "padding": [{"k": 1, "k": 2}]}')
    assert _read(path, large=False, monkeypatch=monkeypatch)[0] == "duplicate-key"
    assert _read(path, large=True, monkeypatch=monkeypatch) == {"weight_map": {"a": "x"}, "padding": SKIPPED}
    monkeypatch.setattr(_json_fields, "HAVE_MSGSPEC", False)
    assert _read(path, large=True, monkeypatch=monkeypatch)[0] == "duplicate-key"
