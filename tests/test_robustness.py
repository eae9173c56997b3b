"""Hard to break: bad model files, prompts that do not fit, bad option values, Ctrl-C, --max-time,
unwritable outputs, and long runs whose memory must stay flat.

The order of checks in `edge-tree generate` (docs/errors.md): option values (exit 2), then
output paths (--trace-dir, --stats-json), then the model files (header read, no llama.cpp),
then llama.cpp loads the models; the prompt is checked against the context after that,
before the first token is generated.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edge_tree import Engine, EdgeTreeError
from edge_tree.llamacpp import llama
from edge_tree.cli import Interrupt, main
from edge_tree.core.options import GenOptions
from edge_tree.core.plan import PLAIN_SHARE, TreeShape
from edge_tree.core.slots import Slots
from edge_tree.llamacpp.modelfile import check_gguf
from edge_tree.viz.jsonl import read_trace

from commands import SCRIPTS, assert_one_line_error, run
from serving import edge_tree_exe

THREADS = "1"  # a shared 2-core machine
REPEATING = "one two three four five six seven eight nine ten one two three four five six seven eight"


@pytest.fixture(autouse=True)
def _private_cache(private_cache):
    """Every test here keeps its engines' measurements out of the user cache."""
    return private_cache


def invoke(*args, input=None):
    return CliRunner().invoke(main, [str(a) for a in args], input=input, catch_exceptions=False)


def write_gguf(path: Path, arch: str, tensors: bool = True) -> Path:
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("broken")
    w.add_block_count(1)
    if tensors:
        w.add_tensor("token_embd.weight", np.zeros((8, 4), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def bad_models(tmp_path_factory, bad_model_files):
    """conftest's bad model files, plus a GGUF with metadata but no tensors."""
    d = tmp_path_factory.mktemp("no-tensors")
    no_tensors = write_gguf(d / "vocab-only.gguf", "llama", tensors=False)
    return {**bad_model_files, "no_tensors": (no_tensors, "no tensors")}


# -- 1. model files ------------------------------------------------------------------------------

def test_unknown_architecture_is_one_line_from_the_real_command(tmp_path):
    path = write_gguf(tmp_path / "alien.gguf", "nonexistent-arch")
    assert check_gguf(path) == path  # a well-formed file: only llama.cpp knows its architectures
    proc = run("generate", "-m", path, "-n", "4", "-t", THREADS, "hi")
    out = assert_one_line_error(proc, 1, "could not load", str(path),
                                "unknown model architecture", "nonexistent-arch")
    assert out == ""
    assert "print_info" not in proc.stderr.decode()  # the reason, not llama.cpp's log noise


def test_gguf_without_tensors_is_one_line_from_the_real_command(bad_models):
    path, needle = bad_models["no_tensors"]
    proc = run("generate", "-m", path, "-n", "4", "-t", THREADS, "hi")
    assert assert_one_line_error(proc, 1, needle, "target", str(path)) == ""


@pytest.mark.parametrize("which", ["missing", "dir", "not_gguf", "empty", "cut", "no_tensors"])
@pytest.mark.parametrize("role", ["target", "draft"])
def test_bad_model_files_are_refused_before_llama_cpp_sees_any_model(bad_models, tiny_target,
                                                                     monkeypatch, which, role):
    """Not one llama.cpp model load happens: not even the good target's when the draft is bad."""
    loads = []
    monkeypatch.setattr(llama, "Model", lambda *a, **k: loads.append(a) or pytest.fail("loaded"))
    path, needle = bad_models[which]
    target, draft = (path, None) if role == "target" else (tiny_target, path)
    with pytest.raises(EdgeTreeError) as info:
        Engine(str(target), str(draft) if draft else None, threads=1)
    message = str(info.value)
    assert needle in message and role in message and str(path) in message
    assert "\n" not in message
    assert loads == []


# -- 2. prompts and the context ------------------------------------------------------------------

def test_prompt_plus_max_tokens_beyond_the_context_fails_before_any_text(tiny_target, tmp_path):
    proc = run("generate", "-m", tiny_target, "-c", "256", "-n", "300", "-t", THREADS,
               "--trace-dir", tmp_path / "t", "hello")
    out = assert_one_line_error(proc, 1, "exceed the context of 256 tokens", "--ctx-size",
                                "--max-tokens 300", "--context-full stop")
    assert out == ""
    header, steps, summary = read_trace(tmp_path / "t")
    assert steps == [] and summary is None and header["prompt"] == "hello"


def test_context_full_stop_ends_cleanly_at_the_context(tiny_target, tmp_path):
    stats_file = tmp_path / "stats.json"
    proc = run("generate", "-m", tiny_target, "-md", tiny_target, "-c", "16", "-n", "100000",
               "--context-full", "stop", "-t", THREADS, "--stats-json", stats_file, "hello")
    err = proc.stderr.decode()
    assert proc.returncode == 0 and "Traceback" not in err, err
    stats = json.loads(stats_file.read_text())
    # llama.cpp rounds the context up to 256 tokens; the message names the size in use
    assert err.strip() == "edge-tree: stopped at the context limit (256 tokens)"
    assert stats["stop_reason"] == "context"
    assert stats["prompt_tokens"] + stats["tokens"] == 256
    assert proc.stdout.decode().strip()


class RandomPlans:
    """Any plan the timing-driven policy could make, drawn at random: deep, wide, guess-heavy,
    with or without the draft model, and nothing at all."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.share = PLAIN_SHARE

    def plan(self, mode, caps, beside=None, backlog=None) -> TreeShape:
        r = self.rng
        return TreeShape(max_depth=r.randint(0, 40), max_nodes_per_level=r.randint(1, 24),
                         max_total_nodes=r.randint(0, 300), branch=r.randint(1, 4), expand=r.randint(1, 12),
                         use_model=r.random() < 0.8, guess_nodes=r.choice([None, 0, r.randint(1, 40)]))

    def observe(self, outcome) -> None:
        pass

    def reset(self, learn_costs: bool = True) -> None:
        pass


@pytest.mark.parametrize("seed", range(6))
def test_no_plan_outgrows_the_context(tiny_target, tiny_draft_other, seed):
    """Whatever the policy plans, every decode fits the cells left, in the target's cache and the
    draft's (its checked guess and its expanded nodes): the run stops at the context limit."""
    with Engine(str(tiny_target), str(tiny_draft_other), threads=1, ctx_size=256) as engine:
        engine.models.lanes[0].policy = RandomPlans(seed)
        for prompt in ("hello", REPEATING):  # REPEATING: prompt lookup finds guesses
            result = engine.generate(prompt, max_tokens=100_000, mode="tree", context_full="stop")
            assert result.stop_reason == "context"
            assert result.stats["prompt_tokens"] + result.stats["tokens"] == engine.target_ctx.n_ctx


@pytest.mark.parametrize("seed", range(4))
def test_every_tree_keeps_the_users_caps_whatever_the_plan(tiny_target, tiny_draft_other, seed):
    """The caps hold in one place, the engine's shaping of the plan: whatever depth, width and
    size the policy asks for, no tree is deeper, no level of the draft's wider, and no tree
    bigger than the user allowed (prompt-lookup guesses included in depth and size)."""
    caps = dict(max_depth=3, max_nodes_per_level=2, max_total_nodes=5)
    with Engine(str(tiny_target), str(tiny_draft_other), threads=1, ctx_size=256) as engine:
        engine.models.lanes[0].policy = RandomPlans(seed)
        result = engine.generate(REPEATING, max_tokens=48, mode="tree", record_steps=True, **caps)
    drafted_trees = 0
    for step in result.steps:
        nodes = step.nodes
        drafted = [i for i in range(1, len(nodes)) if nodes.source[i] != "target"]  # not the bonus
        drafted_trees += bool(drafted)
        assert len(drafted) <= caps["max_total_nodes"]
        assert all(nodes.depth[i] <= caps["max_depth"] for i in drafted)
        per_level = Counter(nodes.depth[i] for i in drafted if nodes.source[i] == "draft")
        assert max(per_level.values(), default=0) <= caps["max_nodes_per_level"]
    assert drafted_trees > len(result.steps) // 2  # the plans did ask for trees


@pytest.mark.parametrize("seed", range(3))
def test_no_plan_outgrows_a_lanes_share_beside_others(tiny_target, tiny_draft_other, seed):
    """Side by side (serve --parallel), every lane stops at its own share of the cells, whatever
    each lane's policy plans, and no shared pass fails: no lane reaches into another's share."""
    with Engine(str(tiny_target), str(tiny_draft_other), threads=1, ctx_size=768, lanes=3) as engine:
        slots = Slots(engine)
        for k, lane in enumerate(engine.models.lanes):
            lane.policy = RandomPlans(seed * 10 + k)
        for k, prompt in enumerate(("hello", REPEATING, "a b c")):
            slots.start(prompt, GenOptions(max_tokens=100_000, mode="tree", context_full="stop", seed=k))
        ended = {}
        while slots.busy:
            ended.update(slots.step())
        slots.close()
        cells = engine.models.lanes[0].cells
    assert cells == 256 and len(ended) == 3
    for result in ended.values():
        assert not isinstance(result, Exception), result
        assert result.stop_reason == "context"
        assert result.stats["prompt_tokens"] + result.stats["tokens"] == cells


@pytest.mark.parametrize("context_full", ["error", "stop"])
def test_a_prompt_longer_than_the_context_is_an_error_either_way(tiny_target, context_full):
    prompt = " ".join(f"w{i}q" for i in range(400))  # far more than 256 tokens
    proc = run("generate", "-m", tiny_target, "-c", "256", "-n", "4", "--context-full", context_full,
               "-t", THREADS, prompt)
    assert assert_one_line_error(proc, 1, "the prompt has", "the context holds 256",
                                 "--ctx-size") == ""


@pytest.mark.parametrize("how", ["argument", "stdin"])
def test_an_empty_prompt_continues_from_bos(tiny_target, how):
    """An empty prompt is the BOS token alone: the model writes from scratch, exit 0."""
    if how == "argument":
        proc = run("generate", "-m", tiny_target, "-n", "6", "-t", THREADS, "")
    else:
        proc = run("generate", "-m", tiny_target, "-n", "6", "-t", THREADS, input=b"")
    err = proc.stderr.decode()
    assert proc.returncode == 0 and "Traceback" not in err and err == "", err
    assert proc.stdout.decode().strip()


def test_an_empty_prompt_through_the_api_is_the_bos_token(tiny_target):
    with Engine(str(tiny_target), threads=1, ctx_size=256) as engine:
        result = engine.generate("", max_tokens=5, mode="ar")
        assert result.stats["prompt_tokens"] == 1 and len(result.tokens) == 5
        assert engine.models.target.n_cached == 1 + 5 - 1


# -- 3. option values: exit 2, named, before any model loads -----------------------------------

BAD_OPTIONS = [
    (["-n", "0"], "--max-tokens"),
    (["-n", "-5"], "--max-tokens"),
    (["--max-depth", "0"], "--max-depth"),
    (["--max-depth", "-2"], "--max-depth"),
    (["--max-depth", "100000"], "--max-depth"),
    (["--max-nodes-per-level", "0"], "--max-nodes-per-level"),
    (["--max-nodes-per-level", "100000"], "--max-nodes-per-level"),
    (["--max-total-nodes", "-1"], "--max-total-nodes"),
    (["--max-total-nodes", "100000"], "--max-total-nodes"),
    (["--max-time", "0"], "--max-time"),
    (["--max-time", "-1"], "--max-time"),
    (["-c", "0"], "--ctx-size"),
    (["-t", "-1"], "--threads"),
    (["--temperature", "-0.5"], "--temperature"),
    (["--top-k", "-1"], "--top-k"),
    (["--top-p", "1.5"], "--top-p"),
    (["--min-p", "1"], "--min-p"),
    (["--trace-format", "gif"], "--trace-format"),
    (["--trace-format", ","], "--trace-format"),
]


@pytest.mark.parametrize("args, option", BAD_OPTIONS)
def test_bad_option_values_fail_before_the_model_files_are_even_looked_at(tmp_path, args, option):
    """A target that does not exist: the option error (exit 2) must come first."""
    r = invoke("generate", "-m", tmp_path / "missing.gguf", "-md", tmp_path / "missing-draft.gguf",
               *args, "hi")
    assert r.exit_code == 2, r.stderr
    assert r.stdout == "" and r.stderr.count("\n") == 1
    assert r.stderr.startswith(f"edge-tree: error: {option}:"), r.stderr


def test_more_branches_than_llama_cpp_has_sequences_says_why():
    limit = llama.max_parallel_sequences()
    proc = run("generate", "-m", "/nonexistent/target.gguf", "--max-total-nodes", "100000", "hi")
    assert_one_line_error(proc, 2, "--max-total-nodes", f"at most {limit - 1}",
                          "llama_max_parallel_sequences()")


def test_unknown_trace_format_fails_before_the_trace_dir_or_any_model(tmp_path):
    trace_dir = tmp_path / "trace"
    proc = run("generate", "-m", tmp_path / "missing.gguf", "--trace-dir", trace_dir,
               "--trace-format", "png,gif", "hi")
    assert_one_line_error(proc, 2, "--trace-format", "'gif'", "jsonl, dot, png, svg")
    assert not trace_dir.exists()  # nothing was created for a run that never starts
    # the same without --trace-dir: a bad value is not silently ignored
    proc = run("generate", "-m", tmp_path / "missing.gguf", "--trace-format", "gif", "hi")
    assert_one_line_error(proc, 2, "--trace-format", "'gif'")


def test_options_are_checked_before_the_demo_pair_is_built(tmp_path):
    """No -m: a bad option must not start building (or downloading) the demo models first."""
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    proc = run("generate", "--max-depth", "0", "hi", env=env, timeout=60)
    assert_one_line_error(proc, 2, "--max-depth")
    assert not (tmp_path / "cache" / "edge-tree" / "demo").exists()


# -- 5. unwritable outputs: before any model loads ----------------------------------------------

@pytest.fixture
def a_file(tmp_path) -> Path:
    f = tmp_path / "regular-file"
    f.write_text("x")
    return f


def test_trace_dir_under_a_regular_file_fails_before_the_model_files(a_file, tmp_path):
    """Root can write anywhere, but not below a regular file. The model does not exist either:
    the output path is checked first."""
    bad = a_file / "trace"
    proc = run("generate", "-m", tmp_path / "missing.gguf", "--trace-dir", bad, "hi")
    assert assert_one_line_error(proc, 1, "trace directory", str(bad), "Not a directory") == ""


def test_trace_dir_under_a_regular_file_never_loads_the_model(a_file, tiny_target, monkeypatch):
    loads = []
    monkeypatch.setattr(llama, "Model", lambda *a, **k: loads.append(a) or pytest.fail("loaded"))
    r = invoke("generate", "-m", tiny_target, "-t", THREADS, "--trace-dir", a_file / "sub", "hi")
    assert r.exit_code == 1 and r.stdout == ""
    assert r.stderr.startswith("edge-tree: error: cannot create trace directory") and r.stderr.count("\n") == 1
    assert loads == []


def test_trace_dir_that_is_a_file_fails_in_one_line(a_file, tiny_target):
    proc = run("generate", "-m", tiny_target, "-t", THREADS, "--trace-dir", a_file, "hi")
    assert_one_line_error(proc, proc.returncode, a_file.name)
    assert proc.returncode in (1, 2) and proc.stdout == b""


def test_stats_json_under_a_regular_file_fails_before_the_model_files(a_file, tmp_path):
    proc = run("generate", "-m", tmp_path / "missing.gguf", "--stats-json", a_file / "s.json", "hi")
    assert assert_one_line_error(proc, 1, "--stats-json", "does not exist") == ""


# -- 4. Ctrl-C and --max-time --------------------------------------------------------------------

class Reader(threading.Thread):
    """Collects a pipe's bytes as they come."""

    def __init__(self, pipe):
        super().__init__(daemon=True)
        self.pipe, self.data = pipe, bytearray()

    def run(self):
        while chunk := os.read(self.pipe.fileno(), 4096):
            self.data += chunk


def test_ctrl_c_stops_at_a_round_boundary_and_keeps_text_and_trace(tiny_target, tiny_draft_same,
                                                                   tmp_path):
    trace_dir = tmp_path / "trace"
    proc = subprocess.Popen([edge_tree_exe(), "generate", "-m", str(tiny_target), "-md",
                             str(tiny_draft_same), "-t", THREADS, "-n", "100000", "--context-full",
                             "stop", "-c", "8192", "--trace-dir", str(trace_dir), "once upon a time"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = Reader(proc.stdout), Reader(proc.stderr)
    out.start(), err.start()
    try:
        deadline = time.monotonic() + 120
        trace_file = trace_dir / "trace.jsonl"
        while time.monotonic() < deadline and proc.poll() is None:
            if out.data.strip() and trace_file.exists() and b'"type":"step"' in trace_file.read_bytes():
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be interrupted"
        before = bytes(out.data)
        assert before.strip()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out.join(10), err.join(10)
    stdout, stderr = bytes(out.data).decode(), bytes(err.data).decode()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "Aborted" not in stderr, stderr
    assert stdout.startswith(before.decode()) and stdout.endswith("\n")  # the text is kept

    lines = (trace_dir / "trace.jsonl").read_bytes().split(b"\n")
    assert lines[-1] == b""  # every record is a whole line
    records = [json.loads(line) for line in lines[:-1]]
    assert records[0]["type"] == "header" and records[-1]["type"] == "summary"
    header, steps, summary = read_trace(trace_dir)
    assert len(steps) == len(records) - 2 >= 1
    for record, step in zip(records[1:-1], steps):
        n = len(record["nodes"]["token"])
        assert all(len(column) == n for column in record["nodes"].values())
        assert step.bonus == step.n - 1 == n - 1 and "total_s" in step.timings
    assert summary["stats"]["stop_reason"] == "interrupted"
    assert summary["text"] + "\n" == stdout  # what was printed is what was generated
    assert summary["stats"]["rounds"] == len(steps)
    assert summary["stats"]["tokens"] < 8000  # stopped long before the context was full


def test_a_second_ctrl_c_exits_130_at_once():
    with Interrupt() as interrupt:
        interrupt._handle(signal.SIGINT, None)
        assert interrupt.requested
        with pytest.raises(SystemExit) as info:
            interrupt._handle(signal.SIGINT, None)
        assert info.value.code == 130


def test_max_time_is_honoured_within_one_round(tiny_target, tiny_draft_other, tmp_path):
    stats_file, trace_dir = tmp_path / "stats.json", tmp_path / "trace"
    max_time = 1.0
    proc = run("generate", "-m", tiny_target, "-md", tiny_draft_other, "-t", THREADS,
               "-n", "100000", "--context-full", "stop", "-c", "8192", "--max-time", max_time,
               "--stats-json", stats_file, "--trace-dir", trace_dir, "hello world")
    err = proc.stderr.decode()
    assert proc.returncode == 0 and "Traceback" not in err, err
    stats = json.loads(stats_file.read_text())
    _, steps, _ = read_trace(trace_dir)
    longest_round = max(step.timings["total_s"] for step in steps)
    assert stats["stop_reason"] == "max_time"
    assert max_time <= stats["wall_s"] < max_time + longest_round + 0.5, (stats["wall_s"], longest_round)
    assert stats["tokens"] > 0 and proc.stdout.decode().strip()


# -- 6. long runs: memory stays flat -------------------------------------------------------------

def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


def test_fifty_generations_in_one_process_keep_memory_flat(tiny_target, tiny_draft_other, capsys):
    with Engine(str(tiny_target), str(tiny_draft_other), threads=1, ctx_size=8192) as engine:
        figures = []
        for i in range(50):
            result = engine.generate(f"prompt number {i}: once upon a time", max_tokens=32,
                                     temperature=0.8 if i % 2 else 0.0, seed=i, record_steps=False)
            assert len(result.tokens) == 32 or result.stop_reason == "eos"
            if i in (0, 49):
                figures.append(rss_kib())
    first, last = figures
    with capsys.disabled():
        print(f"\n[rss] 50 generations: after the 1st {first / 1024:.1f} MiB, "
              f"after the 50th {last / 1024:.1f} MiB ({(last - first) / first:+.2%})")
    assert abs(last - first) <= 0.05 * first, (first, last)


def test_a_4000_token_generation_keeps_memory_flat(tiny_target, tiny_draft_same, capsys):
    """Logits and batch buffers are fixed-size; what may grow is the touched part of the KV cache
    (allocated for the whole context up front) and the token list."""
    with Engine(str(tiny_target), str(tiny_draft_same), threads=1, ctx_size=8192,
                policy="fixed") as engine:
        engine.generate("once upon a time", max_tokens=64, record_steps=False)
        short = rss_kib()
        t0 = time.perf_counter()
        result = engine.generate("once upon a time", max_tokens=4000, record_steps=False)
        seconds = time.perf_counter() - t0
        long_ = rss_kib()
        assert len(result.tokens) == 4000, result.stop_reason
        assert engine.models.target.n_cached >= result.stats["prompt_tokens"] + 4000 - 1
        engine.generate("once upon a time", max_tokens=64, record_steps=False)
        again = rss_kib()
    with capsys.disabled():
        print(f"\n[rss] after a 64-token generation {short / 1024:.1f} MiB, after 4000 tokens "
              f"{long_ / 1024:.1f} MiB ({(long_ - short) / short:+.2%}, {seconds:.1f} s), "
              f"after another short one {again / 1024:.1f} MiB")
    assert long_ - short <= 0.05 * short + 6 * 1024, (short, long_)
    assert again - long_ <= 0.01 * long_, (long_, again)  # nothing kept from the long run


@pytest.mark.parametrize("script", ["bench_lanes.py", "call_costs.py", "host_time.py", "round_profile.py"])
def test_a_measuring_script_answers_a_missing_model_file_in_one_line(script, tmp_path):
    """The scripts under scripts/ take model files as the CLI does; a wrong path is one line on
    stderr and exit 1, as the CLI's, not a traceback."""
    missing = tmp_path / "no-such-model.gguf"
    proc = subprocess.run([sys.executable, str(SCRIPTS / script), "-m", str(missing), "-md", str(missing)],
                          capture_output=True, timeout=120)
    assert_one_line_error(proc, 1, "no-such-model.gguf")
