"""Tensors whose bytes go through torch: pickles' tensors, and data changed by a rule (transpose, split, fuse)."""

from __future__ import annotations

from typing import IO, Any

from keyguard._exceptions import WriteError
from keyguard._progress import Progress
from keyguard.fixes import _checksum as checksum
from keyguard.fixes._block_copy import Stream, copy_range
from keyguard.fixes._output_plan import OutputItem, source_path
from keyguard.fixes._rules import Fuse, Split
from keyguard.sources._keyset import KeySet


def write_item(
    keys: KeySet, item: OutputItem, f: IO[bytes], checks: dict[str, int], bar: Progress, size: int, stream: Stream
) -> None:
    if item.op == "copy":
        info = keys[item.sources[0]]
        if info.offsets is not None and keys.format in ("safetensors", "safetensors-sharded"):
            start, end = info.offsets
            if end - start != size:
                raise WriteError(f"internal: {item.name!r} has {end - start} bytes in the source, expected {size}")
            copy_range(source_path(keys, info.file), start, size, [(item.name, 0, size)], f, checks, bar, stream)
            return
    data = _tensor_bytes(keys, item)
    if len(data) != size:
        raise WriteError(f"internal: {item.name!r} produced {len(data)} bytes, expected {size}")
    checks[item.name] = checksum.digest(data)
    f.write(data)
    bar.update(len(data))


# torch is needed only for pickles and for rules that change data
TORCH_CACHE: dict[str, Any] = {}


def _source_tensor(keys: KeySet, key: str) -> Any:
    from keyguard.sources._torch import import_torch

    torch = import_torch("to change tensor data (transpose, split, fuse) or to read a PyTorch pickle")
    info = keys[key]
    if keys.format in ("torch-pickle", "torch-pickle-sharded"):
        state = TORCH_CACHE.get(source_path(keys, info.file) if keys.format != "torch-pickle" else keys.location or "")
        if state is None:
            from keyguard.fixes._load import load_tensors

            path = keys.location if keys.format == "torch-pickle" else source_path(keys, info.file)
            TORCH_CACHE.clear()
            state = TORCH_CACHE[path or ""] = load_tensors(path or "", container=keys.unwrapped)
        return state[key]
    from keyguard.fixes._load import read_safetensors_tensor

    return read_safetensors_tensor(torch, source_path(keys, info.file), info)


def _tensor_bytes(keys: KeySet, item: OutputItem) -> bytes:
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
