"""A progress bar without extra dependencies.

Generating a million buffers takes tens of seconds; a silent wait that long
looks like a hang.  On a terminal the bar redraws in place; in a log (CI, a
pipe) it prints a plain line every few seconds instead, so logs stay readable.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Counts up to ``total``; call :meth:`advance` and finally :meth:`close`."""

    def __init__(self, label: str, total: int, stream: TextIO = sys.stderr,
                 every: float | None = None):
        self.label = label
        self.total = max(1, total)
        self.done = 0
        self.stream = stream
        self.tty = stream.isatty()
        self.every = every if every is not None else (0.2 if self.tty else 5.0)
        self.started = time.monotonic()
        self._last = 0.0

    def advance(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            self._draw(now)

    def _draw(self, now: float, final: bool = False) -> None:
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        fraction = min(1.0, self.done / self.total)
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        text = (f"{self.label}: {self.done:,}/{self.total:,} ({fraction:5.1%}) "
                f"{rate:,.0f}/s, {'took' if final else 'ETA'} "
                f"{elapsed if final else eta:.1f} s")
        if self.tty:
            width = 30
            filled = int(width * fraction)
            bar = "#" * filled + "-" * (width - filled)
            self.stream.write(f"\r[{bar}] {text}" + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        self._draw(time.monotonic(), final=True)
