"""The `edge-tree` command: in-process with click's CliRunner for what works, and as a real
subprocess (the installed console script) for what must fail: an exit code, one line on stderr,
never a traceback."""

from __future__ import annotations

import json
import os
import re
import subprocess
from importlib.metadata import version

import pytest

import edge_tree
from edge_tree.core.engine import Engine
from commands import assert_one_line_error, invoke, run
from serving import edge_tree_exe

THREADS = "1"  # a shared 2-core machine: more llama.cpp threads only contend
STATS_KEYS = {"tokens", "wall_s", "tokens_per_s", "prompt_tokens", "rounds", "target_passes",
              "drafted", "accepted", "mean_accepted_per_pass", "acceptance_by_depth",
              "draft_share", "verify_share"}
ORIGINAL_ENV = dict(os.environ)  # before any test moves the cache elsewhere


@pytest.fixture(autouse=True)
def _private_cache(private_cache):
    """Every test here keeps its engines' measurements out of the user cache."""
    return private_cache


@pytest.fixture(scope="module")
def expected(tiny_target, tmp_path_factory):
    """Greedy text of the tiny target through the API: what the command must print."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("api-cache")))
        with Engine(str(tiny_target), threads=1) as engine:
            return {prompt: engine.generate(prompt, max_tokens=8, mode="ar")
                    for prompt in ("hello world", "once upon a time")}



# -- what works (in process) -----------------------------------------------------------------------

def test_generate_prints_the_greedy_text(tiny_target, expected):
    r = invoke("generate", "-m", str(tiny_target), "-n", "8", "-t", THREADS, "hello world")
    assert r.exit_code == 0, r.stderr
    assert expected["hello world"].stop_reason == "max_tokens"
    assert r.stdout == expected["hello world"].text + "\n"
    assert r.stdout.strip()
    assert "Traceback" not in r.stderr


def test_generate_with_a_draft_prints_the_same_greedy_text(tiny_target, tiny_draft_other, expected):
    for mode in ("tree", "chain"):
        r = invoke("generate", "-m", str(tiny_target), "-md", str(tiny_draft_other), "--mode", mode,
                   "-n", "8", "-t", THREADS, "once upon a time")
        assert r.exit_code == 0, r.stderr
        assert r.stdout == expected["once upon a time"].text + "\n", mode


def test_prompt_from_stdin(tiny_target, expected):
    r = invoke("generate", "-m", str(tiny_target), "-n", "8", "-t", THREADS, input="hello world")
    assert r.exit_code == 0, r.stderr
    assert r.stdout == expected["hello world"].text + "\n"


def test_stats_json_writes_the_summary(tiny_target, tmp_path):
    out = tmp_path / "stats.json"
    r = invoke("generate", "-m", str(tiny_target), "-n", "8", "-t", THREADS, "--stats-json", str(out),
               "hello world")
    assert r.exit_code == 0, r.stderr
    stats = json.loads(out.read_text())
    assert STATS_KEYS <= set(stats)
    assert stats["tokens"] == 8 and stats["mode"] == "ar" and stats["stop_reason"] == "max_tokens"
    assert stats["prompt_tokens"] > 1 and stats["tokens_per_s"] > 0
    assert r.stderr == ""  # --stats-json alone prints nothing more


def test_stats_prints_a_summary_on_stderr(tiny_target, tiny_draft_same, tmp_path):
    r = invoke("generate", "-m", str(tiny_target), "-n", "8", "-t", THREADS, "--stats", "hello world")
    assert r.exit_code == 0, r.stderr
    assert "8 tokens in" in r.stderr and "tok/s" in r.stderr and "mode ar" in r.stderr
    assert "tok/s" not in r.stdout

    out = tmp_path / "tree.json"
    r = invoke("generate", "-m", str(tiny_target), "-md", str(tiny_draft_same), "--mode", "chain",
               "-n", "8", "-t", THREADS, "--stats", "--stats-json", str(out), "hello world")
    assert r.exit_code == 0, r.stderr
    stats = json.loads(out.read_text())
    assert "mode chain" in r.stderr and "acceptance by depth" in r.stderr
    assert f"drafted {stats['drafted']}, accepted {stats['accepted']}" in r.stderr


def test_stats_of_a_drafted_round_whose_first_token_ends_the_text(tiny_target, tiny_draft_same, monkeypatch):
    """The first round drafted, and the target's first token is the end of text: no tokens, so no
    passes per token; the summary says the rest (it raised a TypeError on SmolLM2 before)."""
    from edge_tree.llamacpp import llama

    monkeypatch.setattr(llama.Model, "is_eog", lambda self, token: True)
    r = invoke("generate", "-m", str(tiny_target), "-md", str(tiny_draft_same), "--mode", "chain",
               "-n", "8", "-t", THREADS, "--stats", "hello world")
    assert r.exit_code == 0, r.stderr
    assert "0 tokens in" in r.stderr and "stop: eos" in r.stderr
    assert re.search(r"1 rounds, 1 target passes; drafted [1-9]", r.stderr), r.stderr


def test_trace_dir_pictures_report_show_tree_and_render(tiny_target, tiny_draft_other, tmp_path):
    """generate writes the trace, each step's pictures and the report as the run goes, --show-tree
    draws each round on stderr; render draws them again from the trace alone."""
    from edge_tree.viz.jsonl import read_trace

    trace_dir = tmp_path / "t"
    r = invoke("generate", "-m", str(tiny_target), "-md", str(tiny_draft_other), "-n", "8", "-t", THREADS,
               "--trace-dir", str(trace_dir), "--trace-format", "dot,svg", "--show-tree", "hello world")
    assert r.exit_code == 0, r.stderr
    header, steps, summary = read_trace(trace_dir)
    assert steps and summary["stats"]["rounds"] == len(steps) and header["mode"] == "tree"
    numbers = [f"{s.step:04d}" for s in steps]
    assert sorted(p.name for p in trace_dir.iterdir()) == sorted(
        ["trace.jsonl", "report.html"] + [f"step-{n}.{f}" for n in numbers for f in ("dot", "svg")])
    assert r.stderr.count("\u25cf ") == len(steps)  # one tree (its root line) per round
    assert f"step {steps[0].step} \u00b7 tree \u00b7 pos" in r.stderr

    out = tmp_path / "again"
    r = invoke("render", str(trace_dir), "--format", "png,html", "--out", str(out))
    assert r.exit_code == 0, r.stderr
    assert r.stdout == f"{len(steps) + 1} files in {out}\n"
    assert sorted(p.name for p in out.iterdir()) == sorted(["report.html"] + [f"step-{n}.png" for n in numbers])


def test_context_full_stop_says_so_on_stderr(tiny_target):
    r = invoke("generate", "-m", str(tiny_target), "-n", "1000", "-c", "16", "--context-full", "stop",
               "-t", THREADS, "--stats", "hello world")
    assert r.exit_code == 0, r.stderr
    assert "stopped at the context limit" in r.stderr and "stop: context" in r.stderr


def test_version():
    r = invoke("--version")
    assert r.exit_code == 0
    assert r.stdout.strip() == f"edge-tree, version {version('edge-tree')}"
    assert edge_tree.__version__ in r.stdout


def test_help_shows_commands_and_generate_help_shows_examples():
    r = invoke("--help")
    assert r.exit_code == 0
    assert "generate" in r.stdout and "models" in r.stdout
    r = invoke("generate", "--help")
    assert r.exit_code == 0
    assert "Examples:" in r.stdout
    examples = r.stdout.split("Examples:", 1)[1]
    assert "edge-tree generate" in examples and "--stats" in examples
    for option in ("--max-tokens", "--draft", "--temperature", "--stats-json", "--seed"):
        assert option in r.stdout


# -- what fails (a real process) -------------------------------------------------------------------


@pytest.mark.parametrize("which", ["missing", "dir", "not_gguf", "cut"])
def test_bad_model_files_fail_in_one_line(bad_model_files, which):
    path, needle = bad_model_files[which]
    proc = run("generate", "-m", path, "-n", "4", "-t", THREADS, "hello")
    out = assert_one_line_error(proc, 1, needle, "target", str(path))
    assert out == ""


@pytest.mark.parametrize("which", ["missing", "cut"])
def test_bad_draft_files_fail_in_one_line(bad_model_files, tiny_target, which):
    path, needle = bad_model_files[which]
    proc = run("generate", "-m", tiny_target, "-md", path, "-n", "4", "-t", THREADS, "hello")
    assert assert_one_line_error(proc, 1, needle, "draft", str(path)) == ""


def test_draft_with_another_vocabulary_fails_in_one_line(tiny_target, tiny_other_vocab):
    proc = run("generate", "-m", tiny_target, "-md", tiny_other_vocab, "-n", "4", "-t", THREADS, "hi")
    assert assert_one_line_error(proc, 1, "cannot draft", tiny_other_vocab.name) == ""


@pytest.mark.parametrize("args, option", [
    (["--max-depth", "0"], "--max-depth"),
    (["--top-p", "0"], "--top-p"),
])
def test_bad_option_values_exit_2_in_one_line(tiny_target, tiny_draft_other, args, option):
    proc = run("generate", "-m", tiny_target, "-md", tiny_draft_other, "-t", THREADS, *args, "hi")
    assert assert_one_line_error(proc, 2, option) == ""


@pytest.mark.parametrize("args, option", [
    (["-n", "0"], "--max-tokens"),
    (["--temperature", "-1"], "--temperature"),
    (["--max-total-nodes", "0"], "--max-total-nodes"),
    (["--max-time", "0"], "--max-time"),
    (["-c", "8"], "--ctx-size"),
    (["-t", "0"], "--threads"),
])
def test_more_bad_option_values_exit_2_in_one_line(tiny_target, tiny_draft_other, args, option):
    """The same rule in process (quicker than a process each)."""
    r = invoke("generate", "-m", str(tiny_target), "-md", str(tiny_draft_other), "-t", THREADS,
               *args, "hi")
    assert r.exit_code == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith(f"edge-tree: error: {option}")


def test_click_usage_errors_exit_2_without_traceback(tiny_target):
    proc = run("generate", "-m", tiny_target, "--mode", "beam", "hi")
    assert_one_line_error(proc, 2, "--mode")
    proc = run("generate", "-m", tiny_target, "-n", "many", "hi")
    assert_one_line_error(proc, 2, "--max-tokens")


def test_context_overflow_is_a_one_line_error(tiny_target):
    proc = run("generate", "-m", tiny_target, "-n", "100000", "-t", THREADS, "hi")
    assert_one_line_error(proc, 1, "--ctx-size", "--context-full stop")


def test_unwritable_stats_json_fails_in_one_line(tiny_target, tmp_path):
    """Bug: the summary is written outside the error handling, so an unwritable --stats-json
    path ends in an OSError traceback (after the text was generated)."""
    target = tmp_path / "no-such-dir" / "stats.json"
    proc = run("generate", "-m", tiny_target, "-n", "4", "-t", THREADS, "--stats-json", target, "hi")
    assert proc.returncode != 0
    assert_one_line_error(proc, proc.returncode, "stats.json")
    assert proc.returncode in (1, 2)


@pytest.mark.parametrize("where", ["stdin", "argument"])
def test_a_prompt_that_is_not_utf8_does_not_crash(tiny_target, where):
    """Bug: bytes that are not UTF-8 reach Python as lone surrogates (surrogateescape) and
    Model.tokenize's text.encode('utf-8') raises UnicodeEncodeError: a traceback. Either a
    one-line error or a continuation of those bytes is fine."""
    raw = b"hel\xfflo"
    if where == "stdin":
        proc = run("generate", "-m", tiny_target, "-n", "4", "-t", THREADS, input=raw)
    else:
        proc = subprocess.run([edge_tree_exe().encode(), b"generate", b"-m", bytes(tiny_target),
                               b"-n", b"4", b"-t", THREADS.encode(), raw],
                              capture_output=True, timeout=300)
    if proc.returncode == 0:
        assert proc.stdout.strip() and b"Traceback" not in proc.stderr
    else:
        assert_one_line_error(proc, 1)


# -- the demo pair -------------------------------------------------------------------------------

@pytest.mark.demo
def test_demo_pair_generates_by_default(tmp_path):
    """No -m: the demo pair (Gemma 3 270M F32 target, Q4_K_M draft) in the user's cache."""
    stats_file = tmp_path / "stats.json"
    proc = run("generate", "-n", "8", "-t", THREADS, "--stats-json", stats_file,
               "The capital of France is", env=dict(ORIGINAL_ENV), timeout=600)
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    text = proc.stdout.decode("utf-8")
    assert text.endswith("\n") and text.strip(), repr(text)
    stats = json.loads(stats_file.read_text())
    assert stats["mode"] == "tree" and stats["draft_layers"] > 0
    assert 1 <= stats["tokens"] <= 8
    assert stats["tokens"] == 8 or stats["stop_reason"] == "eos"
