"""Draft/target vocabulary compatibility (edge_tree/vocab.py): llama.cpp's speculative rule."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest

from edge_tree.llamacpp import llama
from edge_tree.core.engine import Engine
from edge_tree.errors import EdgeTreeError
from edge_tree.llamacpp.vocab import FIRST_COMPARED_TOKEN, MAX_SIZE_DIFFERENCE, check_vocab, vocab_mismatch
from tinymodels import DEFAULT_N_VOCAB, SPACE, tiny_vocab, write_tiny_model



def patch_token_text(src: Path, dst: Path, token_id: int) -> str:
    """Copy a model, changing the stored text of one token (same length, so every offset holds).
    Returns the new text."""
    old = tiny_vocab("bytes")[token_id][0]
    new = old[:-1] + ("Q" if old[-1] != "Q" else "Z")
    assert new not in {t for t, _, _ in tiny_vocab("bytes")}
    old_b, new_b = old.encode(), new.encode()
    assert len(old_b) == len(new_b)
    data = src.read_bytes()
    field = struct.pack("<Q", len(old_b)) + old_b
    assert data.count(field) == 1, f"{old!r} is not unique in the file"
    dst.write_bytes(data.replace(field, struct.pack("<Q", len(new_b)) + new_b))
    return new


def patch_u32(src: Path, dst: Path, key: str, value: int) -> None:
    """Copy a model with one uint32 metadata value changed."""
    data = src.read_bytes()
    kb = key.encode()
    head = struct.pack("<Q", len(kb)) + kb + struct.pack("<I", 4)  # 4: GGUF uint32
    assert data.count(head) == 1
    at = data.index(head) + len(head)
    dst.write_bytes(data[:at] + struct.pack("<I", value) + data[at + 4:])


@pytest.fixture(scope="module")
def target(tiny_target):
    with llama.Model(tiny_target) as m:
        yield m


def test_same_vocabulary_is_compatible(target, tiny_target, tiny_draft_same, tiny_draft_other):
    for path in (tiny_target, tiny_draft_same, tiny_draft_other):
        with llama.Model(path) as draft:
            assert vocab_mismatch(target, draft) is None
            assert vocab_mismatch(draft, target) is None
            check_vocab(target, draft)  # does not raise


def test_other_vocabulary_names_the_sizes(target, tiny_other_vocab):
    with llama.Model(tiny_other_vocab) as other:
        assert abs(other.n_vocab - target.n_vocab) > MAX_SIZE_DIFFERENCE
        why = vocab_mismatch(target, other)
        assert why is not None and "size" in why
        assert f"target {target.n_vocab}" in why and f"draft {other.n_vocab}" in why
        why_reversed = vocab_mismatch(other, target)
        assert f"target {other.n_vocab}" in why_reversed and f"draft {target.n_vocab}" in why_reversed
        with pytest.raises(EdgeTreeError) as info:
            check_vocab(target, other)
        assert tiny_other_vocab.name in str(info.value) and why in str(info.value)


def test_same_size_other_texts_names_the_first_differing_token(target, tmp_path):
    other = write_tiny_model(tmp_path / "other-512.gguf", seed=1, vocab="other",
                             n_vocab=DEFAULT_N_VOCAB["bytes"])
    a, b = tiny_vocab("bytes"), tiny_vocab("other", DEFAULT_N_VOCAB["bytes"])
    first = next(i for i in range(FIRST_COMPARED_TOKEN, len(a)) if a[i][0] != b[i][0])
    with llama.Model(other) as draft:
        assert draft.n_vocab == target.n_vocab
        why = vocab_mismatch(target, draft)
    assert why is not None
    assert re.search(rf"\btoken {first}\b", why), why


@pytest.mark.parametrize("where", ["middle", "last"])
def test_one_changed_token_text_is_found_and_named(target, tiny_target, tmp_path, where):
    entries = tiny_vocab("bytes")
    texts = [t for t, _, _ in entries]
    # a learnt piece of several characters (unique in the file as a length-prefixed string)
    candidates = [i for i, t in enumerate(texts) if len(t) >= 4 and t.startswith(SPACE)]
    token_id = candidates[len(candidates) // 2] if where == "middle" else candidates[-1]
    draft_path = tmp_path / f"patched-{token_id}.gguf"
    new = patch_token_text(tiny_target, draft_path, token_id)
    with llama.Model(draft_path) as draft:
        assert draft.token_text(token_id) == new and draft.n_vocab == target.n_vocab
        why = vocab_mismatch(target, draft)
    assert why is not None
    assert re.search(rf"\btoken {token_id}\b", why), why
    assert repr(texts[token_id]) in why and repr(new) in why


def test_only_the_first_of_several_differences_is_named(target, tiny_target, tmp_path):
    texts = [t for t, _, _ in tiny_vocab("bytes")]
    ids = [i for i, t in enumerate(texts) if len(t) >= 4 and t.startswith(SPACE)][-2:]
    step = tmp_path / "one.gguf"
    patch_token_text(tiny_target, step, ids[1])
    both = tmp_path / "two.gguf"
    patch_token_text(step, both, ids[0])
    with llama.Model(both) as draft:
        why = vocab_mismatch(target, draft)
    assert re.search(rf"\btoken {ids[0]}\b", why) and f"token {ids[1]}" not in why


@pytest.mark.parametrize("extra, compatible", [(64, True), (MAX_SIZE_DIFFERENCE, True),
                                               (MAX_SIZE_DIFFERENCE + 1, False)])
def test_size_tolerance_is_llama_cpp_s(target, tmp_path, extra, compatible):
    """A bigger vocabulary with the same first tokens (a padded one) is fine up to 128 more."""
    n = target.n_vocab + extra
    assert [t for t, _, _ in tiny_vocab("bytes", n)][:target.n_vocab] == \
        [t for t, _, _ in tiny_vocab("bytes")]
    path = write_tiny_model(tmp_path / f"big-{n}.gguf", seed=2, n_vocab=n)
    with llama.Model(path) as draft:
        assert draft.n_vocab == n
        for why in (vocab_mismatch(target, draft), vocab_mismatch(draft, target)):
            if compatible:
                assert why is None
            else:
                assert why is not None and str(n) in why and str(target.n_vocab) in why


def test_special_token_ids_must_agree(target, tiny_target, tmp_path):
    eos = tmp_path / "eos.gguf"
    patch_u32(tiny_target, eos, "tokenizer.ggml.eos_token_id", 3)
    with llama.Model(eos) as draft:
        assert draft.eos == 3
        why = vocab_mismatch(target, draft)
    assert why is not None and "EOS" in why and f"target {target.eos}" in why and "draft 3" in why

    bos = tmp_path / "bos.gguf"
    patch_u32(tiny_target, bos, "tokenizer.ggml.bos_token_id", 3)
    with llama.Model(bos) as draft:
        assert draft.bos == 3
        why = vocab_mismatch(target, draft)
    assert why is not None and "BOS" in why


def test_engine_refuses_a_draft_with_another_vocabulary(tiny_target, tiny_other_vocab):
    with pytest.raises(EdgeTreeError) as info:
        Engine(str(tiny_target), str(tiny_other_vocab), threads=1)
    message = str(info.value)
    assert tiny_other_vocab.name in message and tiny_target.name in message
    assert "size" in message
    assert "\n" not in message  # the CLI prints it as one line


def test_engine_accepts_a_draft_with_the_same_vocabulary(tiny_target, tiny_draft_other, tmp_path,
                                                          monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # engines may cache measurements
    with Engine(str(tiny_target), str(tiny_draft_other), threads=1) as engine:
        assert engine.draft_model is not None
        assert engine.generate("hello", max_tokens=4, mode="tree").stop_reason in ("max_tokens", "eos")
