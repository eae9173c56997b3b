"""edge_tree.bench in parts, without a model: llama.cpp's command lines, the aggregation and the
table on canned runs, the demo pairs, the built-in prompts, and the options shared with
`edge-tree generate`."""

import argparse
import importlib.util
import re

import pytest
from click.testing import CliRunner

from edge_tree import derived
from edge_tree.bench import format_table
from edge_tree.bench.modes import parse_modes
from edge_tree.bench.pairs import resolve_pair
from edge_tree.bench.prompts import default_prompts
from edge_tree.bench.session import Row, aggregate
from edge_tree.bench.tools import (COMPLETION_ROW, SPEC_CONFIGS, completion_command,
                                   speculative_command, tool_commands)
from edge_tree.cli import main
from edge_tree.errors import UsageError
from commands import SCRIPTS
from toolargs import flag_value, settings

# -- llama.cpp's command lines ----------------------------------------------------------------------



def test_tool_commands_carry_gpu_layers(tmp_path):
    s = settings(tmp_path, n_gpu_layers=99, draft_n_gpu_layers=-1)
    completion = completion_command(s, "hi")
    speculative = speculative_command(s, "hi", 8, 4)
    assert flag_value(completion, "-ngl") == "99" and "-ngld" not in completion
    assert flag_value(speculative, "-ngl") == "99"
    assert flag_value(speculative, "-ngld") == "all"  # our -1 is every layer; the tools' -1 is 'auto'
    assert (flag_value(speculative, "--spec-draft-n-max"), flag_value(speculative, "-np")) == ("8", "4")
    assert flag_value(speculative, "-n") == "63"  # it overshoots -n by one at least


def test_tool_commands_pass_gpu_layers_zero_explicitly(tmp_path):
    """The tools' own default offloads what fits; our default (0) must reach them as 0."""
    s = settings(tmp_path)
    assert flag_value(completion_command(s, "hi"), "-ngl") == "0"
    assert flag_value(speculative_command(s, "hi", 4, 1), "-ngld") == "0"


def test_tool_commands_leave_llama_cpps_weight_repacking_at_its_default(tmp_path):
    """The peer runs as a user runs it: never --no-repack, whatever layout our engine uses."""
    commands = tool_commands(settings(tmp_path))
    assert list(commands) == [COMPLETION_ROW] + [c[0] for c in SPEC_CONFIGS]
    for cmd in commands.values():
        assert "--no-repack" not in cmd
        assert "PROMPT" in cmd


# -- aggregation on canned runs ---------------------------------------------------------------------

ROWS = ([Row(s.label, "ours", s.options) for s in parse_modes("ar,tree")]
        + [Row(COMPLETION_ROW, "completion")]
        + [Row(name, "speculative", n_draft=k, n_parallel=np_) for name, k, np_ in SPEC_CONFIGS[:1]])
SPEC_ROW = SPEC_CONFIGS[0][0]


def ours(pi, row, tokens, decode_s, passes, accepted, clocks, ids, ahead_s=0.0):
    """One canned run of ours: clocks = (target decode, draft decode, host) seconds; ahead_s of
    the draft's decode ran beside the target's passes."""
    target, draft, host = clocks
    return {"prompt_index": pi, "prompt_name": f"p{pi}", "row": row, "kind": "ours",
            "tokens": tokens, "decode_s": decode_s, "tokens_per_s": tokens / decode_s,
            "prompt_s": 0.1, "target_passes": passes, "rounds": passes, "drafted": 2 * accepted,
            "accepted": accepted, "acceptance_by_depth": [], "draft_s": draft, "verify_s": target,
            "target_decode_s": target, "draft_decode_s": draft, "host_s": host,
            "host_ms_per_token": 1000 * host / tokens, "host_ms_per_round": 1000 * host / passes,
            "ahead_s": ahead_s, "stop_reason": "max_tokens", "token_ids": ids, "text": "the text"}


def theirs(pi, row, tokens, seconds, **extra):
    return {"prompt_index": pi, "prompt_name": f"p{pi}", "row": row, "tokens": tokens,
            "decode_s": seconds, "tokens_per_s": tokens / seconds if seconds else None, "text": "the text and more", **extra}


RUNS = [
    ours(0, "ar", 10, 1.0, 10, 0, (0.8, 0.0, 0.2), [1, 2]),
    ours(1, "ar", 10, 1.0, 10, 0, (0.8, 0.0, 0.2), [3, 4]),
    ours(0, "tree", 10, 0.5, 4, 6, (0.2, 0.2, 0.1), [1, 2]),
    ours(1, "tree", 10, 0.5, 2, 8, (0.1, 0.4, 0.1), [3, 5], ahead_s=0.1),  # other tokens than ar's
    theirs(0, COMPLETION_ROW, 8, 1.0),
    theirs(1, COMPLETION_ROW, 0, 0.0, error="llama-completion exited with 1"),
    theirs(0, SPEC_ROW, 10, 0.5, acceptance_rate=0.5, n_drafted=10),
    theirs(1, SPEC_ROW, 10, 0.5, acceptance_rate=1.0, n_drafted=30),
]


@pytest.fixture
def rows():
    return {r["name"]: r for r in aggregate(ROWS, RUNS)}


def test_aggregate_pools_the_time_breakdown(rows):
    tree = rows["tree"]
    # host: 0.2 s over 20 tokens and 6 rounds; decode time 0.3 target + 0.5 draft + 0.2 host (the
    # draft's 0.1 s beside the target's passes left out: it took no time of its own)
    assert tree["host_ms_per_token"] == pytest.approx(10.0)
    assert tree["host_ms_per_round"] == pytest.approx(1000 * 0.2 / 6, abs=1e-4)
    assert (tree["target_decode_share"], tree["draft_decode_share"], tree["host_share"]) == \
        pytest.approx((0.3, 0.5, 0.2))
    assert rows["ar"]["draft_decode_share"] == 0 and rows["ar"]["host_ms_per_token"] == pytest.approx(20.0)


def test_aggregate_rows(rows):
    tree, ar = rows["tree"], rows["ar"]
    assert tree["tokens_per_s"] == pytest.approx(20.0) and tree["speedup_vs_ar"] == pytest.approx(2.0)
    assert tree["mean_accepted_per_pass"] == pytest.approx(14 / 6, abs=1e-4)
    assert tree["acceptance_rate"] == pytest.approx(0.5)
    assert tree["same_as_ar"] == "1/2" and tree["same_as_ar_basis"] == "tokens"
    assert ar["same_as_ar"] == "2/2" and ar["mean_accepted_per_pass"] == 0
    completion = rows[COMPLETION_ROW]
    assert completion["runs"] == 2 and completion["failed"] == 1 and completion["tokens"] == 8
    assert "exited with 1" in completion["error"]
    assert completion["host_ms_per_token"] is None and completion["mean_accepted_per_pass"] is None
    assert completion["speedup_vs_completion"] == 1.0
    assert tree["speedup_vs_completion"] == pytest.approx(20.0 / 8.0)
    spec = rows[SPEC_ROW]
    assert spec["acceptance_rate"] == pytest.approx((0.5 * 10 + 1.0 * 30) / 40)  # weighted by drafts
    assert (spec["n_draft"], spec["n_parallel"]) == SPEC_CONFIGS[0][1:]
    assert spec["same_as_ar"] == "2/2" and spec["same_as_ar_basis"] == "text"


# -- the table on canned rows -----------------------------------------------------------------------

def canned_result(rows, **config) -> dict:
    cfg = {"target": "/m/target.gguf", "draft": "/m/draft.gguf", "pair": None, "n_prompts": 2,
           "max_tokens": 10, "threads": 2, "weight_repacking": True,
           "offload": {"gpu_offload_supported": True, "target_gpu_layers": 19, "target_layers": 19,
                       "draft_gpu_layers": 0, "draft_layers": 19}, **config}
    return {"config": cfg, "rows": list(rows.values())}


def test_table_shows_settings_offload_and_host_time(rows):
    table = format_table(canned_result(rows, pair="B"))
    lines = table.splitlines()
    assert lines[0] == ("2 prompts x 10 tokens, greedy, 2 threads; pair B: target target.gguf, "
                        "draft draft.gguf")
    assert lines[1] == "GPU offload: target 19/19 layers, draft 0/19 layers"
    header = lines[2].split("  ")
    assert "host ms/tok" in lines[2] and "vs llama" in lines[2]
    tree_line = next(line for line in lines if line.startswith("tree "))
    assert re.search(r"\b10\.00\b", tree_line)  # host ms per token
    assert re.search(r"\b2\.00x\b", tree_line)  # vs ar
    assert len({len(line) for line in lines[2:4]}) == 1 and header[0].strip() == "mode"
    assert f"{COMPLETION_ROW}: 1/2 runs failed: llama-completion exited with 1" in table
    assert "not repacked" not in table


def test_table_says_when_weights_are_not_repacked_and_no_gpu(rows):
    offload = {"gpu_offload_supported": False, "target_gpu_layers": 0, "target_layers": 19}
    ours_only = {k: v for k, v in rows.items() if v["kind"] == "ours"}
    table = format_table(canned_result(ours_only, weight_repacking=False, offload=offload))
    assert "GPU offload: target 0/19 layers (this llama.cpp build has no GPU support)" in table
    assert "edge-tree's weights not repacked" in table and "tools ran at their defaults" in table
    assert "vs llama" not in table


def test_table_says_what_our_drafts_cache_holds_beside_llama_cpps_rows(rows):
    assert "draft cache" not in format_table(canned_result(rows, draft_kv_types=["f16", "f16"]))
    table = format_table(canned_result(rows, draft_kv_types=["q8_0", "q8_0"]))
    assert "edge-tree's draft cache: K q8_0, V q8_0" in table and "at their default, f16" in table
    ours_only = {k: v for k, v in rows.items() if v["kind"] == "ours"}
    assert "draft cache" not in format_table(canned_result(ours_only, draft_kv_types=["q8_0", "q8_0"]))


# -- pairs --------------------------------------------------------------------------------------------

@pytest.fixture
def fake_demo(tmp_path, monkeypatch):
    """A cache whose demo folder holds stand-in files, so the pairs resolve without building."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    demo = tmp_path / "edge-tree" / "demo"
    demo.mkdir(parents=True)
    for name in ("gemma-3-270m-f32.gguf", "gemma-3-270m-q4_k_m.gguf", "gemma-3-270m-q4_0.gguf"):
        (demo / name).write_bytes(b"x")
        derived.record(demo / name, "a stand-in")  # made by this version: nothing rebuilds it
    return demo


def test_resolve_pair(fake_demo):
    f32, q4km, q4_0 = (str(fake_demo / n) for n in ("gemma-3-270m-f32.gguf", "gemma-3-270m-q4_k_m.gguf",
                                                      "gemma-3-270m-q4_0.gguf"))
    assert resolve_pair("A") == (f32, q4km)
    assert resolve_pair("b") == (f32, q4_0)
    (fake_demo / "gemma-3-270m-f32-deep4.gguf").write_bytes(b"x")  # C and E: built on first use
    derived.record(fake_demo / "gemma-3-270m-f32-deep4.gguf", "a stand-in")
    deep = str(fake_demo / "gemma-3-270m-f32-deep4.gguf")
    assert resolve_pair("C") == (deep, q4km)
    assert resolve_pair("E") == (f32, deep)
    with pytest.raises(UsageError, match="unknown pair 'D'"):
        resolve_pair("D")


@pytest.mark.parametrize("args, code, message", [
    (["--pair", "C"], 1, "is not a GGUF file"),  # the deep copy is built from a stand-in
    (["--pair", "Z"], 2, "--pair: unknown pair 'Z'"),
    (["--pair", "A", "-m", "x.gguf"], 2, "--pair: give either --pair or -m/-md"),
])
def test_bench_pair_errors_are_one_line(fake_demo, args, code, message):
    res = CliRunner().invoke(main, ["bench", "-q", *args])
    assert res.exit_code == code, res.output
    assert message in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


# -- the built-in prompts -----------------------------------------------------------------------------

def test_default_prompts_are_package_data():
    prompts = default_prompts()
    assert len(prompts) == 10
    assert len({p["name"] for p in prompts}) == 10
    assert all(set(p) == {"name", "prompt"} and p["prompt"].strip() for p in prompts)


# -- options from the one definition ------------------------------------------------------------------

@pytest.mark.parametrize("bad, flag", [(["--threads", "0"], "--threads"), (["-ngl", "-2"], "--n-gpu-layers"),
                                       (["-c", "8"], "--ctx-size"), (["--draft-vocab", "1"], "--draft-vocab")])
def test_bad_load_option_gets_the_same_message_as_generate(tmp_path, bad, flag):
    runner = CliRunner()
    from_bench = runner.invoke(main, ["bench", "-q", "-m", str(tmp_path / "t.gguf"), *bad])
    from_generate = runner.invoke(main, ["generate", "-m", str(tmp_path / "t.gguf"), *bad, "hi"])
    assert from_bench.exit_code == from_generate.exit_code == 2
    assert from_bench.stderr == from_generate.stderr
    assert from_bench.stderr.startswith(f"edge-tree: error: {flag}: must be")
    assert len(from_bench.stderr.strip().splitlines()) == 1


def test_bad_max_tokens_gets_the_same_message_as_generate(tmp_path):
    runner = CliRunner()
    from_bench = runner.invoke(main, ["bench", "-q", "-m", str(tmp_path / "t.gguf"), "-n", "0"])
    from_generate = runner.invoke(main, ["generate", "-m", str(tmp_path / "t.gguf"), "-n", "0", "hi"])
    assert from_bench.exit_code == from_generate.exit_code == 2
    assert from_bench.stderr == from_generate.stderr == \
        "edge-tree: error: --max-tokens: must be at least 1, got 0\n"


def _bench_serve():
    spec = importlib.util.spec_from_file_location("bench_serve", SCRIPTS / "bench_serve.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_servers_bench_runs_llama_servers_own_speculative_decoding_and_offloads_every_server():
    # `llama-server -md D` alone loads the draft and decodes plainly: the peer's speculative row
    # must ask for its draft-model type, or the bench compares against plain decoding twice
    bench_serve = _bench_serve()
    args = argparse.Namespace(llama_cpp="/opt/llama", threads=2, n_gpu_layers=99, draft_n_gpu_layers=7)
    commands = bench_serve.server_commands(args, "t.gguf", "d.gguf", 4, 8192)
    speculative = commands["llama-server -md"][0]
    assert flag_value(speculative, "-md") == "d.gguf"
    assert flag_value(speculative, "--spec-type") == "draft-simple"
    assert "-md" not in commands["llama-server"][0]
    for command, _ in commands.values():
        assert flag_value(command, "-ngl") == "99"
        assert flag_value(command, "-np") == "4" and flag_value(command, "-c") == "8192"
    for name in ("edge-tree", "llama-server -md"):
        assert flag_value(commands[name][0], "-ngld") == "7"
