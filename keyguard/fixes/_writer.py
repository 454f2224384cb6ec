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

import json
import os
import shutil
import sys
import tempfile
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from keyguard._atomic import atomic_output, fsync_dir
from keyguard._dtypes import DTYPE_BITS
from keyguard._exceptions import KeyguardError, PlanError, SourceError
from keyguard._st_write import encode_header, layout
from keyguard._version import __version__
from keyguard.fixes._plan import Plan
from keyguard.fixes._rules import Drop, Fuse, Split, Transpose
from keyguard.sources._keyset import KeySet, TensorInfo

CHUNK = 64 * 1024 * 1024
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
            if info.shape is None or info.dtype is None or sum(rule.sizes) != info.shape[rule.dim]:
                raise PlanError(f"plan refused: {rule.source!r} cannot be split into sizes {rule.sizes}")
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
    names = [item.name for item in items]
    if len(set(names)) != len(names):
        seen: set[str] = set()
        clash = next(n for n in names if n in seen or seen.add(n))  # type: ignore[func-returns-value]
        raise PlanError(f"plan refused: two tensors would be written as {clash!r}")
    return items, changes


def _fused_shape(rule: Fuse, infos: list[TensorInfo]) -> tuple[int, ...]:
    shapes = [i.shape for i in infos]
    known = [s for s in shapes if s is not None]
    if len(known) != len(shapes) or not known or any(len(s) <= rule.dim for s in known):
        raise PlanError(f"plan refused: fusing {rule.target!r} needs every part's shape")
    first = list(known[0])
    if rule.stack:
        first[rule.dim] = sum(s[rule.dim] for s in known[: rule.parts])
        return (len(known) // rule.parts, *first)
    first[rule.dim] = sum(s[rule.dim] for s in known)
    return tuple(first)


# -------------------------------------------------------------------------------------------------- writing
def write_fixed(
    keys: KeySet,
    plan: Plan,
    output: str | os.PathLike[str],
    *,
    drop: Sequence[str] = (),
    progress: bool | None = None,
) -> WriteResult:
    """Write ``keys``' checkpoint with ``plan`` applied to ``output``; verified and atomic.

    Args:
        keys: the source, as read by ``keyguard.read_keys`` (safetensors, sharded safetensors, or a PyTorch pickle).
        plan: the rules to apply (all of them: filter with ``plan.at_least(...)`` first).
        output: a ``.safetensors`` file, or a folder for sharded sources (created; it must not exist yet, unless
            it is the source itself: in-place).
        drop: source or new key names to leave out (``--drop-unexpected``).
        progress: show a progress bar on stderr (default: when stderr is a terminal).

    Raises:
        PlanError: the plan would collide keys or does not fit the tensors; nothing is written.
        WriteError: writing or verification failed; nothing is left at ``output``.
    """
    out = os.fspath(output)
    items, changes = plan_output(keys, plan, drop=drop)
    bar = _Progress(sum(_nbytes(i) for i in items), enabled=progress)
    try:
        if keys.format == "safetensors-sharded":
            written, files = _write_sharded(keys, items, changes, out, bar)
        else:
            written = _write_file(keys, items, changes, out, bar, source_name=keys.files[0] if keys.files else None)
            files = [out]
    finally:
        bar.close()
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
    source_name: str | None,
    metadata: Mapping[str, str] | None = None,
) -> int:
    rows = layout({i.name: (i.dtype, i.shape) for i in items})
    by_name = {i.name: i for i in items}
    meta = dict(metadata) if metadata is not None else _metadata(keys, changes)
    fast = keys.format in ("safetensors", "safetensors-sharded") and _same_layout(keys, items)
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
    try:
        with atomic_output(out, verify=lambda path: _verify(path, rows, checks, meta)) as f:
            f.write(header)
            if fast:
                _copy_data_section(_source_path(keys, keys[items[0].sources[0]].file), base, rows, f, checks, bar)
            else:
                for name, _, _, start, end in rows:
                    _write_item(keys, by_name[name], f, checks, bar, end - start)
    except (PlanError, SourceError):
        raise
    except OSError as exc:
        raise WriteError(f"{out}: writing failed: {exc}") from exc
    return len(header) + (rows[-1][4] if rows else 0)


def _same_layout(keys: KeySet, items: list[_Item]) -> bool:
    """True when every source tensor is written unchanged, once, and nothing is dropped."""
    if len(items) != len(keys) or any(i.op != "copy" for i in items):
        return False
    files = {keys[i.sources[0]].file for i in items}
    return len(files) == 1


def _source_path(keys: KeySet, file: str | None) -> str:
    location = keys.location or ""
    if keys.format == "safetensors":
        return location
    folder = os.path.dirname(location) if os.path.isfile(location) else location
    return os.path.join(folder, file or "")


def _copy_data_section(
    path: str,
    base: int,
    rows: list[tuple[str, str, tuple[int, ...], int, int]],
    f: IO[bytes],
    checks: dict[str, int],
    bar: _Progress,
) -> None:
    """Copy the whole data section in large chunks, checksumming each tensor's bytes on the way."""
    end = rows[-1][4] if rows else 0
    bounds = [(name, start, stop) for name, _, _, start, stop in rows]
    index = 0
    with open(path, "rb") as src:
        src.seek(base)
        position = 0
        while position < end:
            chunk = src.read(min(CHUNK, end - position))
            if not chunk:
                raise WriteError(f"{path}: the file ended early (it changed while being read?)")
            view = memoryview(chunk)
            chunk_end = position + len(chunk)
            while index < len(bounds) and bounds[index][1] < chunk_end:
                name, start, stop = bounds[index]
                a, b = max(start, position) - position, min(stop, chunk_end) - position
                checks[name] = zlib.crc32(view[a:b], checks.get(name, 0))
                if stop > chunk_end:
                    break
                index += 1
            f.write(chunk)
            bar.update(len(chunk))
            position = chunk_end
    for name, _, _ in bounds:
        checks.setdefault(name, 0)


def _write_item(keys: KeySet, item: _Item, f: IO[bytes], checks: dict[str, int], bar: _Progress, size: int) -> None:
    if item.op == "copy":
        info = keys[item.sources[0]]
        if info.offsets is not None and keys.format in ("safetensors", "safetensors-sharded"):
            crc = 0
            with open(_source_path(keys, info.file), "rb") as src:
                src.seek(info.offsets[0])
                remaining = info.offsets[1] - info.offsets[0]
                while remaining:
                    chunk = src.read(min(CHUNK, remaining))
                    if not chunk:
                        raise WriteError(f"{keys.location}: the file ended early while copying {item.sources[0]!r}")
                    crc = zlib.crc32(chunk, crc)
                    f.write(chunk)
                    bar.update(len(chunk))
                    remaining -= len(chunk)
            checks[item.name] = crc
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
    path: str, rows: list[tuple[str, str, tuple[int, ...], int, int]], checks: dict[str, int], meta: Mapping[str, str]
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
    ordered = sorted(written.items(), key=lambda kv: kv[1].offsets or (0, 0))
    with open(path, "rb") as f:
        for name, info in ordered:
            start, end = info.offsets or (0, 0)
            f.seek(start)
            crc = 0
            remaining = end - start
            while remaining:
                chunk = f.read(min(CHUNK, remaining))
                if not chunk:
                    raise WriteError(f"verification failed: {name!r} is truncated in the written file")
                crc = zlib.crc32(chunk, crc)
                remaining -= len(chunk)
            if crc != checks.get(name):
                raise WriteError(f"verification failed: the bytes of {name!r} differ from the source")


# ----------------------------------------------------------------------------------------------- sharded
def _write_sharded(
    keys: KeySet, items: list[_Item], changes: list[Change], out: str, bar: _Progress
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
        meta = _metadata(keys, changes)
        for shard, shard_items in by_shard.items():
            total += _write_file(
                keys, shard_items, changes, os.path.join(staging, shard), bar, source_name=shard, metadata=meta
            )
            weight_map.update({i.name: shard for i in shard_items})
        index = {
            "metadata": {"total_size": sum(_nbytes(i) for i in items), METADATA_KEY: meta[METADATA_KEY]},
            "weight_map": dict(sorted(weight_map.items())),
        }
        with atomic_output(os.path.join(staging, index_name)) as f:
            f.write((json.dumps(index, indent=2) + "\n").encode())
        for extra in _companions(source_folder, set(by_shard) | {index_name}):
            shutil.copy2(os.path.join(source_folder, extra), os.path.join(staging, extra))
        fsync_dir(staging)
        if in_place:
            backup = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(out))}.keyguard-old-", dir=parent)
            os.rmdir(backup)
            os.rename(out, backup)
            os.rename(staging, out)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.rename(staging, out)
        fsync_dir(parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return total, [os.path.join(out, s) for s in by_shard]


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


# ----------------------------------------------------------------------------------------------- progress
class _Progress:
    """A one-line progress bar on stderr, drawn at most five times a second; silent when stderr is not a TTY."""

    def __init__(self, total: int, *, enabled: bool | None) -> None:
        self.total = max(total, 1)
        self.done = 0
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.last = 0.0
        self.start = time.monotonic()

    def update(self, n: int) -> None:
        self.done += n
        if self.enabled and (time.monotonic() - self.last > 0.2 or self.done >= self.total):
            self.last = time.monotonic()
            frac = min(self.done / self.total, 1.0)
            filled = int(frac * 30)
            rate = self.done / max(self.last - self.start, 1e-6) / 2**20
            sys.stderr.write(f"\r  writing [{'#' * filled}{'.' * (30 - filled)}] {frac:4.0%} {rate:7.1f} MiB/s")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.done:
            sys.stderr.write("\n")
            sys.stderr.flush()
