"""The model files edge-tree derives into its cache, and a record of each.

The demo pair, deep copies and reduced-vocabulary drafts are made once and reused. A manifest
beside them (`derived.json` in the cache) says, for each, what it was made from, by which version
of edge-tree, when, and when it was last used: `edge-tree models list` shows it, `edge-tree models
prune` removes files (all, or those unused for N days), and a file that another version made, or
that no record vouches for, is made again instead of reused.
"""

from __future__ import annotations

import json
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from .errors import EdgeTreeError
from .files import cache_dir, write_text

MANIFEST = "derived.json"
FOLDERS = ("demo", "draft-vocab")  # where derived model files live, inside the cache
# Raise this when a derived file made from the same source would come out different: files made
# under the old number are then made again (the old ones stay until `edge-tree models prune`).
FORMAT = 1
DAY = 86400.0


def made_by() -> str:
    """The version stamp a derived file carries."""
    try:
        package = version("edge-tree")
    except PackageNotFoundError:  # running from a checkout that was never installed
        package = "unknown"
    return f"edge-tree {package}, format {FORMAT}"


def _manifest_path() -> Path:
    return cache_dir() / MANIFEST


def _read() -> dict:
    try:
        records = json.loads(_manifest_path().read_text())
    except (OSError, ValueError):
        return {}
    return records if isinstance(records, dict) else {}


def _write(records: dict) -> None:
    write_text(_manifest_path(), json.dumps(records, indent=1, sort_keys=True) + "\n", "the cache's manifest")


def _key(path: Path) -> str:
    """A file's name in the manifest: its path inside the cache (the cache may move)."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(cache_dir().resolve()))
    except ValueError:
        return str(path)


def record(path: Path, source: str | Path) -> None:
    """Note that `path` (inside the cache) was just made from `source`, by this version."""
    records = _read()
    now = time.time()
    records[_key(path)] = {"from": str(source), "by": made_by(), "made": now, "used": now}
    _write(records)


def is_current(*paths: Path) -> bool:
    """Whether every path exists, whole, made by this version (a file without a record is not).
    One read of the manifest for all of them: the demo pair asks on every generation."""
    records = _read()
    return all(_made_here(Path(p), records.get(_key(p))) for p in paths)


def _made_here(path: Path, entry: dict | None) -> bool:
    try:
        if path.stat().st_size == 0:
            return False
    except OSError:
        return False
    return bool(entry) and entry.get("by") == made_by()


def mark_used(*paths: Path) -> None:
    """Note a use of these files: `prune --unused-days` keeps what was used lately. A read-only
    cache only loses the date."""
    records = _read()
    entries = [records[_key(p)] for p in paths if _key(p) in records]
    for entry in entries:
        entry["used"] = time.time()
    if entries:
        try:
            _write(records)
        except EdgeTreeError:
            pass


def listing() -> list[dict]:
    """Every model file in the cache's derived folders: path, size, what it was made from, by
    which version, when it was made and last used (None where no record says)."""
    records = _read()
    rows = []
    for folder in FOLDERS:
        for path in sorted((cache_dir() / folder).glob("*.gguf")):
            entry = records.get(_key(path), {})
            rows.append({"path": str(path), "size_bytes": path.stat().st_size,
                         "from": entry.get("from"), "by": entry.get("by"), "made": entry.get("made"),
                         "used": entry.get("used"), "current": entry.get("by") == made_by()})
    return rows


def prune(unused_days: float | None = None, now: float | None = None) -> list[dict]:
    """Remove the derived files (those not used for `unused_days` days, or all); returns the
    rows of listing() it removed. A file no record dates counts as unused."""
    now = time.time() if now is None else now
    removed = []
    for row in listing():
        if unused_days is not None and (row["used"] or 0) > now - unused_days * DAY:
            continue
        Path(row["path"]).unlink(missing_ok=True)
        removed.append(row)
    if removed:
        records = _read()
        for row in removed:
            records.pop(_key(Path(row["path"])), None)
        _write(records)
    return removed
