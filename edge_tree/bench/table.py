"""The bench's table: one line per row, header lines of the settings, notes below.

Our own fixed-width layout: tabulate's "simple" format looks the same but pads every column by
two more spaces (147 columns instead of 120 with llama.cpp's rows), and rich's tables draw
Unicode rules; both read worse on a terminal.
"""

from __future__ import annotations

from pathlib import Path

from ..core.stats import format_offload

def _num(value, spec: str, suffix: str = "") -> str:
    return "-" if value is None else format(value, spec) + suffix


def _same(row: dict) -> str:
    same = row["same_as_ar"] or "-"
    return same + " text" if row.get("same_as_ar_basis") == "text" else same


# (header, alignment, the cell of a summary row): the table's columns in order
COLUMNS = (
    ("mode", "<", lambda r: r["name"]),
    ("tokens", ">", lambda r: str(r["tokens"])),
    ("tok/s", ">", lambda r: _num(r["tokens_per_s"], ".2f")),
    ("vs ar", ">", lambda r: _num(r["speedup_vs_ar"], ".2f", "x")),
    ("vs llama", ">", lambda r: _num(r["speedup_vs_completion"], ".2f", "x")),
    ("acc/pass", ">", lambda r: _num(r["mean_accepted_per_pass"], ".2f")),
    ("passes/tok", ">", lambda r: _num(r["target_passes_per_token"], ".3f")),
    ("accept", ">", lambda r: _num(r["acceptance_rate"], ".0%")),
    ("draft", ">", lambda r: _num(r["draft_share"], ".0%")),
    ("verify", ">", lambda r: _num(r["verify_share"], ".0%")),
    ("host ms/tok", ">", lambda r: _num(r["host_ms_per_token"], ".2f")),
    ("same as ar", ">", _same),
)


def format_table(result: dict) -> str:
    """A fixed-width text table of result["rows"], with header lines of the settings and the
    offload state, and notes on early stops and failed runs."""
    rows = result["rows"]
    has_llama = any(r["kind"] == "llama.cpp" for r in rows)
    columns = [c for c in COLUMNS if has_llama or c[0] != "vs llama"]
    notes = _notes(result["config"], rows, has_llama)
    return "\n".join([*_header(result["config"]), *_grid(columns, rows),
                      *(["notes:", *notes] if notes else [])])


def _grid(columns, rows: list[dict]) -> list[str]:
    """The column headers, a rule, then one line per row; columns two spaces apart."""
    cells = [[cell(r) for _, _, cell in columns] for r in rows]
    widths = [max(len(header), *(len(line[i]) for line in cells)) for i, (header, _, _) in enumerate(columns)]

    def line(texts):
        return "  ".join(f"{t:{align}{w}}" for t, (_, align, _), w in zip(texts, columns, widths)).rstrip()

    return [line([c[0] for c in columns]), "  ".join("-" * w for w in widths), *map(line, cells)]


def _header(cfg: dict) -> list[str]:
    threads = cfg["threads"]
    pair = f"pair {cfg['pair']}: " if cfg.get("pair") else ""
    first = (f"{cfg['n_prompts']} prompts x {cfg['max_tokens']} tokens, greedy, {threads} "
             f"thread{'s' if threads != 1 else ''}; {pair}target {Path(cfg['target']).name}"
             + (f", draft {Path(cfg['draft']).name}" if cfg.get("draft") else ""))
    return [first, format_offload(cfg["offload"])] if cfg.get("offload") else [first]


def _notes(cfg: dict, rows: list[dict], has_llama: bool) -> list[str]:
    notes = []
    if has_llama:
        notes.append("  vs llama = speed / llama-completion's; 'same as ar ... text': generated "
                     "text agrees with our ar (either may run longer)")
    if cfg.get("weight_repacking") is False:
        notes.append("  edge-tree's weights not repacked: llama.cpp's extra buffer types are off in our "
                     "engine on this AMX CPU; llama.cpp's tools ran at their defaults")
    kv = cfg.get("draft_kv_types")
    if has_llama and kv and kv != ["f16", "f16"]:
        notes.append(f"  edge-tree's draft cache: K {kv[0]}, V {kv[1]} (the draft's, which never changes "
                     "the text); llama.cpp's tools at their default, f16")
    for r in rows:
        if r.get("stopped_early"):
            notes.append(f"  {r['name']}: {r['stopped_early']}/{r['runs']} runs ended (end of text) "
                         f"before {cfg['max_tokens']} tokens")
        if r.get("error"):
            notes.append(f"  {r['name']}: {r['failed']}/{r['runs']} runs failed: {r['error']}")
    return notes
