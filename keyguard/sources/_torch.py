"""Lazy imports of the optional heavy dependencies (torch costs about 2 s of start-up)."""

from __future__ import annotations

import sys
from typing import Any


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
