"""Tiny random-weight GGUF models for tests: written in milliseconds, loaded by llama.cpp, no download.

``write_tiny_model(path, seed=...)`` writes a ``general.architecture = "llama"`` model (F32 weights
drawn from a seeded numpy generator: the same arguments give a byte-identical file) with a small
byte-level vocabulary.

Tokenizer choice: SentencePiece-style ``tokenizer.ggml.model = "llama"`` (llama.cpp's SPM tokenizer),
because it needs no merges list and can never fail to tokenize: any character without a token of
its own falls back to the 256 byte tokens ``<0x00>``..``<0xFF>``.  The vocabulary is

* ``0 <unk>`` (UNKNOWN), ``1 <s>`` = BOS (CONTROL), ``2 </s>`` = EOS (CONTROL),
* the byte tokens (BYTE),
* ``"\u2581"`` (the SentencePiece space, ``▁``) and every printable ASCII character (NORMAL),
* pieces learnt by a small deterministic BPE run over an embedded English text, scored ``-rank``
  so that llama.cpp's SPM bigram merging reaches them (every piece is the concatenation of two
  earlier ones), and, only when that runs out, filler pieces ``▁xN``.

``add_bos_token`` is true, ``add_eos_token`` false, and ``add_space_prefix`` is **false**, so
``b"".join(model.token_bytes(t) for t in model.tokenize(text))`` equals ``text.encode()`` exactly
(BOS contributes no bytes; spaces inside the text are stored as ``▁`` and come back as spaces).

``vocab="bpe"`` is the other tokenizer family, byte-level BPE as in Qwen2.5 and Llama 3
(``tokenizer.ggml.model = "gpt2"``, ``tokenizer.ggml.pre = "qwen2"``): the 256 byte tokens in
GPT-2's printable byte-to-unicode spelling (a space is ``Ġ``), the same learnt pieces spelt
that way with their merges list, and ``<|endoftext|>`` (BOS and EOS, as in Qwen2.5) at the
end; ``add_bos_token`` is false, as in Qwen2.5.

``chat="gemma"`` or ``chat="chatml"`` writes a chat template (``tokenizer.chat_template``) of
that style and appends its two turn tokens as control tokens (``<start_of_turn>``/
``<end_of_turn>``, ``<|im_start|>``/``<|im_end|>``); llama.cpp counts the end-of-turn one among
the end-of-generation tokens.  The Gemma-style template writes ``bos_token`` itself.

``vocab="other"`` gives an incompatible vocabulary for mismatch tests: same special tokens (ids
0, 1, 2), but the normal pieces come before the byte tokens (so token texts differ from id 3 up)
and its default size is 768 instead of 512 (a difference of more than 128, llama.cpp's
speculative-decoding tolerance).

The weights are scaled so that next-token distributions are peaked but not one-hot: with the
defaults the greedy top-1 probability has a median of about 0.3 (5th-95th percentile about
0.14-0.75, extremes 0.09-0.97 over 600 steps), and the greedy continuation depends on the prompt
and on the seed.  ``scale`` multiplies the logits (a higher ``scale`` means more confident
models; ``scale=0`` gives uniform distributions).  Byte and special tokens get smaller logits
(``rare_scale``) so that greedy text is mostly text pieces and rarely an early EOS.

Notes on llama.cpp (0.3.36) with these files: the context rounds ``n_ctx`` up to a multiple of
256; flash attention is enabled automatically on CPU (F16 KV cache), so logits of a batched
decode differ from one-token-at-a-time decoding by ~1e-6 (the argmax agreed in every check).
"""

from __future__ import annotations

import collections
import functools
import os
from pathlib import Path

import numpy as np

SPACE = "\u2581"  # SentencePiece's visible space, '▁'

# gguf token types (llama.cpp's enum llama_token_type)
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_BYTE = 1, 2, 3, 6

UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
DEFAULT_N_VOCAB = {"bytes": 512, "other": 768, "bpe": 512}
VOCABS = tuple(DEFAULT_N_VOCAB)
BPE_SPECIAL = "<|endoftext|>"  # BOS and EOS of the BPE vocabulary, its last token

# Chat templates in the style of the real models' (trimmed): Gemma 3 (BOS written by the
# template, alternating roles enforced with raise_exception) and ChatML (Qwen2.5).
GEMMA_TEMPLATE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = '' -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif -%}
    {%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}
    {{- message['content'] | trim }}
    {{- '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{ '<start_of_turn>model\n' }}
{%- endif -%}
"""
CHATML_TEMPLATE = """{%- if messages[0]['role'] != 'system' %}
    {{- '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}
{%- endif %}
{%- for message in messages %}
    {{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""
CHAT_STYLES = {"gemma": (GEMMA_TEMPLATE, ("<start_of_turn>", "<end_of_turn>")),
               "chatml": (CHATML_TEMPLATE, ("<|im_start|>", "<|im_end|>"))}

# Logit standard deviation at scale=1, calibrated so that top-1 probabilities sit around 0.1-0.8.
_LOGIT_STD = 3.0

_CORPUS = """
hello world. hello there, world! the quick brown fox jumps over the lazy dog.
speculative decoding lets a small draft model propose several tokens that the target model then
checks in a single forward pass. when the draft is right, many tokens are accepted at once; when it
is wrong, the target model samples a correction and the tree is pruned. a tree of candidate tokens
shares its common prefix in the key value cache, so every branch is evaluated together.
the output is exactly the same as sampling from the target model alone: the method is lossless.
once upon a time there was a little model that wanted to write stories about the sea, the sky and
the mountains. it read every book in the library and learned how words follow one another.
in the morning the sun rises over the hills, and in the evening it sets behind the river.
people walk to work, children go to school, and the city slowly wakes up with the sound of bells.
the number of tokens per second depends on the acceptance rate, the depth of the tree and the
width of each level. a deeper tree helps when the draft agrees with the target, a wider one helps
when it is uncertain. we measure the speed up against plain autoregressive decoding.
this is a test of the tokenizer: it should split text into pieces that are neither too long nor
too short, and it should always round trip the original bytes, including numbers like 12345 and
punctuation such as commas, periods, colons; question marks? and exclamation marks!
"""


def _bpe_pieces(n_merges: int, space: str = SPACE) -> list[str]:
    return [a + b for a, b in _learn_bpe(n_merges, space)]


@functools.lru_cache(maxsize=8)
def _byte_chars() -> tuple[str, ...]:
    """GPT-2's printable spelling of each byte (bytes_to_unicode): byte-level BPE vocabularies
    store token texts this way (a space is 'Ġ', a newline 'Ċ')."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    spelling, extra = {}, 0
    for b in range(256):
        if b in printable:
            spelling[b] = chr(b)
        else:
            spelling[b] = chr(256 + extra)
            extra += 1
    return tuple(spelling[b] for b in range(256))


@functools.lru_cache(maxsize=8)
def _learn_bpe(n_merges: int, space: str = SPACE) -> tuple[tuple[str, str], ...]:
    """Deterministic byte-pair merges over the corpus words (each prefixed with `space`), best
    first: the pairs merged, each making a new piece."""
    counts = collections.Counter(space + w for w in _CORPUS.split())
    words = [[list(w), c] for w, c in sorted(counts.items())]
    pieces: list[tuple[str, str]] = []
    seen: set[str] = set()
    while len(pieces) < n_merges:
        pairs: collections.Counter = collections.Counter()
        for symbols, c in words:
            for a, b in zip(symbols, symbols[1:]):
                pairs[(a, b)] += c
        if not pairs:
            break
        (a, b), _ = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
        merged = a + b
        for entry in words:
            symbols, out, i = entry[0], [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and symbols[i] == a and symbols[i + 1] == b:
                    out.append(merged)
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            entry[0] = out
        if merged not in seen:
            seen.add(merged)
            pieces.append((a, b))
    return tuple(pieces)


def tiny_vocab(vocab: str = "bytes", n_vocab: int | None = None) -> list[tuple[str, float, int]]:
    """The vocabulary as (text, score, token type) triples, in id order."""
    if vocab not in DEFAULT_N_VOCAB:
        raise ValueError(f"vocab must be one of {VOCABS}, got {vocab!r}")
    n_vocab = DEFAULT_N_VOCAB[vocab] if n_vocab is None else n_vocab
    if vocab == "bpe":
        return _bpe_vocab(n_vocab)
    specials = [("<unk>", 0.0, TOKEN_UNKNOWN), ("<s>", 0.0, TOKEN_CONTROL), ("</s>", 0.0, TOKEN_CONTROL)]
    byte_tokens = [(f"<0x{b:02X}>", 0.0, TOKEN_BYTE) for b in range(256)]
    n_normal = n_vocab - len(specials) - len(byte_tokens)
    if n_normal < 1:
        raise ValueError(f"n_vocab must be at least {len(specials) + len(byte_tokens) + 1}, got {n_vocab}")

    chars = [SPACE] + [chr(c) for c in range(0x21, 0x7F)]
    texts = list(chars)
    taken = set(texts)
    for piece in _bpe_pieces(max(0, n_normal - len(chars))):
        if piece not in taken:
            taken.add(piece)
            texts.append(piece)
    k = 0
    while len(texts) < n_normal:  # only for vocabularies larger than the corpus supports
        filler = f"{SPACE}x{k}"
        k += 1
        if filler not in taken:
            taken.add(filler)
            texts.append(filler)
    texts = texts[:n_normal]
    # Single characters: score 0 (never a merge result); learnt pieces: -rank, best merge first.
    normal = [(t, 0.0 if i < len(chars) else -float(i - len(chars) + 1), TOKEN_NORMAL)
              for i, t in enumerate(texts)]

    if vocab == "bytes":
        entries = specials + byte_tokens + normal
    else:  # "other": the same specials, then text pieces, then bytes: different ids from 3 up
        entries = specials + normal + byte_tokens
    assert len(entries) == n_vocab and len({t for t, _, _ in entries}) == n_vocab
    return entries


def _bpe_vocab(n_vocab: int) -> list[tuple[str, float, int]]:
    """Byte-level BPE: the 256 bytes (GPT-2 spelling), learnt pieces, then <|endoftext|>."""
    space = _byte_chars()[ord(" ")]
    n_pieces = n_vocab - 256 - 1
    if n_pieces < 0:
        raise ValueError(f"n_vocab must be at least 257 for the bpe vocabulary, got {n_vocab}")
    pieces = _bpe_pieces(n_pieces, space)
    if len(pieces) < n_pieces:
        raise ValueError(f"the corpus gives {len(pieces)} BPE pieces; n_vocab at most {257 + len(pieces)}")
    texts = [*_byte_chars(), *pieces]
    return [(t, 0.0, TOKEN_NORMAL) for t in texts] + [(BPE_SPECIAL, 0.0, TOKEN_CONTROL)]


def bpe_merges(n_vocab: int) -> list[str]:
    """The merges list of the bpe vocabulary ("a b": a and b make the next piece), best first."""
    return [f"{a} {b}" for a, b in _learn_bpe(n_vocab - 257, _byte_chars()[ord(" ")])]


def _rare(entries: list[tuple[str, float, int]], vocab: str) -> np.ndarray:
    """Tokens a real model seldom says: special ones, and the bytes that are not printable
    ASCII (BYTE tokens in SPM; in BPE the byte spellings outside '!'..'~' and the space)."""
    if vocab != "bpe":
        return np.array([k != TOKEN_NORMAL for _, _, k in entries])
    common = {*(chr(c) for c in range(0x21, 0x7F)), _byte_chars()[ord(" ")]}
    return np.array([k != TOKEN_NORMAL or (i < 256 and t not in common)
                     for i, (t, _, k) in enumerate(entries)])


def write_tiny_model(path: str | os.PathLike, *, seed: int = 0, n_vocab: int | None = None,
                     n_embd: int = 64, n_layer: int = 2, n_head: int = 4, n_head_kv: int = 2,
                     n_ff: int = 128, n_ctx_train: int = 2048, vocab: str = "bytes",
                     scale: float = 1.0, rare_scale: float = 0.25, chat: str | None = None) -> Path:
    """Write a tiny random llama-architecture GGUF (F32) to ``path`` and return the path.

    ``n_vocab=None`` means ``DEFAULT_N_VOCAB[vocab]`` (512 for "bytes" and "bpe", 768 for "other");
    ``chat`` (a key of CHAT_STYLES) adds a chat template and its two turn tokens after those.
    ``scale`` multiplies all logits; ``rare_scale`` further multiplies those of the byte and
    special (unk/BOS/EOS) tokens, which are therefore seldom the greedy choice.
    The file is written to a temporary name and renamed, so concurrent writers never expose a
    partial file.  Same arguments => byte-identical file.
    """
    import gguf  # imported here so that importing this module stays cheap

    if n_embd % n_head or n_head % n_head_kv:
        raise ValueError("n_embd must be a multiple of n_head, and n_head of n_head_kv")
    entries = tiny_vocab(vocab, n_vocab)
    merges = bpe_merges(len(entries)) if vocab == "bpe" else None
    rare = _rare(entries, vocab)
    template = None
    if chat is not None:
        template, turn_tokens = CHAT_STYLES[chat]
        entries += [(t, 0.0, TOKEN_CONTROL) for t in turn_tokens]
        rare = np.concatenate([rare, [True] * len(turn_tokens)])
    n_vocab = len(entries)
    head_dim = n_embd // n_head
    n_embd_kv = head_dim * n_head_kv
    rng = np.random.default_rng(seed)

    def normal(rows: int, cols: int, std: float) -> np.ndarray:
        # numpy shape (out, in) is ggml's {in, out}, the layout llama.cpp expects for weights
        return (rng.standard_normal((rows, cols)) * std).astype(np.float32)

    tensors: list[tuple[str, np.ndarray]] = [
        ("token_embd.weight", normal(n_vocab, n_embd, 1.0)),
    ]
    for i in range(n_layer):
        p = f"blk.{i}."
        tensors += [
            (p + "attn_norm.weight", np.ones(n_embd, dtype=np.float32)),
            # q/k of std 2/sqrt(n_embd) over an RMS-normed input: attention scores of order 1-4,
            # so attention mixes the prompt instead of being uniform or a hard argmax.
            (p + "attn_q.weight", normal(n_embd, n_embd, 2.0 / np.sqrt(n_embd))),
            (p + "attn_k.weight", normal(n_embd_kv, n_embd, 2.0 / np.sqrt(n_embd))),
            (p + "attn_v.weight", normal(n_embd_kv, n_embd, 1.0 / np.sqrt(n_embd))),
            (p + "attn_output.weight", normal(n_embd, n_embd, 1.0 / np.sqrt(n_embd))),
            (p + "ffn_norm.weight", np.ones(n_embd, dtype=np.float32)),
            (p + "ffn_gate.weight", normal(n_ff, n_embd, 1.0 / np.sqrt(n_embd))),
            (p + "ffn_up.weight", normal(n_ff, n_embd, 1.0 / np.sqrt(n_embd))),
            (p + "ffn_down.weight", normal(n_embd, n_ff, 1.0 / np.sqrt(n_ff))),
        ]
    # The final hidden state is RMS-normed to ~1 per entry: logits have std ~ scale * _LOGIT_STD.
    output = normal(n_vocab, n_embd, scale * _LOGIT_STD / np.sqrt(n_embd))
    # Byte and special tokens get logits near 0, so generated text is mostly text pieces (valid
    # UTF-8, rarely an early EOS) as with a real model; they stay possible when sampling.
    output[rare] *= np.float32(rare_scale)
    tensors += [
        ("output_norm.weight", np.ones(n_embd, dtype=np.float32)),
        ("output.weight", output),
    ]

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    writer = gguf.GGUFWriter(str(tmp), "llama")
    try:
        writer.add_name(f"tiny-random-llama-{vocab}-s{seed}" + (f"-{chat}" if chat else ""))
        writer.add_context_length(n_ctx_train)
        writer.add_embedding_length(n_embd)
        writer.add_block_count(n_layer)
        writer.add_feed_forward_length(n_ff)
        writer.add_head_count(n_head)
        writer.add_head_count_kv(n_head_kv)
        writer.add_rope_dimension_count(head_dim)
        writer.add_rope_freq_base(10000.0)
        writer.add_layer_norm_rms_eps(1e-5)
        writer.add_vocab_size(n_vocab)
        writer.add_file_type(int(gguf.LlamaFileType.ALL_F32))

        _add_tokenizer(writer, entries, merges)
        if template is not None:
            writer.add_chat_template(template)

        for name, data in tensors:
            writer.add_tensor(name, data)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    os.replace(tmp, path)
    return path


def _add_tokenizer(writer, entries: list[tuple[str, float, int]], merges: list[str] | None) -> None:
    """SPM (merges None: scores rank the pieces; unk, BOS and EOS first) or byte-level BPE (the
    merges list ranks them; <|endoftext|> is BOS and EOS). The SPM keys keep their order."""
    bpe = merges is not None
    texts = [t for t, _, _ in entries]
    bos = eos = texts.index(BPE_SPECIAL) if bpe else None
    writer.add_tokenizer_model("gpt2" if bpe else "llama")
    writer.add_token_list(texts)
    if bpe:
        writer.add_tokenizer_pre("qwen2")
        writer.add_token_merges(merges)
    else:
        writer.add_token_scores([s for _, s, _ in entries])
    writer.add_token_types([k for _, _, k in entries])
    if not bpe:
        writer.add_unk_token_id(UNK_ID)
    writer.add_bos_token_id(BOS_ID if bos is None else bos)
    writer.add_eos_token_id(EOS_ID if eos is None else eos)
    writer.add_add_bos_token(not bpe)
    writer.add_add_eos_token(False)
    if not bpe:
        writer.add_add_space_prefix(False)


MOSTLY_Q8_0 = 7  # gguf.LlamaFileType.MOSTLY_Q8_0


def write_tiny_gguf(path: Path, file_type: int | None = MOSTLY_Q8_0, n_vocab: int = 1000) -> int:
    """A small GGUF with a vocabulary, one Q8_0 matrix and one F32 vector (no model llama.cpp
    could run: for the file checks); returns n_params."""
    import gguf

    w = gguf.GGUFWriter(path, "llama")
    w.add_name("tiny")
    w.add_block_count(1)
    w.add_tokenizer_model("llama")
    w.add_token_list([f"tok{i}" for i in range(n_vocab)])
    w.add_token_scores([0.0] * n_vocab)
    w.add_token_types([1] * n_vocab)
    if file_type is not None:
        w.add_file_type(file_type)
    matrix = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)
    q = gguf.quants.quantize(matrix, gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("blk.0.ffn_up.weight", q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("output_norm.weight", np.ones(64, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return 8 * 64 + 64
