"""Pausing Python's cyclic garbage collector around work that builds large acyclic structures.

Reading a header and diagnosing keys allocate an object or a few per key, up to millions, none of them in a
reference cycle: the collector would rescan them again and again as they pile up and find nothing to free (about
10% of a large diagnosis, at whatever allocation a collection happens to fall on). Reference counting still frees
everything as usual, and the collector's previous state is restored after. The pause is process-wide (Python has
one collector): while a diagnosis runs, other threads' reference cycles wait for the next collection after it.
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
