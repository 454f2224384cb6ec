"""The fast path of the safetensors header reader: msgspec's typed JSON decoder, in C, when it is installed.

It takes headers in the layout the safetensors library writes (``__metadata__`` first if present, no escapes in
the tensor entries, no fields but ``dtype``, ``shape`` and ``data_offsets``) and proves them valid with msgspec
plus a few whole-buffer checks; anything it cannot prove goes to the strict pure-Python path, which also writes
every error message. So it never raises and never accepts what the strict path refuses; the property tests check
that the two agree. Without msgspec (no wheel for the platform) every header takes the strict path.
"""

from __future__ import annotations

import operator
import re
from itertools import repeat
from typing import TYPE_CHECKING, Annotated, Any, Final, cast

from keyguard._dtypes import DTYPE_BITS
from keyguard.sources._keyset import TensorInfo

if TYPE_CHECKING:
    from keyguard.sources._safetensors import Parsed

try:
    import msgspec

    HAVE_MSGSPEC = True
except ImportError:  # pragma: no cover - the tests hide the module to exercise this
    HAVE_MSGSPEC = False

#: The largest value a ``usize`` dimension may take: the safetensors library reads shapes as 64-bit integers.
MAX_DIM: Final = 2**64 - 1
#: The format's dtype names, each mapped to one shared string object (a million tensors share four of them).
_DTYPE_NAMES: Final = {name: name for name in DTYPE_BITS}

# Canonical metadata: '{"__metadata__":{"k":"v",...}' then ',' (tensors follow) or '}' (none), no whitespace. A
# JSON string is '"', then characters other than '"' and '\\' or a backslash and the character it escapes, then
# '"', so this regex finds where the metadata ends exactly; msgspec then checks its strings (escapes, UTF-8,
# control characters, surrogates).
_STRING: Final = rb'"[^"\\]*(?:\\.[^"\\]*)*"'
_PAIR: Final = _STRING + b":" + _STRING
_METADATA: Final = re.compile(rb'\{"__metadata__":(\{(?:' + _PAIR + rb"(?:," + _PAIR + rb")*)?\})([,}])", re.DOTALL)

if HAVE_MSGSPEC:
    _Count = Annotated[int, msgspec.Meta(ge=0)]

    class _Entry(msgspec.Struct, forbid_unknown_fields=True, gc=False):  # gc=False: 16 bytes less per entry
        dtype: str
        shape: tuple[_Count, ...]
        data_offsets: tuple[_Count, _Count]

    _TENSORS: Any = msgspec.json.Decoder(dict[str, _Entry])
    _METADATA_DECODER: Any = msgspec.json.Decoder(dict[str, str])
    _DECODE_ERRORS: tuple[type[Exception], ...] = (msgspec.DecodeError, msgspec.ValidationError)


def parse_fast(header: bytearray, base: int, label: str) -> Parsed | None:
    """Parse a header in the library's own layout; ``None`` means "not provably valid here, use the strict path".

    ``header`` is modified during the call and restored before it returns, except on success, when it is emptied
    (the result does not need it, and a large header freed early lowers the peak memory). Never raises.
    """
    if not HAVE_MSGSPEC:
        return None
    result = _parse(header, base, label)
    if result is not None:
        header.clear()
    return result


def _parse(header: bytearray, base: int, label: str) -> Parsed | None:
    metadata: dict[str, str] = {}
    start = 0
    match = _METADATA.match(header)
    if match is not None:
        try:
            metadata = _METADATA_DECODER.decode(match.group(1))
        except _DECODE_ERRORS:
            return None
        # every pair holds '":"' once (more often only when a value ends with an escaped quote and a colon)
        if match.group(1).count(b'":"') != len(metadata):
            return None  # maybe a key listed twice (msgspec keeps the last): the strict path decides
        start = match.end() - 1
        if match.group(2) == b"}":
            return (metadata, {}, base) if not header[start + 1 :].strip(b" \t\r\n") else None
    # Without escapes no string holds a quote, so every ":" outside strings separates a key from its value; "-0"
    # (which msgspec reads as 0, and the library refuses) can only be written as such.
    if (
        start >= len(header)
        or header.find(b"\\", start) >= 0
        or (header.find(b"-", start) >= 0 and header.find(b"-0", start) >= 0)
    ):
        return None
    if start:  # the tensors' part, from the comma that followed the metadata, read as one object: "{..."
        header[start] = 0x7B
    try:
        entries: dict[str, Any] = _TENSORS.decode(memoryview(header)[start:])
    except _DECODE_ERRORS:
        return None
    finally:
        if start:
            header[start] = 0x2C  # ","
    # Each decoded entry has its three fields and no other, so the tensors' part holds at least 4 colons per
    # entry (its key and three fields); exactly 4 proves that no key and no field was listed twice (msgspec keeps
    # the last silently) and that no string holds a colon.
    if header.count(b":", start) != 4 * len(entries) or "__metadata__" in entries:
        return None
    return _tensors(metadata, entries, base, label, header)


def _tensors(
    metadata: dict[str, str], entries: dict[str, Any], base: int, label: str, header: bytearray
) -> Parsed | None:
    """Check sizes column by column (each distinct shape and dtype once) and build the ``TensorInfo``s.

    Memory matters at a million tensors: equal shapes and dtypes end up as one shared object each, and the header
    buffer is emptied once the sizes are checked, before the ``TensorInfo``s are built.
    """
    if not entries:
        return metadata, {}, base
    values = entries.values()
    named = list(map(_DTYPE_NAMES.get, map(operator.attrgetter("dtype"), values)))
    if None in named:
        return None  # an unknown dtype: the strict path names it
    dtypes = cast("list[str]", named)
    canonical_shapes = {shape: shape for shape in map(operator.attrgetter("shape"), values)}
    shapes = list(map(canonical_shapes.__getitem__, map(operator.attrgetter("shape"), values)))
    distinct_dtypes = set(dtypes)
    if len(distinct_dtypes) == 1:  # the common case: the size depends on the shape alone
        (dtype,) = distinct_dtypes
        by_shape = {shape: nbytes_or_none(dtype, shape) for shape in canonical_shapes}
        if None in by_shape.values():
            return None
        expected = map(by_shape.__getitem__, shapes)
    else:
        by_pair = {pair: nbytes_or_none(pair[1], pair[0]) for pair in set(zip(shapes, dtypes))}
        if None in by_pair.values():
            return None
        expected = map(by_pair.__getitem__, zip(shapes, dtypes))
    offsets = list(map(operator.attrgetter("data_offsets"), values))
    starts, ends = operator.itemgetter(0), operator.itemgetter(1)
    if not all(map(operator.eq, map(operator.sub, map(ends, offsets), map(starts, offsets)), expected)):
        return None  # a size mismatch or an end before its start: the strict path names the first one
    # in order when each tensor starts where the one before ends (the library writes them so)
    in_order = offsets[0][0] == 0 and all(map(operator.eq, map(starts, offsets[1:]), map(ends, offsets)))
    data_end = base + offsets[-1][1]
    header.clear()  # valid: the result no longer needs the header's bytes
    absolute = operator.add
    spans = zip(map(absolute, map(starts, offsets), repeat(base)), map(absolute, map(ends, offsets), repeat(base)))
    infos = map(tuple.__new__, repeat(TensorInfo), zip(shapes, dtypes, repeat(label), spans))
    # the decoded dict becomes the result: replacing values keeps its (hashed, ordered) keys without a rebuild
    entries.update(zip(entries, infos))
    tensors: dict[str, TensorInfo] = entries
    return metadata, tensors, data_end if in_order else None


def nbytes_or_none(dtype: str, shape: tuple[int, ...]) -> int | None:
    """Bytes of a tensor, computed as the safetensors library does, or ``None`` where it refuses the tensor.

    The element count is a running product that must stay within 64 bits at every step (even when a later
    dimension is 0), so must the count in bits, and the bits must fill whole bytes.
    """
    bits = DTYPE_BITS.get(dtype)
    if bits is None:
        return None
    count = 1
    for dim in shape:
        count *= dim
        if count > MAX_DIM or dim > MAX_DIM:
            return None
    total = count * bits
    if total > MAX_DIM or total % 8:
        return None
    return total // 8
