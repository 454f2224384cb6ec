"""Regular expressions from untrusted files, evaluated with Python's ``re`` under a time budget.

``adapter_config.json`` patterns (``target_modules``, ``exclude_modules``, ``rank_pattern``, ``alpha_pattern``,
``layers_pattern``, ``modules_to_save``) and the rename rules of a ``--plan`` file come from files anyone can write.
``re`` backtracks: ``(.*)*X`` against a 40-character module name runs for longer than anyone waits. PEFT matches
these patterns with ``re``, so keyguard must too, or its answer could differ from PEFT's; a linear-time engine
(google-re2) refuses lookarounds, back-references and ``\\Z``, matches ``\\d`` on ASCII digits only, and would need
``re`` as a fallback anyway. So every such pattern is evaluated once against all the names it applies to, with
``re`` itself, and given up on when it overruns its budget (``PatternTimeout``):

- on the main thread (the command line, and check-adapter's worker processes) a ``SIGALRM`` timer interrupts the
  match: ``re`` checks for signals while it backtracks, so the bound holds inside a single match;
- on any other thread (or where there is no ``SIGALRM``), a pattern that is not *tame* is evaluated in a child
  Python process that is killed when the budget runs out. Tame patterns (no repetition inside a repetition, no
  alternation under a repetition, no back-reference, at most two unbounded repetitions on any path) cannot
  backtrack exponentially and run in place.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import re
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, Final, Literal

Mode = Literal["match", "fullmatch"]
Groups = tuple[str | None, ...]

#: Budget of one pattern: a second, plus a little per name it is matched against (a million names: 3 s).
BASE_SECONDS: Final = 1.0
PER_NAME_SECONDS: Final = 2e-6
_CHILD_START: Final = 2.0  # a child interpreter's start-up, on top of the budget
_TAME_DEGREE: Final = 2


class PatternTimeout(Exception):
    """A pattern from an untrusted file did not finish matching within its budget."""

    def __init__(self, pattern: str, seconds: float) -> None:
        self.pattern = pattern
        self.seconds = seconds
        super().__init__(f"{pattern!r} did not finish matching within {seconds:g} s")


def budget(names: int) -> float:
    """The time one pattern may take over ``names`` names."""
    return BASE_SECONDS + PER_NAME_SECONDS * names


def match_all(
    pattern: str, names: Sequence[str], *, mode: Mode = "match", seconds: float | None = None
) -> list[Groups | None]:
    """``re``'s answer for each name: ``None`` when ``pattern`` does not match it, else ``match.groups()``.

    Raises:
        re.error: the pattern does not compile.
        PatternTimeout: the evaluation overran ``seconds`` (default: ``budget(len(names))``).
    """
    compiled = re.compile(pattern)
    limit = budget(len(names)) if seconds is None else seconds
    if runs_here(pattern):
        with bounded(pattern, limit):
            return _evaluate(compiled, names, mode)
    return _in_child(pattern, names, mode, limit)


def runs_here(pattern: str) -> bool:
    """Whether ``pattern`` may be evaluated in this thread, inside ``bounded``: on the main thread (a timer bounds
    it), or anywhere when it is tame. Otherwise ``match_all`` evaluates it in a child process."""
    return _can_alarm() or tame(pattern)


@contextlib.contextmanager
def bounded(pattern: str, seconds: float) -> Iterator[None]:
    """Evaluate ``pattern`` in the body, given up on after ``seconds`` on the main thread (``PatternTimeout``);
    elsewhere the body runs as it is, which ``runs_here`` allows for tame patterns only."""
    if not _can_alarm():
        yield
        return
    with _alarm(pattern, seconds):
        yield


@functools.lru_cache(maxsize=1024)
def tame(pattern: str) -> bool:
    """True when ``pattern`` cannot backtrack more than quadratically (see the module's docstring)."""
    parser: Any = _parser()
    try:
        return _degree(parser.parse(pattern)) <= _TAME_DEGREE
    except Exception:  # whatever the private parser makes of it: not provably tame
        return False


def _evaluate(compiled: re.Pattern[str], names: Sequence[str], mode: Mode) -> list[Groups | None]:
    run = compiled.fullmatch if mode == "fullmatch" else compiled.match
    out: list[Groups | None] = []
    for name in names:
        found = run(name)
        out.append(None if found is None else found.groups())
    return out


# -- the main thread: a timer -----------------------------------------------------------------------------------
class _Expired(BaseException):
    """Raised by the timer inside ``re``; a BaseException, so no ``except Exception`` on the way can swallow it."""


def _can_alarm() -> bool:
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


def _expire(signum: int, frame: object) -> None:
    raise _Expired


@contextlib.contextmanager
def _alarm(pattern: str, seconds: float) -> Iterator[None]:
    previous = signal.signal(signal.SIGALRM, _expire)
    delay, interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    started = time.monotonic()
    try:
        yield
    except _Expired:
        raise PatternTimeout(pattern, seconds) from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous if previous is not None else signal.SIG_DFL)  # None: set in C
        if delay > 0:  # someone else's timer (pytest-timeout, an application's): put it back, less this time
            signal.setitimer(signal.ITIMER_REAL, max(delay - (time.monotonic() - started), 1e-3), interval)


# -- any other thread: a child process ----------------------------------------------------------------------------
_CHILD: Final = """
import json, re, sys
job = json.load(sys.stdin)
compiled = re.compile(job["pattern"])
run = compiled.fullmatch if job["mode"] == "fullmatch" else compiled.match
out = []
for name in job["names"]:
    found = run(name)
    out.append(None if found is None else found.groups())
json.dump(out, sys.stdout)
"""


def _in_child(pattern: str, names: Sequence[str], mode: Mode, seconds: float) -> list[Groups | None]:
    import subprocess  # only for patterns that are not tame, off the main thread: not at every start-up

    job = json.dumps({"pattern": pattern, "mode": mode, "names": list(names)})
    try:
        done = subprocess.run(
            [sys.executable, "-I", "-S", "-c", _CHILD],
            input=job,
            capture_output=True,
            text=True,
            timeout=seconds + _CHILD_START,
            check=True,
        )
    except subprocess.TimeoutExpired:
        raise PatternTimeout(pattern, seconds) from None
    return [None if groups is None else tuple(groups) for groups in json.loads(done.stdout)]


# -- the tameness screen ------------------------------------------------------------------------------------------
_REPEATS: Final = frozenset({"MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"})
_UNBOUNDED: Final = float("inf")


def _parser() -> Any:
    try:
        return importlib.import_module("re._parser")  # Python 3.11 and later
    except ImportError:  # pragma: no cover - Python 3.10
        return importlib.import_module("sre_parse")


def _degree(items: Any) -> float:
    """How many unbounded repetitions can stack up on one path (infinity: a repetition inside a repetition, an
    alternation under one, or a back-reference)."""
    total = 0.0
    for op, av in items:
        name = str(op)
        if name in _REPEATS:
            _, high, body = av
            if high <= 1:  # an optional part: its own repetitions count, once
                total += _degree(body)
            elif _nests(body):
                return _UNBOUNDED
            else:
                total += 1
        elif name == "SUBPATTERN":
            total += _degree(av[-1])
        elif name == "BRANCH":
            total += max(_degree(branch) for branch in av[1])
        elif name in ("ASSERT", "ASSERT_NOT"):
            total += _degree(av[1])
        elif name == "ATOMIC_GROUP":
            total += _degree(av)
        elif name in ("GROUPREF", "GROUPREF_EXISTS"):
            return _UNBOUNDED
    return total


def _nests(items: Any) -> bool:
    """Whether a repeated body holds a repetition (even ``?``) or an alternation: the ways to split a name between
    the copies then multiply with every copy."""
    for op, av in items:
        name = str(op)
        if name in _REPEATS or name in ("BRANCH", "GROUPREF", "GROUPREF_EXISTS"):
            return True
        if name == "SUBPATTERN" and _nests(av[-1]):
            return True
        if name in ("ASSERT", "ASSERT_NOT") and _nests(av[1]):
            return True
        if name == "ATOMIC_GROUP" and _nests(av):
            return True
    return False
