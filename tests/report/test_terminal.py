"""Terminal output: the width it fits (80 and 200 columns, COLUMNS, a real terminal, pipes), words never broken
inside a key or a flag, and colour following NO_COLOR / FORCE_COLOR / --color."""

from __future__ import annotations

import fcntl
import os
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

import keyguard
from keyguard._console import STABLE_WIDTH, clip, plain, terminal_width, use_color, wrap
from keyguard.demo import write_example
from keyguard.report import Report
from keyguard.report._next import next_steps

ANSI = re.compile(r"\x1b\[[0-9;]*m")
# keys long enough to wrap at 80 columns, flags with values, code spans: the cases that broke
LONG_BLOCK = "transformer.encoder.very_long_module_name_for_a_vision_language_adapter_block"


@pytest.fixture
def demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Report, str, str]:
    """``make demo``'s pair, named as a user in the folder above would type them (commands print the names given:
    an argument is never shortened, so one longer than the line would overflow it)."""
    monkeypatch.chdir(tmp_path)
    checkpoint, manifest = write_example("demo")
    return keyguard.diagnose(checkpoint, manifest), checkpoint, manifest


def words_intact(text: str, words: list[str], width: int) -> None:
    """Each word is on one line, whole, or (when longer than a line) shortened from the middle on one line."""
    lines = text.splitlines()
    for word in words:
        if len(word) <= width - 8:
            assert any(word in line for line in lines), word
        else:
            assert any(word[:10] in line and word[-10:] in line for line in lines), word


@pytest.mark.parametrize("width", [80, 200])
def test_the_demo_diagnosis_fits_and_breaks_only_between_words(demo: tuple[Report, str, str], width: int) -> None:
    report, checkpoint, manifest = demo
    steps = next_steps(report, checkpoint=checkpoint, expected=manifest)
    text = report.render("table", width=width, next_steps=steps)
    lines = text.splitlines()
    assert all(len(line) <= width for line in lines), [line for line in lines if len(line) > width]
    assert "`" not in text  # Markdown marks are for Markdown
    # the table shows 4 patterns and 2 examples per finding
    keys = [p for f in report.findings for p in f.patterns[:4] if not p.startswith("...")]
    keys += [k for f in report.findings for ex in f.examples[:2] for k in (ex.checkpoint, ex.expected) if k]
    words_intact(text, keys, width)
    # a flag and its value share a line: --ignore '^lm_head\.weight$' and -o PATH
    assert any("--ignore '^lm_head\\.weight$'" in line for line in lines)
    commands = lines[lines.index("Next:") :]
    assert not any(line.rstrip(" \\").endswith(("--ignore", "-o", "--expected")) for line in commands)
    # a shape or dtype example names its key once, not "k -> k"
    assert not re.search(r"(?<!\S)(\S+) -> \1(?!\S)", text)
    if width == 200:  # the width is used: the headline and the first finding's message are one line each
        assert any(line.startswith("42 checkpoint keys") and "coverage" in line for line in lines)


def test_wrap_never_splits_a_key_or_a_flag() -> None:
    key = f"{LONG_BLOCK}.layers.11.self_attn.q_proj.weight"
    text = f"strip `module.` from {key} then rerun with --ignore '^lm_head\\.weight$' --drop-unexpected -o out.st"
    for width in (40, 60, 80, 100):
        lines = wrap(text, width, indent=4, hang=2)
        assert all(len(line) <= width for line in lines)
        joined = " ".join(line.strip() for line in lines)
        assert "`" not in joined and "strip module. from" in joined
        for word in ("--ignore '^lm_head\\.weight$'", "--drop-unexpected", "-o out.st"):
            assert any(word in line for line in lines), (width, word)
        assert any(key in line for line in lines) or any(clip(key, width - 6) in line for line in lines)


@pytest.mark.parametrize("width", [80, 200])
def test_the_busy_report_at_80_and_200_columns(tmp_path: Path, width: int) -> None:
    expected = {f"{LONG_BLOCK}.layers.{i}.{m}.weight": (4, 4) for i in range(12) for m in ("q_proj", "k_proj")}
    expected |= {"classifier.weight": (3, 4), "norm.weight": (4,)}
    checkpoint = {"module." + k: v for k, v in expected.items()}
    checkpoint["module.classifier.weight"] = (5, 4)
    report = keyguard.diagnose(checkpoint, expected)
    text = report.render("table", width=width)
    assert all(len(line) <= width for line in text.splitlines())
    words_intact(text, [p for f in report.findings for p in f.patterns[:4] if not p.startswith("...")], width)
    assert "ignore_mismatched_sizes=True" in " ".join(text.split())  # a head of another size: the transformers way


def test_colour_only_when_asked(demo: tuple[Report, str, str]) -> None:
    report = demo[0]
    plain_text = report.render("table", width=80)
    coloured = report.render("table", width=80, color=True)
    assert not ANSI.search(plain_text) and ANSI.search(coloured)
    assert ANSI.sub("", coloured) == plain_text  # colour adds codes, never text or line breaks
    for fmt in ("json", "markdown", "github", "junit"):
        assert not ANSI.search(report.render(fmt))


def test_colour_conventions(monkeypatch: pytest.MonkeyPatch) -> None:
    class Tty:
        def __init__(self, tty: bool) -> None:
            self.tty = tty

        def isatty(self) -> bool:
            return self.tty

    for name in ("NO_COLOR", "FORCE_COLOR", "TERM"):
        monkeypatch.delenv(name, raising=False)
    assert use_color(Tty(True)) and not use_color(Tty(False))  # auto: a terminal only
    assert use_color(Tty(False), "always") and not use_color(Tty(True), "never")
    monkeypatch.setenv("NO_COLOR", "1")
    assert not use_color(Tty(True)) and use_color(Tty(True), "always")  # the flag wins over the environment
    monkeypatch.setenv("NO_COLOR", "")  # empty: as if unset
    assert use_color(Tty(True))
    monkeypatch.setenv("FORCE_COLOR", "1")
    assert use_color(Tty(False)) and not use_color(Tty(False), "never")
    monkeypatch.setenv("FORCE_COLOR", "0")
    assert not use_color(Tty(False))
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("FORCE_COLOR", "1")
    assert not use_color(Tty(True))  # NO_COLOR wins over FORCE_COLOR
    monkeypatch.delenv("NO_COLOR")
    monkeypatch.delenv("FORCE_COLOR")
    monkeypatch.setenv("TERM", "dumb")
    assert not use_color(Tty(True))


def test_width_from_columns_else_stable_for_pipes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    with open(tmp_path / "out.txt", "w") as f:
        assert terminal_width(f) == STABLE_WIDTH  # a file: the same width on every machine
    monkeypatch.setenv("COLUMNS", "132")
    assert terminal_width() == 132
    monkeypatch.setenv("COLUMNS", "12")
    assert terminal_width() == 40  # narrower than anything readable: the minimum
    monkeypatch.setenv("COLUMNS", "wide")
    assert terminal_width() == STABLE_WIDTH


def _run_on_a_terminal(args: list[str], columns: int, env: dict[str, str], cwd: Path) -> str:
    """Run ``python -m keyguard ARGS`` with stdout on a pseudo-terminal ``columns`` wide; returns what it showed."""
    import pty

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "keyguard", *args], stdout=slave, stderr=subprocess.DEVNULL, env=env, cwd=cwd
        )
        os.close(slave)
        chunks = []
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        proc.wait(timeout=120)
    finally:
        os.close(master)
    return b"".join(chunks).decode().replace("\r\n", "\n")


@pytest.mark.slow
@pytest.mark.parametrize("columns", [80, 200])
def test_a_real_terminal_of_80_and_200_columns(
    demo: tuple[Report, str, str], offline_env: dict[str, str], tmp_path: Path, columns: int
) -> None:
    _, checkpoint, manifest = demo
    env = {k: v for k, v in offline_env.items() if k not in ("COLUMNS", "NO_COLOR", "FORCE_COLOR")}
    env["TERM"] = "xterm-256color"
    for args in (["diagnose", checkpoint, "-e", manifest], ["inspect", checkpoint], ["explain"], ["explain", "101"]):
        shown = _run_on_a_terminal(args, columns, env, tmp_path)
        assert ANSI.search(shown) or args[0] == "inspect", args  # a terminal: severities and codes in colour
        lines = ANSI.sub("", shown).splitlines()
        assert lines and all(len(line) <= columns for line in lines), (args, max(map(len, lines)))
    shown = ANSI.sub("", _run_on_a_terminal(["diagnose", checkpoint, "-e", manifest], columns, env, tmp_path))
    assert "keyguard fix" in shown and "Next:" in shown
    env["NO_COLOR"] = "1"
    assert not ANSI.search(_run_on_a_terminal(["explain"], columns, env, tmp_path))
    piped = subprocess.run(
        [sys.executable, "-m", "keyguard", "diagnose", checkpoint, "-e", manifest, "--color", "auto"],
        capture_output=True,
        text=True,
        env={k: v for k, v in env.items() if k != "NO_COLOR"},
        cwd=tmp_path,
        timeout=120,
    )
    assert not ANSI.search(piped.stdout) and max(map(len, piped.stdout.splitlines())) <= STABLE_WIDTH


def test_plain_removes_code_marks_only() -> None:
    assert plain("strip `module.` and `_orig_mod.` (a `x|y` pipe)") == "strip module. and _orig_mod. (a x|y pipe)"


@pytest.mark.parametrize(
    ("groups", "said"), [(4, None), (5, "... and 1 more pattern(s)"), (40, "... and 36 more pattern(s)")]
)
def test_the_table_counts_every_pattern_it_leaves_out(groups: int, said: str | None) -> None:
    """A finding lists 6 patterns and counts the rest; the table shows 4 and says how many are left: all of them,
    not the finding's list items (it said "(3 more)" for 40 groups)."""
    names = [f"model.block{g}.layers.{i}.weight" for g in range(groups) for i in range(3)]
    expected = {name: keyguard.TensorInfo((2,), "F32") for name in names}
    report = keyguard.diagnose({"module." + name: info for name, info in expected.items()}, expected)
    (finding,) = [f for f in report.findings if f.code == "KG101"]
    assert finding.count == 3 * groups
    text = report.render("table", width=120)
    shown = [line.strip() for line in text.splitlines() if line.strip().startswith("module.model.block")]
    assert len(shown) == min(groups, 4)
    assert [line.strip() for line in text.splitlines() if "more pattern" in line] == ([said] if said else [])
