"""keyguard on the corpus of real renamed-layer conversions (tests/corpus): the hard invariant of issue 9.

No plan may put a checkpoint key under an expected key other than its truth, and no exact match may be kept
silently when the truth says it is another tensor. Cases where today's engine breaks this are marked
``xfail(strict=True)``: when a fix makes one pass, the mark must go. Coverage (keys mapped right, explained, hints)
is recorded per case as test output (``record_property``, and printed with ``-s``); over the whole corpus it must
not fall below the floors below (the figures issue 9 reached, less a margin), so a change that loses coverage is
seen. ``benchmarks/rename_corpus.py`` prints the table.
"""

from __future__ import annotations

from typing import Any

import pytest
from corpus import CASES
from corpus.evaluate import run

pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# Cases where the engine breaks the invariant today, as strict xfails (they fail loudly once fixed). The three that
# were listed when the corpus landed (segformer_stages, stale_unprefixed_copy, pipeline_stage_local_indices) are
# fixed by template alignment and contested exact matches.
BROKEN_TODAY: dict[str, str] = {}
#: Floors over the whole corpus: keys that need a rename mapped right by the safe or unsafe plan, the right target
#: offered somewhere in the report, and hints right when shown. Kept a point under the measured figures; five published
#: conversions joined (Whisper, CLIP, Megatron GPT-2, Mamba, SAM); on all 42 cases today: 84% / 95%.
MAPPED_FLOOR = 0.83
EXPLAINED_FLOOR = 0.94
HINTS_FLOOR = 0.9
_SCORES: dict[str, Any] = {}


def _params() -> list[Any]:
    return [
        pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=BROKEN_TODAY[name]))
        if name in BROKEN_TODAY
        else name
        for name in CASES
    ]


@pytest.fixture(scope="module", autouse=True)
def _quiet_transformers() -> None:
    transformers.utils.logging.set_verbosity_error()


@pytest.mark.parametrize("name", _params())
def test_no_key_lands_on_a_wrong_expected_key(name: str, record_property: Any) -> None:
    _, score = run(CASES[name]())
    figures = {k: v for k, v in score.as_dict().items() if k != "wrong"}
    record_property("corpus", figures)
    print(
        f"{name}: need {score.need}, safe {score.safe_right}, unsafe {score.unsafe_right}, explained"
        f" {score.explained}, hints {score.hints_right}/{score.hints}, silent {score.silent}"
    )
    assert score.error == ""
    assert score.wrong == []
    _SCORES[name] = score


def test_coverage_over_the_corpus_stays_above_its_floors() -> None:
    scores = [_SCORES[name] if name in _SCORES else run(CASES[name]())[1] for name in CASES]
    need = sum(s.need for s in scores)
    mapped = sum(max(s.safe_right, s.unsafe_right) for s in scores) / need
    explained = sum(s.explained for s in scores) / need
    print(f"corpus: {need} keys need a rename; mapped {mapped:.1%}, explained {explained:.1%}")
    assert mapped >= MAPPED_FLOOR
    assert explained >= EXPLAINED_FLOOR
    hints = sum(s.hints for s in scores)
    assert hints == 0 or sum(s.hints_right for s in scores) / hints >= HINTS_FLOOR


def test_broken_today_names_real_cases() -> None:
    assert set(BROKEN_TODAY) <= set(CASES)
