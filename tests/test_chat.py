"""Chat templates (core/chat.py) on both tokenizer families of the real pairs: SentencePiece like
Gemma (the template writes BOS) and byte-level BPE like Qwen2.5 (no BOS); the vocabulary check
and the reduced-vocabulary draft on BPE too; `edge-tree generate --chat`."""

from __future__ import annotations

import time

import pytest
from click.testing import CliRunner

from edge_tree.cli import main
from edge_tree.core import chat
from edge_tree.core.chat import ChatPrompt, ChatTemplate, prompt_tokens, user_message
from edge_tree.core.engine import Engine
from edge_tree.errors import EdgeTreeError, InputError
from edge_tree.llamacpp import llama
from edge_tree.llamacpp.vocab import vocab_mismatch
from drafts import assert_greedy_is_the_targets
from tinymodels import BPE_SPECIAL, CHAT_STYLES, write_tiny_model

K = 96  # tokens of the reduced draft, of 512
CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello world"},
                {"role": "assistant", "content": "hello"}, {"role": "user", "content": "the quick fox?"}]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Chat targets and drafts of both families, a BPE model without a template, and SPM ones."""
    d = tmp_path_factory.mktemp("chat-models")
    return {
        "spm": write_tiny_model(d / "spm-chat.gguf", seed=0, chat="gemma"),
        "spm-draft": write_tiny_model(d / "spm-chat-draft.gguf", seed=1, chat="gemma"),
        "bpe": write_tiny_model(d / "bpe-chat.gguf", seed=0, vocab="bpe", chat="chatml"),
        "bpe-draft": write_tiny_model(d / "bpe-chat-draft.gguf", seed=1, vocab="bpe", chat="chatml"),
        "bpe-plain": write_tiny_model(d / "bpe-plain.gguf", seed=2, vocab="bpe"),
    }


def turn_ids(model: llama.Model, style: str) -> list[int]:
    texts = CHAT_STYLES[style][1]
    return [t for t in range(model.n_vocab) if model.token_text(t) in texts]


def test_gemma_style_writes_bos_once_and_parses_its_turn_tokens(models):
    with llama.Model(models["spm"]) as model:
        prompt = ChatTemplate.of(model).render(CONVERSATION)
        assert isinstance(prompt, ChatPrompt)
        assert prompt.text.startswith(model.token_text(model.bos) + "<start_of_turn>user\nBe brief.\n\nhello world")
        assert prompt.text.endswith("<start_of_turn>model\n")
        tokens = prompt_tokens(model, prompt)
        assert model.add_bos and tokens[0] == model.bos and tokens.count(model.bos) == 1
        start, end = turn_ids(model, "gemma")
        assert tokens.count(start) == 4 and tokens.count(end) == 3  # 3 turns closed, the reply's open
        assert model.is_eog(end)  # the reply ends at its end of turn
        # the same text as a plain prompt is plain text: BOS added, "<s>" and markers spelt out
        plain = prompt_tokens(model, prompt.text)
        assert plain[0] == model.bos and plain.count(model.bos) == 1 and start not in plain


def test_a_template_without_bos_gets_the_models_bos_added(models, tmp_path):
    """A chat prompt that does not start with BOS, for a model that wants one: added once."""
    with llama.Model(models["spm"]) as model:
        tokens = prompt_tokens(model, ChatPrompt("<start_of_turn>user\nhi<end_of_turn>\n"))
        assert tokens[0] == model.bos and tokens.count(model.bos) == 1


def test_chatml_on_bpe_adds_no_bos_and_parses_its_turn_tokens(models):
    with llama.Model(models["bpe"]) as model:
        assert model.vocab_type == 2 and not model.add_bos  # BPE, as Qwen2.5
        prompt = ChatTemplate.of(model).render(CONVERSATION[1:])
        assert prompt.text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
        tokens = prompt_tokens(model, prompt)
        start, end = turn_ids(model, "chatml")
        assert tokens[0] == start and model.bos not in tokens
        assert tokens.count(start) == 5 and tokens.count(end) == 4
        assert model.is_eog(end) and model.token_text(model.eos) == BPE_SPECIAL
        text = b"".join(model.token_bytes(t, special=True) for t in tokens).decode()
        assert text == prompt.text  # byte-level BPE gives the rendered text back exactly


def test_template_refusals_and_missing_templates_are_input_errors(models):
    with llama.Model(models["spm"]) as model:
        with pytest.raises(InputError, match="roles must alternate") as refused:
            ChatTemplate.of(model).render([{"role": "assistant", "content": "hi"}])
        assert refused.value.field == "messages"
    with llama.Model(models["bpe-plain"]) as model:
        assert model.chat_template is None
        with pytest.raises(InputError, match="no chat template"):
            ChatTemplate.of(model)


def test_the_sandbox_keeps_templates_away_from_python():
    template = ChatTemplate("{{ messages.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(InputError, match="refused"):
        template.render(user_message("hi"))
    with pytest.raises(EdgeTreeError, match="does not compile"):
        ChatTemplate("{% for %}")


def test_a_template_that_loops_too_long_ends_at_the_render_limit(monkeypatch):
    """10^10 iterations of a loop with a call (range) in it: stopped at the limit, one line."""
    monkeypatch.setattr(chat, "RENDER_LIMIT_S", 0.5)
    template = ChatTemplate("{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}"
                            "{% endfor %}")
    started = time.monotonic()
    with pytest.raises(InputError, match="took more than 0.5 s to render"):
        template.render(user_message("hi"))
    assert time.monotonic() - started < 5
    in_time = ChatTemplate("{{ messages[0].content }}{{ dict(context=1, obj=2) | length }}")
    assert in_time.render(user_message("hi")).text == "hi2"  # any keyword passes the checks


def test_template_helpers_as_the_ecosystem_has_them():
    template = ChatTemplate("{{ bos_token }}{{ messages | tojson }}|{{ strftime_now('%Y') | length }}"
                            "{% for m in messages %}{% if loop.index > 0 %}{% break %}{% endif %}{% endfor %}",
                            bos_token="<B>")
    assert template.render(user_message("é<")).text == '<B>[{"role": "user", "content": "é<"}]|4'


@pytest.mark.parametrize("family", ["spm", "bpe"])
def test_chat_through_the_engine_is_lossless_and_ends_at_a_turn(models, family, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with Engine(str(models[family]), str(models[f"{family}-draft"]), threads=1, ctx_size=512) as engine:
        prompt = ChatTemplate.of(engine.target_model).render(user_message("the quick brown fox"))
        reference = engine.generate(prompt, max_tokens=32, mode="ar")
        tree = engine.generate(prompt, max_tokens=32, mode="tree")
        assert tree.tokens == reference.tokens and tree.text == reference.text
        assert tree.stats["prompt_tokens"] == len(prompt_tokens(engine.target_model, prompt))
        assert not any(engine.target_model.is_eog(t) for t in tree.tokens)  # an end of turn ends it
        assert tree.stop_reason in ("eos", "max_tokens")


def test_generate_chat_renders_one_user_message(models, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    args = ["generate", "-m", str(models["bpe"]), "-t", "1", "-c", "256", "-n", "12", "--mode", "ar"]
    chat = CliRunner().invoke(main, [*args, "-cnv", "hello world"])
    assert chat.exit_code == 0, chat.output
    with Engine(str(models["bpe"]), threads=1, ctx_size=256) as engine:
        prompt = ChatTemplate.of(engine.target_model).render(user_message("hello world"))
        expected = engine.generate(prompt, max_tokens=12, mode="ar").text
        plain = engine.generate("hello world", max_tokens=12, mode="ar").text
    assert chat.output == expected + "\n" and expected != plain


def test_generate_chat_without_a_template_is_one_line(models, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    result = CliRunner().invoke(main, ["generate", "-m", str(models["bpe-plain"]), "-t", "1", "-c", "256",
                                       "--chat", "hi"])
    assert result.exit_code == 1
    assert "no chat template" in result.output and "Traceback" not in result.output


# -- the BPE family: vocabulary check and reduced draft ----------------------------------------------

def test_bpe_vocabularies_are_checked_like_spm_ones(models, tiny_target):
    with llama.Model(models["bpe"]) as bpe, llama.Model(models["bpe-draft"]) as draft, \
            llama.Model(models["bpe-plain"]) as plain, llama.Model(tiny_target) as spm:
        assert vocab_mismatch(bpe, draft) is None
        assert vocab_mismatch(bpe, plain) is None  # two turn tokens more: within llama.cpp's 128
        assert vocab_mismatch(bpe, spm) == "vocabulary types differ: target BPE, draft SPM"


def test_a_smaller_bpe_vocabulary_is_refused_for_its_special_ids(models, tmp_path):
    other = write_tiny_model(tmp_path / "bpe-short.gguf", seed=1, vocab="bpe", n_vocab=400)
    with llama.Model(models["bpe-plain"]) as target, llama.Model(other) as draft:
        why = vocab_mismatch(target, draft)
        assert draft.bos == draft.n_vocab - 1 != target.bos  # <|endoftext|> is last in both
        assert why == f"BOS differs: target {target.bos} (add False), draft {draft.bos} (add False)"


@pytest.fixture(scope="module")
def reduced_bpe(models, tmp_path_factory):
    cache = tmp_path_factory.mktemp("bpe-draft-vocab")
    patch = pytest.MonkeyPatch()
    patch.setenv("XDG_CACHE_HOME", str(cache))
    try:
        with Engine(str(models["bpe"]), str(models["bpe-draft"]), threads=1, ctx_size=512, draft_vocab=K) as e:
            yield e
    finally:
        patch.undo()


def test_the_reduced_bpe_draft_keeps_every_stop(reduced_bpe):
    target = reduced_bpe.target_model
    ids = set(reduced_bpe.models.reduced.ids.tolist())
    stops = [t for t in range(target.n_vocab) if target.is_eog(t)]
    assert reduced_bpe.draft_model.n_vocab == K and len(stops) == 2 and set(stops) <= ids


@pytest.mark.parametrize("mode", ["chain", "tree"])
def test_greedy_output_with_a_reduced_bpe_draft_is_the_targets(reduced_bpe, mode):
    assert_greedy_is_the_targets(reduced_bpe, mode)
