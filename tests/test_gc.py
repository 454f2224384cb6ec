"""The cyclic garbage collector is paused around key tables (``keyguard._gc``) and always restored."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

import keyguard
from keyguard._gc import cyclic_gc_paused
from keyguard.engine import _pipeline
from keyguard.report import Report
from keyguard.sources import TensorInfo


@pytest.fixture(params=[True, False], ids=["gc-on", "gc-off"])
def gc_state(request: pytest.FixtureRequest) -> Iterator[bool]:
    was = gc.isenabled()
    (gc.enable if request.param else gc.disable)()
    try:
        yield request.param
    finally:
        (gc.enable if was else gc.disable)()


def test_the_previous_state_comes_back_also_after_an_error(gc_state: bool) -> None:
    with cyclic_gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled() is gc_state
    with pytest.raises(KeyError), cyclic_gc_paused():
        raise KeyError("x")
    assert gc.isenabled() is gc_state


def test_diagnose_runs_the_engine_with_the_collector_paused(gc_state: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bool] = []
    run = _pipeline._Engine.run

    def spy(self: _pipeline._Engine) -> Report:
        seen.append(gc.isenabled())
        return run(self)

    monkeypatch.setattr(_pipeline._Engine, "run", spy)
    info = TensorInfo((2, 2), "F32")
    report = keyguard.diagnose({"module.w": info}, {"w": info})
    assert seen == [False] and report.summary.coverage_after == 1.0
    assert gc.isenabled() is gc_state

    def broken(self: _pipeline._Engine) -> Report:
        raise RuntimeError("engine failure")

    monkeypatch.setattr(_pipeline._Engine, "run", broken)
    with pytest.raises(RuntimeError, match="engine failure"):
        keyguard.diagnose({"module.w": info}, {"w": info})
    assert gc.isenabled() is gc_state
