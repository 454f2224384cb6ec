"""What people see in a terminal: its width, whether to use colour, and text wrapped without breaking a key or flag.

Width: ``COLUMNS`` when set, else the terminal's width when the stream is a terminal, else a stable ``STABLE_WIDTH``
(pipes and files get the same output on every machine). Colour follows the conventions people expect: ``--color
always|never`` wins, then ``NO_COLOR`` (any non-empty value: no colour), then ``FORCE_COLOR`` (non-empty and not
``0``: colour), then colour only on a terminal whose ``TERM`` is not ``dumb``. Only ANSI SGR codes are written, so
this module imports nothing heavy (the diagnosis path stays fast); the progress display uses rich, lazily.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import textwrap
from typing import Final, Literal, TextIO

ColorMode = Literal["auto", "always", "never"]

STABLE_WIDTH: Final = 100
"""The width of output that goes to a pipe or a file, and of renderers called without a width."""
MIN_WIDTH: Final = 40
"""Narrower terminals get this width (and wrap): below it nothing is readable anyway."""

_STYLES: Final = {
    "fatal": "1;31",  # bold red
    "error": "31",
    "warning": "33",
    "info": "36",
    "ok": "1;32",
    "fail": "1;31",
    "code": "1",  # finding codes
    "key": "36",  # keys, flags and other literal text (Markdown code spans in messages)
    "command": "1;36",
    "dim": "2",
    "heading": "1",
}

# a flag and its value stay on one line: ``--ignore '^lm_head\.weight$'``, ``-o out.safetensors``
_FLAG_VALUE = re.compile(r"(?<!\S)(--?[A-Za-z][\w-]*) (?=[^\s-])")
_CODE_SPAN = re.compile(r"`([^`\n]+)`")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_NEWLINES = re.compile(r"\s*\n\s*")
_GLUE = "\x00"  # stands for a space that must not break while textwrap runs


def terminal_width(stream: TextIO | None = None) -> int:
    """Columns to render for ``stream`` (default: standard output); see the module docstring."""
    columns = os.environ.get("COLUMNS", "")
    if columns.strip().isdigit() and int(columns) > 0:
        return max(int(columns), MIN_WIDTH)
    stream = sys.stdout if stream is None else stream
    if _isatty(stream):
        try:
            size = os.get_terminal_size(stream.fileno()).columns
        except (OSError, ValueError, AttributeError):
            size = shutil.get_terminal_size((STABLE_WIDTH, 24)).columns
        if size > 0:
            return max(size, MIN_WIDTH)
    return STABLE_WIDTH


def use_color(stream: TextIO | None = None, mode: ColorMode | str | None = "auto") -> bool:
    """Whether text written to ``stream`` (default: standard output) gets colour under ``mode``."""
    if mode == "always":
        return True
    if mode == "never":
        return False
    if os.environ.get("NO_COLOR", ""):
        return False
    force = os.environ.get("FORCE_COLOR")
    if force is not None and force != "" and force != "0":
        return True
    if os.environ.get("TERM") == "dumb":
        return False
    return _isatty(sys.stdout if stream is None else stream)


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or not a real file
        return False


def paint(text: str, style: str, color: bool) -> str:
    """``text`` in ``style`` (a name of ``_STYLES``, e.g. ``"error"``) when ``color`` is on, else unchanged."""
    if not color or not text:
        return text
    return f"\x1b[{_STYLES[style]}m{text}\x1b[0m"


def visible_len(text: str) -> int:
    """Length of ``text`` as a terminal shows it (colour codes take no room)."""
    return len(_ANSI.sub("", text))


def plain(text: str) -> str:
    """``text`` with Markdown code marks removed: ``match `x.` here`` -> ``match x. here`` (for terminals)."""
    return _CODE_SPAN.sub(r"\1", text)


def wrap(text: str, width: int, *, indent: int = 0, hang: int = 0, color: bool = False) -> list[str]:
    """``text`` wrapped to ``width`` columns between words only, continuation lines indented ``hang`` more.

    A key, a path or a flag is never broken across lines: a word longer than a line is shortened from the middle
    (``--format json`` has every key in full), and a flag stays on the line of its value. Markdown code spans lose
    their backticks (in colour: they are highlighted instead).
    """
    marked: list[tuple[str, str]] = []

    def keep(match: re.Match[str]) -> str:
        marked.append((match[1], paint(match[1], "key", color)))
        return match[1].replace(" ", _GLUE)

    body = _CODE_SPAN.sub(keep, _NEWLINES.sub(" ", text.strip()))
    body = _FLAG_VALUE.sub(lambda m: m[1] + _GLUE, body)
    width = max(width, indent + hang + 10)
    room = width - indent - hang
    if any(len(word) > room for word in body.split(" ")):
        # a word longer than a line is shortened from the middle, never broken across lines
        body = " ".join(word if len(word) <= room else clip(word, room) for word in body.split(" "))
    lines = textwrap.wrap(
        body,
        width=width,
        initial_indent=" " * indent,
        subsequent_indent=" " * (indent + hang),
        break_long_words=False,
        break_on_hyphens=False,
    ) or [" " * indent]
    lines = [line.replace(_GLUE, " ") for line in lines]
    if color and marked:
        for raw, styled in marked:
            literal = re.compile(rf"(?<![\w.]){re.escape(raw)}(?!\w)")
            lines = [literal.sub(styled.replace("\\", "\\\\"), line) for line in lines]
    return lines


def clip(text: str, limit: int) -> str:
    """Shorten ``text`` to ``limit`` characters from the middle: the start names the sub-model, the end the tensor."""
    if len(text) <= limit:
        return text
    if limit <= 3:
        return text[:limit]
    head = (limit - 3) // 3
    return text[:head] + "..." + text[len(text) - (limit - 3 - head) :]
