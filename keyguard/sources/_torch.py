"""Lazy imports of the optional heavy dependencies (torch costs about 2 s of start-up)."""

from __future__ import annotations

import sys
from typing import Any

#: The extra of keyguard that installs each optional package.
EXTRAS = {"torch": "torch", "transformers": "hf", "peft": "hf"}


def require(needed_for: str, *packages: str) -> None:
    """Raise one ``MissingDependencyError`` naming every package of ``packages`` that is not installed, with the one
    ``pip install`` line that installs them all (nothing is imported: this costs no start-up time)."""
    import importlib.util

    missing = []
    for package in packages:
        try:
            found = importlib.util.find_spec(package) is not None
        except (ImportError, ValueError):  # a package blocked in sys.modules, or broken
            found = False
        if not found:
            missing.append(package)
    if missing:
        from keyguard._exceptions import MissingDependencyError

        extras = ",".join(sorted({EXTRAS[p] for p in missing}))
        raise MissingDependencyError(" and ".join(missing), needed_for, extras)


def import_torch(needed_for: str) -> Any:
    """Import torch, or raise ``MissingDependencyError`` saying what it was needed for."""
    try:
        import torch
    except ImportError:
        from keyguard._exceptions import MissingDependencyError

        raise MissingDependencyError("torch", needed_for, "torch") from None
    return torch


def import_transformers(needed_for: str) -> Any:
    """Import transformers, or raise ``MissingDependencyError``."""
    try:
        import transformers
    except ImportError:
        from keyguard._exceptions import MissingDependencyError

        raise MissingDependencyError("transformers", needed_for, "hf") from None
    return transformers


def is_torch_module(obj: object) -> bool:
    """True for a ``torch.nn.Module``; never imports torch (a module can only exist if torch is loaded)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.nn.Module)


def is_torch_tensor(obj: object) -> bool:
    """True for a ``torch.Tensor``; never imports torch."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.Tensor)
