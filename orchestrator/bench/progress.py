"""A progress bar with the current cell and an estimate of the time left."""
from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, stream=sys.stderr, width: int = 24):
        self.total, self.stream, self.width = max(total, 1), stream, width
        self.count, self.start = 0, time.monotonic()
        self.tty = stream.isatty()

    def _eta(self) -> str:
        if not self.count:
            return "?"
        left = (time.monotonic() - self.start) / self.count * (self.total - self.count)
        return f"{int(left // 60)}m{int(left % 60):02d}s"

    def step(self, label: str) -> None:
        self.count += 1
        filled = int(self.width * self.count / self.total)
        line = f"[{'#' * filled}{'.' * (self.width - filled)}] {self.count}/{self.total} {label}  ETA {self._eta()}"
        if self.tty:
            self.stream.write("\r\033[K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def skip(self) -> None:
        self.total = max(self.total - 1, 1)

    def done(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
