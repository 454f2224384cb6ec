"""A strict ``.safetensors`` header reader that never touches tensor bytes.

The format: 8 bytes little-endian header length ``N``, ``N`` bytes of UTF-8 JSON (an object mapping tensor names to
``{"dtype", "shape", "data_offsets"}`` plus an optional ``"__metadata__"`` string-to-string object), then the data
buffer. Offsets are relative to the buffer; together the tensors must cover it exactly, without holes or overlap.

keyguard accepts exactly what the safetensors library (its Rust parser, serde_json) accepts, with one documented
exception: a key listed twice is refused (the library keeps the last silently). That means: shapes and offsets are
integers from 0 to 2**64 - 1 written as such (``-0``, ``2.0`` and ``2e0`` are not), the element count of a shape
must fit in 64 bits at every step of its running product, unknown fields in an entry are ignored but must be JSON
the library reads (nested at most 127 deep in all, numbers within the range of a double, no lone surrogate
escapes), and the library's dtypes only. A property suite checks the agreement against the library itself.

Two parsers share that contract. Headers in the layout the library writes go through msgspec's typed decoder
(``_safetensors_fast``, when msgspec is installed and the header is large enough to repay importing it:
``FAST_FROM``), which is as fast as ``json.loads`` of the same bytes; any other header, and any header the fast path
cannot prove valid, goes through the strict pure-Python path below, which writes every error message. So every
error names the first offending tensor in document order, whichever layout the header has and whichever parser is
installed.
"""

from __future__ import annotations

import io
import json
import os
from typing import Final, cast

from keyguard._dtypes import DTYPE_BITS, MAX_DIM, nbytes_or_none
from keyguard._exceptions import HeaderError, SourceError
from keyguard._gc import cyclic_gc_paused
from keyguard.sources._jsonfile import DuplicateKeyError, _no_constants, lone_surrogate, pairs_without_duplicates
from keyguard.sources._keyset import KeySet, TensorInfo
from keyguard.sources._readfile import open_regular
from keyguard.sources._serde_numbers import SAFE_MAGNITUDE, out_of_range

#: The safetensors library refuses headers above this size; so does keyguard.
MAX_HEADER_SIZE: Final = 100_000_000
#: Headers of at least this many bytes (about 4,500 tensors) take the msgspec path. Below it the strict path is at
#: most about 13 ms slower, less than importing msgspec costs a small ``keyguard diagnose`` (about 20 ms of CPU).
FAST_FROM: int = 512 * 1024

_JSON_WS: Final = " \t\n\r"
#: serde_json refuses JSON nested deeper than this (the header object itself counts as 1).
MAX_DEPTH: Final = 127


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
    label = name if name is not None else os.path.basename(path)
    # Parsing allocates one small acyclic object per tensor; the cyclic GC has nothing to find in them and
    # rescanning them as they pile up costs more than the parse itself.
    with cyclic_gc_paused():
        parsed, header, data_start, file_size = _read_header(path, label)
        if parsed is None:
            parsed = _parse_json(path, _decode(path, header), data_start, label)
    metadata, tensors, data_end = parsed
    if data_end is None:  # not known to be in order: sort and check coverage
        data_end = _check_coverage(path, tensors, data_start)
    if data_end != file_size:
        _raise_size_mismatch(path, tensors, data_end, file_size)
    return KeySet(tensors=tensors, format="safetensors", location=path, metadata=metadata, files=(label,))


def _read_header_bytes(path: str) -> tuple[bytearray, int, int]:
    """The header's bytes, where the data starts, and the file's size."""
    _, header, data_start, size = _read_header(path, None)
    return header, data_start, size


def _read_header(path: str, label: str | None) -> tuple[Parsed | None, bytearray, int, int]:
    """With a ``label``: the header parsed by the fast path as it is read, a piece at a time (``parse_stream``), or
    ``None`` and the header's bytes for the strict path; without: the header's bytes. Then where the data starts
    and the file's size."""
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
            reader = cast("io.BufferedReader", f)  # open_regular's files are buffered readers

            def read(count: int) -> bytearray:
                piece = bytearray(count)
                if reader.readinto(piece) != count:  # the file shrank while we read it
                    raise HeaderError(path, "truncated", "file ended inside the header")
                return piece

            parsed = None
            if label is not None and n >= FAST_FROM:
                from keyguard.sources._safetensors_fast import parse_stream

                parsed = parse_stream(read, n, 8 + n, label)
            header = bytearray()
            if parsed is None:
                reader.seek(8)
                header = read(n)
    except IsADirectoryError:
        raise SourceError(path, "is-a-directory", "is a directory, expected a .safetensors file") from None
    except (FileNotFoundError, NotADirectoryError):
        raise SourceError(path, "not-found", "no such file") from None
    except PermissionError:
        raise SourceError(path, "unreadable", "permission denied") from None
    except OSError as exc:  # I/O error, name too long, symlink loop...
        raise SourceError(path, "unreadable", exc.strerror or str(exc)) from None
    return parsed, header, 8 + n, size


def _decode(path: str, header: bytes | bytearray) -> str:
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


def _parse_json(path: str, text: str, base: int, label: str) -> Parsed:
    """The strict path: any JSON layout, every check, an error naming the first offending tensor."""
    try:
        # Python reads "-0" as the integer 0: only headers that hold one pay for a Python call per integer
        obj = (_NEGATIVE_ZERO_DECODER if "-0" in text else _HEADER_DECODER).decode(text)
    except DuplicateKeyError as exc:
        raise HeaderError(
            path,
            "duplicate-key",
            f"header lists {exc.key!r} more than once (the safetensors library would silently keep the last one;"
            " keyguard refuses the ambiguity)",
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
        if len(entry) > 3:
            _check_unknown_fields(path, key, entry)
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
    return type(value) is int and 0 <= value <= MAX_DIM


def _header_int(text: str) -> int | float:
    """``parse_int`` reading integers as serde_json does: ``-0`` and integers beyond 64 bits become doubles."""
    if text == "-0":
        return -0.0
    if len(text) < 20:
        return int(text)
    if out_of_range(text):  # checked before int() spends time on thousands of digits
        raise ValueError(f"number out of range ({_shorten(text)})")
    value = int(text)
    return value if -(2**63) <= value <= MAX_DIM else float(value)


def _header_float(text: str) -> float:
    value = float(text)
    if not -SAFE_MAGNITUDE < value < SAFE_MAGNITUDE and out_of_range(text):
        raise ValueError(f"number out of range ({_shorten(text)})")
    return value


def _shorten(text: str) -> str:
    return text if len(text) <= 40 else f"{text[:20]}... with {len(text):,} characters"


_HEADER_DECODER: Final = json.JSONDecoder(
    object_pairs_hook=pairs_without_duplicates, parse_constant=_no_constants, parse_float=_header_float
)
_NEGATIVE_ZERO_DECODER: Final = json.JSONDecoder(
    object_pairs_hook=pairs_without_duplicates,
    parse_constant=_no_constants,
    parse_float=_header_float,
    parse_int=_header_int,
)
_FIELDS: Final = frozenset(("dtype", "shape", "data_offsets"))


def _check_unknown_fields(path: str, key: str, entry: dict[str, object]) -> None:
    """Fields the library ignores must still be JSON it reads: nested at most ``MAX_DEPTH`` deep in all (the
    entry is level 2), integers within the range serde_json reads (Python reads any integer exactly)."""
    stack = [(value, 3) for field, value in entry.items() if field not in _FIELDS]
    while stack:
        item, level = stack.pop()
        if isinstance(item, int) and not -MAX_DIM <= item <= MAX_DIM and out_of_range(str(item)):
            problem = f"a number out of range ({_shorten(str(item))})"
        elif isinstance(item, (dict, list)) and level > MAX_DEPTH:
            problem = f"a field nested more than {MAX_DEPTH} levels deep in all"
        else:
            if isinstance(item, (dict, list)):
                stack.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
            continue
        raise HeaderError(
            path,
            "header-not-json",
            f"header is not valid JSON (tensor {key!r} has {problem}, which the safetensors library refuses)",
            key=key,
        )


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
    """Bytes of a tensor, refused where the safetensors library refuses it (see ``nbytes_or_none``)."""
    size = nbytes_or_none(dtype, shape)
    if size is not None:
        return size
    if dtype not in DTYPE_BITS:
        raise HeaderError(
            path,
            "unknown-dtype",
            f"tensor {key!r} has unknown dtype {dtype!r} (known: {', '.join(DTYPE_BITS)})",
            key=key,
            dtype=dtype,
        )
    count = 1
    for dim in shape:
        count *= dim
        if count > MAX_DIM:
            raise HeaderError(
                path,
                "invalid-shape",
                f"tensor {key!r} ({dtype}, {len(shape)} dimensions) has more than 2**64 elements counting its"
                " dimensions from the first (the safetensors library refuses it, even when a later one is 0)",
                key=key,
            )
    if count * DTYPE_BITS[dtype] > MAX_DIM:
        raise HeaderError(
            path,
            "invalid-shape",
            f"tensor {key!r} ({dtype} {list(shape)}) would need more than 2**64 bits; no file can hold it",
            key=key,
        )
    raise HeaderError(
        path,
        "invalid-shape",
        f"tensor {key!r} ({dtype} {list(shape)}) does not fill a whole number of bytes",
        key=key,
    )


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
