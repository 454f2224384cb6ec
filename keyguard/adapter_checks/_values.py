"""``--check-values``: read the adapter's tensors one at a time and look at the numbers.

The only part of check-adapter that reads tensor data, and so the only one that imports torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

from keyguard._exceptions import SourceError
from keyguard.sources._torch import import_torch


class Values(NamedTuple):
    """What the numbers of one tensor say."""

    numel: int
    nan: int
    inf: int
    all_zero: bool


def scan(weights: str, keys: Iterable[str]) -> dict[str, Values]:
    """``key -> Values`` for every tensor of ``weights`` (a ``.safetensors`` or ``.bin`` adapter file) in ``keys``."""
    torch = import_torch("to read tensor values (--check-values)")
    out: dict[str, Values] = {}
    with _tensors(torch, weights) as get:
        for key in keys:
            out[key] = _facts(torch, get(key))
    return out


@contextmanager
def _tensors(torch: Any, path: str) -> Iterator[Any]:
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        try:
            with safe_open(path, framework="pt") as f:
                yield f.get_tensor
        except (OSError, RuntimeError) as exc:
            raise SourceError(path, "unreadable-data", f"tensor data cannot be read ({exc})") from None
        return
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # not a zip file: legacy pickles cannot be memory-mapped
        state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise SourceError(path, "unreadable-data", f"tensor data cannot be read ({exc})") from None
    yield state.__getitem__


def _facts(torch: Any, tensor: Any) -> Values:
    numel = int(tensor.numel())
    if not (tensor.is_floating_point() or tensor.is_complex()):
        return Values(numel, 0, 0, not bool(tensor.any()) if numel else False)
    if tensor.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        tensor = tensor.float()  # float8 kernels cover few operations
    nan = int(torch.isnan(tensor).sum())
    inf = int(torch.isinf(tensor).sum())
    return Values(numel, nan, inf, numel > 0 and not bool(tensor.any()))
