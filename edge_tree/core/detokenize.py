"""Token bytes to text, safe for streaming: never hands out half a UTF-8 character, nor any part
of a stop string (text that might still grow into one is held back until it cannot)."""

from __future__ import annotations

import codecs


class StopText:
    def __init__(self, stop: tuple[str, ...] = ()):
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.stop = tuple(stop)
        self._out: list[str] = []  # what was handed out, joined once in `text`
        self._held = ""

    @property
    def text(self) -> str:
        """What was handed out: the output, without any stop string."""
        return "".join(self._out)

    def push(self, piece: bytes) -> tuple[str, bool]:
        """Add a token's bytes. Returns the text they release (may be '') and whether a stop
        string is now complete (the text before it is released, the rest dropped)."""
        if not self.stop:  # nothing is ever held back
            return self._release(self._decoder.decode(piece)), False
        held = self._held + self._decoder.decode(piece)
        cut = min((i for i in (held.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self._held = ""
            return self._release(held[:cut]), True
        keep = self._partial_stop(held)
        self._held = held[len(held) - keep:]
        return self._release(held[:len(held) - keep]), False

    def flush(self) -> str:
        """The end of the output: whatever was held back is text after all."""
        held, self._held = self._held + self._decoder.decode(b"", final=True), ""
        return self._release(held)

    def _partial_stop(self, text: str) -> int:
        """Length of the longest end of text that begins some stop string."""
        return max((k for s in self.stop for k in range(min(len(s) - 1, len(text)), 0, -1)
                    if text.endswith(s[:k])), default=0)

    def _release(self, text: str) -> str:
        self._out.append(text)
        return text


def piece_text(piece: bytes) -> str:
    """A single token's text for display (trace, pictures): partial characters become U+FFFD."""
    return piece.decode("utf-8", errors="replace")
