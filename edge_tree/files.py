"""Where edge-tree keeps files, and the one way it writes them: whole or not at all."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from .errors import EdgeTreeError


def cache_dir() -> Path:
    """edge-tree's cache: ``$XDG_CACHE_HOME/edge-tree``, else ``~/.cache/edge-tree``."""
    base = os.environ.get("XDG_CACHE_HOME")
    if base and os.path.isabs(base):  # the XDG spec says to ignore a relative path
        return Path(base) / "edge-tree"
    return Path.home() / ".cache" / "edge-tree"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but is not ours
        return True
    return True


def atomic_write(dst: str | os.PathLike, build: Callable[[Path], None], what: str = "") -> Path:
    """Run build(tmp) on a temporary file beside dst, then rename it to dst: a reader sees the
    old file or the whole new one, and a failure (an exception, Ctrl-C) leaves no temporary
    file behind. Temporary files of runs that were killed outright are removed on the next try.
    An OSError becomes one EdgeTreeError line naming `what` (default: the file)."""
    dst = Path(dst)
    prefix = f".{dst.name}."
    for stale in dst.parent.glob(f"{prefix}*.tmp"):
        pid = stale.name[len(prefix):-len(".tmp")]
        if pid.isdigit() and not _pid_alive(int(pid)):
            stale.unlink(missing_ok=True)
    tmp = dst.with_name(f"{prefix}{os.getpid()}.tmp")  # concurrent writers never collide
    try:
        build(tmp)
        os.replace(tmp, dst)
    except OSError as e:
        raise EdgeTreeError(f"cannot write {what or dst}: {e.strerror or e}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return dst


def check_writable_file(path: str | os.PathLike, option: str) -> None:
    """Before a long run: the folder a file is to be written into exists and is writable."""
    folder = Path(path).expanduser().resolve().parent
    if not folder.is_dir():
        raise EdgeTreeError(f"{option} {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise EdgeTreeError(f"{option} {path}: folder {folder} is not writable")


def write_text(dst: str | os.PathLike, text: str, what: str = "") -> Path:
    """atomic_write for a text file (UTF-8)."""
    return atomic_write(dst, lambda tmp: tmp.write_text(text, encoding="utf-8"), what)
