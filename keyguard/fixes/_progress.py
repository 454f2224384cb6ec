"""The write's progress bar."""

from __future__ import annotations

import sys
import time


class Progress:
    """A one-line progress bar on stderr, drawn at most five times a second; silent when stderr is not a TTY."""

    def __init__(self, total: int, *, enabled: bool | None) -> None:
        self.total = max(total, 1)
        self.done = 0
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.last = 0.0
        self.start = time.monotonic()

    def update(self, n: int) -> None:
        self.done += n
        if self.enabled and (time.monotonic() - self.last > 0.2 or self.done >= self.total):
            self.last = time.monotonic()
            frac = min(self.done / self.total, 1.0)
            filled = int(frac * 30)
            rate = self.done / max(self.last - self.start, 1e-6) / 2**20
            sys.stderr.write(f"\r  writing [{'#' * filled}{'.' * (30 - filled)}] {frac:4.0%} {rate:7.1f} MiB/s")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.done:
            sys.stderr.write("\n")
            sys.stderr.flush()
