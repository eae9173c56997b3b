"""Progress on stderr for the long jobs (building the demo pair, the benchmark), or nothing."""

from __future__ import annotations

import sys


class Progress:
    def __init__(self, enabled: bool, prefix: str = "[edge-tree]"):
        self.enabled = enabled
        self.prefix = prefix

    def _write(self, text: str) -> None:
        if self.enabled:
            sys.stderr.write(text)
            sys.stderr.flush()

    def line(self, text: str) -> None:
        self._write(f"{self.prefix} {text}\n")

    def update(self, text: str) -> None:
        """Rewrite the current line (a percentage that moves)."""
        self._write(f"\r{self.prefix} {text}")

    def start(self, text: str) -> None:
        """Begin a line that end() finishes with the outcome."""
        self._write(f"{self.prefix} {text} ...")

    def end(self, text: str = "") -> None:
        self._write(f" {text}\n" if text else "\n")
