"""The reduced-vocab draft (draft_vocab.py): its logits are the full draft's on its tokens, fed
every token exactly through input embeddings; the output stays the target's own."""

import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edge_tree.core.costs import CostModel
from edge_tree.core.policy import smaller_vocabulary_pays
from edge_tree.llamacpp import draft_vocab, llama
from edge_tree.cli import main
from edge_tree.core import models
from edge_tree.core.engine import Engine
from edge_tree.errors import EdgeTreeError
from chisquare import SIGNIFICANCE, first_two_tokens, p_value
from drafts import K, assert_greedy_is_the_targets, decoded, full_logits
from neartie import assert_same_or_near_tie


def reduced_logits(engine: Engine, tokens: list[int]) -> np.ndarray:
    ctx = engine.models.draft_ctx
    ctx.clear()
    with ctx.new_batch(64, 1) as batch:
        row = ctx.logits(ctx.feed(batch, tokens, 0)).copy()
    ctx.clear()
    engine.models.model_drafter.start([])
    return row


@pytest.fixture(scope="module")
def reduced_engine(tiny_target, tiny_draft_other, tmp_path_factory):
    cache = tmp_path_factory.mktemp("draft-vocab-cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("XDG_CACHE_HOME", str(cache))
    with Engine(str(tiny_target), str(tiny_draft_other), threads=1, ctx_size=512, draft_vocab=K,
                policy="fixed") as e:
        yield e
    mp.undo()


def test_the_reduced_draft_has_k_tokens_including_every_stop(reduced_engine):
    ids = reduced_engine.models.reduced.ids
    assert reduced_engine.draft_model.n_vocab == K == len(ids)
    assert np.all(np.diff(ids) > 0)
    target = reduced_engine.target_model
    stops = [t for t in range(target.n_vocab) if target.is_eog(t)]
    assert stops and set(stops) <= set(ids.tolist())
    assert reduced_engine.models.reduced.embed.scale == 1.0  # llama scales no embeddings


def test_reduced_logits_are_the_full_drafts_on_its_tokens(reduced_engine, tiny_draft_other):
    ids = set(reduced_engine.models.reduced.ids.tolist())
    tokens = reduced_engine.target_model.tokenize("Zebra! the quick brown fox, 1, 2, 3")
    assert any(t not in ids for t in tokens)  # the input holds tokens the reduced draft cannot say
    got = reduced_logits(reduced_engine, tokens)
    expected = full_logits(tiny_draft_other, tokens)[reduced_engine.models.reduced.ids]
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_the_draft_scores_the_dropped_tokens_its_context_holds(reduced_engine, tiny_draft_other):
    """Tokens the copy dropped but the context holds get the full draft's logits (their output
    rows times the copy's hidden state), so a rare word the text repeats can be proposed."""
    assert reduced_engine.models.reduced.output is not None  # the tiny model's logits reproduce
    kept = set(reduced_engine.models.reduced.ids.tolist())
    tokens = reduced_engine.target_model.tokenize("Zebra! the quick brown fox, 1, 2, 3")
    dropped = {t for t in tokens if t not in kept}
    drafter = reduced_engine.models.model_drafter
    drafter.start(tokens)
    drafter._note_context(tokens)  # what proposing() does first
    (row,) = decoded(drafter, drafter._sync(tokens, []))  # the draft's logits at the root, over its index space
    index_ids = drafter._index_ids
    assert dropped and dropped <= set(index_ids.tolist()) and len(index_ids) == K + len(dropped)
    expected = full_logits(tiny_draft_other, tokens)[index_ids]
    np.testing.assert_allclose(row, expected, atol=1e-3)
    drafter.start([])


def test_the_reduced_copy_is_made_once_and_reused(reduced_engine, tiny_target, tiny_draft_other):
    path = reduced_engine.draft_model.path
    mtime = path.stat().st_mtime_ns
    with Engine(str(tiny_target), str(tiny_draft_other), threads=1, ctx_size=64, draft_vocab=K) as e:
        assert e.draft_model.path == path
        np.testing.assert_array_equal(e.models.reduced.ids, reduced_engine.models.reduced.ids)
    assert path.stat().st_mtime_ns == mtime


@pytest.mark.parametrize("mode", ["chain", "tree"])
def test_greedy_output_with_a_reduced_draft_is_the_targets(reduced_engine, mode):
    assert_greedy_is_the_targets(reduced_engine, mode)



def test_sampling_with_a_reduced_draft_keeps_the_target_distribution(reduced_engine, tiny_target):
    with Engine(str(tiny_target), threads=1, ctx_size=64) as plain:
        ar_counts = first_two_tokens(plain, "ar", seed0=10_000)
    tree_counts = first_two_tokens(reduced_engine, "tree", seed0=50_000, max_depth=3, max_nodes_per_level=4)
    assert len(ar_counts) > 5
    assert p_value(ar_counts, tree_counts) > SIGNIFICANCE


def test_the_input_table_keeps_the_rows_it_read_and_embeds_the_same(tiny_draft_other):
    from edge_tree.llamacpp.modelfile import describe_gguf

    tensors = describe_gguf(tiny_draft_other, "draft")["tensors"]
    read_each_time = draft_vocab.InputTable(tiny_draft_other, tensors, scale=2.0)
    kept = draft_vocab.InputTable(tiny_draft_other, tensors, scale=2.0, cached_rows=3)
    for tokens in ([5, 7, 5], [7, 9, 11, 5], [9], [1, 2, 3, 4, 5]):  # hits, a full table, more than it keeps
        np.testing.assert_array_equal(kept(np.array(tokens)), read_each_time(np.array(tokens)))
    assert set(kept._cached) == {1, 2, 3, 4, 5}


def test_choose_ids_takes_the_most_used_and_keeps_the_stops():
    usage = np.array([0.0, 0.5, 0.1, 0.3, 0.0, 0.1])
    assert choose(usage, [0], 3) == [0, 1, 3]
    assert choose(usage, [4, 0], 4) == [0, 1, 3, 4]
    assert choose(usage, [], 3) == [1, 2, 3]  # ties go to the lower id


def choose(usage, keep, size) -> list[int]:
    return draft_vocab.choose_ids(usage, keep, size).tolist()


def test_auto_tries_a_copy_only_for_large_vocabularies(tiny_draft_other):
    with llama.Model(tiny_draft_other) as tiny:  # 512 tokens: too few for auto to try
        assert draft_vocab.wanted("auto", tiny) is None
        assert draft_vocab.wanted("full", tiny) is None
        assert draft_vocab.wanted(1000, tiny) is None  # no smaller than the vocabulary itself
        assert draft_vocab.wanted(100, tiny) == 100


@pytest.mark.demo
def test_the_demo_drafts_output_matrix_is_most_of_a_call(demo_pair):
    """Gemma 3 270M: the 262k-row output matrix (tied to the input table) is most of what a
    one-token call reads, so auto tries the 32k copy (docs/design.md, "The demo model": 63% of the compute)."""
    with llama.Model(demo_pair.draft) as draft:
        assert draft_vocab.estimated_saving(draft.path, draft_vocab.DEFAULT_SIZE) > 0.4
        assert draft_vocab.wanted("auto", draft) == draft_vocab.DEFAULT_SIZE


# Measured on 2 cores (docs/design.md, "Measured costs", and this machine): the F32 target; the Q4_K_M demo draft,
# full (16.5 ms a call) and reduced to 32k tokens (6.7 ms).
CPU_TARGET = {1: .0416, 2: .0516, 4: .0582, 8: .0778, 16: .1036}
CPU_FULL = {1: .0165, 2: .0290, 4: .0400, 8: .0600, 16: .0980}
CPU_REDUCED = {1: .0067, 2: .0100, 4: .0140, 8: .0230, 16: .0420}
# An H200 (docs/design.md, "Measured costs"): a call is paid per layer, not per byte; the full-vocabulary copy
# of the logits and its scan on the host add about a millisecond a call.
GPU_TARGET = {1: .00120, 2: .00139, 4: .00196, 8: .00216, 16: .00233}
GPU_DRAFT = {1: .00118, 2: .00135, 4: .00190, 8: .00210, 16: .00230}


def test_auto_keeps_the_copy_where_its_measured_saving_outweighs_its_coverage():
    full = CostModel(CPU_TARGET, CPU_FULL, host_per_node=0.0004)
    reduced = CostModel(CPU_TARGET, CPU_REDUCED, host_per_node=0.00005)
    assert smaller_vocabulary_pays(full, reduced, coverage=0.97)
    assert not smaller_vocabulary_pays(full, full, coverage=0.97)  # no saving: the loss decides


def test_auto_drops_the_copy_where_calls_cost_the_same():
    full = CostModel(GPU_TARGET, GPU_DRAFT, host_per_node=0.0001)
    reduced = CostModel(GPU_TARGET, GPU_DRAFT, host_per_node=0.0001)
    assert not smaller_vocabulary_pays(full, reduced, coverage=0.9)


@pytest.mark.parametrize("value", ["1", "many", "-5"])
def test_a_bad_draft_vocab_is_a_one_line_usage_error(value, tiny_target, tiny_draft_other):
    result = CliRunner().invoke(main, ["generate", "-m", str(tiny_target), "-md", str(tiny_draft_other),
                                       "--draft-vocab", value, "hi"])
    assert result.exit_code == 2
    assert "--draft-vocab" in result.output and "Traceback" not in result.output


# -- the demo pair --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo_engine(demo_pair):
    # the copy's size named, not "auto": auto weighs measured costs, which a busy machine moves
    with Engine(str(demo_pair.target), str(demo_pair.draft), threads=1, ctx_size=256,
                draft_vocab=str(draft_vocab.DEFAULT_SIZE)) as e:
        yield e


@pytest.mark.demo
def test_the_demo_draft_is_reduced_and_exact_on_its_tokens(demo_engine, demo_pair):
    reduced = demo_engine.models.reduced
    assert demo_engine.draft_model.n_vocab == draft_vocab.DEFAULT_SIZE
    assert reduced.embed.scale == pytest.approx(math.sqrt(640))  # Gemma scales token input only
    tokens = demo_engine.target_model.tokenize("The lighthouse keeper in Zürich wrote 中文 🙂 quickly")
    assert any(t not in set(reduced.ids.tolist()) for t in tokens)
    got = reduced_logits(demo_engine, tokens)
    expected = full_logits(demo_pair.draft, tokens)[reduced.ids]
    np.testing.assert_allclose(got, expected, atol=1e-2 * np.abs(expected).max())
    assert np.argmax(got) == np.argmax(expected)


@pytest.mark.demo
def test_demo_tree_with_the_reduced_draft_is_the_targets_text(demo_engine):
    for prompt in ("The capital of France is", "def fibonacci(n):", "Here is a list of fruits:"):
        reference = demo_engine.generate(prompt, max_tokens=40, mode="ar").tokens
        result = demo_engine.generate(prompt, max_tokens=40, mode="tree")
        assert_same_or_near_tie(demo_engine, prompt, reference, result.tokens)
        assert result.stats["mean_accepted_per_pass"] > 2  # the reduced draft still drafts well


def test_a_draft_that_cannot_take_embeddings_errs_when_asked_and_stays_whole_under_auto(
        monkeypatch, tiny_target, tiny_draft_other, reduced_engine):
    monkeypatch.setattr(draft_vocab, "input_scale", lambda *args: None)
    with pytest.raises(EdgeTreeError, match="does not take input embeddings.*--draft-vocab full"):
        Engine(str(tiny_target), str(tiny_draft_other), threads=1, ctx_size=64, draft_vocab=K)
    monkeypatch.setattr(draft_vocab, "MIN_FULL_VOCAB", 0)  # make "auto" reduce the tiny draft
    monkeypatch.setattr(draft_vocab, "DEFAULT_SIZE", K)
    with Engine(str(tiny_target), str(tiny_draft_other), threads=1, ctx_size=64) as e:
        assert e.models.reduced is None and e.draft_model.n_vocab == 512


def test_an_unwritable_cache_is_a_one_line_error(monkeypatch, tmp_path, tiny_target, tiny_draft_other):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    (tmp_path / "edge-tree").mkdir()
    (tmp_path / "edge-tree" / "draft-vocab").write_text("a file where the folder should be")
    result = CliRunner().invoke(main, ["generate", "-m", str(tiny_target), "-md", str(tiny_draft_other),
                                       "--draft-vocab", str(K), "-n", "4", "hi"])
    assert result.exit_code == 1
    assert "cannot write the reduced draft" in result.output and "Traceback" not in result.output


def test_the_full_draft_is_closed_before_its_copy_loads(monkeypatch, tiny_target, tiny_draft_other,
                                                        reduced_engine):
    """Peak memory: the full draft and its copy never hold memory at once, under auto too, and
    auto's fallback to the full draft (a copy that does not pay) opens it again. Where the copy
    drafts, the full draft is closed before the target's context is made."""
    alive, most, events = set(), [], []
    real_init, real_close = llama.Model.__init__, llama.Model.close
    real_context = llama.Context.__init__

    def context(self, model, *args, **kwargs):
        events.append(("context", model.path.name))
        real_context(self, model, *args, **kwargs)

    monkeypatch.setattr(llama.Context, "__init__", context)

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        alive.add(id(self))
        most.append(len(alive))
        events.append(("open", self.path.name))

    def close(self):
        if id(self) in alive:
            events.append(("close", self.path.name))
        alive.discard(id(self))
        real_close(self)

    monkeypatch.setattr(llama.Model, "__init__", init)
    monkeypatch.setattr(llama.Model, "close", close)
    with Engine(str(tiny_target), str(tiny_draft_other), threads=1, ctx_size=64, draft_vocab=K) as e:
        assert e.models.reduced is not None
        # the rows the copy reads of the full draft's file are read, not mapped: a mapping kept
        # every page a read touched in the process's memory (153 MiB on pair B)
        assert str(tiny_draft_other.resolve()) not in Path("/proc/self/maps").read_text()
    assert max(most) == 2  # the target and one draft
    # the target's context is made once the full draft is closed (and before its copy opens)
    full = tiny_draft_other.name
    assert events.index(("close", full)) < events.index(("context", tiny_target.name))
    monkeypatch.setattr(draft_vocab, "MIN_FULL_VOCAB", 0)  # make "auto" try the tiny draft's copy
    monkeypatch.setattr(draft_vocab, "DEFAULT_SIZE", K)
    for pays in (True, False):
        most.clear()
        monkeypatch.setattr(models, "smaller_vocabulary_pays", lambda *args: pays)
        with Engine(str(tiny_target), str(tiny_draft_other), threads=1, ctx_size=64) as e:
            assert (e.models.reduced is not None) == pays
            assert e.draft_model.n_vocab == (K if pays else 512)
            assert e.generate("hello", max_tokens=4, mode="tree").tokens
        assert max(most) == 2
