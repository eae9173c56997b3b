"""Read and check a GGUF file before llama.cpp sees it: a bad file must end in one clear line,
not a crash inside the C library. Reads the header only (0.1 s where gguf.GGUFReader, which
parses every token string, takes about 10 s on a 262k-token vocabulary)."""

from __future__ import annotations

import math
import mmap
import os
import struct
from pathlib import Path

import numpy as np

from ..errors import EdgeTreeError


def check_gguf(path: str | os.PathLike, role: str = "model") -> Path:
    """Return the path if it holds a complete GGUF model file; else raise EdgeTreeError."""
    path = Path(path).expanduser()
    if not path.exists():
        raise EdgeTreeError(f"{role} file not found: {path}")
    if path.is_dir():
        raise EdgeTreeError(f"{role} path is a directory, not a GGUF file: {path}")
    if not os.access(path, os.R_OK):
        raise EdgeTreeError(f"cannot read {role} file {path}: permission denied")
    info = describe_gguf(path, role)
    if info["data_end"] is not None and info["data_end"] > info["size_bytes"]:
        raise EdgeTreeError(f"{role} file {path} is truncated: its tensors need {info['data_end']} bytes, "
                            f"the file has {info['size_bytes']}")
    if not info["architecture"]:
        raise EdgeTreeError(f"{role} file {path} has no general.architecture: not a model llama.cpp can load")
    if info["n_tensors"] == 0:
        raise EdgeTreeError(f"{role} file {path} holds no tensors (a vocabulary-only file?): no weights to load")
    return path


# -- reading GGUF headers ------------------------------------------------------------------------

# GGUF metadata value types (gguf.GGUFValueType) -> struct code; 8 = string, 9 = array.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q",
            12: "d"}
_STRING, _ARRAY, _UINT32 = 8, 9, 4
_WANTED_KEYS = ("general.architecture", "general.file_type", "general.name", "general.alignment")
TOKENS_KEY = "tokenizer.ggml.tokens"

# What llama.cpp's GGUF reader accepts (ggml/src/gguf.cpp, ggml.h): a header beyond these limits
# is corrupt, whatever its lengths say.
MAX_STRING_BYTES = MAX_ARRAY_ITEMS = 1 << 30  # GGUF_MAX_STRING_LENGTH, GGUF_MAX_ARRAY_ELEMENTS
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_NAME_BYTES = 63  # GGML_MAX_NAME is 64, with the final NUL
INT64_MAX = (1 << 63) - 1  # counts, dimensions and element counts are int64 in ggml
# The fewest bytes one metadata pair (key length, a 1-byte key, type, a 1-byte value) and one
# tensor description (name length, a 1-byte name, dimension count, type, offset) take.
_MIN_KV_BYTES, _MIN_TENSOR_BYTES = 8 + 1 + 4 + 1, 8 + 1 + 4 + 4 + 8

# What llama.cpp asserts on (the whole process aborts) where corruption gets it wrong:
# - hyperparameters every architecture names "<architecture>.<suffix>": a block count of 0 or
#   above LLAMA_MAX_LAYERS; a negative or NaN norm epsilon (at the first decode);
MAX_LAYERS = 512
_BLOCK_COUNT = "block_count"
_EPSILONS = ("attention.layer_norm_epsilon", "attention.layer_norm_rms_epsilon")
# - tensors of a type the CPU backend has no dot product for (ggml-cpu.c): the first decode
#   crashes. An F32 weight whose type turned into I32 keeps its size, so passes every size check.
_NO_ARITHMETIC = ("Q8_1", "Q8_K", "I8", "I16", "I32", "I64", "F64")


class _Corrupt(ValueError):
    """What makes a GGUF header unreadable, said for the file's user."""


class _PastTheEnd(_Corrupt):
    """The header says there is more than the file holds: a file cut short, or a length or count
    changed by corruption (the two look alike)."""


class _HeaderReader:
    """Reads a GGUF header from an mmap, skipping the bulky arrays (262k-token vocabularies).
    Every length and count is checked against what is left of the file before it is used."""

    def __init__(self, buf: mmap.mmap, endian: str, pos: int):
        self.buf, self.e, self.pos = buf, endian, pos

    def need(self, n_bytes: int, what: str) -> None:
        if n_bytes > len(self.buf) - self.pos:
            raise _PastTheEnd(f"{what} runs past the end of the file")

    def take(self, code: str, what: str):
        self.need(struct.calcsize(code), what)
        (v,) = struct.unpack_from(self.e + code, self.buf, self.pos)
        self.pos += struct.calcsize(code)
        return v

    def count(self, what: str, min_item_bytes: int, limit: int = INT64_MAX) -> int:
        """A count of items, each at least min_item_bytes long, that the rest of the file can hold."""
        return self.fits(self.take("Q", what), what, min_item_bytes, limit)

    def fits(self, n: int, what: str, min_item_bytes: int, limit: int = INT64_MAX) -> int:
        if n > limit:
            raise _Corrupt(f"{what} is {n}, more than GGUF allows ({limit})")
        self.need(n * min_item_bytes, f"{what} ({n})")
        return n

    def string(self, what: str) -> bytes:
        n = self.count(f"the length of {what}", 1, MAX_STRING_BYTES)
        self.pos += n
        return self.buf[self.pos - n:self.pos]

    def strings(self, n: int, what: str, keep: bool) -> list[bytes] | None:
        """n length-prefixed strings; kept, or hopped over (fast: 262k-token vocabularies)."""
        unpack, buf, fmt, pos, end = struct.unpack_from, self.buf, self.e + "Q", self.pos, len(self.buf)
        kept = [] if keep else None
        for i in range(n):
            size = unpack(fmt, buf, pos)[0] if pos + 8 <= end else None
            if size is None or size > end - pos - 8:
                raise _PastTheEnd(f"item {i} of {what} runs past the end of the file")
            if keep:
                kept.append(buf[pos + 8:pos + 8 + size])
            pos += 8 + size
        self.pos = pos
        return kept

    def value(self, vtype: int, key: str, keep: bool):
        """The value of the key (quoted, for messages) if kept, else None."""
        if vtype in _SCALARS:
            return self.take(_SCALARS[vtype], f"the value of {key}")
        if vtype == _STRING:
            text = self.string(f"the value of {key}")
            return text.decode("utf-8", "replace") if keep else None
        if vtype == _ARRAY:
            return self.array(key, keep)
        raise _Corrupt(f"key {key} has unknown value type {vtype}")

    def array(self, key: str, keep: bool):
        item_type = self.take("I", f"the item type of {key}")
        if item_type not in _SCALARS and item_type != _STRING:  # llama.cpp reads no nested arrays
            raise _Corrupt(f"array {key} has items of unknown type {item_type}")
        item_bytes = struct.calcsize(_SCALARS[item_type]) if item_type in _SCALARS else 8
        n = self.count(f"the item count of {key}", item_bytes, MAX_ARRAY_ITEMS)
        if item_type == _STRING:
            return self.strings(n, key, keep)
        self.pos += n * item_bytes
        if keep:
            return np.frombuffer(self.buf[self.pos - n * item_bytes:self.pos],
                                 np.dtype(self.e + _SCALARS[item_type]))
        return None


def _read_metadata(r: _HeaderReader, keys: tuple[str, ...]) -> dict[str, object]:
    """The values of the wanted keys (and the general ones); checks the vocabulary on the way."""
    n_kv = r.count("the metadata key count", _MIN_KV_BYTES)
    meta: dict[str, object] = {}
    seen: set[bytes] = set()
    for i in range(n_kv):
        raw_key = r.string(f"metadata key {i}")
        key, shown = raw_key.decode("utf-8", "replace"), _shown(raw_key)
        if raw_key in seen:
            raise _Corrupt(f"metadata key {shown} appears twice")
        seen.add(raw_key)
        vtype = r.take("I", f"the value type of {shown}")
        wanted = (key in _WANTED_KEYS or key in keys or key == TOKENS_KEY
                  or key.endswith((_BLOCK_COUNT, *_EPSILONS)))
        val = r.value(vtype, shown, keep=wanted)
        if key == TOKENS_KEY and isinstance(val, list):
            _check_tokens(val)
            val = None
        if key == "general.alignment" and (vtype != _UINT32 or val <= 0 or val & (val - 1)):
            raise _Corrupt(f"general.alignment is {val!r}, not a power of two stored as uint32")
        if wanted:
            meta[key] = val
    _check_hyperparameters(meta)
    return meta


def _check_hyperparameters(meta: dict[str, object]) -> None:
    """The hyperparameters llama.cpp asserts on (see MAX_LAYERS) hold values it takes."""
    arch = meta.get("general.architecture")
    n_layer = meta.get(f"{arch}.{_BLOCK_COUNT}")
    if n_layer is not None and not (isinstance(n_layer, int) and 1 <= n_layer <= MAX_LAYERS):
        raise _Corrupt(f"{arch}.{_BLOCK_COUNT} is {n_layer!r}, where llama.cpp takes 1 to {MAX_LAYERS} layers")
    for key in (f"{arch}.{suffix}" for suffix in _EPSILONS):
        eps = meta.get(key)
        if eps is not None and not (isinstance(eps, (int, float)) and 0 <= eps < math.inf):
            raise _Corrupt(f"{key} is {eps!r}, not a finite number >= 0")


def _shown(raw: bytes, limit: int = 60) -> str:
    """A key or name for a message, quoted; cut short where a corrupted length made it huge."""
    text = raw.decode("utf-8", "replace")
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(raw)} bytes)"


def _check_tokens(tokens: list[bytes]) -> None:
    """llama.cpp aborts (an assertion, the whole process) on a vocabulary that holds one token
    text twice, as a corrupted byte in a token list easily makes it. It reads each token as a C
    string (up to its first NUL byte) and names an empty one [EMPTY_<id>]."""
    if len(set(tokens)) == len(tokens) and b"\0" not in b"".join(tokens) and b"" not in tokens:
        return  # the common case, 0.03 s on 262k tokens; the loop below finds the culprits
    first_of: dict[bytes, int] = {}
    for i, text in enumerate(tokens):
        j = first_of.setdefault(text.split(b"\0", 1)[0] or f"[EMPTY_{i}]".encode(), i)
        if j != i:
            raise _Corrupt(f"vocabulary tokens {j} ({_shown(tokens[j])}) and {i} ({_shown(text)}) "
                           "are the same token to llama.cpp")


def _read_tensor_infos(r: _HeaderReader, n_tensors: int,
                       alignment: int) -> dict[str, tuple[int, tuple[int, ...], int]]:
    """name -> (ggml type, dims, data offset) of each tensor, checked as llama.cpp checks them,
    and each tensor's data right after the previous one's (padded to the alignment), as llama.cpp
    requires."""
    r.fits(n_tensors, "the tensor count", _MIN_TENSOR_BYTES)
    tensors: dict[str, tuple[int, tuple[int, ...], int]] = {}
    expected: int | None = 0  # where the next tensor's data must start; None after an unsized type
    previous = "the start of the data"
    for i in range(n_tensors):
        name, qtype, dims, offset = _read_tensor_info(r, i, tensors)
        if expected is not None and offset != expected:
            raise _Corrupt(f"tensor {name!r} data starts at offset {offset}, where {previous} "
                           f"puts it at {expected}")
        nbytes = _tensor_nbytes(name, qtype, dims)
        if nbytes is None or expected is None:
            expected = None
        else:
            expected += -(-nbytes // alignment) * alignment
        tensors[name] = (qtype, dims, offset)
        previous = f"the end of tensor {name!r}"
    return tensors


def _read_tensor_info(r: _HeaderReader, i: int, earlier: dict) -> tuple[str, int, tuple[int, ...], int]:
    """Name, type, dims and data offset of tensor i: a short name no earlier tensor has, at most
    4 dimensions."""
    raw_name = r.string(f"the name of tensor {i}")
    name = raw_name.decode("utf-8", "surrogateescape")  # distinct bytes stay distinct names
    if len(raw_name) > MAX_NAME_BYTES:
        raise _Corrupt(f"the name of tensor {i} is {len(raw_name)} bytes long, more than "
                       f"llama.cpp allows ({MAX_NAME_BYTES})")
    if name in earlier:
        raise _Corrupt(f"two tensors are named {name!r}")
    n_dims = r.take("I", f"the dimension count of tensor {name!r}")
    if n_dims > MAX_DIMS:
        raise _Corrupt(f"tensor {name!r} has {n_dims} dimensions, more than GGUF allows ({MAX_DIMS})")
    dims = tuple(r.take("Q", f"the dimensions of tensor {name!r}") for _ in range(n_dims))
    qtype = r.take("I", f"the type of tensor {name!r}")
    return name, qtype, dims, r.take("Q", f"the data offset of tensor {name!r}")


def _tensor_nbytes(name: str, qtype: int, dims: tuple[int, ...]) -> int | None:
    """The size of a tensor's data; None for a type the gguf package does not know (llama.cpp
    then checks it itself)."""
    import gguf

    if any(d > INT64_MAX for d in dims):
        raise _Corrupt(f"tensor {name!r} has a negative dimension: {_shape(dims)}")
    n_elements = math.prod(dims)
    if n_elements > INT64_MAX:
        raise _Corrupt(f"tensor {name!r} has more elements than int64 holds: {_shape(dims)}")
    try:
        qtype_name = gguf.GGMLQuantizationType(qtype).name
        block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(qtype)]
    except (ValueError, KeyError):
        return None
    if qtype_name in _NO_ARITHMETIC:
        raise _Corrupt(f"tensor {name!r} has type {qtype_name}, which llama.cpp cannot compute with")
    if dims and dims[0] % block:
        raise _Corrupt(f"tensor {name!r} has rows of {dims[0]} elements, not a multiple of "
                       f"{qtype_name}'s block of {block}")
    return n_elements // block * type_size


def _shape(dims: tuple[int, ...]) -> str:
    """Dimensions as ggml sees them: int64, so a corrupted huge one shows as negative."""
    return "(" + ", ".join(str(d - (1 << 64) if d > INT64_MAX else d) for d in dims) + ")"


def _quant_name(file_type: int | None, tensor_types: dict[int, int]) -> str | None:
    import gguf

    if file_type is not None:
        ftype = file_type & ~1024  # LLAMA_FTYPE_GUESSED
        try:
            name = gguf.LlamaFileType(ftype).name
        except ValueError:
            return f"ftype {ftype}"
        return name.removeprefix("MOSTLY_").removeprefix("ALL_")
    # No general.file_type (some converters omit it): name the type holding most weights.
    if not tensor_types:
        return None
    qtype = max(tensor_types, key=tensor_types.get)
    try:
        return gguf.GGMLQuantizationType(qtype).name
    except ValueError:
        return f"type {qtype}"


def _open_header(buf: mmap.mmap, role: str, path: Path) -> _HeaderReader:
    """A reader past the magic and the version, in the file's byte order."""
    if buf[:4] != b"GGUF":
        raise EdgeTreeError(f"{role} file {path} is not a GGUF file (starts with {bytes(buf[:4])!r})")
    r = _HeaderReader(buf, "<", 4)
    version = r.take("I", "the GGUF version")
    if version & 0xFFFF == 0:  # a big-endian file
        r.e = ">"
        version = struct.unpack_from(">I", buf, 4)[0]
    if version < 2:
        raise EdgeTreeError(f"{path} is GGUF version {version}, too old to read")
    return r


def describe_gguf(path: str | os.PathLike, role: str = "model", keys: tuple[str, ...] = ()) -> dict:
    """Path, size_bytes, architecture, name, quantization (file type: Q4_K_M, F32, Q4_0, ...),
    n_params, data_end (the size a complete file has: larger than size_bytes = cut short) and
    tensors (where each tensor's data lies); meta holds the values of the given metadata keys
    (arrays of strings as lists of bytes).

    Reads the header only: 0.1 s on Gemma 3's 262k-token vocabulary, where gguf.GGUFReader takes
    about 10 s because it parses every token string. A header that cannot be right (a length
    past the end of the file, a count beyond GGUF's limits, a tensor llama.cpp would refuse or
    crash on) is an EdgeTreeError that says what is wrong.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if size == 0:
            raise _PastTheEnd("the file is empty")
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            r = _open_header(buf, role, path)
            n_tensors = r.take("Q", "the tensor count")  # before the metadata, the tensors after it
            meta = _read_metadata(r, keys)
            alignment = meta.get("general.alignment") or 32
            tensors = _read_tensor_infos(r, n_tensors, alignment)
            data_start = -(-r.pos // alignment) * alignment
    except _PastTheEnd as e:
        raise EdgeTreeError(f"{role} file {path} is truncated or corrupt: cannot read its GGUF header ({e})") from None
    except _Corrupt as e:
        raise EdgeTreeError(f"{role} file {path} is a corrupted GGUF file: {e}") from None
    except OSError as e:
        raise EdgeTreeError(f"cannot read {role} file {path}: {e.strerror or e}") from None
    return _description(path, size, meta, keys, tensors, data_start)


def _description(path: Path, size: int, meta: dict, keys: tuple[str, ...],
                 tensors: dict[str, tuple[int, tuple[int, ...], int]], data_start: int) -> dict:
    n_params = 0
    elements_by_type: dict[int, int] = {}
    data_size: int | None = 0  # tensor data bytes: the furthest tensor's offset + size
    for name, (qtype, dims, offset) in tensors.items():
        n = math.prod(dims)
        n_params += n
        if len(dims) >= 2:
            elements_by_type[qtype] = elements_by_type.get(qtype, 0) + n
        nbytes = _tensor_nbytes(name, qtype, dims)
        data_size = None if nbytes is None or data_size is None else max(data_size, offset + nbytes)
    file_type = meta.get("general.file_type")
    return {
        "path": str(path),
        "size_bytes": size,
        "architecture": meta.get("general.architecture"),
        "name": meta.get("general.name"),
        "quantization": _quant_name(file_type if isinstance(file_type, int) else None,
                                    elements_by_type),
        "n_params": n_params,
        "n_tensors": len(tensors),
        # bytes a complete file holds (None when a tensor type is unknown): a file shorter than
        # this was cut short
        "data_end": None if data_size is None else data_start + data_size,
        # name -> (ggml type, dims (innermost first), offset of its data in the file)
        "meta": {key: meta.get(key) for key in keys},
        "tensors": {name: (q, dims, data_start + off) for name, (q, dims, off) in tensors.items()},
    }
