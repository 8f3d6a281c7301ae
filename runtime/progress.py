"""A one-line progress bar on stderr, silent when stderr is not a terminal (logs, CI, pipes).

>>> with Progress(total=3, label="explain", enabled=False) as bar:
...     bar.update(1, note="cat.jpg")
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

_WIDTH = 24


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """Counts work items; draws ``label [#####-----] done/total elapsed<eta note`` in place.

    ``enabled=None`` draws only when ``stream`` is a terminal, so redirected output stays clean.
    """

    def __init__(
        self, total: int, label: str = "", *, stream: TextIO | None = None, enabled: bool | None = None
    ):
        self.total = max(0, total)
        self.label = label
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.enabled = bool(isatty and isatty()) if enabled is None else enabled
        self._start = time.monotonic()
        self._last_width = 0

    def update(self, count: int = 1, note: str = "") -> None:
        """Mark ``count`` more items done and redraw; ``note`` names the latest one."""
        self.done = min(self.total, self.done + count)
        if not self.enabled:
            return
        elapsed = time.monotonic() - self._start
        fraction = self.done / self.total if self.total else 1.0
        filled = int(round(fraction * _WIDTH))
        eta = elapsed / self.done * (self.total - self.done) if self.done else 0.0
        line = (
            f"{self.label} [{'#' * filled}{'-' * (_WIDTH - filled)}] {self.done}/{self.total} "
            f"{_clock(elapsed)}<{_clock(eta)} {note}"
        ).rstrip()
        # Pad with spaces so a shorter line fully covers the previous one.
        self.stream.write("\r" + line + " " * max(0, self._last_width - len(line)))
        self.stream.flush()
        self._last_width = len(line)

    def close(self) -> None:
        """End the bar's line so later output starts on a fresh one."""
        if self.enabled and self._last_width:
            self.stream.write("\n")
            self.stream.flush()
            self._last_width = 0

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
