"""Token text and numbers as the viewer shows them: every character visible, nothing that can
break a terminal, a Graphviz label or an HTML page."""

from __future__ import annotations

import math
import unicodedata

_SPECIAL = {" ": "\u2423", "\n": "\u21b5", "\t": "\u21e5", "\\": "\\\\"}
# Our own marker glyphs, escaped when they occur literally so the display is unambiguous.
_MARKERS = {"\u2423", "\u21b5", "\u21e5", "\u2205"}
EMPTY = "\u2205"  # ∅: a token with no text
DASH = "\u2013"  # –: a number the record does not have


def visible(text: str | None, limit: int | None = None) -> str:
    """A token piece with its invisible characters made visible, one line, safe for any terminal.

    Space -> ``␣``, newline -> ``↵``, tab -> ``⇥``, backslash -> ``\\\\``, other control, format,
    separator, surrogate and unassigned code points -> ``\\x07`` / ``\\u200b`` / ``\\U000e0001``;
    the empty string -> ``∅``.  Printable non-ASCII (é, 中文, 🙂) is kept.  With ``limit``, the
    result is cut to that many characters (escapes are never split) and ends with ``…``.
    """
    if not text:
        return EMPTY
    out: list[str] = []
    used = 0
    for ch in text:
        piece = _SPECIAL.get(ch)
        if piece is None:
            piece = _escape(ch) if _hidden(ch) else ch
        if limit is not None and used + len(piece) > limit:
            out.append("\u2026")
            break
        out.append(piece)
        used += len(piece)
    return "".join(out)


def _hidden(ch: str) -> bool:
    cat = unicodedata.category(ch)
    return ch in _MARKERS or cat[0] == "C" or cat in ("Zl", "Zp") or (cat == "Zs" and ch != " ")


def _escape(ch: str) -> str:
    cp = ord(ch)
    return f"\\x{cp:02x}" if cp < 0x100 else f"\\u{cp:04x}" if cp < 0x10000 else f"\\U{cp:08x}"


def shown_in_flow(text: str) -> str:
    """Generated text for a page that keeps line breaks (pre-wrap): newlines and tabs stay as they
    are, other control characters are made visible. Not HTML-escaped."""
    return "".join(ch if ch in "\n\t" or unicodedata.category(ch)[0] != "C" else visible(ch) for ch in text)


def fmt_prob(p: float | None) -> str:
    """0.8312 -> '0.83'; 3.2e-05 -> '3e-05'; None -> '–'."""
    if p is None:
        return DASH
    if math.isnan(p):
        return "nan"
    if p == 0:
        return "0"
    return f"{p:.2f}" if p >= 0.01 else f"{p:.0e}"


def fmt_logprob(lp: float | None) -> str:
    """-0.1849 -> '-0.18'; -inf -> '-∞'; None -> '–'."""
    if lp is None:
        return DASH
    if math.isnan(lp):
        return "nan"
    if math.isinf(lp):
        return "-\u221e" if lp < 0 else "\u221e"
    if lp == 0:
        return "0"
    return f"{lp:.2f}"
