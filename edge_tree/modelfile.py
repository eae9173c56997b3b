"""Check a model file before llama.cpp sees it: a bad file must end in one clear line, not a crash."""

from __future__ import annotations

from pathlib import Path

from .errors import EdgeTreeError

GGUF_MAGIC = b"GGUF"


def check_gguf(path: str | Path, role: str = "model") -> Path:
    """Return the path if it holds a complete GGUF file; else raise EdgeTreeError saying what is wrong."""
    path = Path(path).expanduser()
    if not path.exists():
        raise EdgeTreeError(f"{role} file not found: {path}")
    if path.is_dir():
        raise EdgeTreeError(f"{role} path is a directory, not a GGUF file: {path}")
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise EdgeTreeError(f"cannot read {role} file {path}: {e.strerror}") from None
    if magic != GGUF_MAGIC:
        raise EdgeTreeError(f"{role} file {path} is not a GGUF file (starts with {magic!r}, expected b'GGUF')")
    _check_complete(path, role)
    return path


def _check_complete(path: Path, role: str) -> None:
    from gguf import GGUFReader  # imported here: parsing is only needed on this path

    try:
        reader = GGUFReader(path)
    except Exception as e:  # the gguf package raises many kinds on a damaged header
        raise EdgeTreeError(f"{role} file {path} is truncated or corrupt ({type(e).__name__}: {e})") from None
    size = path.stat().st_size
    end = max((t.data_offset + t.n_bytes for t in reader.tensors), default=0)
    if end > size:
        raise EdgeTreeError(f"{role} file {path} is truncated: tensor data needs {end} bytes, file has {size}")
    if "general.architecture" not in reader.fields:
        raise EdgeTreeError(f"{role} file {path} has no general.architecture: not a model llama.cpp can load")
