"""A folder holding only ``config.json``: the keys the model class expects, built on the meta device."""

from __future__ import annotations

import os
from typing import Any

from keyguard._exceptions import SourceError
from keyguard.sources._jsonfile import load_json_object
from keyguard.sources._keyset import KeySet
from keyguard.sources._module import read_module
from keyguard.sources._torch import import_torch, import_transformers, require


def read_config(folder: str | os.PathLike[str], *, architecture: str | None = None) -> KeySet:
    """Build ``config.architectures[0]`` (or ``architecture``) on the meta device and read its state-dict keys.

    No weights are read and nothing is downloaded: the config is read from the folder (or from the config file
    itself, when ``folder`` names a file) and the model is built with empty (meta) tensors, so even a large model
    costs milliseconds.
    """
    folder = os.fspath(folder)
    config_path = folder if os.path.isfile(folder) else os.path.join(folder, "config.json")
    raw = load_json_object(config_path)
    names = raw.get("architectures") or []
    name = architecture or (names[0] if isinstance(names, list) and names and isinstance(names[0], str) else None)
    if name is None:
        raise SourceError(
            config_path,
            "no-architecture",
            "config.json names no architectures, so the model class is unknown; pass the class name"
            " (--architecture LlamaForCausalLM)",
        )
    require(f"to build the model described by {config_path}", "transformers", "torch")  # both named at once
    transformers = import_transformers(f"to build the model described by {config_path}")
    torch = import_torch(f"to build the model described by {config_path}")
    try:
        cls = getattr(transformers, name, None)
    except Exception:  # transformers' lazy module imports on attribute access; a broken import is "no such class"
        cls = None
    if cls is None or not hasattr(cls, "config_class"):
        raise SourceError(
            config_path,
            "unknown-architecture",
            f"transformers {transformers.__version__} has no model class {name!r}",
            architecture=name,
        )
    try:
        config = transformers.AutoConfig.from_pretrained(config_path, local_files_only=True)
        with torch.device("meta"):
            model = cls(config)
        dtype = _config_dtype(torch, config)
        if dtype is not None:
            model = model.to(dtype)
    except SourceError:
        raise
    except Exception as exc:
        raise SourceError(
            config_path,
            "cannot-build-model",
            f"could not build {name} from this config: {_first_line(exc)}",
        ) from None
    keys = read_module(model, format="config", location=folder)
    return keys.evolve(architecture=name, files=(os.path.basename(config_path),))


def _config_dtype(torch: Any, config: Any) -> Any:
    # transformers 5 names it `dtype` and warns when `torch_dtype` is read; 4.x only has `torch_dtype`
    value = getattr(config, "dtype", None) if hasattr(config, "dtype") else getattr(config, "torch_dtype", None)
    if isinstance(value, str):
        value = getattr(torch, value, None)
    return value if isinstance(value, torch.dtype) else None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
