"""A development corpus of real renamed-layer conversions, and the harness that scores keyguard on them.

Each case (``corpus._case.Case``) is a checkpoint in one layout, the state dict a model expects in another, and the
ground truth between them, built from tiny models in well under a second, offline. ``CASES`` maps each case's
name to its builder; ``corpus.evaluate`` runs ``keyguard.diagnose`` on a case and scores the report.

    from corpus import CASES
    from corpus.evaluate import run
    report, score = run(CASES["segformer_stages"]())
"""

from __future__ import annotations

from collections.abc import Callable

from corpus import (
    cases_diffusers,
    cases_more,
    cases_original,
    cases_published,
    cases_timm,
    cases_transformers,
    cases_wrappers,
)
from corpus._case import Case, Link

CASES: dict[str, Callable[[], Case]] = {
    **cases_transformers.CASES,
    **cases_original.CASES,
    **cases_published.CASES,
    **cases_timm.CASES,
    **cases_diffusers.CASES,
    **cases_wrappers.CASES,
    **cases_more.CASES,
}
#: Cases built and proven but kept out of the totals and floors (run them by name: rename_corpus.py NAME).
EXTRA: dict[str, Callable[[], Case]] = {**cases_more.BELOW_FLOOR}

__all__ = ["CASES", "EXTRA", "Case", "Link"]
