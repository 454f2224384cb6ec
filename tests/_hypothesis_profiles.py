"""Hypothesis profiles: ``ci`` (the default) is reproducible, ``fuzz`` explores.

- ``ci``: derandomised (the examples are a function of the test alone), no example database (a failure found on a
  developer's machine and stored in ``.hypothesis/`` never changes what CI runs), no deadline (shared CI machines
  are slow), and the blob to reproduce a failure is printed.
- ``fuzz``: random seeds, many examples, the example database on (a failure found is replayed first next time).
  Selected by ``HYPOTHESIS_PROFILE=fuzz``, which ``make fuzz`` sets.

Tests with a budget of their own write ``@settings(max_examples=examples(300))``: that budget under ``ci``, the
fuzz profile's larger one when fuzzing.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from typing import Final

from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase

PROFILE_VARIABLE: Final = "HYPOTHESIS_PROFILE"
CI_EXAMPLES: Final = 100
FUZZ_EXAMPLES: Final = 5_000

settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    max_examples=CI_EXAMPLES,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "fuzz",
    derandomize=False,
    database=DirectoryBasedExampleDatabase(".hypothesis/examples"),
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)


_loaded = "ci"


def load() -> str:
    """Load the profile named by ``$HYPOTHESIS_PROFILE`` (default ``ci``); returns its name.

    Under ``ci`` nothing is read from or written to ``.hypothesis/``: Hypothesis keeps other caches there besides
    the example database (constants found in the source), so its storage moves to a temporary folder of this
    process, removed at exit.
    """
    global _loaded
    _loaded = os.environ.get(PROFILE_VARIABLE) or "ci"
    if _loaded == "ci" and "HYPOTHESIS_STORAGE_DIRECTORY" not in os.environ:
        storage = tempfile.mkdtemp(prefix="keyguard-hypothesis-")
        atexit.register(shutil.rmtree, storage, ignore_errors=True)
        os.environ["HYPOTHESIS_STORAGE_DIRECTORY"] = storage
    settings.load_profile(_loaded)
    return _loaded


def examples(budget: int) -> int:
    """A test's own example budget under ``ci``; at least the profile's when fuzzing."""
    return budget if _loaded == "ci" else max(budget, settings.default.max_examples)
