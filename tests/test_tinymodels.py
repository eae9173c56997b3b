"""The tiny random GGUF models load in llama.cpp, tokenize, round-trip bytes and predict."""

import hashlib

import numpy as np
import pytest

from edge_tree.llamacpp import llama
from tinymodels import BOS_ID, DEFAULT_N_VOCAB, EOS_ID, tiny_vocab, write_tiny_model


LLAMA_VOCAB_TYPE_SPM = 1
TEXTS = ["hello world", "Hello, World!  two  spaces\nand a newline", "héllo wörld ✓ 日本語 🙂", " lead"]
MODEL_FIXTURES = ["tiny_target", "tiny_draft_same", "tiny_draft_other", "tiny_other_vocab"]


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _greedy(model: llama.Model, prompt: str, n: int = 12):
    """Greedy continuation of `prompt`: (tokens, top-1 probabilities, all logits rows)."""
    tokens = model.tokenize(prompt)
    with llama.Context(model, n_ctx=128, n_seq_max=1, threads=2) as ctx, llama.Batch(64, 1) as batch:
        for k, tok in enumerate(tokens):  # Batch.add only: the lowest-level, stablest wrapper API
            batch.add(tok, k, (0,), k == len(tokens) - 1)
        pos = len(tokens)
        out, top1, rows = [], [], []
        for _ in range(n):
            ctx.decode(batch)
            logits = ctx.logits(batch.n_tokens - 1).astype(np.float64)  # copy: valid until next decode
            rows.append(logits)
            p = np.exp(logits - logits.max())
            p /= p.sum()
            tok = int(np.argmax(logits))
            out.append(tok)
            top1.append(float(p.max()))
            batch.clear()
            batch.add(tok, pos, (0,), True)
            pos += 1
    return out, top1, rows


def test_same_seed_same_bytes_and_other_seed_differs(tmp_path):
    a = write_tiny_model(tmp_path / "a.gguf", seed=7)
    b = write_tiny_model(tmp_path / "b.gguf", seed=7)
    c = write_tiny_model(tmp_path / "c.gguf", seed=8)
    assert _sha(a) == _sha(b) != _sha(c)
    assert not list(tmp_path.glob(".*.tmp"))


def test_fixture_relations(tiny_target, tiny_draft_same, tiny_draft_other, tiny_other_vocab):
    assert tiny_target != tiny_draft_same and _sha(tiny_target) == _sha(tiny_draft_same)
    assert _sha(tiny_target) != _sha(tiny_draft_other)
    bytes_vocab, other_vocab = tiny_vocab("bytes"), tiny_vocab("other")
    assert bytes_vocab[:3] == other_vocab[:3]  # the same unk, BOS and EOS
    assert bytes_vocab[3][0] == "<0x00>" and other_vocab[3][0] != "<0x00>"


@pytest.mark.parametrize("fixture", MODEL_FIXTURES)
def test_loads_tokenizes_round_trips_and_predicts(fixture, request):
    path = request.getfixturevalue(fixture)
    with llama.Model(path) as model:
        expected_vocab = DEFAULT_N_VOCAB["other" if fixture == "tiny_other_vocab" else "bytes"]
        assert model.n_vocab == expected_vocab
        assert (model.bos, model.eos) == (BOS_ID, EOS_ID)
        assert model.add_bos and model.vocab_type == LLAMA_VOCAB_TYPE_SPM
        assert model.n_layer == 2 and model.n_ctx_train == 2048
        assert model.is_eog(EOS_ID) and not model.is_eog(BOS_ID)

        for text in TEXTS:
            tokens = model.tokenize(text)
            assert tokens[0] == BOS_ID and len(tokens) > 1
            assert model.tokenize(text, add_special=False) == tokens[1:]
            # add_space_prefix is false: the pieces' bytes are exactly the text (BOS adds none).
            assert b"".join(model.token_bytes(t) for t in tokens) == text.encode("utf-8")
        # Text pieces are learnt, not just characters: "hello world" is shorter than its bytes.
        assert len(model.tokenize("hello world", add_special=False)) < len("hello world")

        out, top1, rows = _greedy(model, "hello world", n=4)
        for logits in rows:
            assert logits.shape == (model.n_vocab,)
            assert np.all(np.isfinite(logits)) and np.ptp(logits) > 1.0
        assert all(0 <= t < model.n_vocab for t in out)


def test_vocabularies_are_incompatible(tiny_target, tiny_other_vocab):
    with llama.Model(tiny_target) as a, llama.Model(tiny_other_vocab) as b:
        assert abs(a.n_vocab - b.n_vocab) > 128
        n = min(a.n_vocab, b.n_vocab)
        differ = [i for i in range(5, n) if a.token_text(i) != b.token_text(i)]
        assert len(differ) > n // 2
        assert a.tokenize("hello world") != b.tokenize("hello world")


def test_predictions_are_peaked_but_not_one_hot_and_depend_on_seed_and_prompt(
        tiny_target, tiny_draft_same, tiny_draft_other):
    with llama.Model(tiny_target) as target, llama.Model(tiny_draft_same) as same, \
            llama.Model(tiny_draft_other) as other:
        t_out, t_top1, t_rows = _greedy(target, "hello world")
        s_out, _, s_rows = _greedy(same, "hello world")
        o_out, o_top1, _ = _greedy(other, "hello world")
        p_out, _, _ = _greedy(target, "once upon a time")

        assert t_out == s_out and np.array_equal(t_rows[0], s_rows[0])
        assert t_out != o_out  # different seeds: different greedy continuations
        assert t_out != p_out  # different prompts: different greedy continuations
        for top1 in (t_top1, o_top1):
            assert 0.05 < float(np.median(top1)) < 0.9, top1
            assert max(top1) < 0.999
        assert len(set(t_out)) > 3  # not stuck on one token
        text = b"".join(target.token_bytes(t) for t in t_out)
        text.decode("utf-8")  # byte tokens are rarely chosen: greedy text is valid UTF-8 here
