"""The target over llama.cpp's RPC backend (issue 14): two ggml-rpc-server processes on loopback
hold its layers, the draft stays here. Greedy text equals the local run's; an unreachable host,
a protocol version mismatch and a host killed mid-generation are each one clear line (CLI) or an
OpenAI-shaped 5xx with the server going on (serve).

Needs llama.cpp with the RPC backend (README's install step; here LLAMA_CPP_LIB_PATH may point at
such a build) and ggml-rpc-server (scripts/build_llama_cpp.sh --rpc-server-only): without
either these tests fail, they never skip.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from types import SimpleNamespace

import httpx
import pytest

from rpchosts import FakeRpcServer
from serving import ServerProcess
from toolargs import flag_value, settings
from commands import assert_one_line_error, invoke, run
from serving import assert_error, edge_tree_exe, post, server_env

from edge_tree.bench.loopback import DelayProxy, RpcServer, free_port, rpc_server_binary
from edge_tree.bench.session import run_bench
from edge_tree.bench.tools import completion_command, speculative_command
from edge_tree.core.calibrate import _key
from edge_tree.core.engine import Engine
from edge_tree.errors import EdgeTreeError, UsageError
from edge_tree.llamacpp import llama, rpc
from edge_tree.llamacpp.logs import captured_log

THREADS = "1"
SLOW = 8000  # tokens: seconds of work over RPC, so a generation is still running when a host dies
PROMPT = "hello world"


@pytest.fixture(scope="module")
def rpc_binary():
    assert llama.supports_rpc(), rpc.NO_BACKEND
    return rpc_server_binary()


@pytest.fixture(scope="module")
def hosts(rpc_binary):
    """Two rpc-servers for the whole module (each serves one client at a time: the tests that
    use them run one engine at a time, closed before the servers stop)."""
    with RpcServer(rpc_binary) as first, RpcServer(rpc_binary) as second:
        yield [first.endpoint, second.endpoint]


@pytest.fixture
def doomed(rpc_binary):
    """An rpc-server of the test's own, to kill."""
    with RpcServer(rpc_binary) as server:
        yield server


# -- the text over RPC ---------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["ar", "tree"])
def test_greedy_text_over_two_rpc_hosts_equals_the_local_run(tiny_target, tiny_draft_same, hosts,
                                                            private_cache, mode):
    runs = []
    for placement in ({}, {"rpc": ",".join(hosts)}):
        with Engine(str(tiny_target), str(tiny_draft_same), threads=1, ctx_size=256, policy="fixed",
                    **placement) as engine:
            result = engine.generate(PROMPT, max_tokens=24, mode=mode, max_depth=3)
            runs.append((result, engine.models.model_state))
            # the draft works during the target's passes only where they share no device
            assert engine.models.works_ahead == bool(placement)
    (local, _), (remote, state) = runs
    assert remote.tokens == local.tokens and remote.text == local.text
    assert (remote.stats["drafted"] > 0) == (mode == "tree")
    assert (remote.stats["ahead_s"] > 0) == (mode == "tree") and local.stats["ahead_s"] == 0
    # no -ngl: every target layer is on the hosts, the draft stays here
    assert state["target_rpc"] == hosts and state["target_gpu_layers"] == state["target_layers"]
    assert state["draft_rpc"] == [] and state["draft_gpu_layers"] == 0


def test_the_layers_really_go_to_the_hosts_given(tiny_target, tiny_draft_same, hosts, private_cache):
    """llama.cpp's load log names each device's buffers: both hosts hold target layers; with
    --rpc-draft the draft's are on its host only, and a model given no host (loaded after hosts
    were registered in this process) holds none."""
    options = dict(threads=1, ctx_size=256)
    with captured_log() as log, Engine(str(tiny_target), str(tiny_draft_same), **options,
                                             rpc=hosts[0], rpc_draft=hosts[1]) as engine:
        text = engine.generate(PROMPT, max_tokens=8, mode="chain", max_depth=2).text
        state = engine.models.model_state
    assert state["target_rpc"] == hosts[:1] and state["draft_rpc"] == hosts[1:]
    buffers = [line for line in log if "model buffer size" in line]
    assert [host for host in hosts if any(f"[{host}]" in line for line in buffers)] == hosts, buffers
    with captured_log() as log, Engine(str(tiny_target), str(tiny_draft_same), **options) as engine:
        assert engine.generate(PROMPT, max_tokens=8, mode="chain", max_depth=2).text == text
    assert not [line for line in log if "RPC" in line], log


def test_target_and_draft_on_the_same_host(tiny_target, tiny_draft_same, hosts, private_cache):
    """The draft loads on a host that already holds the target: llama.cpp keeps that host's one
    connection, so edge-tree must not ask it for a second handshake (rpc-server serves one client
    at a time; the check used to wait 5 s and fail)."""
    kw = dict(max_tokens=8, mode="chain", max_depth=2)
    with Engine(str(tiny_target), str(tiny_draft_same), threads=1, ctx_size=256) as engine:
        local = engine.generate(PROMPT, **kw).tokens
    with Engine(str(tiny_target), str(tiny_draft_same), threads=1, ctx_size=256, rpc=hosts[0],
                rpc_draft=hosts[0]) as engine:
        assert engine.models.model_state["draft_rpc"] == hosts[:1]
        assert engine.generate(PROMPT, **kw).tokens == local


def test_the_handshake_check_accepts_a_real_rpc_server(hosts):
    """rpc.PROTOCOL_MAJOR is this llama.cpp's: the server built from the same source agrees."""
    for host in hosts:
        rpc.check_host(host)


def test_calibration_is_keyed_by_the_hosts(tiny_target):
    def model(*hosts):
        return SimpleNamespace(path=tiny_target, offloaded_layers=3, rpc_hosts=hosts)

    keys = {_key(model(), 1), _key(model("10.0.0.2:50052"), 1), _key(model("10.0.0.3:50052"), 1)}
    assert len(keys) == 3


def test_bench_over_rpc_gives_the_local_text(tiny_target, tiny_draft_same, hosts, private_cache):
    result = run_bench(str(tiny_target), str(tiny_draft_same), modes="ar,tree", prompts=[PROMPT],
                       max_tokens=8, progress=False, threads=1, ctx_size=256, rpc=hosts[0])
    assert result["config"]["offload"]["target_rpc"] == hosts[:1] and result["config"]["rpc"] == hosts[0]
    assert [row["same_as_ar"] for row in result["rows"]] == ["1/1", "1/1"]


def test_llama_cpp_tools_get_the_target_hosts(tmp_path):
    tools = settings(tmp_path, rpc="10.0.0.2:50052,10.0.0.3:50052", n_gpu_layers=-1)
    for cmd in (completion_command(tools, "hi"), speculative_command(tools, "hi", 4, 1)):
        assert flag_value(cmd, "--rpc") == "10.0.0.2:50052,10.0.0.3:50052" and flag_value(cmd, "-ngl") == "all"
    assert "--rpc" not in completion_command(settings(tmp_path), "hi")


def test_llama_cpp_tools_cannot_put_the_draft_on_other_hosts(tmp_path, tiny_target, tiny_draft_same):
    (tmp_path / "llama-completion").write_text("")
    with pytest.raises(UsageError, match="--rpc-draft"):
        run_bench(str(tiny_target), str(tiny_draft_same), modes="ar", llama_cpp_dir=tmp_path,
                  rpc="10.0.0.2:50052", rpc_draft="10.0.0.3:50052", progress=False)


# -- bad endpoints and hosts -------------------------------------------------------------------------

@pytest.mark.parametrize("value, needle", [
    ("10.0.0.2", "HOST:PORT"), ("10.0.0.2:0", "1..65535"), ("10.0.0.2:99999", "1..65535"),
    ("[::1]:50052", "IPv4"), ("a:1,a:1", "twice"), ("", "HOST:PORT"),
])
@pytest.mark.parametrize("flag", ["--rpc", "--rpc-draft"])
def test_a_malformed_endpoint_exits_2_before_anything_loads(tiny_target, flag, value, needle):
    r = invoke("generate", "-m", str(tiny_target), "-t", THREADS, flag, value, "hi")
    assert r.exit_code == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith(f"edge-tree: error: {flag}")
    assert needle in r.stderr


def test_an_unreachable_host_is_one_line(tiny_target):
    endpoint = f"127.0.0.1:{free_port()}"  # nothing listens there
    proc = run("generate", "-m", tiny_target, "-t", THREADS, "--rpc", endpoint, "hi")
    assert assert_one_line_error(proc, 1, f"RPC host {endpoint} is unreachable", "refused") == ""


def test_another_protocol_version_is_one_line(tiny_target):
    with FakeRpcServer(major=rpc.PROTOCOL_MAJOR - 1, minor=2) as fake:
        proc = run("generate", "-m", tiny_target, "-t", THREADS, "--rpc", fake.endpoint, "hi")
    expected = f"RPC host {fake.endpoint} runs RPC protocol {rpc.PROTOCOL_MAJOR - 1}.2.0"
    assert assert_one_line_error(proc, 1, expected, "same llama.cpp revision") == ""


def test_a_host_that_never_answers_the_handshake_is_one_line():
    with FakeRpcServer(major=rpc.PROTOCOL_MAJOR, answer=False) as silent:
        with pytest.raises(EdgeTreeError, match="did not answer the RPC handshake within 0.2 s"):
            rpc.check_host(silent.endpoint, timeout=0.2)


def test_a_build_without_the_rpc_backend_names_the_install_step(monkeypatch):
    monkeypatch.setattr(llama, "supports_rpc", lambda: False)
    with pytest.raises(EdgeTreeError, match='CMAKE_ARGS="-DGGML_RPC=ON" pip install'):
        llama.connect_rpc(["127.0.0.1:50052"])


# -- a host that dies mid-generation -----------------------------------------------------------------

def started_streaming(proc: subprocess.Popen, timeout: float = 60) -> bytes:
    """The first bytes of generated text (the generation is running), within timeout."""
    first = []
    reader = threading.Thread(target=lambda: first.append(proc.stdout.read(1)), daemon=True)
    reader.start()
    reader.join(timeout)
    assert first and first[0], "the generation never started"
    return first[0]


# with a draft, the target's passes run on a thread of their own while the draft decodes ahead
DRAFTED = pytest.mark.parametrize("mode", ["ar", "tree"])


@DRAFTED
def test_a_host_killed_mid_generation_is_one_line_and_nothing_half_written(tiny_target, tiny_draft_same,
                                                                          tmp_path, hosts, doomed, mode):
    trace, stats = tmp_path / "trace", tmp_path / "stats.json"
    draft = ["-md", tiny_draft_same] if mode == "tree" else []
    args = ["generate", "-m", tiny_target, *draft, "-t", THREADS, "-c", SLOW + 192, "-n", SLOW, "--mode", mode,
            "--rpc", f"{hosts[0]},{doomed.endpoint}", "--trace-dir", trace, "--stats-json", stats, PROMPT]
    proc = subprocess.Popen(
        [edge_tree_exe(), *map(str, args)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")})
    try:
        started_streaming(proc)
        doomed.kill()
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait(10)
    err = err.decode()
    assert proc.returncode == 1, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"edge-tree: error: RPC host {doomed.endpoint} stopped answering (llama.cpp: "), err
    # every step written is whole; the summary, report.html and --stats-json never are
    records = [json.loads(line) for line in (trace / "trace.jsonl").read_text().splitlines()]
    assert records and not (trace / "report.html").exists() and not stats.exists()
    assert all(r.get("type") != "summary" for r in records)


@DRAFTED
def test_a_host_killed_while_serving_fails_that_request_and_the_server_goes_on(
        tiny_target, tiny_draft_same, tmp_path_factory, hosts, doomed, mode):
    draft = ["-md", tiny_draft_same] if mode == "tree" else []
    server = ServerProcess(edge_tree_exe(), "-m", tiny_target, *draft, "-t", THREADS, "-c", SLOW + 192,
                           "--rpc", f"{hosts[0]},{doomed.endpoint}", env=server_env(tmp_path_factory))
    answers: dict[str, httpx.Response] = {}

    def ask():
        answers["running"] = post(server, "/completions", {"prompt": PROMPT, "max_tokens": SLOW})

    asking = threading.Thread(target=ask, daemon=True)
    try:
        asking.start()
        assert server.wait_health(lambda h: h["running"] == 1)["running"] == 1
        doomed.kill()
        asking.join(60)
        error = assert_error(answers["running"], 502)
        assert error["code"] == "rpc_host_failed" and doomed.endpoint in error["message"]
        health = httpx.get(server.url + "/health", timeout=10)
        assert health.status_code == 503 and health.json()["status"] == "unavailable"
        later = assert_error(post(server, "/completions", {"prompt": PROMPT, "max_tokens": 4}), 503)
        assert later["code"] == "target_unavailable" and doomed.endpoint in later["message"]
        assert server.terminate(timeout=30) == 0, server.stderr
    finally:
        server.stop()
    assert "Traceback" not in server.stderr
    assert f"edge-tree: error: RPC host {doomed.endpoint} stopped answering" in server.stderr


@pytest.fixture
def stalling(rpc_binary):
    """An rpc-server of the test's own behind a proxy that the test can make stop forwarding."""
    with RpcServer(rpc_binary) as host, DelayProxy(("127.0.0.1", host.port), delay_s=0.0) as hop:
        yield hop


STALL_DEADLINE_S = 2


def stalled_server(tiny_target, tmp_path_factory, hop) -> ServerProcess:
    return ServerProcess(edge_tree_exe(), "-m", tiny_target, "-t", THREADS, "-c", 512, "--rpc", hop.endpoint,
                         "--rpc-timeout", STALL_DEADLINE_S, env=server_env(tmp_path_factory))


def test_a_stalled_host_fails_its_request_by_the_deadline_and_the_server_recovers(
        tiny_target, tmp_path_factory, stalling):
    """A host that stops answering with its connection open: the request in the pass gets a 502
    naming the host within the deadline, others a 503 and /health 'degraded' while it stalls;
    once it answers again, the next request is served (the same text), with no restart."""
    server = stalled_server(tiny_target, tmp_path_factory, stalling)
    body = {"prompt": PROMPT, "max_tokens": 6, "temperature": 0}
    try:
        reference = post(server, "/completions", body)
        assert reference.status_code == 200, reference.text
        stalling.hold()
        started = time.monotonic()
        error = assert_error(post(server, "/completions", body), 502)
        assert time.monotonic() - started < STALL_DEADLINE_S + 5
        assert error["code"] == "rpc_host_timeout" and stalling.endpoint in error["message"]
        health = httpx.get(server.url + "/health", timeout=10)
        assert health.status_code == 503 and health.json()["status"] == "degraded"
        busy = post(server, "/completions", body)
        assert assert_error(busy, 503)["code"] == "rpc_host_stalled" and "Retry-After" in busy.headers
        stalling.release()
        assert server.wait_health(lambda h: h["status"] == "ok")["status"] == "ok"
        again = post(server, "/completions", body)
        assert again.status_code == 200, again.text
        assert again.json()["choices"][0]["text"] == reference.json()["choices"][0]["text"]
        assert server.terminate(timeout=30) == 0, server.stderr
    finally:
        stalling.release()
        server.stop()
    assert "Traceback" not in server.stderr
    assert f"RPC host {stalling.endpoint} did not answer within {STALL_DEADLINE_S} s" in server.stderr


def test_sigterm_while_a_host_stalls_exits_in_bounded_time(tiny_target, tmp_path_factory, stalling):
    """SIGTERM while a pass waits on the host, before its deadline: the server exits 0 once the
    deadline and one more have passed, the engine's thread left waiting."""
    server = stalled_server(tiny_target, tmp_path_factory, stalling)
    answers = []
    try:
        stalling.hold()
        asking = threading.Thread(target=lambda: answers.append(
            post(server, "/completions", {"prompt": PROMPT, "max_tokens": 6})), daemon=True)
        asking.start()
        assert server.wait_health(lambda h: h["running"] == 1)["running"] == 1
        started = time.monotonic()
        assert server.terminate(timeout=2 * STALL_DEADLINE_S + 20) == 0, server.stderr
        assert time.monotonic() - started < 2 * STALL_DEADLINE_S + 20
        asking.join(10)
        assert answers and answers[0].status_code == 502, answers
    finally:
        stalling.release()
        server.stop()
    assert "Traceback" not in server.stderr
    assert "edge-tree: stopped while waiting on an RPC host" in server.stderr


def test_a_killed_host_that_comes_back_is_served_again_without_a_restart(tiny_target, tmp_path_factory,
                                                                         rpc_binary, doomed):
    """The request the host's death hits gets 502, others 503 and /health 'unavailable'; once an
    rpc-server listens there again, the server loads the target afresh in the same process (same
    pid, same port) and serves the same text."""
    server = ServerProcess(edge_tree_exe(), "-m", tiny_target, "-t", THREADS, "-c", 512, "--rpc",
                           doomed.endpoint, env=server_env(tmp_path_factory))
    body = {"prompt": PROMPT, "max_tokens": 6, "temperature": 0}
    try:
        reference = post(server, "/completions", body)
        assert reference.status_code == 200, reference.text
        doomed.kill()
        assert assert_error(post(server, "/completions", body), 502)["code"] == "rpc_host_failed"
        later = post(server, "/completions", body)
        assert assert_error(later, 503)["code"] == "target_unavailable" and "Retry-After" in later.headers
        assert server.health()["status"] == "unavailable"
        with RpcServer(rpc_binary, port=doomed.port):
            assert server.wait_health(lambda h: h.get("status") == "ok", timeout=60)["status"] == "ok"
            again = post(server, "/completions", body)
            assert again.status_code == 200, again.text
            assert again.json()["choices"][0]["text"] == reference.json()["choices"][0]["text"]
            assert server.proc.poll() is None  # the same process all along
            assert server.terminate(timeout=30) == 0, server.stderr
    finally:
        server.stop()
    assert "Traceback" not in server.stderr
    assert f"edge-tree: RPC host {doomed.endpoint} answers again: loading the models afresh" in server.stderr


def test_the_failed_host_is_named_once_its_listener_closes():
    """A killed rpc-server's connection may close before its listening socket does: the host that
    failed is asked again until one refuses (a test once named both hosts)."""
    live, dying = socket.create_server(("127.0.0.1", 0)), socket.create_server(("127.0.0.1", 0))
    endpoints = [f"127.0.0.1:{s.getsockname()[1]}" for s in (live, dying)]
    threading.Timer(0.3, dying.close).start()
    try:
        assert rpc._dead_hosts(endpoints) == [endpoints[1]]
        assert rpc._dead_hosts([endpoints[0]], settle_s=0.1) == [endpoints[0]]  # none refuses: all
    finally:
        live.close()


# -- the test tooling ---------------------------------------------------------------------------------

def test_the_delay_proxy_delays_each_way_and_keeps_the_bytes(hosts):
    """A HELLO through the proxy gets the real server's answer, one round trip later."""
    host, port = hosts[1].split(":")
    with DelayProxy((host, int(port)), delay_s=0.05) as proxy:
        started = time.monotonic()
        rpc.check_host(proxy.endpoint)
        assert time.monotonic() - started >= 2 * 0.05
