"""A strict ``.safetensors`` header reader that never touches tensor bytes.

The format: 8 bytes little-endian header length ``N``, ``N`` bytes of UTF-8 JSON (an object mapping tensor names to
``{"dtype", "shape", "data_offsets"}`` plus an optional ``"__metadata__"`` string-to-string object), then the data
buffer. Offsets are relative to the buffer; together the tensors must cover it exactly, without holes or overlap.

Headers written by the safetensors library have one canonical layout (no whitespace, fields in a fixed order). Those
are parsed column by column with C-level string operations, which is faster than ``json.loads`` of the same bytes
because it builds no per-tensor dicts. Any other layout goes through ``json.loads`` with a duplicate-key check. Both
paths accept exactly the JSON they describe and feed the same validation. The canonical path never reports an error
itself: anything it cannot prove valid goes to the json path, so every error names the first offending tensor in
document order, whichever layout the header has.
"""

from __future__ import annotations

import gc
import json
import operator
import os
import re
from collections.abc import Iterable
from itertools import repeat
from typing import Final

from keyguard._dtypes import DTYPE_BITS
from keyguard._exceptions import HeaderError, SourceError
from keyguard.sources._jsonfile import STRICT_DECODER, DuplicateKeyError, lone_surrogate
from keyguard.sources._keyset import KeySet, TensorInfo
from keyguard.sources._readfile import open_regular

#: The safetensors library refuses headers above this size; so does keyguard.
MAX_HEADER_SIZE: Final = 100_000_000

_JSON_WS: Final = " \t\n\r"
# Split at its quotes, the entries '"K":{"dtype":"D","shape":[S],"data_offsets":[A,B]},"K":...' give a leading ''
# then ten pieces per entry: K, ':{', 'dtype', ':', D, ',', 'shape', ':[S],', 'data_offsets', ':[A,B]},'.
# Pieces 1, 5, 8 and 10 (counted from 1 within an entry) carry the fields; the others never change.
_FIXED_PIECES: Final = ((2, ":{"), (3, "dtype"), (4, ":"), (6, ","), (7, "shape"), (9, "data_offsets"))
_OFFSETS: Final = slice(2, -3)
_NUMBER: Final = r"(?:0|[1-9][0-9]*)"  # a JSON non-negative integer: ASCII digits, no leading zeros
_SHAPE_PIECE: Final = re.compile(rf":\[((?:{_NUMBER}(?:,{_NUMBER})*)?)\],")
_CONTROL: Final = bytes(range(0x20))  # JSON forbids these unescaped; canonical headers never hold them
#: No file holds more than 2**64 bytes; a shape that needs more is refused before its size is computed in full.
_MAX_TENSOR_BITS: Final = 8 << 64
_METADATA_PREFIX: Final = '{"__metadata__":'


def read_safetensors(path: str | os.PathLike[str], *, name: str | None = None) -> KeySet:
    """Read the keys, shapes, dtypes and byte ranges of a ``.safetensors`` file from its header alone.

    Args:
        path: the file.
        name: how ``TensorInfo.file`` names it (defaults to the file name); sharded readers pass the shard name.

    Raises:
        HeaderError: the header breaks a promise of the format; the message names the file and the problem.
        SourceError: the path is missing, a directory, or unreadable.
    """
    path = os.fspath(path)
    header, data_start, file_size = _read_header_bytes(path)
    text = _decode(path, header)
    label = name if name is not None else os.path.basename(path)
    # Parsing allocates one small acyclic object per tensor; the cyclic GC has nothing to find in them and
    # rescanning them as they pile up costs more than the parse itself.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        canonical = len(header.translate(None, _CONTROL)) == len(header)  # bytes-level: one fast C pass
        parsed = _parse_canonical(path, text, data_start, label) if canonical else None
        if parsed is None:
            parsed = _parse_json(path, text, data_start, label)
    finally:
        if gc_was_enabled:
            gc.enable()
    metadata, tensors, data_end = parsed
    if data_end is None:  # not known to be in order: sort and check coverage
        data_end = _check_coverage(path, tensors, data_start)
    if data_end != file_size:
        _raise_size_mismatch(path, tensors, data_end, file_size)
    return KeySet(tensors=tensors, format="safetensors", location=path, metadata=metadata, files=(label,))


def _read_header_bytes(path: str) -> tuple[bytes, int, int]:
    if "\x00" in path:
        raise SourceError(path.replace("\x00", "\\0"), "invalid-path", "the path contains a NUL byte")
    try:
        with open_regular(path) as f:  # regular files only: a FIFO or a device never ends
            size = os.fstat(f.fileno()).st_size
            prefix = f.read(8)
            if len(prefix) < 8:
                raise HeaderError(
                    path,
                    "truncated",
                    f"file is {size} bytes; a safetensors file starts with an 8-byte header length",
                    size=size,
                )
            n = int.from_bytes(prefix, "little")
            if n > MAX_HEADER_SIZE:
                raise HeaderError(
                    path,
                    "header-too-large",
                    f"header length is {n:,} bytes, above the format's limit of {MAX_HEADER_SIZE:,}"
                    " (not a safetensors file, or a corrupted one)",
                    header_length=n,
                )
            if 8 + n > size:
                raise HeaderError(
                    path,
                    "header-past-end",
                    f"header length says {n:,} bytes but only {size - 8:,} follow it"
                    " (the file is truncated or not a safetensors file)",
                    header_length=n,
                    size=size,
                )
            header = f.read(n)
    except IsADirectoryError:
        raise SourceError(path, "is-a-directory", "is a directory, expected a .safetensors file") from None
    except (FileNotFoundError, NotADirectoryError):
        raise SourceError(path, "not-found", "no such file") from None
    except PermissionError:
        raise SourceError(path, "unreadable", "permission denied") from None
    except OSError as exc:  # I/O error, name too long, symlink loop...
        raise SourceError(path, "unreadable", exc.strerror or str(exc)) from None
    if len(header) != n:  # the file shrank while we read it
        raise HeaderError(path, "truncated", "file ended inside the header")
    return header, 8 + n, size


def _decode(path: str, header: bytes) -> str:
    try:
        text = header.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HeaderError(
            path,
            "header-not-utf8",
            f"header is not valid UTF-8 (byte {exc.start} of the header)",
            position=exc.start,
        ) from None
    text = text.rstrip(_JSON_WS)  # writers pad the header with spaces to align the data
    if not text.lstrip(_JSON_WS).startswith("{"):
        raise HeaderError(path, "header-not-object", "header is not a JSON object")
    return text


Parsed = tuple[dict[str, str], dict[str, TensorInfo], "int | None"]


def _parse_canonical(path: str, text: str, base: int, label: str) -> Parsed | None:
    """Parse a header in the safetensors library's own layout; ``None`` means "not canonical, use json".

    Works on whole columns with C-level string and list operations rather than one dict per tensor. Without
    escapes, every entry ``"K":{"dtype":"D","shape":[S],"data_offsets":[A,B]}`` splits at its quotes into the
    same ten pieces, so checking the fixed pieces column by column proves the layout, and the fields are read off
    their columns. Also checks sizes, and coverage when the offsets come in order (as the library writes them);
    the returned data end is ``None`` when the caller must still check coverage.

    It does not look for control characters (which JSON forbids unescaped): the caller must only pass headers
    free of them, as ``read_safetensors`` checks on the raw bytes. It never raises.
    """
    metadata: dict[str, str] = {}
    pos = 1
    if text.startswith(_METADATA_PREFIX):
        try:
            raw_meta, pos = STRICT_DECODER.raw_decode(text, len(_METADATA_PREFIX))
        except (ValueError, RecursionError, DuplicateKeyError):
            return None
        if not isinstance(raw_meta, dict) or not all(isinstance(v, str) for v in raw_meta.values()):
            return None
        if lone_surrogate(text[:pos], raw_meta) is not None:
            return None  # the json path refuses it
        metadata = raw_meta
        if text[pos : pos + 1] == "}":
            return (metadata, {}, base) if pos + 1 == len(text) else None
        if text[pos : pos + 1] != ",":
            return None
        pos += 1
    elif text == "{}":
        return metadata, {}, base
    elif not text.startswith("{"):
        return None
    body = text[pos:-1]
    if not text.endswith("}") or "\\" in body:
        return None  # escapes: only the json path reads those right
    pieces = body.split('"')
    count = len(pieces) // 10
    if len(pieces) != 10 * count + 1 or pieces[0] or not count:
        return None
    for index, fixed in _FIXED_PIECES:
        if pieces[index::10].count(fixed) != count:
            return None
    keys, dtypes, shape_pieces, offset_pieces = pieces[1::10], pieces[5::10], pieces[8::10], pieces[10::10]
    # A shape piece is ':[S],'; shapes repeat, so each distinct piece is checked and parsed once.
    shape_texts = shape_pieces
    offset_pieces[-1] += ","  # the last entry closes without the comma
    offset_texts: list[str] = list(map(operator.getitem, offset_pieces, repeat(_OFFSETS)))
    if "".join(offset_pieces) != ":[" + "]},:[".join(offset_texts) + "]},":
        return None
    # Every entry holds exactly two JSON integers: one comma each, ASCII digits, none empty, no leading zeros.
    numbers = ",".join(offset_texts)
    if (
        numbers.count(",") != 2 * count - 1
        or list(map(str.count, offset_texts, repeat(","))).count(1) != count
        or not numbers.isascii()
        or not numbers.replace(",", "").isdigit()
    ):
        return None
    bounds = numbers.split(",")
    if "" in bounds or sum(map(str.startswith, bounds, repeat("0"))) != bounds.count("0"):
        return None
    try:  # int() refuses numbers longer than sys.get_int_max_str_digits(); so does the json path
        values = list(map(int, bounds))
        shapes: dict[str, tuple[int, ...]] = {}
        for piece in set(shape_pieces):
            match = _SHAPE_PIECE.fullmatch(piece)
            if match is None:
                return None
            dims = match.group(1)
            shapes[piece] = tuple(map(int, dims.split(","))) if dims else ()
        distinct_dtypes = set(dtypes)
        if len(distinct_dtypes) == 1:  # the common case: size depends on the shape alone
            (dtype,) = distinct_dtypes
            by_shape = {text: _nbytes(path, "", dtype, shape) for text, shape in shapes.items()}
            expected: Iterable[int] = map(by_shape.__getitem__, shape_texts)
        else:
            columns = list(zip(shape_texts, dtypes))
            by_pair = {pair: _nbytes(path, "", pair[1], shapes[pair[0]]) for pair in set(columns)}
            expected = map(by_pair.__getitem__, columns)
    except (ValueError, HeaderError):  # HeaderError: unknown dtype or impossible shape, reported by the json path
        return None
    starts = list(map(base.__add__, values[0::2]))
    ends = list(map(base.__add__, values[1::2]))
    if any(map(operator.ne, map(operator.sub, ends, starts), expected)):
        return None  # a size mismatch: the json path reports the first one in document order
    infos = map(
        tuple.__new__,
        repeat(TensorInfo),
        zip(map(shapes.__getitem__, shape_texts), dtypes, repeat(label), zip(starts, ends)),
    )
    tensors: dict[str, TensorInfo] = dict(zip(keys, infos))
    if len(tensors) != count or "__metadata__" in tensors:
        return None  # the json path names the duplicate, or rejects the misplaced metadata
    in_order = starts[0] == base and starts[1:] == ends[:-1]
    return metadata, tensors, ends[-1] if in_order else None


def _parse_json(path: str, text: str, base: int, label: str) -> Parsed:
    try:
        obj = STRICT_DECODER.decode(text)
    except DuplicateKeyError as exc:
        raise HeaderError(
            path,
            "duplicate-key",
            f"header lists {exc.key!r} more than once (a plain JSON reader would silently keep the last one)",
            key=exc.key,
        ) from None
    except (ValueError, RecursionError) as exc:
        raise HeaderError(path, "header-not-json", f"header is not valid JSON ({exc})") from None
    bad = lone_surrogate(text, obj)  # the safetensors library refuses these; keyguard could not print them
    if bad is not None:
        raise HeaderError(path, "lone-surrogate", f"header holds {bad!r}, with an unpaired UTF-16 surrogate escape")
    if not isinstance(obj, dict):
        raise HeaderError(path, "header-not-object", "header is not a JSON object")
    metadata = obj.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    elif not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise HeaderError(
            path,
            "metadata-not-strings",
            "__metadata__ must map strings to strings"
            + ("" if isinstance(metadata, dict) else f", found {type(metadata).__name__}")
            + _first_non_string(metadata),
        )
    tensors: dict[str, TensorInfo] = {}
    for key, entry in obj.items():
        if not isinstance(entry, dict):
            raise _entry_error(path, key, f"is {type(entry).__name__}, expected an object")
        missing = [f for f in ("dtype", "shape", "data_offsets") if f not in entry]
        if missing:
            raise _entry_error(path, key, "lacks " + ", ".join(missing))
        dtype = entry["dtype"]
        shape = entry["shape"]
        offsets = entry["data_offsets"]
        if not isinstance(dtype, str):
            raise _entry_error(path, key, f"has dtype {dtype!r}, expected a string")
        if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
            raise HeaderError(
                path,
                "invalid-shape",
                f"tensor {key!r} has shape {json.dumps(shape)}; a shape is a list of non-negative integers",
                key=key,
            )
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)):
            raise HeaderError(
                path,
                "invalid-offsets",
                f"tensor {key!r} has data_offsets {json.dumps(offsets)};"
                " expected [start, end] with non-negative integers",
                key=key,
            )
        nbytes = _nbytes(path, key, dtype, tuple(shape))
        if offsets[1] - offsets[0] != nbytes:
            _raise_size(path, key, dtype, tuple(shape), nbytes, offsets[0], offsets[1])
        tensors[key] = TensorInfo(tuple(shape), dtype, label, (base + offsets[0], base + offsets[1]))
    return metadata, tensors, None


def _first_non_string(metadata: object) -> str:
    if isinstance(metadata, dict):
        for key, value in metadata.items():
            if not isinstance(value, str):
                return f" ({key!r} is {type(value).__name__})"
    return ""


def _is_count(value: object) -> bool:
    return type(value) is int and value >= 0


def _entry_error(path: str, key: str, what: str) -> HeaderError:
    return HeaderError(path, "invalid-entry", f"tensor entry {key!r} {what}", key=key)


def _raise_size(path: str, key: str, dtype: str, shape: tuple[int, ...], nbytes: int, start: int, end: int) -> None:
    if end < start:
        raise HeaderError(
            path,
            "invalid-offsets",
            f"tensor {key!r} has data_offsets [{start}, {end}]: the end comes before the start",
            key=key,
        )
    raise HeaderError(
        path,
        "offsets-size-mismatch",
        f"tensor {key!r} ({dtype} {list(shape)}) needs {nbytes:,} bytes"
        f" but its data_offsets [{start}, {end}] span {end - start:,}",
        key=key,
    )


def _check_coverage(path: str, tensors: dict[str, TensorInfo], base: int) -> int:
    """Check that the tensors tile the data buffer without holes or overlap; return the data's end."""
    ordered = sorted(tensors.items(), key=lambda item: item[1].offsets or (0, 0))
    position = base
    owner: str | None = None
    for key, info in ordered:
        start, end = info.offsets or (0, 0)
        if start > position:
            raise HeaderError(
                path,
                "offsets-hole",
                f"data bytes {position - base:,} to {start - base:,} belong to no tensor (before {key!r});"
                " the format requires the tensors to cover the data exactly",
                start=position - base,
                end=start - base,
            )
        if start < position:
            raise HeaderError(
                path,
                "offsets-overlap",
                f"tensors {owner!r} and {key!r} overlap (data bytes {start - base:,} to {position - base:,})",
                keys=[owner, key],
            )
        position = end
        owner = key
    return position


def _nbytes(path: str, key: str, dtype: str, shape: tuple[int, ...]) -> int:
    bits = DTYPE_BITS.get(dtype)
    if bits is None:
        raise HeaderError(
            path,
            "unknown-dtype",
            f"tensor {key!r} has unknown dtype {dtype!r} (known: {', '.join(DTYPE_BITS)})",
            key=key,
            dtype=dtype,
        )
    total_bits = bits
    if 0 in shape:
        total_bits = 0
    else:
        for dim in shape:
            total_bits *= dim
            if total_bits > _MAX_TENSOR_BITS:  # stop before a huge product costs quadratic time
                raise HeaderError(
                    path,
                    "invalid-shape",
                    f"tensor {key!r} ({dtype}, {len(shape)} dimensions) would need more than 2**64 bytes;"
                    " no file can hold it",
                    key=key,
                )
    if total_bits % 8:
        raise HeaderError(
            path,
            "invalid-shape",
            f"tensor {key!r} ({dtype} {list(shape)}) does not fill a whole number of bytes",
            key=key,
        )
    return total_bits // 8


def _raise_size_mismatch(path: str, tensors: dict[str, TensorInfo], data_end: int, file_size: int) -> None:
    if data_end > file_size:
        last = max(tensors.items(), key=lambda item: (item[1].offsets or (0, 0))[1])[0]
        raise HeaderError(
            path,
            "offsets-past-end",
            f"tensor {last!r} ends at byte {data_end:,} of the file, which has only {file_size:,}"
            " (the file is truncated)",
            key=last,
            size=file_size,
        )
    extra = file_size - data_end
    raise HeaderError(
        path,
        "trailing-bytes",
        f"{extra:,} bytes after the last tensor belong to no tensor (the format requires exact coverage)",
        extra=extra,
    )
