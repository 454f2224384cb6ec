"""Training frameworks' checkpoint folders: Accelerate ``save_state`` and DeepSpeed, found without naming the file.

- Accelerate's ``save_state`` writes the model next to its training state: ``model.safetensors`` (or
  ``pytorch_model.bin``; ``model_1.safetensors``... for further models), FSDP's ``pytorch_model_fsdp.bin`` or a DCP
  folder ``pytorch_model_fsdp_0/``, and DeepSpeed's checkpoint under ``pytorch_model/`` with a ``latest`` file;
  ``optimizer.bin``, ``scheduler.bin``, ``sampler.bin``, ``scaler.pt`` and ``random_states_*.pkl`` are training
  state, never read.
- DeepSpeed's ``save_checkpoint(dir)`` writes ``dir/latest`` (the tag) and ``dir/<tag>/mp_rank_00_model_states.pt``,
  a pickle whose ``module`` holds the model's state dict. Under ZeRO stage 3 that state dict holds empty
  placeholders: the weights are partitioned in the ``*_optim_states.pt`` files, and only their shapes
  (``param_shapes``) are in this file; keyguard then reports the keys with those shapes and no data.

The layouts were learnt from Accelerate's ``checkpointing.py`` / ``utils/fsdp_utils.py`` / ``utils/constants.py`` and
DeepSpeed's ``runtime/engine.py`` (``_save_checkpoint``) and ``utils/zero_to_fp32.py``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any, Final

from keyguard._dtypes import canonical_dtype
from keyguard._exceptions import SourceError
from keyguard.sources._keyset import KeySet, TensorInfo

ACCELERATE_STATE: Final = ("optimizer.bin", "scheduler.bin", "sampler.bin", "scaler.pt")
_RANDOM_STATES: Final = re.compile(r"random_states_[0-9]+\.pkl")
_MODEL_FILES: Final = (
    "model.safetensors",
    "pytorch_model.bin",
    "pytorch_model_fsdp.bin",
)
_EXTRA_MODEL: Final = re.compile(r"(?:model|pytorch_model|pytorch_model_fsdp)_([1-9][0-9]*)(?:\.safetensors|\.bin)?")
DEEPSPEED_MODEL: Final = "mp_rank_00_model_states.pt"
_TP_RANKS: Final = re.compile(r"mp_rank_(?!00_)[0-9]+_model_states\.pt")


def read_framework_folder(folder: str, *, container: str | None) -> KeySet | None:
    """The model of an Accelerate or DeepSpeed checkpoint folder, with a note on the container; ``None`` otherwise."""
    names = set(_list(folder))
    deepspeed = _deepspeed_file(folder, names)
    accelerate = any(n in names for n in ACCELERATE_STATE) or any(_RANDOM_STATES.fullmatch(n) for n in names)
    if deepspeed is not None:
        keys = read_deepspeed(deepspeed, container=container)
        if accelerate:
            where = os.path.relpath(deepspeed, folder)
            return _with_note(keys, f"Accelerate save_state folder with a DeepSpeed checkpoint; the model is {where}")
        return keys
    if not accelerate:
        return None
    chosen: str | None = next((n for n in _MODEL_FILES if n in names), None)
    if chosen is None and os.path.isfile(os.path.join(folder, "pytorch_model_fsdp_0", ".metadata")):
        chosen = "pytorch_model_fsdp_0"
    if chosen is None:
        training = sorted(n for n in names if n in ACCELERATE_STATE or _RANDOM_STATES.fullmatch(n))
        raise SourceError(
            folder,
            "no-model-in-state",
            f"is an Accelerate save_state folder without the model's weights (found: {', '.join(training)});"
            " save_state wrote training state only",
        )
    from keyguard.sources._resolve import read_keys

    keys = read_keys(os.path.join(folder, chosen), container=container)
    others = sorted(n for n in names if _EXTRA_MODEL.fullmatch(n))
    skipped = sorted(n for n in names if n in ACCELERATE_STATE or _RANDOM_STATES.fullmatch(n))
    note = f"Accelerate save_state folder: the model is {chosen}; training state not read ({', '.join(skipped)})"
    if others:
        note += f"; also holds {', '.join(others)} (further prepared models): pass one to read it"
    return _with_note(keys, note)


def _list(folder: str) -> list[str]:
    try:
        return os.listdir(folder)
    except OSError:
        return []


def _deepspeed_file(folder: str, names: set[str]) -> str | None:
    if DEEPSPEED_MODEL in names:
        return os.path.join(folder, DEEPSPEED_MODEL)
    tag = _latest_tag(folder) if "latest" in names else None
    candidates = [tag] if tag else []
    candidates.append("pytorch_model")  # Accelerate's tag for the first model
    for candidate in candidates:
        path = os.path.join(folder, candidate, DEEPSPEED_MODEL)
        if os.path.isfile(path):
            return path
    return None


def _latest_tag(folder: str) -> str | None:
    try:
        with open(os.path.join(folder, "latest"), encoding="utf-8") as f:
            tag = f.read(256).strip()
    except (OSError, UnicodeDecodeError):
        return None
    # a tag is one folder name inside the checkpoint folder, never a path elsewhere
    if not tag or "/" in tag or "\\" in tag or tag in (".", "..") or "\x00" in tag:
        return None
    return tag


def _with_note(keys: KeySet, note: str) -> KeySet:
    return keys.evolve(notes=(note, *keys.notes))


def read_deepspeed(path: str | os.PathLike[str], *, container: str | None = None) -> KeySet:
    """Read a DeepSpeed ``mp_rank_00_model_states.pt``: the model's state dict (``module``), explained.

    Under ZeRO stage 3 the state dict holds empty placeholders; the keys are then reported with the shapes DeepSpeed
    recorded (``param_shapes``), as a ``"shapes"`` source without data.
    """
    from keyguard.sources._pickle import _load, read_pickle
    from keyguard.sources._torch import import_torch

    path = os.fspath(path)
    top = _load(import_torch(f"to read the DeepSpeed checkpoint {path}"), path)
    if not isinstance(top, Mapping) or "module" not in top:
        return read_pickle(path, container=container)
    version = top.get("ds_version")
    described = f"DeepSpeed checkpoint{f' (DeepSpeed {version})' if isinstance(version, str) else ''}"
    folder = os.path.dirname(path)
    siblings = sorted(n for n in _list(folder) if _TP_RANKS.fullmatch(n))
    tp_note = (
        f"; the model is split over {len(siblings) + 1} tensor-parallel ranks and this reads rank 0 only"
        if siblings
        else ""
    )
    stage = _zero_stage(top)
    module = top.get("module")
    if container is None and stage == 3 and isinstance(module, Mapping) and _placeholders(module):
        return _zero3_keys(path, top, module, described)
    keys = read_pickle(path, container=container or "module")
    zero = f", ZeRO stage {stage}" if stage else ""
    note = f"{described}{zero}: the model's state dict is 'module' of {os.path.basename(path)}{tp_note}"
    return keys.evolve(notes=(note, *(n for n in keys.notes if "choose one with --container" not in n)))


def _zero_stage(top: Mapping[str, Any]) -> int | None:
    config = top.get("ds_config")
    zero = config.get("zero_optimization") if isinstance(config, Mapping) else None
    stage = zero.get("stage") if isinstance(zero, Mapping) else None
    return stage if isinstance(stage, int) and not isinstance(stage, bool) else None


def _placeholders(module: Mapping[str, Any]) -> bool:
    sizes = [getattr(v, "numel", lambda: 1)() for v in module.values() if hasattr(v, "shape")]
    return bool(sizes) and sizes.count(0) >= len(sizes) // 2


def _zero3_keys(path: str, top: Mapping[str, Any], module: Mapping[str, Any], described: str) -> KeySet:
    groups = top.get("param_shapes")
    shapes: dict[str, tuple[int, ...]] = {}
    for group in groups if isinstance(groups, list) else [groups]:
        if isinstance(group, Mapping):
            shapes.update({k: tuple(int(d) for d in v) for k, v in group.items() if isinstance(k, str)})
    frozen = top.get("frozen_param_shapes")
    if isinstance(frozen, Mapping):
        shapes.update({k: tuple(int(d) for d in v) for k, v in frozen.items() if isinstance(k, str)})
    if not shapes:
        raise SourceError(
            path,
            "zero3-partitioned",
            "is a DeepSpeed ZeRO-3 checkpoint whose model state holds only placeholders and no param_shapes;"
            " consolidate it with DeepSpeed's zero_to_fp32.py first",
        )
    tensors: dict[str, TensorInfo] = {}
    for key, value in module.items():
        if not hasattr(value, "shape"):
            continue
        dtype = canonical_dtype(value.dtype)
        if key in shapes:
            tensors[key] = TensorInfo(shapes[key], dtype, os.path.basename(path))
        elif value.numel() > 0:  # buffers are not partitioned
            tensors[key] = TensorInfo(tuple(value.shape), dtype, os.path.basename(path))
    for key, shape in shapes.items():
        tensors.setdefault(key, TensorInfo(shape, None, None))
    note = (
        f"{described}, ZeRO stage 3: 'module' holds placeholders, the weights are partitioned in the"
        " *_optim_states.pt files; keys and shapes come from param_shapes (no data: consolidate with DeepSpeed's"
        " zero_to_fp32.py before loading or fixing)"
    )
    return KeySet(
        tensors=tensors,
        format="shapes",
        location=path,
        unwrapped="module",
        files=(os.path.basename(path),),
        notes=(note,),
    )
