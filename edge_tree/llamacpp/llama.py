"""The only module that touches llama.cpp: models, contexts, batches, KV-cache ops, quantize, the
log callback (logs.py keeps where the lines go).

Everything above this module sees plain Python and numpy. Pointers are freed deterministically
(context managers / close()), never left to the garbage collector.
"""

from __future__ import annotations

import ctypes
import os
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

import llama_cpp as C

from ..errors import EdgeTreeError
from . import NUMPY_CAME_FIRST, logs, rpc
from .facts import FTYPES, KV_TYPES, cpu_has_amx, is_cuda_build, load_failure, threads_for, why
from .logs import captured_log
from .outputs import OutputRows

_backend_ready = False
_LIB_DIR = os.environ.get("LLAMA_CPP_LIB_PATH") or Path(C.__file__).parent / "lib"  # llama_cpp's choice


def _ensure_backend() -> None:
    global _backend_ready
    if not _backend_ready:
        if NUMPY_CAME_FIRST and is_cuda_build(_LIB_DIR):
            raise EdgeTreeError("this CUDA build of llama.cpp crashes at model load when numpy is imported "
                                "before it: import edge_tree (or llama_cpp) before numpy")
        C.llama_log_set(_on_log, ctypes.c_void_p(0))
        C.llama_backend_init()
        _backend_ready = True


# -- logs: llama.cpp has one process-wide log callback (logs.py keeps what it is for) -----------

@C.llama_log_callback
def _on_log(level, text, user_data):
    logs.record((text or b"").decode("utf-8", "replace"))


# llama.cpp's AMX weight buffers crash in ggml_backend_amx_mul_mat on any batch of two or more
# tokens on some AMX machines (measured here on a Sapphire Rapids VM; llama.cpp #20824, open):
# every tree and every chain is such a batch. Where the CPU has AMX, weights stay in plain CPU
# buffers (no extra buffer types: no AMX, and no CPU repacking either).
USE_EXTRA_BUFFER_TYPES = not cpu_has_amx()


def supports_gpu_offload() -> bool:
    """Whether this machine has a GPU (llama_supports_gpu_offload() also counts RPC support)."""
    _ensure_backend()
    return bool(_local_gpus())


def supports_rpc() -> bool:
    """Whether this llama.cpp build has the RPC backend (CMAKE_ARGS="-DGGML_RPC=ON")."""
    _ensure_backend()
    return bool(C.llama_supports_rpc())


# -- devices: ggml's registry, which llama_cpp does not wrap (bound through libllama's handle) --

def _bind(name: str, restype, *argtypes):
    function = C.llama_cpp._lib[name]  # a new function object: llama_cpp's own keep their types
    function.restype, function.argtypes = restype, list(argtypes)
    return function


_ptr = ctypes.c_void_p
_ABORT_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_char_p)
_ADD_SERVER = ctypes.CFUNCTYPE(_ptr, ctypes.c_char_p)
_DEVICE_GPU, _DEVICE_IGPU = 1, 2  # enum ggml_backend_dev_type


class _ggml:
    reg_by_name = _bind("ggml_backend_reg_by_name", _ptr, ctypes.c_char_p)
    reg_proc_address = _bind("ggml_backend_reg_get_proc_address", _ptr, _ptr, ctypes.c_char_p)
    register = _bind("ggml_backend_register", None, _ptr)
    reg_dev_count = _bind("ggml_backend_reg_dev_count", ctypes.c_size_t, _ptr)
    reg_dev_get = _bind("ggml_backend_reg_dev_get", _ptr, _ptr, ctypes.c_size_t)
    dev_count = _bind("ggml_backend_dev_count", ctypes.c_size_t)
    dev_get = _bind("ggml_backend_dev_get", _ptr, ctypes.c_size_t)
    dev_type = _bind("ggml_backend_dev_type", ctypes.c_int, _ptr)
    set_abort_callback = _bind("ggml_set_abort_callback", _ptr, _ABORT_CALLBACK)


_rpc_devices: dict[str, list[int]] = {}  # endpoint -> its devices; registration is process-wide


def _local_gpus() -> list[int]:
    """llama.cpp's default pick less RPC hosts: discrete GPUs, else integrated ones."""
    hosts = {device for devices in _rpc_devices.values() for device in devices}
    found = {_DEVICE_GPU: [], _DEVICE_IGPU: []}
    for device in map(_ggml.dev_get, range(_ggml.dev_count())):
        found.get(_ggml.dev_type(device), []).append(device)
    return [d for d in found[_DEVICE_GPU] if d not in hosts] or found[_DEVICE_IGPU]


def connect_rpc(endpoints: Sequence[str]) -> None:
    """Check each new host from Python (rpc.check_host), then give it to llama.cpp's RPC backend:
    EdgeTreeError (one line) wherever llama.cpp would abort. Once per host and process: llama.cpp
    may hold a known host's one connection (rpc-server serves one client), so no new handshake."""
    _ensure_backend()
    if endpoints and not supports_rpc():
        raise EdgeTreeError(rpc.NO_BACKEND)
    for endpoint in endpoints:
        if endpoint not in _rpc_devices:
            rpc.check_host(endpoint)
            _rpc_devices[endpoint] = _add_rpc_server(endpoint)


def _add_rpc_server(endpoint: str) -> list[int]:
    if not _rpc_devices:  # from the first host on, llama.cpp may abort on a host's behalf
        _ggml.set_abort_callback(_on_abort)
    add = _ADD_SERVER(_ggml.reg_proc_address(_ggml.reg_by_name(b"RPC"), b"ggml_backend_rpc_add_server"))
    rpc.registered(endpoint)
    reg = add(endpoint.encode())
    if not reg:
        raise EdgeTreeError(f"RPC host {endpoint} offers no devices")
    _ggml.register(reg)
    return [_ggml.reg_dev_get(reg, i) for i in range(_ggml.reg_dev_count(reg))]


@_ABORT_CALLBACK
def _on_abort(message):
    text = (message or b"").decode("utf-8", "replace")
    if rpc.is_rpc_abort(text):
        rpc.host_failed(text)  # never returns
    sys.stderr.write(text + "\n")  # any other abort ends the process as llama.cpp's own does


def _device_list(endpoints: Sequence[str]):
    """llama_model_params.devices: NULL (every device) until this process registers an RPC host;
    then the model's own hosts and the local GPUs: no model lands on a host it was not given."""
    if not _rpc_devices:
        return None
    devices = [d for endpoint in endpoints for d in _rpc_devices[endpoint]] + _local_gpus()
    return (_ptr * (len(devices) + 1))(*devices, None)


max_parallel_sequences = C.llama_max_parallel_sequences  # () -> int: llama.cpp's LLAMA_MAX_SEQ


def version() -> str:  # the llama-cpp-python release (it pins one llama.cpp revision)
    return C.__version__


class _Closes:
    """A with block closes the object."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Model(_Closes):
    """A loaded GGUF model and its vocabulary."""

    def __init__(self, path: str | os.PathLike, n_gpu_layers: int = 0, rpc_hosts: Sequence[str] = ()):
        """rpc_hosts: RPC endpoints (HOST:PORT) that take the offloaded layers, with local GPUs."""
        connect_rpc(rpc_hosts)
        self.path = Path(path)
        self.rpc_hosts = tuple(rpc_hosts)
        params = C.llama_model_default_params()
        params.n_gpu_layers = n_gpu_layers
        params.use_extra_bufts = USE_EXTRA_BUFFER_TYPES
        devices = _device_list(self.rpc_hosts)
        if devices is not None:
            params.devices = ctypes.cast(devices, _ptr)
        with captured_log() as log:
            self._ptr = C.llama_model_load_from_file(str(self.path).encode(), params)
        if not self._ptr:
            reason = load_failure(log)
            raise EdgeTreeError(f"llama.cpp could not load {self.path}" + (f": {reason}" if reason else ""))
        self.requested_gpu_layers = n_gpu_layers
        self._vocab = C.llama_model_get_vocab(self._ptr)
        self.n_vocab = int(C.llama_vocab_n_tokens(self._vocab))
        self.n_layer = int(C.llama_model_n_layer(self._ptr))
        self.n_ctx_train = int(C.llama_model_n_ctx_train(self._ptr))
        self.bos = int(C.llama_vocab_bos(self._vocab))
        self.eos = int(C.llama_vocab_eos(self._vocab))
        self.add_bos = bool(C.llama_vocab_get_add_bos(self._vocab))
        self.n_embd = int(C.llama_model_n_embd(self._ptr))
        self.n_swa = int(C.llama_model_n_swa(self._ptr))  # sliding-window layers' window (0: none)
        self.vocab_type = int(C.llama_vocab_type(self._vocab))
        # what a token decodes to never changes: a generation asks once a token, llama.cpp once
        self._pieces: dict[tuple[int, bool], bytes] = {}

    # -- metadata -------------------------------------------------------------------------
    @property
    def offloaded_layers(self) -> int:
        """Layers llama.cpp puts on GPUs or RPC hosts: 0 without either, whatever was asked."""
        if self.requested_gpu_layers == 0 or not (self.rpc_hosts or supports_gpu_offload()):
            return 0
        n_total = self.n_layer + 1  # the output layer counts as one more, as llama.cpp reports it
        if self.requested_gpu_layers < 0:
            return n_total
        return min(self.requested_gpu_layers, n_total)

    @property
    def chat_template(self) -> str | None:
        """The model's default chat template (Jinja source, GGUF `tokenizer.chat_template`), or
        None. Read whole: meta() would cut a template of several kilobytes at its buffer size."""
        source = C.llama_model_chat_template(self._ptr, None)
        return source.decode("utf-8", "replace") if source else None

    def meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(512)
        n = C.llama_model_meta_val_str(self._ptr, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", "replace") if n >= 0 else None

    # -- vocabulary -----------------------------------------------------------------------
    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        """add_special: BOS (and EOS) as the model asks; parse_special: text such as
        "<end_of_turn>" becomes that control token (for chat templates), not plain text."""
        raw = text.encode("utf-8", "surrogateescape")  # undecodable input bytes pass through as bytes
        capacity = len(raw) + 8
        tokens = (C.llama_token * capacity)()
        n = C.llama_tokenize(self._vocab, raw, len(raw), tokens, capacity, add_special, parse_special)
        if n < 0:  # the buffer was too small: -n is the size needed
            tokens = (C.llama_token * -n)()
            n = C.llama_tokenize(self._vocab, raw, len(raw), tokens, len(tokens), add_special, parse_special)
        return list(tokens[:n])

    def token_bytes(self, token: int, special: bool = False) -> bytes:
        """The bytes a token adds to the text; may be part of a UTF-8 character."""
        piece = self._pieces.get((token, special))
        if piece is None:
            piece = self._pieces[(token, special)] = self._piece(token, special)
        return piece

    def _piece(self, token: int, special: bool) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = C.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = C.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
        return buf.raw[:n]

    def token_text(self, token: int) -> str:
        """The token's entry in the vocabulary, as stored (used to compare vocabularies)."""
        return (C.llama_vocab_get_text(self._vocab, token) or b"").decode("utf-8", "replace")

    def is_eog(self, token: int) -> bool:
        return bool(C.llama_vocab_is_eog(self._vocab, token))

    # -- lifetime -------------------------------------------------------------------------
    @property
    def lost(self) -> bool:
        """Whether an RPC host of this process stopped answering while this model uses RPC hosts:
        llama.cpp's calls on it would wait forever, freeing it included (so it is left)."""
        return bool(self.rpc_hosts) and rpc.failure() is not None

    def close(self) -> None:
        if self._ptr and not self.lost:
            C.llama_model_free(self._ptr)
        self._ptr = None


class Batch(_Closes):
    """A reusable llama_batch: each token has a position, a list of seq ids and a logits flag. With
    n_embd > 0 it carries input embeddings: add() takes a token id, the context embeds it."""

    def __init__(self, capacity: int, n_seq_max: int, n_embd: int = 0):
        self.capacity = capacity
        self.n_seq_max = n_seq_max
        self._raw = C.llama_batch_init(capacity, n_embd, n_seq_max)
        self.n_tokens = 0
        self.n_outputs = 0  # tokens whose logits are asked for
        self.tokens = np.zeros(capacity, np.int64) if n_embd else None
        self.embd = np.ctypeslib.as_array(self._raw.embd, shape=(capacity, n_embd)) if n_embd else None

    def clear(self) -> None:
        self.n_tokens = self.n_outputs = 0
        self._raw.n_tokens = 0

    def add(self, token: int, pos: int, seq_ids: Sequence[int], logits: bool) -> None:
        i = self.n_tokens
        if i >= self.capacity:
            raise EdgeTreeError(f"internal: batch of {self.capacity} tokens is full")
        if not 0 < len(seq_ids) <= self.n_seq_max:
            raise EdgeTreeError(f"internal: a token needs 1..{self.n_seq_max} seq ids, got {len(seq_ids)}")
        raw = self._raw
        if self.tokens is None:
            raw.token[i] = token
        else:
            self.tokens[i] = token
        raw.pos[i] = pos
        raw.n_seq_id[i] = len(seq_ids)
        seq_row = raw.seq_id[i]
        for j, s in enumerate(seq_ids):
            seq_row[j] = s
        raw.logits[i] = 1 if logits else 0
        self.n_outputs += bool(logits)
        self.n_tokens = raw.n_tokens = i + 1

    def close(self) -> None:
        if self._raw is not None:
            self.embd = None  # a view into memory llama_batch_free releases
            C.llama_batch_free(self._raw)
            self._raw = None


# an output row's address (llama_cpp's bindings return a float pointer, dearer to view)
_logits_at = _bind("llama_get_logits_ith", _ptr, _ptr, ctypes.c_int32)
_hidden_at = _bind("llama_get_embeddings_ith", _ptr, _ptr, ctypes.c_int32)
_all_logits, _all_hidden = _bind("llama_get_logits", _ptr, _ptr), _bind("llama_get_embeddings", _ptr, _ptr)


class Context(_Closes):
    """A llama_context with a unified KV cache shared by up to n_seq_max sequences (tree branches).

    embed: for a model whose vocabulary is a subset of the token ids it is fed (a reduced-vocab
    draft), maps token ids to input embedding rows; the context then decodes embeddings.
    kv_types: the KV cache's (K, V) types, by KV_TYPES' names (default: llama.cpp's, f16).
    """

    def __init__(self, model: Model, n_ctx: int, n_seq_max: int = 1, n_batch: int = 512,
                 threads: int | None = None, embed: Callable[[np.ndarray], np.ndarray] | None = None,
                 n_outputs: int | None = None, kv_types: tuple[str, str] | None = None):
        threads = threads_for(threads)
        # llama.cpp caps a batch at the context and asserts (aborts) unless it can hold one output
        # per sequence: keep n_seq_max <= n_outputs <= n_batch <= n_ctx.
        n_batch = min(n_batch, n_ctx)
        n_seq_max = min(n_seq_max, n_batch)
        # n_outputs: the most rows of logits one batch may ask for (default: every token). llama.cpp
        # reserves its compute buffer for that many rows (512 rows of 262,144 floats on Gemma; on a
        # GPU, device memory) and aborts on a batch that asks for more: decode() refuses one first.
        n_outputs = max(n_seq_max, min(n_outputs or n_batch, n_batch))
        params = C.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = params.n_ubatch = n_batch
        params.n_seq_max = n_seq_max
        params.n_outputs_max = n_outputs
        params.n_threads = params.n_threads_batch = threads
        # One cell may belong to many branches, and seq_cp is metadata only: needed for trees.
        params.kv_unified = True
        # Sliding-window models (Gemma 3) cannot drop a partial sequence from a windowed cache.
        params.swa_full = True
        params.no_perf = True
        if kv_types:  # a quantized V needs flash attention, which "auto" turns on where it can
            params.type_k, params.type_v = (KV_TYPES[name] for name in kv_types)
        with captured_log() as log:
            self._ptr = C.llama_init_from_model(model._ptr, params)
        if not self._ptr:
            raise EdgeTreeError(f"llama.cpp could not create a context of {n_ctx} tokens for "
                                f"{model.path.name}: {why(log)}")
        self.model = model
        self.n_ctx = int(C.llama_n_ctx(self._ptr))
        self.n_batch = n_batch
        self.n_seq_max = n_seq_max
        self.n_outputs = n_outputs
        self._hidden = False  # output_hidden: llama.cpp then makes every token an output
        self.threads = threads
        self._mem = C.llama_get_memory(self._ptr)
        self._rows: dict[int, np.ndarray] = {}  # views of output rows by address (_row)
        self.embed = embed
        self.decode_s = 0.0  # seconds inside llama_decode, for the time breakdown
        self._outputs = OutputRows(self._ptr, model, self.n_seq_max, (_all_logits, _all_hidden))

    def use_threads(self, threads: int) -> None:  # from now on (self.threads: as created)
        C.llama_set_n_threads(self._ptr, threads, threads)

    def new_batch(self, capacity: int, n_seq_max: int) -> Batch:
        """A batch of the kind this context decodes: token ids, or embeddings."""
        return Batch(capacity, n_seq_max, self.model.n_embd if self.embed else 0)

    def decode(self, batch: Batch) -> None:
        if batch.n_tokens == 0:
            return
        if (batch.embd is None) != (self.embed is None):
            raise EdgeTreeError("internal: this context decodes "
                                f"{'embeddings' if self.embed else 'token ids'}; use new_batch()")
        if self.model.lost:
            raise rpc.failure()
        outputs = batch.n_tokens if self._hidden else batch.n_outputs
        if outputs > self.n_outputs:
            raise EdgeTreeError(f"internal: a batch of {outputs} outputs, past this context's {self.n_outputs}")
        if self.embed:
            batch.embd[:batch.n_tokens] = self.embed(batch.tokens[:batch.n_tokens])
        started = time.perf_counter()
        with captured_log() as log:
            rc = C.llama_decode(self._ptr, batch._raw)
            C.llama_synchronize(self._ptr)  # it may return before a GPU or an RPC host is done
        self.decode_s += time.perf_counter() - started
        if rc != 0:
            meaning = {1: "no KV-cache slot (the context is full)", 2: "aborted", -1: "invalid batch"}
            raise EdgeTreeError(f"llama_decode failed ({rc}: {meaning.get(rc, 'fatal error')}) "
                                f"{why(log)}".strip())
        self._outputs.decoded(outputs, self._hidden)

    def feed(self, batch: Batch, tokens: Sequence[int], start_pos: int, seq_id: int = 0) -> int:
        """Decode a run of tokens in one sequence, in chunks that fit the batch, with logits for
        the last token only. Returns that token's index in the batch (for logits())."""
        chunk = min(batch.capacity, self.n_batch)
        for begin in range(0, len(tokens), chunk):
            part = tokens[begin:begin + chunk]
            batch.clear()
            for k, token in enumerate(part):
                last = begin + k == len(tokens) - 1
                batch.add(token, start_pos + begin + k, (seq_id,), last)
            self.decode(batch)
        return batch.n_tokens - 1

    def logits(self, i: int) -> np.ndarray:
        """Zero-copy view of the logits of the batch's i-th token; valid until the next decode."""
        return self._row(_logits_at(self._ptr, i), self.model.n_vocab, "logits", i)

    def output_hidden(self, on: bool) -> None:
        """Also return outputs' final hidden states (embeddings): while on, every token outputs."""
        C.llama_set_embeddings(self._ptr, on)
        self._hidden = on

    def hidden(self, i: int) -> np.ndarray:
        """Zero-copy view of the batch's i-th token's final hidden state; valid until the next decode."""
        return self._row(_hidden_at(self._ptr, i), self.model.n_embd, "hidden state", i)

    def _row(self, address: int | None, length: int, what: str, i: int) -> np.ndarray:
        """A float32 view of the row at an address llama.cpp just returned (inside its live buffer),
        made once per address: a plain round reads a row a token, and a view costs more to make."""
        if not address:
            raise EdgeTreeError(f"internal: no {what} for batch index {i}")
        view = self._rows.get(address)
        if view is None or view.size != length:
            if len(self._rows) >= 4096:  # the buffer moved (grew) often: forget the old rows
                self._rows.clear()
            view = self._rows[address] = np.frombuffer((ctypes.c_float * length).from_address(address), np.float32)
        return view

    # -- KV cache -------------------------------------------------------------------------
    def seq_rm(self, seq_id: int, p0: int = -1, p1: int = -1) -> None:
        if not C.llama_memory_seq_rm(self._mem, seq_id, p0, p1):
            raise EdgeTreeError(f"internal: llama.cpp refused to remove seq {seq_id} [{p0}, {p1})")

    def seq_cp(self, src: int, dst: int, p0: int = -1, p1: int = -1) -> None:
        C.llama_memory_seq_cp(self._mem, src, dst, p0, p1)

    def seq_keep(self, seq_id: int) -> None:
        C.llama_memory_seq_keep(self._mem, seq_id)

    def seq_pos_max(self, seq_id: int = 0) -> int:
        return int(C.llama_memory_seq_pos_max(self._mem, seq_id))

    def seq_pos_min(self, seq_id: int = 0) -> int:
        return int(C.llama_memory_seq_pos_min(self._mem, seq_id))

    def clear(self) -> None:
        C.llama_memory_clear(self._mem, True)

    def seq_state(self, seq_id: int) -> np.ndarray:
        """Sequence seq_id's cells as llama.cpp writes them (positions, keys, values), for
        set_seq_state. A sliding-window cache writes only the cells its window still sees."""
        size = C.llama_state_seq_get_size(self._ptr, seq_id)
        state = np.empty(size, np.uint8)
        written = C.llama_state_seq_get_data(self._ptr, _bytes(state), size, seq_id)
        return state[:written]

    def set_seq_state(self, state: np.ndarray, seq_id: int) -> bool:
        """In place of what sequence seq_id holds, the cells of a seq_state from this context;
        False where llama.cpp found no room for them (the sequence then holds nothing)."""
        with captured_log():
            read = C.llama_state_seq_set_data(self._ptr, _bytes(state), state.size, seq_id)
        return read == state.size

    def close(self) -> None:
        if self._ptr and not self.model.lost:
            C.llama_free(self._ptr)
        self._ptr = None


def _bytes(array: np.ndarray):
    """A contiguous uint8 array as the uint8_t* llama.cpp's state calls take."""
    return array.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8))


def quantize(src: str | os.PathLike, dst: str | os.PathLike, quant: str, threads: int = 0) -> None:
    """Requantize a GGUF file with llama_model_quantize (allowing requantization of quantized input)."""
    _ensure_backend()
    params = C.llama_model_quantize_default_params()
    params.ftype, params.nthread, params.allow_requantize = FTYPES[quant], threads, True
    with captured_log() as log:
        rc = C.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise EdgeTreeError(f"quantizing {src} to {quant} failed: {why(log)}")
