"""Lazy re-exports (PEP 562): a package's public names are imported from their private modules on first use.

``import keyguard`` and ``keyguard --version`` then cost a few milliseconds instead of importing every subpackage
and building every record class. Each package lists its names twice: as ``if TYPE_CHECKING:`` imports, which is
what type checkers and the docs read, and as the ``{name: module}`` table given here, which is what runs; a test
keeps the two equal.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, names: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Return a module ``__getattr__`` and ``__dir__`` that import each of ``names`` from its module when asked.

    Args:
        package: the package's ``__name__``.
        names: public name -> the module (absolute) that defines it.
    """
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value  # later look-ups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *names})

    return __getattr__, __dir__
