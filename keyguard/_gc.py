"""Pausing Python's cyclic garbage collector around work that builds large acyclic structures.

Reading a header and diagnosing keys allocate an object or a few per key, up to millions, none of them in a
reference cycle: the collector would rescan them again and again as they pile up and find nothing to free (about
10% of a large diagnosis, at whatever allocation a collection happens to fall on). Reference counting still frees
everything as usual; the collector's previous state is restored after, so callers in the same process are not
affected.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Run the ``with`` body with the cyclic collector disabled, then restore it as it was."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
