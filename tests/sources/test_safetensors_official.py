"""keyguard's safetensors reader against the safetensors library itself: a differential property suite.

For any header, keyguard and the library's own parser (``safetensors.deserialize`` and ``safe_open``, the Rust
``read_metadata`` behind both) accept or refuse together; when both accept, they read the same keys, shapes, dtypes,
bytes and metadata. The one documented difference: keyguard refuses a key listed twice in an object, which the
library resolves by keeping the last (its message says so). Both of keyguard's parsers are checked, the msgspec
fast path and the strict pure-Python path that runs when msgspec is missing.

Headers come from valid tables in the library's layout and in free JSON layouts, then mutated where the two
parsers' grammars differ most: how numbers are written (``-0``, ``2e0``, ``2**64``, beyond a double), lone and
paired surrogate escapes, unknown fields nested around the library's depth limit, duplicated fields and keys,
metadata of every kind, shapes whose running product overflows 64 bits.
"""

from __future__ import annotations

import json
import random
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from _hypothesis_profiles import examples
from _st_files import canonical_header, json_layout_header, layout
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from keyguard._dtypes import DTYPE_BITS
from keyguard._exceptions import HeaderError
from keyguard.sources import _safetensors_fast
from keyguard.sources._keyset import KeySet
from keyguard.sources._safetensors import read_safetensors

safetensors = pytest.importorskip("safetensors")
pytest.importorskip("numpy")  # safe_open(framework="numpy") reads the metadata without torch

pytestmark = pytest.mark.timeout(300)

#: Under the ``ci`` profile (tests/_hypothesis_profiles.py): a fixed seed, no example database, the same examples
#: on every run and in CI; ``make fuzz`` explores further.
SETTINGS = settings(
    max_examples=examples(250),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

DTYPES = sorted(DTYPE_BITS)
U64 = 2**64 - 1

# ---------------------------------------------------------------------------------------------- the two readers


def official(path: Path) -> dict[str, Any] | Exception:
    """What the safetensors library reads: ``{key: (dtype, shape, data)}`` plus ``"__metadata__"``, or its error."""
    from safetensors import safe_open

    try:
        tensors = safetensors.deserialize(path.read_bytes())
        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
    except Exception as exc:  # the library raises SafetensorError, and a few builtins for odd inputs
        return exc
    result: dict[str, Any] = {name: (info["dtype"], list(info["shape"]), bytes(info["data"])) for name, info in tensors}
    result["__metadata__"] = metadata
    return result


@contextmanager
def parser(fast: bool) -> Iterator[None]:
    """Run keyguard with its msgspec fast path, or as it runs where msgspec is not installed."""
    if fast and not _safetensors_fast.HAVE_MSGSPEC:
        pytest.skip("msgspec is not installed")
    saved = _safetensors_fast.HAVE_MSGSPEC
    _safetensors_fast.HAVE_MSGSPEC = fast
    try:
        yield
    finally:
        _safetensors_fast.HAVE_MSGSPEC = saved


def ours(path: Path) -> dict[str, Any] | HeaderError:
    try:
        keyset = read_safetensors(path)
    except HeaderError as exc:
        return exc
    return as_official(keyset, path.read_bytes())


def as_official(keyset: KeySet, raw: bytes) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, info in keyset.items():
        assert info.offsets is not None and info.shape is not None
        start, end = info.offsets
        result[key] = (info.dtype, list(info.shape), raw[start:end])
    result["__metadata__"] = dict(keyset.metadata)
    return result


def has_duplicate_key(text: str) -> bool:
    """True when some object of the JSON text lists a key twice (the documented difference)."""
    found = False

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal found
        found = found or len({key for key, _ in pairs}) != len(pairs)
        return dict(pairs)

    try:
        json.loads(text, object_pairs_hook=hook)
    except (ValueError, RecursionError):
        return False
    return found


def check_agreement(tmp_path: Path, header: str | bytes, data: bytes = b"") -> None:
    raw = header.encode("utf-8", "surrogatepass") if isinstance(header, str) else header
    path = tmp_path / "x.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    theirs = official(path)
    for fast in (True, False):
        with parser(fast):
            mine = ours(path)
        where = "fast path" if fast else "strict path"
        if isinstance(theirs, Exception):
            assert isinstance(mine, HeaderError), f"{where} accepts what safetensors refuses ({theirs}): {raw[:300]!r}"
        elif isinstance(mine, HeaderError):
            documented = mine.problem == "duplicate-key" and has_duplicate_key(raw.decode("utf-8", "surrogatepass"))
            assert documented, f"{where} refuses what safetensors reads ({mine}): {raw[:300]!r}"
            assert "keeps the last" in mine.detail or "keep the last" in mine.detail
        else:
            assert mine == theirs, f"{where} reads {raw[:300]!r} differently"


# ------------------------------------------------------------------------------------------------- strategies

names = st.one_of(
    st.from_regex(r"[a-z][a-z0-9_.]{0,10}", fullmatch=True),
    st.text(st.sampled_from([*"ab.0:-{}[] ", "é", "😀", '"', "\\", "\x7f", "\ud800", "\udc00"]), max_size=5),
).filter(lambda name: name != "__metadata__")


@st.composite
def tables(draw: st.DrawFn) -> tuple[list[tuple[str, str, tuple[int, ...]]], list[tuple[int, int]], int]:
    keys = draw(st.lists(names, unique=True, max_size=5))
    specs = []
    for key in keys:
        dtype = draw(st.sampled_from(DTYPES))
        shape = draw(st.lists(st.integers(0, 5), max_size=3))
        count = 1
        for dim in shape:
            count *= dim
        if count * DTYPE_BITS[dtype] % 8:
            shape.append(8)
        specs.append((key, dtype, tuple(shape)))
    order = draw(st.permutations(range(len(specs))))
    offsets, size = layout(specs, order)
    return specs, offsets, size


metadatas = st.one_of(
    st.none(),
    st.dictionaries(st.text(st.sampled_from([*'ab:"\\{}', "é", "\ud800", "\n"]), max_size=4), st.text(max_size=6)),
)


def render(draw: st.DrawFn, specs: Any, offsets: Any, metadata: Any) -> str:
    try:
        if draw(st.booleans()):
            text = canonical_header(specs, offsets, metadata)
            return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
        rng = random.Random(draw(st.integers(0, 1000)))
        return json_layout_header(
            specs,
            offsets,
            metadata,
            rng=rng,
            indent=rng.choice([None, 0, 2]),
            ensure_ascii=rng.random() < 0.5,
            metadata_position=rng.randint(0, len(specs)),
        )
    except UnicodeEncodeError:  # a lone surrogate with ensure_ascii=False: write it escaped instead
        return json.dumps({"__metadata__": metadata} if metadata is not None else {})


#: Replacements for a number, where serde_json and Python's json differ or the format draws a line.
NUMBER_FORMS = ["-0", "-{v}", "{v}.0", "{v}e0", "0{v}", str(2**64), str(U64), str(2**63), "1e400", "1" * 400, "{v}"]
#: Shapes around the 64-bit limits of the element count, and shapes that are not lists of integers.
SHAPES = [f"[{U64},0]", f"[0,{2**64}]", "[4294967296,4294967296,0]", "[4294967296,4294967295,0]", f"[{2**62}]"]
SHAPES += ["[true]", "[[1]]", "[]", f"[0,{U64},{U64}]"]
#: Things inserted right after a '{' that opens an entry or the metadata.
INSERTS = [
    '"x":' + "[" * 125 + "]" * 125 + ",",
    '"x":' + "[" * 126 + "]" * 126 + ",",
    '"x":{"y":' + "[" * 124 + "]" * 124 + "},",
    '"x":1e308,',
    '"x":2e308,',
    '"x":-0,',
    '"x":"\\ud800",',
    '"x":"\\ud83d\\ude00",',
    '"x":"\\udc00\\ud800",',
    '"x":' + "9" * 310 + ",",
    '"x":' + "9" * 300 + ",",
    '"x":{"a":1,"a":2},',
    '"x":NaN,',
    '"dtype":"F32",',
    '"shape":[1],',
    '"x":null,',
]


@st.composite
def headers(draw: st.DrawFn) -> tuple[str, bytes]:
    specs, offsets, size = draw(tables())
    text = render(draw, specs, offsets, draw(metadatas))
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["number", "insert", "shape", "duplicate", "whitespace", "char"]))
        if kind == "number":
            spots = [i for i, ch in enumerate(text) if ch.isdigit() and not text[i - 1 : i].isdigit()]
            if spots:
                i = draw(st.sampled_from(spots))
                j = i
                while j < len(text) and text[j].isdigit():
                    j += 1
                new = draw(st.sampled_from(NUMBER_FORMS)).format(v=text[i:j])
                text = text[:i] + new + text[j:]
        elif kind == "insert":
            spots = [i + 1 for i, ch in enumerate(text) if ch == "{" and i > 0]
            if spots:
                i = draw(st.sampled_from(spots))
                text = text[:i] + draw(st.sampled_from(INSERTS)) + text[i:]
        elif kind == "shape":  # shapes around the 64-bit limits of the element count
            spots = [i for i in range(len(text)) if text.startswith('"shape":', i) or text.startswith('"shape": ', i)]
            if spots:
                i = text.index("[", draw(st.sampled_from(spots)))
                j = text.index("]", i)
                dims = draw(st.sampled_from(SHAPES))
                text = text[:i] + dims + text[j + 1 :]
        elif kind == "duplicate":  # repeat an entry or a field
            if text.startswith("{") and len(text) > 2:
                i = draw(st.integers(1, len(text) - 1))
                k = text.find('"', i)
                end = text.find(",", k)
                if k >= 0 and end > k:
                    text = text[:k] + text[k:end] + "," + text[k:]
        elif kind == "whitespace":
            i = draw(st.integers(0, len(text)))
            text = text[:i] + draw(st.sampled_from([" ", "\n", "\t", "\r", "\x0c", "\ufeff", "\x00"])) + text[i:]
        else:
            i = draw(st.integers(0, max(0, len(text) - 1)))
            text = text[:i] + draw(st.sampled_from(list('{}[]":,\\-0e.'))) + text[i + 1 :]
    return text, bytes((i * 5 + 1) % 256 for i in range(size))


# ------------------------------------------------------------------------------------------------------ tests


@SETTINGS
@given(case=headers())
def test_agrees_with_the_safetensors_library(tmp_path: Path, case: tuple[str, bytes]) -> None:
    check_agreement(tmp_path, *case)


SOUP = [*"{}[]:, ", '"a"', '"dtype"', '"shape"', '"data_offsets"', '"__metadata__"', '"F32"', '"U8"', '"F4"']
SOUP += ["0", "4", "-0", "8", "1.0", "1e400", str(2**64), "null", "true", '"\\ud800"', '"x"']


@SETTINGS
@given(
    tokens=st.lists(
        st.sampled_from(SOUP),
        max_size=40,
    ),
    data=st.sampled_from([b"", bytes(4), bytes(8)]),
)
@example(tokens=["{", '"a"', ":", "{", '"dtype"', ":", '"F32"', "}", "}"], data=b"")
def test_token_soup_agrees_with_the_safetensors_library(tmp_path: Path, tokens: list[str], data: bytes) -> None:
    check_agreement(tmp_path, "".join(tokens), data)


ENTRY = '"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}'


@pytest.mark.parametrize(
    ("header", "data"),
    [
        ("{" + ENTRY + "}", bytes(4)),
        (" \n{" + ENTRY + "}  ", bytes(4)),
        ("{" + ENTRY.replace("[1]", "[-0]").replace("[0,4]", "[0,0]") + "}", b""),
        ("{" + ENTRY.replace("[0,4]", "[-0,4]") + "}", bytes(4)),
        ("{" + ENTRY.replace("[1]", f"[0,{2**64}]").replace("[0,4]", "[0,0]") + "}", b""),
        ("{" + ENTRY.replace("[1]", f"[0,{U64}]").replace("[0,4]", "[0,0]") + "}", b""),
        ("{" + ENTRY.replace("[1]", "[4294967296,4294967296,0]").replace("[0,4]", "[0,0]") + "}", b""),
        ("{" + ENTRY.replace("[1]", f"[{2**62}]").replace("[0,4]", "[0,0]") + "}", b""),
        ('{"\\ud800":' + ENTRY[4:] + "}", bytes(4)),
        ('{"\\ud83d\\ude00":' + ENTRY[4:] + "}", bytes(4)),
        ('{"__metadata__":{"k":"\\udc00"},' + ENTRY + "}", bytes(4)),
        ('{"__metadata__":{"k":"a\\":","k2":"v"},' + ENTRY + "}", bytes(4)),
        ('{"__metadata__":{"k":"a"},"__metadata__":{},' + ENTRY + "}", bytes(4)),
        ('{"__metadata__":{"k":"a","k":"b"},' + ENTRY + "}", bytes(4)),
        ('{"__metadata__":null,' + ENTRY + "}", bytes(4)),
        ("{" + ENTRY + "," + ENTRY + "}", bytes(4)),
        ('{"a":{"dtype":"F32","dtype":"F32","shape":[1],"data_offsets":[0,4]}}', bytes(4)),
        ('{"a":{"dtyp\\u0065":"F32","shape":[1],"data_offsets":[0,4]}}', bytes(4)),
        *(
            ('{"a":{"dtype":"F32","x":' + "[" * depth + "]" * depth + ',"shape":[1],"data_offsets":[0,4]}}', bytes(4))
            for depth in (124, 125, 126, 127)
        ),
        *(
            ('{"a":{"dtype":"F32","x":' + number + ',"shape":[1],"data_offsets":[0,4]}}', bytes(4))
            for number in ("1e308", "1.7976931348623157e308", "2e308", "-1e400", "1e-400", "9" * 308, "9" * 309)
        ),
        ('{"a":{"dtype":"F32","x":-0,"shape":[1],"data_offsets":[0,4]}}', bytes(4)),
        ('{"a":' + ENTRY[4:].replace('"F32"', '"F4"').replace("[1]", "[3]").replace("[0,4]", "[0,2]") + "}", bytes(2)),
        ('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}\x00', bytes(4)),
        ("\ufeff{" + ENTRY + "}", bytes(4)),
        ("{}", b""),
        ('{"__metadata__":{}}', b""),
        ("", b""),
    ],
)
def test_handpicked_headers_agree_with_the_safetensors_library(tmp_path: Path, header: str, data: bytes) -> None:
    check_agreement(tmp_path, header, data)


def test_duplicate_keys_are_refused_and_the_message_says_why(tmp_path: Path) -> None:
    path = tmp_path / "dup.safetensors"
    raw = ("{" + ENTRY + "," + ENTRY + "}").encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(4))
    assert not isinstance(official(path), Exception)  # the library keeps the last silently
    with pytest.raises(HeaderError) as info:
        read_safetensors(path)
    assert info.value.problem == "duplicate-key"
    assert "safetensors library would silently keep the last one" in info.value.detail


def test_fix_refuses_what_the_library_refuses_and_writes_nothing(tmp_path: Path, cli: Any) -> None:
    """A zero-size tensor with a 2**64 dimension: keyguard once wrote it out and called it verified."""
    header = '{"module.a":{"dtype":"F32","shape":[0,18446744073709551616],"data_offsets":[0,0]}}'
    source = tmp_path / "in.safetensors"
    source.write_bytes(struct.pack("<Q", len(header)) + header.encode())
    assert isinstance(official(source), Exception)
    expected = tmp_path / "expected.safetensors"
    expected_header = '{"a":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}'
    expected.write_bytes(struct.pack("<Q", len(expected_header)) + expected_header.encode())
    out = tmp_path / "out.safetensors"
    result = cli("fix", source, "-e", expected, "-o", out)
    assert result.code == 2, result
    assert "in.safetensors" in result.err and "invalid-shape" not in result.out
    assert not out.exists()
