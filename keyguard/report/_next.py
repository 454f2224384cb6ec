"""The commands to run after a diagnosis, built from the report's data (never from its text).

``next_steps`` answers "what do I type now?": the ``keyguard fix ... -o ...`` line that writes a checkpoint the model
loads (with ``--unsafe-fixes`` when only unsafe rules remain, ``--drop-unexpected`` and ``--ignore`` for the keys
the report calls harmless), the ``--emit key-mapping`` export that lets transformers load the file as it is, and
``keyguard explain CODE`` for what no command fixes.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from keyguard._patterns import HOLE, KeyGroup, collapse
from keyguard.report._kinds import Severity
from keyguard.report._model import Report

#: Checkpoint formats ``keyguard fix`` writes a fixed copy of.
FIXABLE_FORMATS: Final = frozenset({"safetensors", "safetensors-sharded", "torch-pickle", "peft-adapter"})


@dataclass(frozen=True)
class NextStep:
    """One suggested command: ``argv`` (starting with ``keyguard``) and why to run it."""

    why: str
    argv: tuple[str, ...]

    @property
    def command(self) -> str:
        """The command as one shell line (arguments quoted where the shell needs it)."""
        return shlex.join(self.argv)


def next_steps(
    report: Report,
    *,
    checkpoint: str | None = None,
    expected: str | None = None,
    ignore: Sequence[str] = (),
    container: str | None = None,
    architecture: str | None = None,
    hints: Mapping[str, str] | None = None,
) -> list[NextStep]:
    """The commands to run after ``report``, naming ``checkpoint`` and ``expected`` as the user did.

    ``checkpoint`` / ``expected`` default to the report's locations; ``ignore``, ``container`` and ``architecture``
    ``hints`` are the options the diagnosis ran with, repeated in every command.
    """
    ck = checkpoint if checkpoint is not None else report.checkpoint.location
    ex = expected if expected is not None else report.expected.location
    if ck is None or ex is None:
        return []
    if report.checkpoint.format == "peft-adapter":
        return _adapter_steps(report, ck, ex, _options((), container, architecture))
    common = ["--expected", ex, *_options(ignore, container, architecture, hints)]
    harmless = [f for f in report.findings if f.benign and f.severity.at_least(Severity.error)]
    ignores = [ignore_pattern(f.expected_keys) for f in harmless if f.kind != "unexpected" and f.expected_keys]
    unexpected = [f for f in report.findings if f.kind == "unexpected"]
    drop = bool(unexpected) and all(f.benign for f in unexpected)
    steps: list[NextStep] = []
    safe, every = len(report.plan.rules), len(report.unsafe_plan.rules)
    fixable = report.checkpoint.format in FIXABLE_FORMATS
    if fixable and (safe or every or drop):
        extra = [*(["--drop-unexpected"] if drop else []), *(a for p in ignores for a in ("--ignore", p))]
        unsafe = not safe and every > 0
        why = _fix_why(safe, every, unsafe=unsafe, drop=drop, ignored=len(ignores))
        argv = ["keyguard", "fix", ck, *common, "-o", fixed_output(ck, report.checkpoint.format)]
        steps.append(NextStep(why, (*argv, *(["--unsafe-fixes"] if unsafe else []), *extra)))
        if safe and every > safe:
            steps.append(
                NextStep(
                    f"or also apply the {every - safe} unsafe rule(s) listed above (review them first)",
                    (*argv, "--unsafe-fixes", *extra),
                )
            )
    if safe and any(rule.renames for rule in report.plan.rules):
        steps.append(
            NextStep(
                "or load the file as it is with transformers: the safe plan as from_pretrained(key_mapping=...)",
                ("keyguard", "diagnose", ck, *common, "--emit", "key-mapping"),
            )
        )
    if ignores and not (fixable and (safe or every or drop)):
        steps.append(
            NextStep(
                "check again with the harmless keys left out",
                ("keyguard", "diagnose", ck, *common, *(a for p in ignores for a in ("--ignore", p))),
            )
        )
    if not steps:
        codes = list(dict.fromkeys(f.code for f in report.findings if f.severity.at_least(Severity.error)))
        steps += [
            NextStep("what this finding means and how to fix it by hand", ("keyguard", "explain", c)) for c in codes[:3]
        ]
    return steps


def _adapter_steps(report: Report, adapter: str, base: str, options: list[str]) -> list[NextStep]:
    """After ``check-adapter``: ``keyguard fix ADAPTER --base BASE -o ADAPTER-fixed`` writes the fixed folder."""
    safe, every = len(report.plan.rules), len(report.unsafe_plan.rules)
    argv = ["keyguard", "fix", adapter, "--base", base, *options, "-o", fixed_output(adapter, "peft-adapter")]
    if safe:
        why = f"write a fixed copy of the adapter folder with the safe plan ({safe} rule{'s' if safe != 1 else ''})"
        return [NextStep(why, tuple(argv))]
    if every:
        why = (
            f"write a fixed copy of the adapter folder with the {every} unsafe rule(s) listed above (review them first)"
        )
        return [NextStep(why, (*argv, "--unsafe-fixes"))]
    return []


def _options(
    ignore: Sequence[str], container: str | None, architecture: str | None, hints: Mapping[str, str] | None = None
) -> list[str]:
    out = [a for p in ignore for a in ("--ignore", p)]
    out += [a for old, new in (hints or {}).items() for a in ("--hint", f"{old}={new}")]
    if container:
        out += ["--container", container]
    if architecture:
        out += ["--architecture", architecture]
    return out


def _fix_why(safe: int, every: int, *, unsafe: bool, drop: bool, ignored: int) -> str:
    if unsafe:
        text = f"write a fixed copy with the {every} unsafe rule(s) listed above (review them first)"
    elif safe:
        text = f"write a fixed copy with the safe plan ({safe} rule{'s' if safe != 1 else ''})"
    else:
        text = "write a copy without the harmless unexpected keys"
    notes = []
    if drop and (safe or every):
        notes.append("dropping the harmless unexpected keys")
    if ignored:
        notes.append("leaving the harmless missing keys out of the check")
    return text + (", " + " and ".join(notes) if notes else "")


def fixed_output(checkpoint: str, format: str) -> str:
    """Where the suggested fix writes: beside the checkpoint, ``NAME.fixed.safetensors`` (a folder for shards)."""
    path = checkpoint.rstrip("/\\") or checkpoint
    if format == "peft-adapter":  # a folder beside the adapter's
        folder = os.path.dirname(path) if os.path.isfile(path) else path
        return (folder.rstrip("/\\") or ".") + "-fixed"
    if format == "safetensors-sharded":
        folder = os.path.dirname(path) if os.path.isfile(path) or path.endswith(".json") else path
        return (folder.rstrip("/\\") or ".") + "-fixed"
    head, name = os.path.split(path)
    stem = name
    for suffix in (".safetensors", ".bin", ".pt", ".pth", ".ckpt"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return os.path.join(head, f"{stem}.fixed.safetensors")


def ignore_pattern(keys: Sequence[str]) -> str:
    """A regular expression for ``--ignore`` that matches exactly ``keys`` (numbered blocks as ``\\d+`` when every
    block from 0 on is there, else as the numbers themselves)."""
    alternatives = []
    groups: list[KeyGroup[None]] = collapse(keys)
    for group in groups:
        pieces = group.template.split(HOLE)
        out = [re.escape(pieces[0])]
        for numbers, piece in zip(group.numbers, pieces[1:]):
            whole = numbers == set(range(len(numbers))) and len(numbers) > 1
            out.append(r"\d+" if whole else "(?:" + "|".join(map(str, sorted(numbers))) + ")")
            out.append(re.escape(piece))
        alternatives.append("".join(out))
    if len(alternatives) == 1:
        return f"^{alternatives[0]}$"
    return "^(?:" + "|".join(alternatives) + ")$"


def render_steps(steps: Sequence[NextStep], width: int, *, color: bool = False) -> list[str]:
    """Lines for a terminal: each reason, then its command, wrapped between arguments with `` \\`` continuations."""
    from keyguard._console import paint as style
    from keyguard._console import wrap

    lines = [style("Next:", "heading", color)]
    for step in steps:
        lines.extend(wrap(step.why + ":", width, indent=2, hang=2))
        lines.extend(style(line, "command", color) for line in _command_lines(step.argv, width, indent=4))
    return lines


def _command_lines(argv: Sequence[str], width: int, *, indent: int) -> list[str]:
    """``argv`` quoted for a shell and broken between arguments to fit ``width``, with `` \\`` continuations.

    A flag stays on the line of its value unless the two do not fit one line together; an argument is never
    shortened or broken (the command must run as printed), so one longer than a line overflows it.
    """
    words: list[str] = []
    for arg in argv:
        quoted = shlex.quote(arg)
        flag = words[-1] if words and words[-1].startswith("-") and " " not in words[-1] else None
        if flag is not None and not arg.startswith("-") and indent + 4 + len(flag) + 1 + len(quoted) + 2 <= width:
            words[-1] = f"{flag} {quoted}"
            continue
        words.append(quoted)
    lines: list[str] = []
    current = ""
    for word in words:
        if not current:
            current = " " * indent + word
        elif len(current) + 1 + len(word) + 2 > width:  # room for the " \\" that continues the line
            lines.append(current + " \\")
            # a long path gives up its indentation before it overflows the line (the shell ignores either)
            current = " " * max(0, min(indent + 4, width - 2 - len(word))) + word
        else:
            current += " " + word
    lines.append(current)
    return lines
