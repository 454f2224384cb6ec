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
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal, Protocol

from keyguard._dtypes import DTYPE_BITS, nbytes_or_none
from keyguard.sources._keyset import TensorInfo

if TYPE_CHECKING:
    from keyguard.sources._safetensors import Parsed

try:
    import msgspec

    HAVE_MSGSPEC = True
except ImportError:  # pragma: no cover - the tests hide the module to exercise this
    HAVE_MSGSPEC = False

#: The format's dtype names (msgspec validates them and hands each as this one object: a million tensors share four)
_DTYPE_NAMES: Final = tuple(DTYPE_BITS)

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
        dtype: Literal[_DTYPE_NAMES]  # type: ignore[valid-type]  # a name the format does not know: strict path
        shape: tuple[_Count, ...]
        data_offsets: tuple[_Count, _Count]

    _TENSORS: Any = msgspec.json.Decoder(dict[str, _Entry])
    _METADATA_DECODER: Any = msgspec.json.Decoder(dict[str, str])
    _DECODE_ERRORS: tuple[type[Exception], ...] = (msgspec.DecodeError, msgspec.ValidationError)


#: A header is parsed this many bytes at a time, each piece ending where an entry ends: a large header is never
#: held whole, so reading a million tensors needs the result plus one piece's worth, not the header as well.
PIECE: int = 256 * 1024
#: Where one entry of the library's layout ends and the next key starts (outside strings: see ``_pieces``).
_ENTRY_END: Final = b']},"'
_WHITESPACE: Final = b" \t\r\n"
_OPENING: Final = b'{"__metadata__":'
_REFUSED: Final = -1  # from _tensors: not provably valid (positions are never negative)


class _Reader(Protocol):
    def __call__(self, size: int, /) -> bytearray: ...


def parse_fast(header: bytearray, base: int, label: str) -> Parsed | None:
    """Parse a header held in memory (see ``parse_stream``); on success ``header`` is emptied (the result does not
    need it), otherwise it is left as it was. Never raises."""
    view = memoryview(header)
    position = 0

    def read(size: int) -> bytearray:
        nonlocal position
        piece = bytearray(view[position : position + size])
        position += len(piece)
        return piece

    try:
        result = parse_stream(read, len(header), base, label)
    finally:
        view.release()
    if result is not None:
        header.clear()
    return result


def parse_stream(read: _Reader, size: int, base: int, label: str) -> Parsed | None:
    """Parse a header in the library's own layout, ``size`` bytes that ``read(n)`` hands over in order (exactly
    ``n`` bytes per call, or it raises), a piece at a time; ``None`` means "not provably valid here, use the strict
    path" (which reads the header again). Raises only what ``read`` raises."""
    if not HAVE_MSGSPEC:
        return None
    return _parse(read, size, base, label)


def _parse(read: _Reader, size: int, base: int, label: str) -> Parsed | None:
    buffer = read(min(size, PIECE))
    left = size - len(buffer)
    metadata: dict[str, str] = {}
    start = 0
    match = _METADATA.match(buffer)
    while match is None and left and _OPENING.startswith(buffer[: len(_OPENING)]):  # large metadata: read on
        more = read(min(left, max(PIECE, len(buffer))))  # doubling: the regex runs a few times, not per piece
        buffer += more
        left -= len(more)
        match = _METADATA.match(buffer)  # the regex has one way to match, so a prefix's match is the whole's
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
            rest = buffer[start + 1 :] + (read(left) if left else b"")
            return (metadata, {}, base) if not rest.strip(_WHITESPACE) else None
    tensors: dict[str, TensorInfo] | None = None
    shapes: dict[tuple[int, ...], tuple[int, ...]] = {}
    position: int | None = 0  # where the next tensor starts when all so far are in order, else None
    scan = start  # where the search for an entry's end resumes (the bytes before it hold none)
    while True:
        if left:
            cut = buffer.rfind(_ENTRY_END, scan)
            if cut < 0:  # not one whole entry yet (a huge one): read on, searching only what comes in
                scan = max(start, len(buffer) - len(_ENTRY_END) + 1)
                more = read(min(left, PIECE))
                buffer += more
                left -= len(more)
                continue
            stop = cut + 2  # the comma after the entry, read as the closing brace of this piece
        else:
            stop = len(buffer)
        entries = _decode_piece(buffer, start, stop, opened=tensors is not None or match is not None)
        if entries is None:
            return None
        count = len(tensors) if tensors is not None else 0
        position = _tensors(entries, base, label, shapes, position, entries if tensors is None else tensors)
        if position == _REFUSED:
            return None
        if tensors is None:
            tensors = entries
        elif len(tensors) != count + len(entries):
            return None  # a key in two pieces: the strict path names it
        if not left:
            break
        del buffer[:stop]  # the comma that starts the next piece
        start = scan = 0
        more = read(min(left, PIECE))
        buffer += more
        left -= len(more)
    buffer.clear()
    data_end = None if position is None else base + position
    return metadata, tensors if tensors is not None else {}, data_end


def _decode_piece(buffer: bytearray, start: int, stop: int, *, opened: bool) -> dict[str, Any] | None:
    """Decode ``buffer[start:stop]`` (the header's start, or with ``opened`` the comma after the metadata or an
    entry; then entries, then the header's end or the comma after an entry) as one object of entries; ``None`` when
    it is not provably valid."""
    # Without escapes no string holds a quote, so every ":" outside strings separates a key from its value; "-0"
    # (which msgspec reads as 0, and the library refuses) can only be written as such. Without escapes the quotes
    # also pair up in order, so a piece cut inside a string holds an odd number of them and cannot decode.
    if start >= len(buffer) or buffer.find(b"\\", start, stop) >= 0 or buffer.find(b"-0", start, stop) >= 0:
        return None
    first = buffer[start]
    last = buffer[stop] if stop < len(buffer) else None
    if opened:
        buffer[start] = 0x7B  # "{" for the comma
    if last is not None:
        buffer[stop] = 0x7D  # "}"
    try:
        entries: dict[str, Any] = _TENSORS.decode(memoryview(buffer)[start : stop + (last is not None)])
    except _DECODE_ERRORS:
        return None
    finally:
        buffer[start] = first
        if last is not None:
            buffer[stop] = last
    # Each decoded entry has its three fields and no other, so the piece holds at least 4 colons per entry (its
    # key and three fields); exactly 4 proves that no key and no field was listed twice (msgspec keeps the last
    # silently) and that no string holds a colon.
    if buffer.count(b":", start, stop) != 4 * len(entries) or "__metadata__" in entries:
        return None
    return entries


def _tensors(
    entries: dict[str, Any],
    base: int,
    label: str,
    canonical_shapes: dict[tuple[int, ...], tuple[int, ...]],
    position: int | None,
    into: dict[str, Any],
) -> int | None:
    """Check sizes column by column (each distinct shape and dtype once) and put the entries into ``into`` as
    ``TensorInfo``s (``into`` may be ``entries`` itself: its values are replaced in place). Returns where the next
    tensor would start when every tensor so far starts where the one before ends (``position``, from 0: the library
    writes them so), ``None`` when they are not in order, ``_REFUSED`` when the entries are not provably valid.

    Memory matters at a million tensors: equal shapes and dtypes end up as one shared object each, across pieces
    (msgspec hands each dtype name as the one object of its ``Literal``).
    """
    if not entries:
        return position
    values = entries.values()
    dtypes: list[str] = list(map(_DTYPE, values))
    shapes = list(map(canonical_shapes.setdefault, map(_SHAPE, values), map(_SHAPE, values)))
    distinct_dtypes = set(dtypes)
    if len(distinct_dtypes) == 1:  # the common case: the size depends on the shape alone
        (dtype,) = distinct_dtypes
        by_shape = {shape: nbytes_or_none(dtype, shape) for shape in set(shapes)}
        if None in by_shape.values():
            return _REFUSED
        expected = map(by_shape.__getitem__, shapes)
    else:
        by_pair = {pair: nbytes_or_none(pair[1], pair[0]) for pair in set(zip(shapes, dtypes))}
        if None in by_pair.values():
            return _REFUSED
        expected = map(by_pair.__getitem__, zip(shapes, dtypes))
    offsets = list(map(_OFFSETS, values))
    starts, ends = operator.itemgetter(0), operator.itemgetter(1)
    if not all(map(operator.eq, map(operator.sub, map(ends, offsets), map(starts, offsets)), expected)):
        return _REFUSED  # a size mismatch or an end before its start: the strict path names the first one
    in_order = (
        position is not None
        and offsets[0][0] == position
        and all(map(operator.eq, map(starts, offsets[1:]), map(ends, offsets)))
    )
    absolute = operator.add
    spans = zip(map(absolute, map(starts, offsets), repeat(base)), map(absolute, map(ends, offsets), repeat(base)))
    infos = map(tuple.__new__, repeat(TensorInfo), zip(shapes, dtypes, repeat(label), spans))
    # into ``entries`` itself, replacing values keeps its (hashed, ordered) keys without a rebuild
    into.update(zip(entries, infos))
    return int(offsets[-1][1]) if in_order else None


_DTYPE: Final = operator.attrgetter("dtype")
_SHAPE: Final = operator.attrgetter("shape")
_OFFSETS: Final = operator.attrgetter("data_offsets")
