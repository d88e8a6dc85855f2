"""A progress bar for long interactive runs: stderr a terminal, many
certificates, neither -q nor -v.  Never under cron or systemd, where stderr
is not a terminal."""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, TextIO

#: Fewer certificates than this finish before a bar would help.
MIN_CERTIFICATES = 20
#: Redraw at most this often (seconds).
INTERVAL = 0.1
WIDTH = 30


def wanted(total: int, stream: TextIO, *, quiet: bool, verbose: int) -> bool:
    if total < MIN_CERTIFICATES or quiet or verbose:
        return False
    try:
        return stream.isatty() and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):  # a closed or odd stream
        return False


class Progress:
    """``[#####.....] 120/1000 certificates`` on one line; called once per finished staple."""

    def __init__(self, total: int, stream: TextIO) -> None:
        self.total = total
        self.stream = stream
        self.done = 0
        self.lock = threading.RLock()
        self._drawn = 0.0
        self._shown = False

    def __call__(self, _outcome: Any) -> None:
        with self.lock:
            self.done += 1
            now = time.monotonic()
            if now - self._drawn >= INTERVAL or self.done == self.total:
                self._draw()
                self._drawn = now

    def _draw(self) -> None:
        filled = WIDTH * self.done // max(self.total, 1)
        bar = "#" * filled + "." * (WIDTH - filled)
        self.stream.write(f"\r[{bar}] {self.done}/{self.total} certificates\x1b[K")
        self.stream.flush()
        self._shown = True

    def clear(self) -> None:
        """Take the bar off the line (before a log line, and at the end)."""
        with self.lock:
            if self._shown:
                self.stream.write("\r\x1b[K")
                self.stream.flush()
                self._shown = False

    def redraw(self) -> None:
        with self.lock:
            if self.done < self.total:
                self._draw()


class Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """A log handler that keeps log lines and the bar on separate lines."""

    def __init__(self, stream: TextIO, progress: Progress) -> None:
        super().__init__(stream)
        self.progress = progress

    def emit(self, record: logging.LogRecord) -> None:
        with self.progress.lock:
            self.progress.clear()
            super().emit(record)
            self.progress.redraw()
