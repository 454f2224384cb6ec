"""The published scripts behind corpus.cases_more agree with each case's truth: the script's own renames (original
-> legacy), applied to the case's checkpoint, give exactly the layout transformers writes for the model."""

from __future__ import annotations

import pytest

from corpus import cases_more

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")


_ALL = {**cases_more.CASES, **cases_more.BELOW_FLOOR}


@pytest.mark.parametrize("name", list(_ALL))
def test_the_published_script_gives_transformers_legacy_layout(name: str) -> None:
    case = _ALL[name]()
    converted = case.tags["script"](case.checkpoint)
    legacy = case.tags["legacy"]
    assert sorted(converted) == sorted(legacy)
    assert [k for k in legacy if not torch.equal(converted[k], legacy[k])] == []


@pytest.mark.parametrize("name", list(cases_more.BELOW_FLOOR))
def test_cases_below_the_floor_hold_by_value(name: str) -> None:
    case = cases_more.BELOW_FLOOR[name]()
    assert case.verify() == []
    assert case.needs()
