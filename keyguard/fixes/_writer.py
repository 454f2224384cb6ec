"""Writing a fixed checkpoint: atomic, verified, and losing nothing.

safetensors in, safetensors out: when only names change and nothing is dropped, the new file is the new header
followed by the source's data section, byte for byte (offsets and alignment are unchanged). Otherwise every tensor
is streamed to a new, compact layout. Either way each tensor's bytes are checksummed while they are copied, the
output is written to a temporary file beside the target, fsynced, re-read and checked (header against the plan,
every tensor's checksum against the source's), and only then renamed into place. Sharded checkpoints are written
shard by shard into a temporary folder that is renamed into place at the end. A PyTorch pickle (read with
``weights_only=True``) is written out as safetensors. Tensors whose data a rule changes (transpose, split, fuse)
go through torch, one at a time.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

from keyguard._atomic import atomic_output, fsync_dir
from keyguard._dtypes import DTYPE_BITS
from keyguard._exceptions import KeyguardError, PlanError, SourceError
from keyguard._progress import Progress as _Progress
from keyguard._st_write import encode_header, layout
from keyguard._version import __version__
from keyguard.fixes._plan import Plan
from keyguard.fixes._rules import Drop, Fuse, Split, Transpose
from keyguard.sources._keyset import KeySet, TensorInfo

CHUNK = 8 * 1024 * 1024  # two reusable buffers of this size: the memory a write needs, whatever the checkpoint
INLINE = 1024 * 1024  # ranges up to this size are checksummed in line (no hand-off to the checksum thread)
METADATA_KEY = "keyguard.fix"


class WriteError(KeyguardError, OSError):
    """The fixed checkpoint could not be written or did not verify; nothing was put at the target."""


@dataclass
class Change:
    """What happened to one source key."""

    source: str
    action: str  # "renamed", "kept", "dropped", "transposed", "split", "fused"
    targets: list[str] = field(default_factory=list)


@dataclass
class WriteResult:
    """What ``write_fixed`` did: the output path, every change per key, and the bytes written."""

    output: str
    changes: list[Change]
    bytes_written: int
    files: list[str]

    def count(self, action: str) -> int:
        return sum(1 for c in self.changes if c.action == action)


# ------------------------------------------------------------------------------------------------- planning
@dataclass
class _Item:
    """One output tensor: where its bytes come from and how they are made."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    sources: list[str]  # source keys whose data make it
    op: str = "copy"  # "copy", "transpose", "split", "fuse"
    rule: Any = None
    part: int = 0


def plan_output(keys: KeySet, plan: Plan, *, drop: Sequence[str] = ()) -> tuple[list[_Item], list[Change]]:
    """Decide every output tensor from the source keys and the plan (renames, then data rules, then drops)."""
    mapping = plan.mapping(keys)  # raises PlanError on any collision
    dropped = set(drop)
    for rule in plan.rules:
        if isinstance(rule, Drop):
            dropped.update(rule.keys)
    by_new = {new: old for old, new in mapping.items()}
    consumed: set[str] = set()
    items: list[_Item] = []
    changes: list[Change] = []
    for rule in plan.rules:
        if isinstance(rule, Split):
            old = by_new.get(rule.source)
            if old is None:
                raise PlanError(f"plan refused: split of {rule.source!r}, which the checkpoint does not hold")
            info = keys[old]
            if len(rule.targets) != len(rule.sizes) or any(size < 0 for size in rule.sizes):
                raise PlanError(
                    f"plan refused: split of {rule.source!r} names {len(rule.targets)} target(s)"
                    f" for {len(rule.sizes)} size(s)"
                )
            if (
                info.shape is None
                or info.dtype is None
                or not 0 <= rule.dim < len(info.shape)
                or sum(rule.sizes) != info.shape[rule.dim]
            ):
                raise PlanError(
                    f"plan refused: {rule.source!r} (shape {list(info.shape or ())}) cannot be split into sizes"
                    f" {rule.sizes} along dim {rule.dim}"
                )
            for part, (target, size) in enumerate(zip(rule.targets, rule.sizes)):
                dims = list(info.shape)
                dims[rule.dim] = size
                items.append(_Item(target, info.dtype, tuple(dims), [old], "split", rule, part))
            consumed.add(old)
            changes.append(Change(old, "split", list(rule.targets)))
        elif isinstance(rule, Fuse):
            olds = [by_new.get(s) for s in rule.sources]
            if any(o is None for o in olds):
                raise PlanError(f"plan refused: fusing {rule.target!r} needs keys the checkpoint does not hold")
            infos = [keys[o] for o in olds if o is not None]
            shape = _fused_shape(rule, infos)
            dtypes = {i.dtype for i in infos}
            if len(dtypes) != 1 or None in dtypes:
                raise PlanError(
                    f"plan refused: fusing {rule.target!r} needs parts of one dtype, not {sorted(map(str, dtypes))}"
                )
            items.append(_Item(rule.target, infos[0].dtype or "F32", shape, [o for o in olds if o], "fuse", rule))
            consumed.update(o for o in olds if o)
            for o in olds:
                if o:
                    changes.append(Change(o, "fused", [rule.target]))
    transposed = {k for rule in plan.rules if isinstance(rule, Transpose) for k in rule.keys}
    for old, info in keys.items():
        if old in consumed:
            continue
        new = mapping[old]
        if old in dropped or new in dropped:
            changes.append(Change(old, "dropped"))
            continue
        if info.shape is None or info.dtype is None:
            raise SourceError(keys.location, "unknown-shape", f"tensor {old!r} has no known shape or dtype")
        if new in transposed:
            if len(info.shape) != 2:
                raise PlanError(f"plan refused: {new!r} is not 2-D, it cannot be transposed")
            items.append(_Item(new, info.dtype, info.shape[::-1], [old], "transpose"))
            changes.append(Change(old, "transposed", [new]))
        else:
            items.append(_Item(new, info.dtype, info.shape, [old]))
            changes.append(Change(old, "renamed" if new != old else "kept", [new]))
    owner: dict[str, _Item] = {}
    for item in items:
        other = owner.setdefault(item.name, item)
        if other is not item:
            first, second = other.sources[0], item.sources[0]
            raise PlanError(
                f"plan refused: {first!r} and {second!r} would both be written as {item.name!r}"
                " (applying it would silently lose a tensor)"
            )
    return items, changes


def _fused_shape(rule: Fuse, infos: list[TensorInfo]) -> tuple[int, ...]:
    """The shape of a fused tensor; refuses parts that torch could not concatenate (or stack) as planned."""
    shapes = [i.shape for i in infos]
    known = [s for s in shapes if s is not None]
    if len(known) != len(shapes) or not known or any(len(s) <= rule.dim or rule.dim < 0 for s in known):
        raise PlanError(f"plan refused: fusing {rule.target!r} needs every part's shape, with a dim {rule.dim}")
    if any(s[: rule.dim] + s[rule.dim + 1 :] != known[0][: rule.dim] + known[0][rule.dim + 1 :] for s in known):
        raise PlanError(
            f"plan refused: the parts of {rule.target!r} differ outside dim {rule.dim}: {sorted(set(known))}"
        )
    groups = [known]
    if rule.stack:
        if rule.parts < 1 or len(known) % rule.parts:
            raise PlanError(
                f"plan refused: stacking {len(known)} tensors into {rule.target!r} in groups of {rule.parts}"
            )
        groups = [known[i : i + rule.parts] for i in range(0, len(known), rule.parts)]
    sizes = {sum(s[rule.dim] for s in group) for group in groups}
    if len(sizes) != 1:
        raise PlanError(f"plan refused: the groups stacked into {rule.target!r} have different sizes {sorted(sizes)}")
    first = list(known[0])
    first[rule.dim] = sizes.pop()
    return (len(groups), *first) if rule.stack else tuple(first)


# -------------------------------------------------------------------------------------------------- writing
def write_fixed(
    keys: KeySet,
    plan: Plan,
    output: str | os.PathLike[str],
    *,
    drop: Sequence[str] = (),
    progress: bool | _Progress | None = None,
) -> WriteResult:
    """Write ``keys``' checkpoint with ``plan`` applied to ``output``; verified and atomic.

    Args:
        keys: the source, as read by ``keyguard.read_keys`` (safetensors, sharded safetensors, or a PyTorch pickle).
        plan: the rules to apply (all of them: filter with ``plan.at_least(...)`` first).
        output: a ``.safetensors`` file, or a folder for sharded sources (created; it must not exist yet, unless
            it is the source itself: in-place).
        drop: source or new key names to leave out (``--drop-unexpected``).
        progress: show the writing and verifying phases on stderr (default: when stderr is a terminal), or a
            ``keyguard._progress.Progress`` already showing earlier phases (reading, diagnosing) to continue.

    Raises:
        PlanError: the plan would collide keys or does not fit the tensors; nothing is written.
        WriteError: writing or verification failed; nothing is left at ``output``.
    """
    out = os.fspath(output)
    items, changes = plan_output(keys, plan, drop=drop)
    own = not isinstance(progress, _Progress)
    bar = progress if isinstance(progress, _Progress) else _Progress(enabled=progress)
    total = sum(_nbytes(i) for i in items)
    bar.phase("writing", total)
    bar.phase("verifying", total)  # shown, waiting, from the start: the write is done once it is verified
    bar.phase("writing")
    try:
        with _Stream() as stream:
            if keys.format == "safetensors-sharded":
                written, files = _write_sharded(keys, items, changes, out, bar, stream)
            else:
                written = _write_file(keys, items, changes, out, bar, stream=stream)
                files = [out]
    except WriteError:
        raise
    except OSError as exc:  # staging folder, companions, renames
        raise WriteError(f"{out}: writing failed: {exc}") from exc
    finally:
        if own:
            bar.close()
        _TORCH_CACHE.clear()  # a pickle's tensors are not kept (nor reused, should the file change) after the write
    return WriteResult(out, changes, written, files)


def _metadata(keys: KeySet, changes: list[Change]) -> dict[str, str]:
    counts: dict[str, int] = {}
    for change in changes:
        counts[change.action] = counts.get(change.action, 0) + 1
    summary = ", ".join(f"{n} {action}" for action, n in sorted(counts.items()))
    meta = dict(keys.metadata) if keys.format == "safetensors" else {}
    meta.setdefault("format", "pt")
    meta[METADATA_KEY] = f"keys rewritten by keyguard {__version__}: {summary}"
    return meta


def _write_file(
    keys: KeySet,
    items: list[_Item],
    changes: list[Change],
    out: str,
    bar: _Progress,
    *,
    stream: _Stream,
    metadata: Mapping[str, str] | None = None,
    files: Mapping[str | None, _FileSpan] | None = None,
) -> int:
    rows = layout({i.name: (i.dtype, i.shape) for i in items})
    by_name = {i.name: i for i in items}
    meta = dict(metadata) if metadata is not None else _metadata(keys, changes)
    files = _file_spans(keys) if files is None else files
    fast = keys.format in ("safetensors", "safetensors-sharded") and _same_layout(keys, items, files)
    base = 0
    if fast:
        # names change, bytes do not: keep the source's layout so the data section is copied as one block
        spans = {i.name: keys[i.sources[0]].offsets or (0, 0) for i in items}
        base = min((span[0] for span in spans.values()), default=0)  # tensors cover the data from its start
        rows = sorted(
            ((i.name, i.dtype, i.shape, spans[i.name][0] - base, spans[i.name][1] - base) for i in items),
            key=lambda row: (row[3], row[4]),
        )
    header = encode_header(rows, meta)
    checks: dict[str, int] = {}
    used = {keys[src].file for i in items for src in i.sources}
    sources = {_source_path(keys, file): files[file] for file in used if file in files}
    try:
        with atomic_output(out, verify=lambda path: _verify(path, rows, checks, meta, stream, bar)) as f:
            _check_sources(sources)  # the sources are still what read_keys saw...
            f.write(header)
            if fast:
                path = _source_path(keys, keys[items[0].sources[0]].file)
                _copy_data_section(path, base, rows, f, checks, bar, stream)
            else:
                for name, _, _, start, end in rows:
                    _write_item(keys, by_name[name], f, checks, bar, end - start, stream)
            _check_sources(sources)  # ...and did not change while they were copied
    except PlanError:
        raise
    except SourceError as exc:
        raise WriteError(f"{out}: not written: reading the source failed: {exc}") from exc
    except OSError as exc:
        raise WriteError(f"{out}: writing failed: {exc}") from exc
    return len(header) + (rows[-1][4] if rows else 0)


def _same_layout(keys: KeySet, items: list[_Item], files: Mapping[str | None, _FileSpan]) -> bool:
    """True when every tensor of one source file is written unchanged, once, and nothing of that file is dropped."""
    if not items or any(i.op != "copy" for i in items):
        return False
    used = {keys[i.sources[0]].file for i in items}
    if len(used) != 1:
        return False
    span = files.get(used.pop())
    return span is not None and len({s for i in items for s in i.sources}) == span.count


@dataclass
class _FileSpan:
    """One safetensors source file as ``read_keys`` saw it: where its data starts, its size, its tensor count.

    The safetensors reader checked that the tensors cover the data section exactly, so the first tensor's start is
    where the data begins (8 + the header length) and the last one's end is the file's size.
    """

    start: int
    end: int
    count: int


def _file_spans(keys: KeySet) -> dict[str | None, _FileSpan]:
    spans: dict[str | None, _FileSpan] = {}
    if keys.format not in ("safetensors", "safetensors-sharded"):
        return spans
    for info in keys.values():
        start, end = info.offsets or (0, 0)
        span = spans.get(info.file)
        if span is None:
            spans[info.file] = _FileSpan(start, end, 1)
        else:
            span.start, span.end, span.count = min(span.start, start), max(span.end, end), span.count + 1
    return spans


def _check_sources(sources: Mapping[str, _FileSpan]) -> None:
    """Refuse to go on when a source file's size or header length is not what was read (it changed meanwhile)."""
    for path, span in sources.items():
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
        data_start = 8 + int.from_bytes(head, "little") if len(head) == 8 else -1
        if size != span.end or data_start != span.start:
            raise WriteError(
                f"{path}: the source changed since its keys were read (now {size:,} bytes with data from byte"
                f" {data_start:,}; read as {span.end:,} bytes with data from byte {span.start:,})"
            )


def _source_path(keys: KeySet, file: str | None) -> str:
    location = keys.location or ""
    if keys.format == "safetensors":
        return location
    folder = os.path.dirname(location) if os.path.isfile(location) else location
    return os.path.join(folder, file or "")


class _Spans:
    """Running CRC-32 of consecutive, sorted byte ranges of one stream, fed chunk by chunk in stream order."""

    def __init__(self, bounds: Sequence[tuple[str, int, int]]) -> None:
        self.bounds = bounds  # (name, start, end), sorted, not overlapping, relative to the stream's start
        self.index = 0
        self.crcs: dict[str, int] = {}

    def feed(self, view: memoryview, position: int) -> None:
        end = position + len(view)
        while self.index < len(self.bounds):
            name, start, stop = self.bounds[self.index]
            if start >= end:
                break
            a, b = max(start, position), min(stop, end)
            if b > a:
                self.crcs[name] = zlib.crc32(view[a - position : b - position], self.crcs.get(name, 0))
            if stop > end:
                break
            self.index += 1

    def result(self) -> dict[str, int]:
        for name, _, _ in self.bounds:
            self.crcs.setdefault(name, 0)  # 0-byte tensors
        return self.crcs


class _Source(Protocol):
    name: Any

    def seek(self, offset: int, whence: int = 0, /) -> int: ...
    def read(self, size: int = -1, /) -> bytes: ...
    def readinto(self, buffer: memoryview, /) -> int | None: ...
    def close(self) -> None: ...


class _Stream:
    """Reads (and copies) byte ranges through two reusable buffers; checksums run in a helper thread while the
    next chunk is read and this one written (``zlib.crc32`` and file I/O release the GIL), so memory stays at two
    buffers and the checksum costs little wall time. Source files stay open for the whole write."""

    def __init__(self) -> None:
        self.buffers: tuple[bytearray, bytearray] | None = None  # allocated on first use
        self.pool: Any = None
        self.files: dict[str, _Source] = {}

    def __enter__(self) -> _Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)
        for f in self.files.values():
            f.close()

    def source(self, path: str) -> _Source:
        f = self.files.get(path)
        if f is None:
            f = self.files[path] = open(path, "rb", buffering=0)  # noqa: SIM115 - closed in __exit__
        return f

    def run(
        self,
        src: _Source,
        start: int,
        length: int,
        feed: Callable[[memoryview, int], None],
        out: IO[bytes] | None,
        bar: _Progress | None,
        *,
        overlap: bool = True,
    ) -> None:
        """Read ``length`` bytes of ``src`` from ``start``; feed each chunk (and its position) to ``feed``, in
        order; write them to ``out`` when given. Large ranges are fed in the helper thread unless ``overlap`` is
        false (the caller is a helper thread itself)."""
        src.seek(start)
        if length <= INLINE:
            data = b""
            while len(data) < length:
                piece = src.read(length - len(data))  # a raw file may return less than asked
                if not piece:
                    break
                data += piece
            if len(data) != length:
                raise WriteError(f"{src.name}: the file ended early (it changed?)")
            feed(memoryview(data), 0)
            if out is not None:
                out.write(data)
            if bar is not None:
                bar.update(length)
            return
        if self.buffers is None:
            self.buffers = (bytearray(CHUNK), bytearray(CHUNK))
        if overlap and self.pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="keyguard-crc")
        buffers = self.buffers
        pending = None
        position = 0
        turn = 0
        try:
            while position < length:
                view = memoryview(buffers[turn])[: min(CHUNK, length - position)]
                n = src.readinto(view)
                if not n:
                    raise WriteError(f"{src.name}: the file ended early (it changed?)")
                view = view[:n]
                if pending is not None:
                    pending.result()  # the previous chunk's checksum, in order (and its buffer free again)
                    pending = None
                if overlap:
                    pending = self.pool.submit(feed, view, position)
                else:
                    feed(view, position)
                if out is not None:
                    out.write(view)
                if bar is not None:
                    bar.update(n)
                position += n
                turn ^= 1
        finally:
            if pending is not None:
                pending.result()


def _copy_data_section(
    path: str,
    base: int,
    rows: list[tuple[str, str, tuple[int, ...], int, int]],
    f: IO[bytes],
    checks: dict[str, int],
    bar: _Progress,
    stream: _Stream,
) -> None:
    """Copy the whole data section, checksumming each tensor's bytes."""
    end = rows[-1][4] if rows else 0
    _copy_range(path, base, end, [(name, start, stop) for name, _, _, start, stop in rows], f, checks, bar, stream)


def _copy_range(
    path: str,
    base: int,
    length: int,
    bounds: list[tuple[str, int, int]],
    f: IO[bytes],
    checks: dict[str, int],
    bar: _Progress,
    stream: _Stream,
) -> None:
    """Append ``length`` bytes of ``path`` from ``base`` to ``f``, with the checksum of each of ``bounds`` (relative
    to ``base``).

    Where the kernel copies between files (Linux ``copy_file_range``) it does, while a helper thread reads the
    source and checksums it; verification then re-reads the output and compares its checksums with these.
    Elsewhere the bytes go through the two buffers, checksummed on the way."""
    if length > INLINE and hasattr(os, "copy_file_range"):
        import threading

        spans = _Spans(bounds)
        failure: list[BaseException] = []

        def checksum() -> None:
            try:
                with open(path, "rb", buffering=0) as src:  # the stream is not used by this thread meanwhile
                    stream.run(src, base, length, spans.feed, None, None, overlap=False)
            except BaseException as exc:  # handed over to the writing thread below
                failure.append(exc)

        f.flush()
        worker = threading.Thread(target=checksum, name="keyguard-crc-source", daemon=True)
        worker.start()
        try:
            copied = _kernel_copy(path, base, f, length, bar)
        finally:
            worker.join()
        if failure:
            raise failure[0]
        if not copied:  # the kernel declined: copy through the buffers (the source is checksummed already)
            stream.run(stream.source(path), base, length, lambda view, position: None, f, bar)
        checks.update(spans.result())
        return
    spans = _Spans(bounds)
    stream.run(stream.source(path), base, length, spans.feed, f, bar)
    checks.update(spans.result())


def _kernel_copy(path: str, start: int, f: IO[bytes], length: int, bar: _Progress) -> bool:
    """Append ``length`` bytes of ``path`` from ``start`` to ``f`` with ``copy_file_range``; False, with nothing
    written, when the kernel or the file systems do not offer it."""
    import errno

    declined = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EPERM, errno.EBADF}
    out = f.fileno()
    position = 0
    with open(path, "rb", buffering=0) as src:
        while position < length:
            try:
                n = os.copy_file_range(src.fileno(), out, min(8 * CHUNK, length - position), start + position)
            except OSError as exc:
                if position == 0 and exc.errno in declined:
                    return False
                raise
            if n == 0:
                raise WriteError(f"{path}: the file ended early (it changed while being read?)")
            position += n
            bar.update(n)
    f.seek(0, os.SEEK_END)  # the kernel moved the descriptor's offset: keep the file object in step
    return True


def _write_item(
    keys: KeySet, item: _Item, f: IO[bytes], checks: dict[str, int], bar: _Progress, size: int, stream: _Stream
) -> None:
    if item.op == "copy":
        info = keys[item.sources[0]]
        if info.offsets is not None and keys.format in ("safetensors", "safetensors-sharded"):
            start, end = info.offsets
            if end - start != size:
                raise WriteError(f"internal: {item.name!r} has {end - start} bytes in the source, expected {size}")
            _copy_range(_source_path(keys, info.file), start, size, [(item.name, 0, size)], f, checks, bar, stream)
            return
    data = _tensor_bytes(keys, item)
    if len(data) != size:
        raise WriteError(f"internal: {item.name!r} produced {len(data)} bytes, expected {size}")
    checks[item.name] = zlib.crc32(data)
    f.write(data)
    bar.update(len(data))


# torch is needed only for pickles and for rules that change data
_TORCH_CACHE: dict[str, Any] = {}


def _source_tensor(keys: KeySet, key: str) -> Any:
    from keyguard.sources._torch import import_torch

    torch = import_torch("to change tensor data (transpose, split, fuse) or to read a PyTorch pickle")
    info = keys[key]
    if keys.format in ("torch-pickle", "torch-pickle-sharded"):
        state = _TORCH_CACHE.get(
            _source_path(keys, info.file) if keys.format != "torch-pickle" else keys.location or ""
        )
        if state is None:
            from keyguard.fixes._load import load_tensors

            path = keys.location if keys.format == "torch-pickle" else _source_path(keys, info.file)
            _TORCH_CACHE.clear()
            state = _TORCH_CACHE[path or ""] = load_tensors(path or "", container=keys.unwrapped)
        return state[key]
    from keyguard.fixes._load import read_safetensors_tensor

    return read_safetensors_tensor(torch, _source_path(keys, info.file), info)


def _tensor_bytes(keys: KeySet, item: _Item) -> bytes:
    import ctypes

    from keyguard.sources._torch import import_torch

    torch = import_torch("to change tensor data")
    tensors = [_source_tensor(keys, s) for s in item.sources]
    if item.op == "copy":
        out = tensors[0]
    elif item.op == "transpose":
        out = tensors[0].t()
    elif item.op == "split":
        rule: Split = item.rule
        start = sum(rule.sizes[: item.part])
        out = tensors[0].narrow(rule.dim, start, rule.sizes[item.part])
    else:
        fuse: Fuse = item.rule
        if fuse.stack:
            groups = [torch.cat(tensors[i : i + fuse.parts], dim=fuse.dim) for i in range(0, len(tensors), fuse.parts)]
            out = torch.stack(groups, dim=0)
        else:
            out = torch.cat(tensors, dim=fuse.dim)
    out = out.detach().to("cpu").contiguous()
    nbytes = out.numel() * out.element_size()
    return ctypes.string_at(out.data_ptr(), nbytes) if nbytes else b""


def _nbytes(item: _Item) -> int:
    numel = 1
    for d in item.shape:
        numel *= d
    return (numel * DTYPE_BITS.get(item.dtype, 8) + 7) // 8


# ----------------------------------------------------------------------------------------------- verifying
def _verify(
    path: str,
    rows: list[tuple[str, str, tuple[int, ...], int, int]],
    checks: dict[str, int],
    meta: Mapping[str, str],
    stream: _Stream | None = None,
    bar: _Progress | None = None,
) -> None:
    """Re-read the written file: its header must be exactly the planned one, every tensor's bytes the source's."""
    from keyguard.sources._safetensors import read_safetensors

    try:
        written = read_safetensors(path)
    except SourceError as exc:
        raise WriteError(f"verification failed: the written file is not valid safetensors ({exc.detail})") from None
    planned = {name: (dtype, tuple(shape)) for name, dtype, shape, _, _ in rows}
    got = {k: (v.dtype, v.shape) for k, v in written.items()}
    if got != planned:
        missing = sorted(planned.keys() - got.keys())[:3]
        raise WriteError(f"verification failed: written header differs from the plan (e.g. {missing or 'shapes'})")
    if dict(written.metadata) != dict(meta):
        raise WriteError("verification failed: written metadata differs")
    # the reader checked that the tensors cover the data section exactly: read it in one sequential pass
    bounds = sorted(((name, *(info.offsets or (0, 0))) for name, info in written.items()), key=lambda b: (b[1], b[2]))
    if not bounds:
        return
    first, last = bounds[0][1], bounds[-1][2]
    spans = _Spans([(name, start - first, end - first) for name, start, end in bounds])
    with _Stream() if stream is None else contextlib.nullcontext(stream) as reader, open(path, "rb", buffering=0) as f:
        try:
            if bar is not None:
                bar.phase("verifying")
            reader.run(f, first, last - first, spans.feed, None, bar)
            if bar is not None:
                bar.phase("writing")  # the next shard, if any
        except WriteError:
            raise WriteError("verification failed: the written file is truncated") from None
    crcs = spans.result()
    for name, _, _ in bounds:
        if crcs[name] != checks.get(name):
            raise WriteError(f"verification failed: the bytes of {name!r} differ from the source")


# ----------------------------------------------------------------------------------------------- sharded
def _write_sharded(
    keys: KeySet, items: list[_Item], changes: list[Change], out: str, bar: _Progress, stream: _Stream
) -> tuple[int, list[str]]:
    source_folder = (
        os.path.dirname(keys.location or "") if os.path.isfile(keys.location or "") else (keys.location or "")
    )
    index_name = (
        os.path.basename(keys.location or "") if os.path.isfile(keys.location or "") else "model.safetensors.index.json"
    )
    in_place = os.path.abspath(out) == os.path.abspath(source_folder)
    if os.path.exists(out) and not in_place:
        raise WriteError(f"{out}: already exists; sharded output goes to a new folder (or use --in-place)")
    parent = os.path.dirname(os.path.abspath(out)) or "."
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(out))}.keyguard-", dir=parent)
    total = 0
    try:
        by_shard: dict[str, list[_Item]] = {}
        for item in items:
            shard = keys[item.sources[0]].file or "model.safetensors"
            by_shard.setdefault(shard, []).append(item)
        weight_map: dict[str, str] = {}
        summary = _metadata(keys, changes)[METADATA_KEY]
        spans = _file_spans(keys)
        for shard, shard_items in by_shard.items():
            meta = _shard_metadata(os.path.join(source_folder, shard))
            meta[METADATA_KEY] = summary
            total += _write_file(
                keys,
                shard_items,
                changes,
                os.path.join(staging, shard),
                bar,
                stream=stream,
                metadata=meta,
                files=spans,
            )
            weight_map.update({i.name: shard for i in shard_items})
        index_meta = _index_metadata(os.path.join(source_folder, index_name))
        index_meta["total_size"] = sum(_nbytes(i) for i in items)
        index_meta[METADATA_KEY] = summary
        index = {"metadata": index_meta, "weight_map": dict(sorted(weight_map.items()))}
        with atomic_output(os.path.join(staging, index_name)) as f:
            f.write((json.dumps(index, indent=2) + "\n").encode())
        rewritten = {*keys.files, index_name}
        if in_place:
            # everything else in the folder stays: other files and folders are linked (or copied) into the new one
            for extra in sorted(os.listdir(source_folder)):
                if extra not in rewritten:
                    _carry_over(os.path.join(source_folder, extra), os.path.join(staging, extra))
        else:
            for extra in _companions(source_folder, rewritten):
                shutil.copy2(os.path.join(source_folder, extra), os.path.join(staging, extra))
        fsync_dir(staging)
        if in_place:
            _swap_folder(staging, out, parent)
        else:
            os.rename(staging, out)
        fsync_dir(parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return total, [os.path.join(out, s) for s in by_shard]


def _shard_metadata(path: str) -> dict[str, str]:
    """A source shard's own ``__metadata__`` (kept in the rewritten shard)."""
    from keyguard.sources._safetensors import read_safetensors

    try:
        meta = dict(read_safetensors(path).metadata)
    except SourceError as exc:
        raise WriteError(f"{path}: not written: reading the source failed: {exc}") from exc
    meta.setdefault("format", "pt")
    return meta


def _index_metadata(path: str) -> dict[str, Any]:
    """The source index's ``metadata`` as it is (values are not all strings: ``total_size`` is a number)."""
    try:
        with open(path, "rb") as f:
            meta = json.load(f).get("metadata")
    except (OSError, ValueError, AttributeError):
        return {}
    return dict(meta) if isinstance(meta, dict) else {}


def _carry_over(source: str, target: str) -> None:
    """Put ``source`` at ``target`` without copying data where possible (hard links, same file system)."""
    if os.path.isdir(source) and not os.path.islink(source):
        shutil.copytree(source, target, symlinks=True, copy_function=_link_or_copy)
    else:
        _link_or_copy(source, target)


def _link_or_copy(source: str, target: str) -> str:
    if os.path.islink(source):
        os.symlink(os.readlink(source), target)
        return target
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
    return target


def _swap_folder(new: str, target: str, parent: str) -> None:
    """Put the folder ``new`` at ``target`` (which exists), then remove the old one.

    On Linux the two are exchanged in one atomic ``renameat2(RENAME_EXCHANGE)``, so ``target`` is always either the
    old folder or the new one. Elsewhere (or when the call is refused) the old folder is first renamed aside: a crash
    between the two renames leaves it there, as ``.NAME.keyguard-old-*``, and nothing at ``target``.
    """
    if _exchange(new, target):
        shutil.rmtree(new, ignore_errors=True)  # ``new`` now holds the old folder
        return
    backup = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(target))}.keyguard-old-", dir=parent)
    os.rmdir(backup)
    os.rename(target, backup)
    os.rename(new, target)
    shutil.rmtree(backup, ignore_errors=True)


def _exchange(a: str, b: str) -> bool:
    """Atomically exchange two paths with Linux's ``renameat2(RENAME_EXCHANGE)``; False when not available."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    result = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return bool(result == 0)


def _companions(folder: str, skip: set[str]) -> list[str]:
    """Small files that travel with a checkpoint (config, tokenizer): copied into a sharded output unchanged."""
    if not folder or not os.path.isdir(folder):
        return []
    out = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name in skip or not os.path.isfile(path) or name.endswith((".safetensors", ".bin", ".pt", ".pth")):
            continue
        if name.endswith(".index.json") or os.path.getsize(path) > 64 * 1024 * 1024:
            continue
        out.append(name)
    return out
