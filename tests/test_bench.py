"""edge_tree.bench: the run on tiny models, the table, the prompt file, and reading llama.cpp's output."""

import json
import re
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge_tree.bench import bench, format_table, run_bench
from edge_tree.bench.modes import parse_modes
from edge_tree.bench.prompts import load_prompts
from edge_tree.bench.tools import (COMPLETION_ROW, SPEC_CONFIGS, ToolOutputError, parse_completion_output,
                                   parse_speculative_output, run_tool, same_text, spec_generated_text)
from edge_tree.errors import EdgeTreeError, UsageError

PROMPTS = ["hello world", "The quick brown fox"]

# Captured once from the tools built by scripts/build_llama_cpp.sh on the demo files:
#   llama-completion -m gemma-3-270m-f32.gguf -p "The capital of France is" -n 8 -t 2 --temp 0
#       --ignore-eos -no-cnv --no-display-prompt -c 512
COMPLETION_STDERR = """\
0.15.999.955 I generate: n_ctx = 512, n_batch = 2048, n_predict = 8, n_keep = 1
0.15.999.967 I 
0.16.371.688 I common_perf_print:    sampling time =       4.92 ms
0.16.371.710 I common_perf_print:    samplers time =       0.87 ms /    14 tokens
0.16.371.735 I common_perf_print:        load time =   15240.95 ms
0.16.371.753 I common_perf_print: prompt eval time =      50.32 ms /     6 tokens (    8.39 ms per token,   119.24 tokens per second)
0.16.371.771 I common_perf_print:        eval time =     315.45 ms /     7 runs   (   45.06 ms per token,    22.19 tokens per second)
0.16.371.789 I common_perf_print:       total time =     372.33 ms /    13 tokens
0.16.371.803 I common_perf_print: unaccounted time =       1.64 ms /   0.4 %      (total - sampling - prompt eval - eval) / (total)
"""
COMPLETION_STDOUT = " the capital of the country of France.\n\n"

#   llama-speculative -m gemma-3-270m-f32.gguf -md gemma-3-270m-q4_0.gguf -p "The capital of France is"
#       -n 8 -t 2 --temp 0 --ignore-eos --spec-draft-n-max 4 -np 1 -c 512
SPECULATIVE_STDERR = """\
0.04.352.457 I encoded    6 tokens in    0.138 seconds, speed:   43.608 t/s
0.04.352.458 I decoded   11 tokens in    0.391 seconds, speed:   28.165 t/s
0.04.352.458 I 
0.04.352.459 I n_draft   = 4
0.04.352.459 I n_predict = 11
0.04.352.459 I n_drafted = 12
0.04.352.460 I n_accept  = 7
0.04.352.460 I accept    = 58.333%
0.04.352.460 I 
0.04.352.460 I draft:
0.04.352.476 I 
0.04.352.477 I target:
0.04.352.484 I common_perf_print:    sampling time =       5.31 ms
0.04.352.487 I common_perf_print: prompt eval time =     260.45 ms /    21 tokens (   12.40 ms per token,    80.63 tokens per second)
0.04.352.488 I common_perf_print:        eval time =       0.00 ms /     1 runs   (    0.00 ms per token,      inf tokens per second)
"""
SPECULATIVE_STDOUT = "\n\n<bos>The capital of France is the capital of the country of France. It is the\n\n\n\n"


# -- llama.cpp output ------------------------------------------------------------------------------

def test_parse_completion_output_reads_eval_line_not_prompt_eval():
    got = parse_completion_output(COMPLETION_STDOUT + COMPLETION_STDERR)
    assert got["tokens"] == 7
    assert got["seconds"] == pytest.approx(0.31545)
    assert got["tokens_per_s"] == pytest.approx(7 / 0.31545)
    assert got["tokens_per_s"] == pytest.approx(22.19, abs=0.01)  # what the tool printed


def test_parse_speculative_output():
    got = parse_speculative_output(SPECULATIVE_STDOUT + SPECULATIVE_STDERR)
    assert got["tokens"] == 11
    assert got["seconds"] == pytest.approx(0.391)
    assert got["tokens_per_s"] == pytest.approx(11 / 0.391)
    assert got["acceptance_rate"] == pytest.approx(0.58333)
    assert (got["n_draft"], got["n_predict"], got["n_drafted"], got["n_accept"]) == (4, 11, 12, 7)


@pytest.mark.parametrize("parse", [parse_completion_output, parse_speculative_output])
def test_parsers_reject_output_without_the_line(parse):
    with pytest.raises(ToolOutputError):
        parse("error: failed to load model\n")


def test_generated_text_of_speculative_and_text_agreement():
    prompt = "The capital of France is"
    text = spec_generated_text(SPECULATIVE_STDOUT, prompt)
    assert text.startswith(" the capital of the country of France.")
    assert same_text(" the capital of the country", text)          # ours shorter: agrees
    assert same_text(" the capital of the country of France.", COMPLETION_STDOUT)
    assert same_text(" the capital of Spain", text) is False
    assert spec_generated_text(SPECULATIVE_STDOUT, "another prompt") is None
    assert same_text(" x", None) is None


def test_run_tool_reports_timeout_missing_binary_and_failure(tmp_path):
    sleeper = _script(tmp_path / "sleepy", "sleep 5")
    parsed, _, error = run_tool([str(sleeper)], tmp_path, parse_completion_output, timeout=0.3)
    assert parsed is None and "timed out" in error
    parsed, _, error = run_tool([str(tmp_path / "absent")], tmp_path, parse_completion_output, 5)
    assert parsed is None and "not found" in error
    failing = _script(tmp_path / "failing", "echo 'main: error: bad model' >&2; exit 3")
    parsed, _, error = run_tool([str(failing)], tmp_path, parse_completion_output, 5)
    assert parsed is None and "exited with 3" in error and "bad model" in error


# -- modes and prompts ------------------------------------------------------------------------------

def test_parse_modes():
    specs = parse_modes("chain:4, tree,tree:6")
    assert [s.label for s in specs] == ["ar", "chain:4", "tree", "tree:6"]  # ar added first
    assert [(s.mode, s.max_depth) for s in specs] == [("ar", None), ("chain", 4), ("tree", None), ("tree", 6)]
    assert [s.label for s in parse_modes(["tree", "ar"])] == ["tree", "ar"]
    assert [(s.mode, s.max_depth) for s in parse_modes("lookup:3")] == [("ar", None), ("lookup", 3)]
    for bad in ["beam", "chain:x", "chain:0", "chain:300", "ar:2", "ar,ar", ""]:
        with pytest.raises(UsageError):
            parse_modes(bad)


def test_load_prompts(tmp_path):
    good = tmp_path / "p.jsonl"
    good.write_text('{"prompt": "one"}\n\n{"prompt": "two", "name": "second"}\n')
    assert load_prompts(good) == [{"name": "prompt1", "prompt": "one"}, {"name": "second", "prompt": "two"}]


@pytest.mark.parametrize("content, message", [
    ('{"prompt": "ok"}\nnot json\n', ":2: not JSON"),
    ('["a list"]\n', "expected an object"),
    ('{"text": "no prompt key"}\n', 'non-empty string "prompt"'),
    ('{"prompt": ""}\n', 'non-empty string "prompt"'),
    ('{"prompt": 3}\n', 'non-empty string "prompt"'),
    ("\n\n", "holds no prompts"),
])
def test_load_prompts_rejects_bad_files_in_one_line(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(EdgeTreeError, match=re.escape(message)) as info:
        load_prompts(path)
    assert "\n" not in str(info.value)


def test_load_prompts_missing_file(tmp_path):
    with pytest.raises(EdgeTreeError, match="no such file"):
        load_prompts(tmp_path / "absent.jsonl")
    with pytest.raises(EdgeTreeError, match="folder"):
        load_prompts(tmp_path)


# -- the run on tiny models -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_result(tiny_target, tiny_draft_same):
    return run_bench(str(tiny_target), str(tiny_draft_same), ["ar", "chain:2", "tree"], PROMPTS,
                     max_tokens=8, threads=1, progress=False, ctx_size=256)


def test_run_bench_rows(tiny_result):
    rows = {r["name"]: r for r in tiny_result["rows"]}
    assert list(rows) == ["ar", "chain:2", "tree"]
    for r in rows.values():
        assert r["kind"] == "ours" and r["runs"] == 2 and r["failed"] == 0
        assert r["tokens"] > 0 and r["tokens_per_s"] > 0 and r["speedup_vs_ar"] > 0
        assert re.fullmatch(r"[0-2]/2", r["same_as_ar"])
        assert r["speedup_vs_completion"] is None
    assert rows["ar"]["speedup_vs_ar"] == 1.0
    assert rows["ar"]["same_as_ar"] == "2/2"
    assert rows["ar"]["target_passes_per_token"] == 1.0 and rows["ar"]["mean_accepted_per_pass"] == 0
    assert rows["chain:2"]["max_depth"] == 2 and rows["chain:2"]["mode"] == "chain"
    # the draft is the target: drafts are accepted, so fewer target passes than tokens
    assert rows["chain:2"]["target_passes_per_token"] < 1
    assert rows["chain:2"]["mean_accepted_per_pass"] > 0
    assert 0 <= rows["tree"]["draft_share"] <= 1
    assert rows["tree"]["draft_share"] + rows["tree"]["verify_share"] == pytest.approx(1, abs=1e-3)
    assert len(tiny_result["runs"]) == 6
    assert tiny_result["config"]["modes"] == ["ar", "chain:2", "tree"]
    json.dumps(tiny_result)  # JSON-ready


def test_run_bench_breaks_the_time_down(tiny_result):
    """Each run carries the engine's clocks; each row pools them."""
    for run in tiny_result["runs"]:
        assert min(run["target_decode_s"], run["draft_decode_s"], run["host_s"]) >= 0
        assert run["rounds"] == run["target_passes"] >= 1
        assert isinstance(run["acceptance_by_depth"], list)
        if run["row"] == "ar":  # (the adaptive policy may decode a tree row plainly on tiny models)
            assert run["draft_decode_s"] == 0 and run["acceptance_by_depth"] == []
    for row in tiny_result["rows"]:
        runs = [r for r in tiny_result["runs"] if r["row"] == row["name"]]
        host = sum(r["host_s"] for r in runs)
        assert row["host_ms_per_token"] == pytest.approx(1000 * host / row["tokens"], abs=1e-4)
        assert row["host_ms_per_round"] == pytest.approx(1000 * host / sum(r["rounds"] for r in runs), abs=1e-4)
        shares = row["target_decode_share"] + row["draft_decode_share"] + row["host_share"]
        assert shares == pytest.approx(1, abs=1e-3)


def test_run_bench_records_the_offload_state(tiny_result):
    from edge_tree.llamacpp import llama

    config = tiny_result["config"]
    assert config["n_gpu_layers"] == 0 and config["draft_n_gpu_layers"] == 0
    offload = config["offload"]
    assert offload["target_gpu_layers"] == 0 and offload["draft_gpu_layers"] == 0  # -ngl 0
    assert offload["target_layers"] == offload["draft_layers"] > 1  # the same tiny model
    assert offload["gpu_offload_supported"] is llama.supports_gpu_offload()
    assert config["weight_repacking"] is llama.USE_EXTRA_BUFFER_TYPES


def test_run_bench_rotates_the_order(tiny_result):
    first = [r["row"] for r in tiny_result["runs"] if r["prompt_index"] == 0]
    second = [r["row"] for r in tiny_result["runs"] if r["prompt_index"] == 1]
    assert first == ["ar", "chain:2", "tree"]
    assert second == ["chain:2", "tree", "ar"]


def test_format_table(tiny_result):
    table = format_table(tiny_result)
    for name in ("ar", "chain:2", "tree"):
        assert re.search(rf"^{re.escape(name)}\s", table, re.M)
    assert "tok/s" in table and "same as ar" in table
    lines = table.splitlines()
    assert lines[1].startswith("GPU offload: target 0/")  # -ngl 0: nothing offloaded
    widths = {len(line) for line in lines[2:6]}
    assert max(widths) - min(widths) <= 12  # fixed-width columns


@pytest.mark.parametrize("extra_buffer_types", [True, False])
def test_run_bench_with_llama_cpp_tools(tmp_path, tiny_target, tiny_draft_same, monkeypatch,
                                        extra_buffer_types):
    """Fake tools: llama-completion prints the captured output and keeps its arguments,
    llama-speculative fails. They get our GPU layers, and their own weight layout (no --no-repack)
    even where our engine loads models without llama.cpp's extra buffer types; the config says
    which layout ours used."""
    from edge_tree.llamacpp import llama

    monkeypatch.setattr(llama, "USE_EXTRA_BUFFER_TYPES", extra_buffer_types)
    (tmp_path / "out.txt").write_text(COMPLETION_STDOUT)
    (tmp_path / "err.txt").write_text(COMPLETION_STDERR)
    _script(tmp_path / "llama-completion",
            f'echo "$@" > "{tmp_path}/args.txt"; cat "{tmp_path}/out.txt"; cat "{tmp_path}/err.txt" >&2')
    _script(tmp_path / "llama-speculative", "echo 'error: unknown argument' >&2; exit 1")
    result = run_bench(str(tiny_target), str(tiny_draft_same), "ar", PROMPTS[:1], max_tokens=4,
                       threads=1, llama_cpp_dir=tmp_path, progress=False, ctx_size=256,
                       n_gpu_layers=-1, draft_n_gpu_layers=3)
    args = (tmp_path / "args.txt").read_text().split()
    assert args[args.index("-ngl") + 1] == "all" and "--no-repack" not in args
    assert result["config"]["weight_repacking"] is extra_buffer_types
    spec_cmd = result["config"]["llama_cpp_commands"]["llama.cpp spec chain 8"]
    assert spec_cmd[spec_cmd.index("-ngld") + 1] == "3"
    rows = {r["name"]: r for r in result["rows"]}
    assert list(rows) == ["ar", COMPLETION_ROW] + [c[0] for c in SPEC_CONFIGS]
    comp = rows[COMPLETION_ROW]
    assert comp["kind"] == "llama.cpp" and comp["error"] is None
    assert comp["tokens"] == 7 and comp["tokens_per_s"] == pytest.approx(7 / 0.31545, rel=1e-3)
    assert comp["speedup_vs_completion"] == 1.0
    assert comp["speedup_vs_ar"] == pytest.approx(comp["tokens_per_s"] / rows["ar"]["tokens_per_s"], rel=1e-3)
    assert comp["same_as_ar_basis"] == "text" and comp["same_as_ar"] == "0/1"  # other model, other text
    for name, _, _ in SPEC_CONFIGS:
        assert rows[name]["tokens_per_s"] is None and "exited with 1" in rows[name]["error"]
    table = format_table(result)
    assert "llama.cpp spec chain 16" in table and "runs failed" in table and "vs llama" in table
    cmds = result["config"]["llama_cpp_commands"]
    assert "--ignore-eos" in cmds[COMPLETION_ROW] and "--temp" in cmds["llama.cpp spec chain 4"]


def test_run_bench_rejects_missing_llama_cpp_dir(tmp_path, tiny_target, tiny_draft_same):
    with pytest.raises(EdgeTreeError, match="no such folder"):
        run_bench(str(tiny_target), str(tiny_draft_same), "ar", PROMPTS, 4, threads=1,
                  llama_cpp_dir=tmp_path / "absent", progress=False)


# -- the command --------------------------------------------------------------------------------------

def test_bench_command(tmp_path, tiny_target, tiny_draft_same):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hello world", "name": "hi"}\n')
    out = tmp_path / "r.json"
    res = CliRunner().invoke(bench, ["-m", str(tiny_target), "-md", str(tiny_draft_same), "--modes",
                                     "chain:2", "--prompts", str(prompts), "-n", "4", "-t", "1",
                                     "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert re.search(r"^chain:2\s", res.output, re.M) and re.search(r"^ar\s", res.output, re.M)
    assert "[bench] prompt 1/1 (hi)" in res.output  # progress (CliRunner mixes stderr in)
    data = json.loads(out.read_text())
    assert [r["name"] for r in data["rows"]] == ["ar", "chain:2"]


@pytest.mark.parametrize("args, code, message", [
    (["--modes", "beam"], 2, "--modes: unknown mode"),
    (["--prompts", "BAD"], 1, "not JSON"),
    (["--prompts", "MISSING"], 1, "no such file"),
])
def test_bench_command_errors_are_one_line(tmp_path, tiny_target, args, code, message):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{nope\n")
    args = [str(bad) if a == "BAD" else str(tmp_path / "missing.jsonl") if a == "MISSING" else a for a in args]
    res = CliRunner().invoke(bench, ["-m", str(tiny_target), "-q", *args])
    assert res.exit_code == code
    assert message in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_bench_command_lookup_needs_no_draft(tmp_path, tiny_target):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hello world hello world"}\n')
    args = ["-m", str(tiny_target), "--prompts", str(prompts), "-n", "4", "-t", "1", "-q"]
    res = CliRunner().invoke(bench, [*args, "--modes", "lookup"])
    assert res.exit_code == 0, res.output
    assert re.search(r"^lookup\s", res.output, re.M) and re.search(r"^ar\s", res.output, re.M)
    res = CliRunner().invoke(bench, [*args, "--modes", "lookup,tree"])
    assert res.exit_code == 2 and "--draft: chain and tree modes need a draft model" in res.stderr


def test_bench_command_checks_the_json_folder_before_loading(tmp_path):
    res = CliRunner().invoke(bench, ["-m", str(tmp_path / "absent.gguf"), "-q", "--modes", "ar",
                                     "--json", str(tmp_path / "no-folder" / "r.json")])
    assert res.exit_code == 1
    assert res.stderr.startswith("edge-tree: error: --json") and "does not exist" in res.stderr


def _script(path: Path, body: str) -> Path:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path
