"""``module.path:callable`` references: the keys of the model an importable factory builds.

This runs your code: the module is imported (the current folder is searched first, as ``python -m`` does) and the
callable called with no arguments, under
``torch.device("meta")`` so that parameters take no memory and nothing is initialised (a factory that reads files or
needs real tensors fails there; build the model yourself and pass it to ``keyguard.diagnose`` instead). It may
return a ``torch.nn.Module``, a state dict, or anything else ``keyguard.read_keys`` accepts.
"""

from __future__ import annotations

import importlib
import os
import re
from typing import Final

from keyguard._exceptions import SourceError
from keyguard.sources._keyset import KeySet

_REFERENCE: Final = re.compile(
    r"(?P<module>[A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)*):(?P<attr>[A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)*)"
)


def is_factory_reference(text: str) -> bool:
    """``pkg.module:build`` (and not a path that exists)."""
    return _REFERENCE.fullmatch(text) is not None and not os.path.exists(text)


def read_factory(reference: str) -> KeySet:
    """Import ``module``, call ``callable()`` on the meta device, and read the keys of what it returns.

    Raises:
        SourceError: the module cannot be imported, the callable is missing, or calling it fails.
    """
    match = _REFERENCE.fullmatch(reference)
    if match is None:
        raise SourceError(
            reference, "invalid-reference", "expected an importable reference such as my_pkg.models:build"
        )
    module_name, attr = match["module"], match["attr"]
    import sys

    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target: object = importlib.import_module(module_name)
    except Exception as exc:
        raise SourceError(
            reference, "import-failed", f"importing {module_name} failed: {type(exc).__name__}: {exc}"
        ) from None
    for part in attr.split("."):
        if not hasattr(target, part):
            raise SourceError(reference, "no-such-callable", f"{module_name} has no attribute {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise SourceError(reference, "not-callable", f"{attr!r} in {module_name} is not callable")
    from keyguard.sources._torch import import_torch

    torch = import_torch(f"to build the model of {reference}")
    try:
        with torch.device("meta"):
            built = target()
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise SourceError(
            reference,
            "factory-failed",
            f"calling {attr}() on the meta device failed: {type(exc).__name__}: {first}",
        ) from None
    from keyguard.sources._resolve import read_keys

    keys = read_keys(built)
    return keys.evolve(location=reference)
