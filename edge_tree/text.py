"""Token bytes to text, safe for streaming: never hands out half a UTF-8 character."""

from __future__ import annotations

import codecs


class TextStream:
    def __init__(self):
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = ""

    def push(self, piece: bytes) -> str:
        """Add a token's bytes; returns the complete characters they finish (may be '')."""
        out = self._decoder.decode(piece)
        self.text += out
        return out

    def flush(self) -> str:
        out = self._decoder.decode(b"", final=True)
        self.text += out
        return out


def visible(piece: bytes) -> str:
    """A single token's text for display (trace, pictures): partial characters become U+FFFD."""
    return piece.decode("utf-8", errors="replace")
