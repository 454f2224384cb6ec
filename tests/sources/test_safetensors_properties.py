"""Property-based tests of the safetensors header reader.

- whatever the bytes, ``read_safetensors`` returns a ``KeySet`` or raises ``SourceError``, nothing else;
- a random valid table reads back exactly, in the library's canonical layout and in a free JSON layout alike;
- a mutated header either still describes data it covers exactly, or is refused;
- the fast (msgspec) parser agrees with the strict parser whenever it accepts, never accepts what the strict parser
  refuses, never raises, and leaves the header bytes as it found them.
"""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path
from typing import Any

import pytest
from _hypothesis_profiles import examples
from _st_files import canonical_header, expected_infos, fast_parse, json_layout_header, layout, nbytes, write_raw
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from keyguard._dtypes import DTYPE_BITS
from keyguard._exceptions import SourceError
from keyguard.sources import _safetensors, _safetensors_fast
from keyguard.sources._keyset import KeySet, TensorInfo
from keyguard.sources._safetensors import read_safetensors

pytestmark = pytest.mark.timeout(120)

SETTINGS = settings(
    deadline=None,
    max_examples=examples(150),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# ---------------------------------------------------------------------------------------------- strategies

#: Names: mostly what checkpoints use, sometimes characters JSON must escape or that the fast path declines.
NAME_CHARS = st.sampled_from([*"abcxyz019._-/ ", "é", "ß", "漢", "😀", '"', "\\", "\x00", "\x1f", "\x7f", "\u2028"])
names = st.one_of(
    st.from_regex(r"[a-z][a-z0-9_.]{0,12}", fullmatch=True),
    st.text(NAME_CHARS, max_size=8),
    st.text(max_size=6),
).filter(lambda name: name != "__metadata__")

DTYPES = sorted(DTYPE_BITS)


@st.composite
def specs(draw: st.DrawFn, max_tensors: int = 8) -> list[tuple[str, str, tuple[int, ...]]]:
    keys = draw(st.lists(names, unique=True, max_size=max_tensors))
    table = []
    for key in keys:
        dtype = draw(st.sampled_from(DTYPES))
        shape = draw(st.lists(st.integers(0, 6), max_size=3))
        numel = 1
        for dim in shape:
            numel *= dim
        if numel * DTYPE_BITS[dtype] % 8:  # sub-byte dtypes: make the shape fill whole bytes
            shape.append(8)
        table.append((key, dtype, tuple(shape)))
    return table


metadatas = st.one_of(st.none(), st.dictionaries(st.text(max_size=5), st.text(max_size=8), max_size=3))


@st.composite
def tables(draw: st.DrawFn) -> dict[str, Any]:
    table = draw(specs())
    order = draw(st.permutations(range(len(table))))
    offsets, size = layout(table, order)
    return {
        "specs": table,
        "offsets": offsets,
        "size": size,
        "metadata": draw(metadatas),
        "pad": draw(st.integers(0, 9)),
        "seed": draw(st.integers(0, 2**16)),
    }


def fast_path_expected(table: list[tuple[str, str, tuple[int, ...]]]) -> bool:
    """The canonical layout of this table has no escapes, control characters, colons or "-0" in its keys: the
    fast path must take it (when msgspec is installed)."""
    return _safetensors_fast.HAVE_MSGSPEC and all(
        min(name, default=" ") >= " " and not any(c in name for c in '"\\:') and "-0" not in name
        for name, _, _ in table
    )


def render(case: dict[str, Any], canonical: bool) -> str:
    if canonical:
        return canonical_header(case["specs"], case["offsets"], case["metadata"])
    rng = random.Random(case["seed"])
    return json_layout_header(
        case["specs"],
        case["offsets"],
        case["metadata"],
        rng=rng,
        indent=rng.choice([None, 0, 1, 2, 4]),
        ensure_ascii=rng.random() < 0.5,
        metadata_position=rng.randint(0, len(case["specs"])),
    )


def data_for(size: int) -> bytes:
    return bytes((i * 7 + 3) % 256 for i in range(size))


def read_outcome(path: Path) -> KeySet | SourceError:
    try:
        return read_safetensors(path)
    except SourceError as exc:
        assert exc.path == str(path)
        assert str(exc).startswith(f"{path}: ")
        assert exc.problem and exc.problem == exc.problem.lower() and " " not in exc.problem
        return exc


def assert_tiles_exactly(keyset: KeySet, path: Path) -> None:
    """A KeySet the reader returned describes data covering the file's buffer exactly, sizes matching dtypes."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    position = 8 + n
    for info in sorted(keyset.values(), key=lambda i: i.offsets or (0, 0)):
        assert info.offsets is not None and info.shape is not None and info.dtype is not None
        start, end = info.offsets
        assert start == position
        assert end - start == nbytes(info.dtype, info.shape)
        assert all(type(d) is int and d >= 0 for d in info.shape)
        position = end
    assert position == len(raw)


# ------------------------------------------------------------------------------------------ (a) any bytes


@SETTINGS
@given(content=st.binary(max_size=300))
@example(content=b"")
@example(content=b"\x02\x00\x00\x00\x00\x00\x00\x00{}")
def test_random_bytes(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "random.safetensors"
    path.write_bytes(content)
    read_outcome(path)
    assert path.read_bytes() == content


@SETTINGS
@given(header=st.binary(max_size=200), data=st.binary(max_size=40), short_by=st.integers(0, 3))
def test_random_header_after_valid_length(tmp_path: Path, header: bytes, data: bytes, short_by: int) -> None:
    path = write_raw(tmp_path / "random.safetensors", header, data, header_len=max(0, len(header) - short_by))
    outcome = read_outcome(path)
    if isinstance(outcome, KeySet):
        assert_tiles_exactly(outcome, path)


TOKENS = st.sampled_from(
    [
        *("{", "}", "[", "]", ":", ",", " ", "\n", '"a"', '"b"', '"dtype"', '"shape"', '"data_offsets"'),
        *('"__metadata__"', '"F32"', '"U8"', '"F4"', '"BOOL"', '"x"', "0", "1", "2", "4", "8", "08", "-1", "1.0"),
        *("1e1", "true", "null", '"\\u00e9"', '"\\"', "\\", '"\x01"', "NaN", "9" * 30),
    ]
)


@SETTINGS
@given(tokens=st.lists(TOKENS, max_size=60), data=st.binary(max_size=24))
def test_token_soup(tmp_path: Path, tokens: list[str], data: bytes) -> None:
    """JSON-ish token sequences reach much deeper into both parsers than random bytes."""
    text = "".join(tokens)
    path = write_raw(tmp_path / "soup.safetensors", text, data)
    outcome = read_outcome(path)
    if isinstance(outcome, KeySet):
        assert_tiles_exactly(outcome, path)
    compare_parsers(text)


# ---------------------------------------------------------------------------------- (b) valid tables


@SETTINGS
@given(case=tables())
def test_valid_tables_read_back_in_both_layouts(tmp_path: Path, case: dict[str, Any]) -> None:
    data = data_for(case["size"])
    results = []
    for canonical in (True, False):
        header = render(case, canonical).encode() + b" " * case["pad"]
        path = write_raw(tmp_path / f"{canonical}.safetensors", header, data)
        keyset = read_safetensors(path, name="shard")
        assert dict(keyset) == expected_infos(case["specs"], case["offsets"], 8 + len(header), "shard")
        assert list(keyset) == [name for name, _, _ in case["specs"]]
        assert dict(keyset.metadata) == (case["metadata"] or {})
        assert keyset.format == "safetensors"
        assert keyset.files == ("shard",)
        assert_tiles_exactly(keyset, path)
        results.append((keyset, 8 + len(header)))
    (a, base_a), (b, base_b) = results
    assert {k: v._replace(offsets=None) for k, v in a.items()} == {k: v._replace(offsets=None) for k, v in b.items()}
    assert {k: (s - base_a, e - base_a) for k, (s, e) in offsets_of(a).items()} == {
        k: (s - base_b, e - base_b) for k, (s, e) in offsets_of(b).items()
    }
    if fast_path_expected(case["specs"]):
        assert fast_parse(render(case, True), 8) is not None


def offsets_of(keyset: KeySet) -> dict[str, tuple[int, int]]:
    return {key: info.offsets for key, info in keyset.items() if info.offsets is not None}


# ------------------------------------------------------------------------------------------ (c) mutations

ASCII_DIGITS = "0123456789"  # str.isdigit() also accepts '²' and other digits JSON does not
MUTANT_CHARS = [*'{}[]":, \t\n\\0123456789-+.eE_aAé\x00\x01', "08", "00", "-0", "1.5", "true", "null"]


@st.composite
def mutated_headers(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    case = draw(tables())
    text = render(case, draw(st.booleans()))
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "digit", "number", "swap"]))
        if not text:
            break
        at = draw(st.integers(0, len(text) - 1))
        if kind == "flip":
            text = text[:at] + draw(st.sampled_from(MUTANT_CHARS)) + text[at + 1 :]
        elif kind == "insert":
            text = text[:at] + draw(st.sampled_from(MUTANT_CHARS)) + text[at:]
        elif kind == "delete":
            text = text[:at] + text[at + 1 :]
        elif kind == "digit":
            digits = [i for i, ch in enumerate(text) if ch in ASCII_DIGITS]
            if digits:
                i = draw(st.sampled_from(digits))
                text = text[:i] + draw(st.sampled_from("0123456789")) + text[i + 1 :]
        elif kind == "number":  # rewrite one number in a form JSON or the format refuses, or a nearby value
            numbers = [i for i, ch in enumerate(text) if ch in ASCII_DIGITS and text[i - 1 : i] not in ASCII_DIGITS]
            if numbers:
                i = draw(st.sampled_from(numbers))
                j = i
                while j < len(text) and text[j] in ASCII_DIGITS:
                    j += 1
                value = int(text[i:j])
                new = draw(st.sampled_from([f"0{value}", f"-{value}", f"{value}.0", f"{value + 1}", "", f"{value}e0"]))
                text = text[:i] + new + text[j:]
        else:  # swap two characters
            other = draw(st.integers(0, len(text) - 1))
            chars = list(text)
            chars[at], chars[other] = chars[other], chars[at]
            text = "".join(chars)
    return case, text


@SETTINGS
@given(mutant=mutated_headers(), fix_length=st.booleans())
def test_mutated_headers(tmp_path: Path, mutant: tuple[dict[str, Any], str], fix_length: bool) -> None:
    case, text = mutant
    header = text.encode("utf-8", "surrogatepass")
    data = data_for(case["size"])
    length = len(header) if fix_length else len(render(case, True).encode())
    path = write_raw(tmp_path / "mutant.safetensors", header, data, header_len=length)
    before = path.read_bytes()
    outcome = read_outcome(path)
    if isinstance(outcome, KeySet):
        assert_tiles_exactly(outcome, path)
    assert path.read_bytes() == before
    compare_parsers(text)


# ------------------------------------------------------------------------ (d) the two parsers agree


def compare_parsers(text: str) -> None:
    """The fast parser never raises; when it accepts, the json parser gives the same tables."""
    base = 8 + len(text.encode("utf-8", "surrogatepass"))
    canonical = fast_parse(text, base)  # must not raise, whatever the text
    try:
        via_json = _safetensors._parse_json("f", text, base, "f")
    except SourceError as exc:
        assert canonical is None, f"fast path accepted what the json path refuses ({exc.problem})"
        return
    if canonical is None:
        return
    metadata, tensors, data_end = canonical
    assert (metadata, tensors) == via_json[:2]
    assert list(tensors) == list(via_json[1])
    assert type(metadata) is dict and all(type(v) is str for v in metadata.values())
    for info in tensors.values():
        assert type(info) is TensorInfo
        assert all(type(d) is int for d in info.shape or ())
        assert all(type(o) is int for o in info.offsets or ())
    if data_end is not None:  # the fast path says the tensors are in order: they must tile from base to data_end
        assert data_end == _safetensors._check_coverage("f", tensors, base)


@SETTINGS
@given(case=tables())
def test_parsers_agree_on_valid_headers(case: dict[str, Any]) -> None:
    for canonical in (True, False):
        text = render(case, canonical)
        compare_parsers(text)
        if canonical and fast_path_expected(case["specs"]):
            assert fast_parse(text, 0) is not None


@settings(deadline=None, max_examples=examples(400))
@given(mutant=mutated_headers())
def test_parsers_agree_on_mutated_headers(mutant: tuple[dict[str, Any], str]) -> None:
    compare_parsers(mutant[1])


def test_parsers_agree_on_handpicked_texts() -> None:
    entry = '"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}'
    texts = [
        "{}",
        "{" + entry + "}",
        '{"__metadata__":{},' + entry + "}",
        '{"__metadata__":{}}',
        '{"__metadata__":null,' + entry + "}",
        '{"__metadata__":{"a":"b"} ,' + entry + "}",
        "{" + entry + "," + entry + "}",
        "{" + entry.replace("[0,8]", "[0,08]") + "}",
        "{" + entry.replace("[0,8]", "[,8]") + "}",
        "{" + entry.replace("[0,8]", "[0,8,]") + "}",
        "{" + entry.replace("[0,8]", '[0,8"]') + "}",
        "{" + entry.replace("[2]", "[2,]") + "}",
        "{" + entry.replace("[2]", "[-0]") + "}",
        "{" + entry.replace('"a"', '"__metadata__"') + "}",
        "{" + entry + "," + entry.replace('"a"', '"__metadata__"') + "}",
        "x" + entry + "}",
        "{" + entry + "}}",
        "{" + entry + ",}",
        "{," + entry + "}",
        "{" + entry.replace('"F32"', '"F32\x00"') + "}",
        "{" + entry.replace('"a"', '"a\u00a0"') + "}",
        "{" + entry.replace('"a"', '"a\x7f"') + "}",
        "{" + entry.replace("[0,8]", "[0," + "8" * 5000 + "]") + "}",
        '{"__metadata__":' + "[" * 50_000 + "]" * 50_000 + "}",
        json.dumps({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, separators=(",", ":")),
    ]
    for text in texts:
        compare_parsers(text)
