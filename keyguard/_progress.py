"""Where long work is: one line per phase (reading, diagnosing, writing, verifying) on standard error.

Drawn by rich's progress display, only when standard error is a terminal; rich is imported when the display is first
drawn, never otherwise (it costs about 20 ms of start-up, which commands that show no progress do not pay). rich
redraws from a thread of its own, so a phase that blocks (``torch.load`` of a large pickle) still shows its spinner
and elapsed time.
"""

from __future__ import annotations

import sys
from types import TracebackType
from typing import Any


class Progress:
    """Phases of one job. ``phase(label, total)`` starts a phase (or returns to one already started, so a sharded
    write moves between *writing* and *verifying* without new lines); ``update(n)`` advances the current phase by
    ``n`` (bytes when ``total`` is a byte count). Silent, and nearly free, when disabled.

    Args:
        enabled: draw on standard error; ``None`` (default): when standard error is a terminal.
        color: colour in the display (``None``: rich's own choice, which follows ``NO_COLOR``).
    """

    def __init__(self, *, enabled: bool | None = None, color: bool | None = None) -> None:
        self.enabled = _isatty(sys.stderr) if enabled is None else enabled
        self.color = color
        self._display: Any = None
        self._tasks: dict[str, Any] = {}
        self._current: Any = None
        self._order: list[str] = []

    def phase(self, label: str, total: int | None = None) -> None:
        """Make ``label`` the current phase; ``total`` units of work (``None``: unknown, a spinner)."""
        if not self.enabled:
            return
        display = self._start()
        if self._current is not None and self._order and self._order[-1] != label:
            previous = self._order[-1]
            task = self._tasks[previous]
            if display.tasks[task].total is None:  # a phase of unknown length is over when the next one starts
                display.update(task, total=1, completed=1)
        if label in self._tasks:
            self._current = self._tasks[label]
            if total is not None:
                display.update(self._current, total=max(total, 1))
        else:
            self._current = display.add_task(
                label, total=None if total is None else max(total, 1), bytes=total is not None
            )
            self._tasks[label] = self._current
        self._order.append(label)

    def update(self, n: int) -> None:
        """Advance the current phase by ``n``."""
        if self._display is not None and self._current is not None:
            self._display.advance(self._current, n)

    def close(self) -> None:
        """Finish the display (phases of unknown length are marked done); safe to call twice."""
        if self._display is None:
            return
        for task in self._display.tasks:
            if task.total is None:
                self._display.update(task.id, total=1, completed=1)
        self._display.stop()
        self._display = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    def _start(self) -> Any:
        if self._display is None:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                ProgressColumn,
                SpinnerColumn,
                TaskProgressColumn,
                TextColumn,
                TimeElapsedColumn,
                TransferSpeedColumn,
            )
            from rich.text import Text

            class OfBytes(ProgressColumn):
                """A column shown for phases counted in bytes only (not for reading or diagnosing)."""

                def __init__(self, inner: ProgressColumn) -> None:
                    super().__init__()
                    self.inner = inner

                def render(self, task: Any) -> Any:
                    return self.inner.render(task) if task.fields.get("bytes") else Text("")

            console = Console(file=sys.stderr, force_terminal=True, no_color=self.color is False)
            self._display = Progress(
                SpinnerColumn(finished_text="✓"),
                TextColumn("{task.description:<10}"),
                BarColumn(bar_width=24),
                TaskProgressColumn(),
                OfBytes(DownloadColumn(binary_units=True)),
                OfBytes(TransferSpeedColumn()),
                TimeElapsedColumn(),
                console=console,
                refresh_per_second=8,
            )
            self._display.start()
        return self._display


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
