"""Untrusted regular expressions: ``re``'s own answers, within a budget, on the main thread and off it."""

from __future__ import annotations

import re
import signal
import threading
from typing import Any

import pytest

from keyguard._regex_budget import PatternTimeout, match_all, runs_here, tame

EXPONENTIAL = r"(.*)*X"  # against a 40-character name: 2**40 ways to split it
NAMES = ["model.layers.0.self_attn.q_proj.lora_A.x", "a" * 40]


@pytest.mark.parametrize(
    ("pattern", "is_tame"),
    [
        (r"((?:.*\.)?)gamma((?:\..*)?)", True),  # the engine's own rename rules
        (r"(?:(?:.*\.)?(?P<p0>q_proj)$)|(?:(?:.*\.)?(?P<p1>v_proj)$)", True),  # rank_pattern, combined
        (r"(^|.*\.)classifier($|\..*)", True),  # modules_to_save, as peft wraps it
        (r".*\.(q|v)_proj", True),
        (r"(a|b)*c", True),  # a set, not an alternation, once parsed
        (EXPONENTIAL, False),
        (r"(a|ab)*c", False),
        (r"(?:a?){30}a{30}", False),
        (r"(\w+\.?)+$", False),
        (r".*a.*b.*c", False),  # cubic
        (r"(a)\1", False),
    ],
)
def test_tame_patterns(pattern: str, is_tame: bool) -> None:
    assert tame(pattern) is is_tame


@pytest.mark.parametrize("mode", ["match", "fullmatch"])
@pytest.mark.parametrize(
    "pattern", [r"(?:^|.*?\.)layers\.(?P<idx>\d+)\.", r".*q_proj.*", r"model\.(\w+)", r"(?=model)m(o)", r"x?"]
)
def test_the_answers_are_re_s_own(pattern: str, mode: str) -> None:
    compiled = re.compile(pattern)
    run = compiled.fullmatch if mode == "fullmatch" else compiled.match
    expected = [None if (m := run(n)) is None else m.groups() for n in NAMES]
    assert match_all(pattern, NAMES, mode=mode) == expected  # type: ignore[arg-type]
    outcome: list[Any] = []
    worker = threading.Thread(target=lambda: outcome.append(match_all(pattern, NAMES, mode=mode)))  # type: ignore[arg-type]
    worker.start()
    worker.join()
    assert outcome == [expected]


def test_an_exponential_pattern_is_given_up_on_the_main_thread() -> None:
    with pytest.raises(PatternTimeout) as info:
        match_all(EXPONENTIAL, NAMES, mode="fullmatch", seconds=0.2)
    assert info.value.pattern == EXPONENTIAL and "did not finish matching within 0.2 s" in str(info.value)


def test_an_exponential_pattern_is_given_up_in_a_child_process_off_the_main_thread() -> None:
    outcome: list[BaseException] = []

    def run() -> None:
        assert not runs_here(EXPONENTIAL)
        try:
            match_all(EXPONENTIAL, NAMES, mode="fullmatch", seconds=0.2)
        except PatternTimeout as exc:
            outcome.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive() and len(outcome) == 1


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="no interval timers")
def test_a_timer_armed_by_someone_else_is_put_back() -> None:
    fired: list[int] = []
    previous = signal.signal(signal.SIGALRM, lambda *_: fired.append(1))
    old = signal.setitimer(signal.ITIMER_REAL, 100.0)
    try:
        match_all(r"a+", ["aaa"])
        with pytest.raises(PatternTimeout):
            match_all(EXPONENTIAL, NAMES, mode="fullmatch", seconds=0.1)
        remaining, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 90 < remaining <= 100 and fired == []
        assert signal.getsignal(signal.SIGALRM) is not None
    finally:
        signal.setitimer(signal.ITIMER_REAL, *old)
        signal.signal(signal.SIGALRM, previous)
