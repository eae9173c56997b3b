"""Where llama.cpp's log lines go: to stderr while an engine asks to see them (--verbose), and to
the captures open on the calling thread (the reason a load or a decode failed). llama.cpp has one
process-wide log callback; llama.py registers it and hands every piece to record()."""

from __future__ import annotations

import sys
import threading


class _Logs(threading.local):
    """Lines llama.cpp logs while a capture is open on this thread (why a load failed)."""

    def __init__(self):
        self.captures: list[list[str]] = []


_logs = _Logs()
_shown_by = 0  # open LogView(show=True) objects: llama.cpp's logs reach stderr while any is open


def record(piece: str) -> None:
    """A piece of text llama.cpp logged."""
    if _shown_by:
        sys.stderr.write(piece)
    line = piece.strip()
    if line:
        for lines in _logs.captures:
            lines.append(line)


class LogView:
    """An engine's wish to see llama.cpp's logs on stderr (show=True), held until close(): one
    engine's wish never turns another's off."""

    def __init__(self, show: bool):
        global _shown_by
        self.show = show
        _shown_by += show

    def close(self) -> None:
        global _shown_by
        _shown_by -= self.show
        self.show = False


def logs_shown() -> bool:
    return _shown_by > 0


class captured_log:
    """The lines llama.cpp logs inside the block, on this thread. A plain class, not a
    @contextmanager: every llama_decode opens one, and a generator-based one costs several times
    more host time per token."""

    __slots__ = ("lines",)

    def __enter__(self) -> list[str]:
        self.lines: list[str] = []
        _logs.captures.append(self.lines)
        return self.lines

    def __exit__(self, *exc) -> None:
        _logs.captures.pop()  # this one: captures nest (remove() would take an equal outer list)
