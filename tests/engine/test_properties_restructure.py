"""Property suite for the rename shapes real checkpoints have (issue 9): realistic module trees x conversions.

Every case is a model (numbered blocks, stages of different widths, BatchNorm leaf sets, equal-shaped norms inside a
block, nested Sequentials, stems laid out unlike later stages), a checkpoint made from it by one or more conversions
(segments renamed, an index moved across segments, blocks regrouped into stages, merged / split segments, changed
separators, 1-based or compound indices, interleaved families, an offset under one sub-module, Sequential wrap /
unwrap, single-module renames, reversed lists, gamma/beta leaves) plus noise (dropped keys, extra keys shaped like
dropped ones, wrapper prefixes, stale copies), and the truth tracked through every step. The invariants
(``_restructure_checks.violations``):

(a) neither plan puts a checkpoint key under a wrong expected key;
(b) every key is in at most one finding, and none is lost;
(c) a rule finding's examples are what the unsafe plan does;
(d) candidates offered for a key always have its shape;
(e) no exact match is kept silently when the key that really holds that name is in the checkpoint;
(f) a plan lands a key on a model key only as far as the applicability of the finding that holds it allows.

Conversion kinds on which the engine still breaks an invariant are marked ``xfail(strict=True)``: the minimal
counterexamples are in ``test_restructure_regressions.py``; when the engine keeps a kind's invariants, its test
passes, strict xfail turns that into a failure, and the marker comes off. To explore beyond the CI budget, use
``tests/engine/explore_restructure.py``.
"""

from __future__ import annotations

import pytest
from _hypothesis_profiles import examples
from _restructure import CONVERSIONS, Case, cases
from _restructure_checks import check
from hypothesis import HealthCheck, Phase, given, settings

#: CI budget per conversion kind (the module runs in well under a minute).
EXAMPLES = 150
#: Known to fail: a failing example is reported as found, not shrunk (the regressions file holds minimal ones).
NO_SHRINK = (Phase.explicit, Phase.reuse, Phase.generate)

#: Kinds on which the engine breaks an invariant today, and why (see the regressions file).
FAILING: dict[str, str] = {}


def _settings(budget: int, failing: bool) -> settings:
    """The profile's settings (``ci``: derandomised, no database) with this module's budget."""
    return settings(
        deadline=None,
        max_examples=examples(budget),
        phases=NO_SHRINK if failing else tuple(Phase),
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


def _kind_param(kind: str) -> object:
    if kind in FAILING:
        return pytest.param(kind, marks=pytest.mark.xfail(strict=True, raises=AssertionError, reason=FAILING[kind]))
    return kind


@pytest.mark.hypothesis  # the property inside is built per kind: ``make fuzz`` (``-m hypothesis``) runs it too
@pytest.mark.parametrize("kind", [_kind_param(k) for k in CONVERSIONS])
def test_one_conversion_kind_keeps_the_invariants(kind: str) -> None:
    @_settings(EXAMPLES, kind in FAILING)
    @given(cases(kinds=(kind,), max_conversions=2))
    def run(case: Case) -> None:
        check(case)

    run()


@_settings(300, False)
@given(cases())
def test_mixed_conversions_keep_the_invariants(case: Case) -> None:
    check(case)


@_settings(100, False)
@given(cases())
def test_the_truth_of_a_generated_case_is_consistent(case: Case) -> None:
    """The generator's own bookkeeping: every checkpoint key's truth is an expected key of its shape, no two keys
    claim one expected key except a stale copy's owner, and undropped expected keys all have their source."""
    claimed: dict[str, str] = {}
    for key, target in case.truth.items():
        assert key in case.checkpoint
        if target is None or (key == target and any(t == key != k for k, t in case.truth.items())):
            continue  # an extra key, or a stale copy beside the real key
        assert target in case.expected, (key, target, case.steps)
        assert case.checkpoint[key] == case.expected[target], (key, target, case.steps)
        assert target not in claimed, (key, claimed[target], target, case.steps)
        claimed[target] = key
    assert set(claimed) == set(case.expected) - set(case.dropped), case.steps
    assert case.kinds, "a conversion applied"


def test_the_checks_catch_what_they_check() -> None:
    """Each invariant fails on a report that breaks it: a real report of a DDP prefix, then a lying truth (a) and
    reports edited to break (b), (c), (d), (f); and (e) on a shifted group that the truth says is offset."""
    from _restructure_case import explicit
    from _restructure_checks import diagnose, violations

    from keyguard.fixes import Applicability
    from keyguard.report import Example

    case = explicit(
        expected={"a.weight": (4,), "b.weight": (4,)},
        checkpoint={"module.a.weight": (4,), "module.b.weight": (4,)},
        truth={"module.a.weight": "a.weight", "module.b.weight": "b.weight"},
    )
    report = diagnose(case)
    assert violations(case, report) == []
    lying = explicit(
        expected=case.expected,
        checkpoint=case.checkpoint,
        truth={"module.a.weight": "b.weight", "module.b.weight": "a.weight"},
    )
    assert {v.check for v in violations(lying, report)} == {"a"}
    rule = next(f for f in report.findings if f.fix is not None)
    twice = report.model_copy(update={"findings": [*report.findings, rule]})
    assert {v.check for v in violations(case, twice)} == {"b"}
    wrong_example = rule.model_copy(update={"examples": [Example(checkpoint="module.a.weight", expected="b.weight")]})
    edited = report.model_copy(update={"findings": [wrong_example if f is rule else f for f in report.findings]})
    assert {v.check for v in violations(case, edited)} == {"c"}
    offered = rule.model_copy(update={"ctx": {**rule.ctx, "candidates": {"module.a.weight": ["c.weight"]}}})
    widened = explicit(expected={**case.expected, "c.weight": (4, 4)}, checkpoint=case.checkpoint, truth=lying.truth)
    edited = report.model_copy(update={"findings": [offered if f is rule else f for f in report.findings]})
    assert "d" in {v.check for v in violations(widened, edited)}
    shifted = explicit(
        expected={"x.layers.0.w": (4,), "x.layers.1.w": (4,)},
        checkpoint={"x.layers.1.w": (4,), "x.layers.2.w": (4,)},
        truth={"x.layers.1.w": "x.layers.0.w", "x.layers.2.w": "x.layers.1.w"},
    )
    quiet = diagnose(shifted).model_copy(update={"findings": []})
    assert "e" in {v.check for v in violations(shifted, quiet)}
    assert rule.fix is not None
    demoted = rule.model_copy(update={"fix": rule.fix.model_copy(update={"applicability": Applicability.display_only})})
    edited = report.model_copy(update={"findings": [demoted if f is rule else f for f in report.findings]})
    assert {v.check for v in violations(case, edited)} == {"f"}
