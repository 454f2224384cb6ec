"""Tensors whose bytes go through torch: pickles' and DCP checkpoints' tensors, and data changed by a rule (transpose,
split, fuse)."""

from __future__ import annotations

import os
from typing import IO, Any

from keyguard._exceptions import WriteError
from keyguard._progress import Progress
from keyguard.fixes import _checksum as checksum
from keyguard.fixes._block_copy import Stream, copy_range
from keyguard.fixes._output_plan import OutputItem, source_path
from keyguard.fixes._rules import Fuse, Split
from keyguard.sources._keyset import KeySet

PICKLE_FORMATS = ("torch-pickle", "torch-pickle-sharded")


class TensorSource:
    """The source tensors one write needs through torch, one pickle file at a time.

    A pickle is loaded from a private copy made in ``scratch`` (the output's folder), never mapped in place: see
    ``keyguard.fixes._pickle_snapshot``. Nothing is kept after the write.
    """

    def __init__(self, keys: KeySet, scratch: str, needed: set[str]) -> None:
        self.keys = keys
        self.scratch = scratch
        self.needed = needed  # the source keys the write reads (a changed file is checked on these)
        self.path: str | None = None
        self.state: dict[str, Any] = {}

    def tensor(self, key: str) -> Any:
        keys = self.keys
        info = keys[key]
        if keys.format == "torch-dcp":  # every needed tensor at once: a sharded one is put together from all ranks
            if self.path != keys.location:
                from keyguard.sources._dcp import load_dcp_tensors

                self.state = load_dcp_tensors(keys, self.needed)
                self.path = keys.location
            return self.state[key]
        if keys.format in PICKLE_FORMATS:
            path = (keys.location or "") if keys.format == "torch-pickle" else source_path(keys, info.file)
            if path != self.path:
                from keyguard.fixes._pickle_snapshot import load_snapshot

                self.state, self.path = {}, None  # one file's tensors at a time
                expected = {k: i for k, i in keys.items() if k in self.needed and i.file == info.file}
                self.state = load_snapshot(path, container=keys.unwrapped, expected=expected, scratch=self.scratch)
                self.path = path
            return self.state[key]
        from keyguard.fixes._load import read_safetensors_tensor
        from keyguard.sources._torch import import_torch

        torch = import_torch("to change tensor data (transpose, split, fuse)")
        return read_safetensors_tensor(torch, source_path(keys, info.file), info)

    def close(self) -> None:
        self.state, self.path = {}, None


def scratch_folder(output: str) -> str:
    """Where a write may put private scratch files: the folder the output goes into."""
    return os.path.dirname(os.path.abspath(output)) or "."


def write_item(
    keys: KeySet,
    item: OutputItem,
    f: IO[bytes],
    checks: dict[str, int],
    bar: Progress,
    size: int,
    stream: Stream,
    tensors: TensorSource,
) -> None:
    if item.op == "copy":
        info = keys[item.sources[0]]
        if info.offsets is not None and keys.format in ("safetensors", "safetensors-sharded"):
            start, end = info.offsets
            if end - start != size:
                raise WriteError(f"internal: {item.name!r} has {end - start} bytes in the source, expected {size}")
            copy_range(source_path(keys, info.file), start, size, [(item.name, 0, size)], f, checks, bar, stream)
            return
    data = _tensor_bytes(item, tensors)
    if len(data) != size:
        raise WriteError(f"internal: {item.name!r} produced {len(data)} bytes, expected {size}")
    checks[item.name] = checksum.digest(data)
    f.write(data)
    bar.update(len(data))


def _tensor_bytes(item: OutputItem, source: TensorSource) -> bytes:
    import ctypes

    from keyguard.sources._torch import import_torch

    torch = import_torch("to change tensor data")
    tensors = [source.tensor(s) for s in item.sources]
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
