"""`edge-tree serve` as a real process on loopback, driven by the official `openai` client (and
httpx or a raw socket where a client would refuse to send what we test): completions and chat,
streamed and not, equal to `edge-tree generate`; every bad input a 4xx in OpenAI's shape with the
server still serving; a bounded queue (429), clients that leave, and SIGTERM (503, exit 0)."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from serving import ServerProcess, assert_error, post, raw_request, server_env
from commands import assert_one_line_error, run
from serving import edge_tree_exe
from tinymodels import write_tiny_model

MAX_TOKENS = 24
PROMPTS = ["hello world", "the quick brown fox", "once upon a time", "speculative decoding lets",
           "in the morning the sun", "people walk to work,", "this is a test of", "a tree of candidate"]
SLOW = 8000  # tokens: seconds of work for a tiny model, so a request is still running when we act
FAMILIES = {"spm": ("bytes", "gemma"), "bpe": ("bpe", "chatml")}



@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tmp_path_factory):
    """A chat-template target and draft of one tokenizer family, and a server on them."""
    vocab, chat = FAMILIES[request.param]
    folder = tmp_path_factory.mktemp(f"serve-{request.param}")
    target = write_tiny_model(folder / "target.gguf", seed=0, vocab=vocab, chat=chat)
    draft = write_tiny_model(folder / "draft.gguf", seed=1, vocab=vocab, chat=chat)
    load = ["-m", target, "-md", draft, "-t", "1", "-c", "1024"]
    env = server_env(tmp_path_factory)
    server = ServerProcess(edge_tree_exe(), *load, "--trace-dir", folder / "traces", env=env)
    try:
        yield {"server": server, "load": load, "env": env, "traces": folder / "traces",
               "model": target.stem, "chat": chat}
    finally:
        server.stop()


@pytest.fixture(scope="module")
def plain(tmp_path_factory, tiny_target):
    """A target without a chat template and no draft; a queue of one; a long context."""
    folder = tmp_path_factory.mktemp("serve-plain")
    server = ServerProcess(edge_tree_exe(), "-m", tiny_target, "-t", "1", "-c", SLOW + 192,
                           "--queue", "1", "--trace-dir", folder, env=server_env(tmp_path_factory))
    try:
        yield {"server": server, "traces": folder}
    finally:
        server.stop()


def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="none", max_retries=0, timeout=120)


def complete(server, prompt, stream=False, chat=False, **extra):
    """(text, the last response or chunk) through the openai client."""
    api = client(server)
    if chat:
        reply = api.chat.completions.create(model=_model_id(server), stream=stream, **extra,
                                            messages=[{"role": "user", "content": prompt}])
    else:
        reply = api.completions.create(model=_model_id(server), prompt=prompt, stream=stream, **extra)
    if not stream:
        return (reply.choices[0].message.content if chat else reply.choices[0].text), reply
    pieces, last = [], None
    for chunk in reply:
        if chunk.choices:
            choice = chunk.choices[0]
            pieces.append((choice.delta.content if chat else choice.text) or "")
            last = chunk if choice.finish_reason else last
        else:
            last.usage = chunk.usage  # include_usage: a last chunk with the usage only
    return "".join(pieces), last


def usage_counts(usage) -> dict:
    return {k: v for k, v in usage.model_dump().items() if k != "prompt_tokens_details"}


def _model_id(server) -> str:
    return httpx.get(server.base_url + "/models", timeout=10).json()["data"][0]["id"]


def generate_cli(load, env, prompt, *extra) -> str:
    proc = run("generate", *load, "-n", MAX_TOKENS, "--temperature", "0", *extra, prompt, env=env)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout.decode()[:-1]  # generate ends the text with a newline


# -- the command ------------------------------------------------------------------------------------

def test_bad_serve_options_are_one_line_before_any_model_loads(tiny_target):
    assert_one_line_error(run("serve", "-m", tiny_target, "--queue", "-1"), 2, "--queue")
    assert_one_line_error(run("serve", "-m", tiny_target, "--port", "70000"), 2, "--port")


def test_a_taken_port_is_one_line(tiny_target):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        proc = run("serve", "-m", tiny_target, "--port", taken.getsockname()[1], timeout=60)
    assert_one_line_error(proc, 1, "cannot listen on 127.0.0.1")


# -- answers ----------------------------------------------------------------------------------------

def test_models_and_health(family):
    server = family["server"]
    models = client(server).models.list()
    assert [m.id for m in models.data] == [family["model"]]
    health = server.health()
    assert health["status"] == "ok" and health["queue_size"] == 8


@pytest.mark.parametrize("chat", [False, True], ids=["completion", "chat"])
def test_streamed_equals_whole_equals_generate(family, chat):
    server = family["server"]
    for prompt in PROMPTS[:2]:
        whole, reply = complete(server, prompt, chat=chat, max_tokens=MAX_TOKENS, temperature=0)
        streamed, last = complete(server, prompt, stream=True, chat=chat, max_tokens=MAX_TOKENS,
                                  temperature=0, stream_options={"include_usage": True})
        cli = generate_cli(family["load"], family["env"], prompt, *(["--chat"] if chat else []))
        assert whole == streamed == cli and whole
        assert reply.choices[0].finish_reason == last.choices[0].finish_reason
        # the same counts, but for the prompt tokens found in the cache (the later request's)
        assert usage_counts(reply.usage) == usage_counts(last.usage)
        assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
        if reply.choices[0].finish_reason == "length":
            assert reply.usage.completion_tokens == MAX_TOKENS


def test_usage_counts_the_prompt_tokens(family):
    from edge_tree.llamacpp import llama

    _, reply = complete(family["server"], PROMPTS[2], max_tokens=4)
    with llama.Model(family["load"][1]) as model:
        assert reply.usage.prompt_tokens == len(model.tokenize(PROMPTS[2]))


def test_chat_prompts_hold_the_template_and_one_bos(family):
    _, reply = complete(family["server"], "hi", chat=True, max_tokens=4)
    trace = read_trace(family["traces"], reply.id)
    header = trace[0]
    assert header["request_id"] == reply.id
    prompt = header["prompt"]
    assert "hi" in prompt and ("<start_of_turn>" in prompt or "<|im_start|>" in prompt)
    assert reply.usage.prompt_tokens == header["prompt_tokens"] < len(prompt)  # turn markers are one token each


def test_stop_strings_cut_exactly_whole_and_streamed(family):
    server = family["server"]
    reference, _ = complete(server, PROMPTS[3], max_tokens=MAX_TOKENS, temperature=0)
    stop = reference[len(reference) // 2: len(reference) // 2 + 3]
    expected = reference[:reference.index(stop)]
    for stream in (False, True):
        text, last = complete(server, PROMPTS[3], stream=stream, max_tokens=MAX_TOKENS, temperature=0,
                              stop=[stop, "never in the text \u2603"])
        assert text == expected and stop not in text
        assert last.choices[0].finish_reason == "stop"
        assert last.model_extra["speculation"]["stop_reason"] == "stop"


def test_every_answer_carries_the_speculation(family):
    server = family["server"]
    for stream in (False, True):
        _, last = complete(server, PROMPTS[4], stream=stream, max_tokens=MAX_TOKENS, temperature=0)
        speculation = last.model_extra["speculation"]
        assert speculation["mode"] == "tree" and speculation["target_passes"] >= 1
        assert speculation["tokens_per_s"] > 0 and speculation["mean_accepted_per_pass"] >= 0
        assert speculation["target_passes"] <= MAX_TOKENS


def test_generation_options_go_in_the_body(family):
    server = family["server"]
    ar, reply = complete(server, PROMPTS[5], max_tokens=MAX_TOKENS, temperature=0, extra_body={"mode": "ar"})
    assert reply.model_extra["speculation"]["mode"] == "ar"
    capped, reply = complete(server, PROMPTS[5], max_tokens=MAX_TOKENS, temperature=0,
                             extra_body={"max_depth": 1, "max_total_nodes": 2})
    assert capped == ar  # lossless whatever the tree
    assert reply.model_extra["speculation"]["drafted"] <= 2 * reply.model_extra["speculation"]["target_passes"]


def test_the_same_seed_samples_the_same_text(family):
    server = family["server"]
    texts = {complete(server, PROMPTS[6], max_tokens=16, temperature=1.0, top_p=0.9, seed=7)[0] for _ in range(2)}
    assert len(texts) == 1


def test_a_trace_per_request(family):
    _, reply = complete(family["server"], PROMPTS[7], max_tokens=8)
    trace = read_trace(family["traces"], reply.id)
    assert [r["type"] for r in trace][0] == "header" and trace[-1]["type"] == "summary"
    assert any(r["type"] == "step" for r in trace)
    assert trace[-1]["text"] == reply.choices[0].text


def read_trace(folder, request_id) -> list[dict]:
    path = folder / request_id / "trace.jsonl"
    deadline = time.monotonic() + 10  # the summary is written right after the answer is sent
    while time.monotonic() < deadline:
        records = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        if records and records[-1]["type"] == "summary":
            return records
        time.sleep(0.05)
    raise AssertionError(f"no finished trace at {path}")


# -- bad input ---------------------------------------------------------------------------------------

LONG_PROMPT = "hello world " * 700  # well over the 1024-token context
BAD = {  # name: (path, body or raw bytes, status, param)
    "malformed JSON": ("/completions", b'{"prompt": "hi",', 400, None),
    "not an object": ("/completions", [1, 2], 400, None),
    "prompt not a string": ("/completions", {"prompt": 5}, 400, "prompt"),
    "prompt missing": ("/completions", {"max_tokens": 5}, 400, "prompt"),
    "max_tokens a string": ("/completions", {"prompt": "hi", "max_tokens": "ten"}, 400, "max_tokens"),
    "temperature a string": ("/completions", {"prompt": "hi", "temperature": "hot"}, 400, "temperature"),
    "stream not a bool": ("/completions", {"prompt": "hi", "stream": "yes"}, 400, "stream"),
    "stop not strings": ("/completions", {"prompt": "hi", "stop": [1]}, 400, "stop"),
    "unknown field": ("/completions", {"prompt": "hi", "frobnicate": 1}, 400, "frobnicate"),
    "n > 1": ("/completions", {"prompt": "hi", "n": 2}, 400, "n"),
    "logprobs": ("/completions", {"prompt": "hi", "logprobs": 3}, 400, "logprobs"),
    "negative max_tokens": ("/completions", {"prompt": "hi", "max_tokens": -5}, 400, "max_tokens"),
    "huge max_tokens": ("/completions", {"prompt": "hi", "max_tokens": 10**9}, 400, "max_tokens"),
    "prompt over the context": ("/completions", {"prompt": LONG_PROMPT, "max_tokens": 4}, 400, "prompt"),
    "unknown model": ("/completions", {"prompt": "hi", "model": "gpt-4"}, 404, "model"),
    "bad mode": ("/completions", {"prompt": "hi", "mode": "fast"}, 400, "mode"),
    "bad tree cap": ("/completions", {"prompt": "hi", "max_depth": 0}, 400, "max_depth"),
    "messages missing": ("/chat/completions", {"max_tokens": 4}, 400, "messages"),
    "message not an object": ("/chat/completions", {"messages": ["hi"]}, 400, "messages"),
    "image content": ("/chat/completions", {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "x"}}]}]}, 400, "messages"),
    "chat over the context": ("/chat/completions", {"messages": [{"role": "user", "content": LONG_PROMPT}]},
                              400, "messages"),
    "negative seed": ("/completions", {"prompt": "hi", "seed": -1, "temperature": 1}, 400, "seed"),
    "huge seed": ("/completions", {"prompt": "hi", "seed": 2**70, "temperature": 1}, 400, "seed"),
    "lone surrogate": ("/completions", b'{"prompt": "a\\ud800b", "max_tokens": 2}', 400, "prompt"),
    "deep nesting": ("/completions", b'{"prompt": "hi", "metadata": ' + b"[" * 5000 + b"]" * 5000 + b"}",
                     400, None),
    "nested past the limit": ("/completions", b'{"prompt": "hi", "metadata": ' + b"[" * 40 + b"]" * 40 + b"}",
                              400, None),
    "tool_choice": ("/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                                          "tool_choice": "required"}, 400, "tool_choice"),
    "function_call": ("/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                                            "function_call": {"name": "f"}}, 400, "function_call"),
    "unknown role": ("/chat/completions", {"messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages"),
    "tool role": ("/chat/completions", {"messages": [{"role": "tool", "content": "hi", "tool_call_id": "1"}]},
                  400, "messages"),
    "role not a string": ("/chat/completions", {"messages": [{"role": 3, "content": "hi"}]}, 400, "messages"),
    "message name": ("/chat/completions", {"messages": [{"role": "user", "content": "hi", "name": "bob"}]},
                     400, "messages"),
    "message tool_calls": ("/chat/completions", {"messages": [{"role": "assistant", "content": "",
                                                               "tool_calls": [{"id": "x"}]}]}, 400, "messages"),
    "unknown stream option": ("/completions", {"prompt": "hi", "stream": True,
                                               "stream_options": {"include_usage": True, "x": 1}},
                              400, "stream_options"),
}


@pytest.mark.parametrize("name", sorted(BAD))
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_bad_input_is_an_openai_error_and_the_server_goes_on(family, name, stream):
    server = family["server"]
    path, body, status, param = BAD[name]
    if isinstance(body, dict):
        body = {**body, "stream": body.get("stream", stream)}
    assert_error(post(server, path, body, raw=body if isinstance(body, bytes) else None), status, param)
    text, _ = complete(server, "hello", max_tokens=4)
    assert text


def test_messages_the_template_refuses_are_a_400_in_its_words(family):
    """Gemma's template raises on roles out of turn (raise_exception); ChatML takes any order."""
    body = {"messages": [{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}],
            "max_tokens": 4}
    response = post(family["server"], "/chat/completions", body)
    if family["chat"] == "gemma":
        error = assert_error(response, 400, "messages")
        assert "roles must alternate" in error["message"]
    else:
        assert response.status_code == 200 and response.json()["choices"][0]["message"]["content"]


def test_the_openai_client_raises_its_own_error_types(family):
    server = family["server"]
    with pytest.raises(openai.BadRequestError) as bad:
        complete(server, "hi", max_tokens=-1)
    assert bad.value.body["param"] == "max_tokens"
    with pytest.raises(openai.NotFoundError):
        client(server).completions.create(model="no-such-model", prompt="hi")


def test_unknown_route_and_method_are_openai_errors(family):
    server = family["server"]
    assert_error(httpx.get(server.base_url + "/nothing", timeout=10), 404)
    assert_error(httpx.get(server.base_url + "/completions", timeout=10), 405)


def test_chat_without_a_template_is_a_400_and_completions_still_work(plain):
    server = plain["server"]
    error = assert_error(post(server, "/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
                         400, "messages")
    assert "no chat template" in error["message"]
    text, _ = complete(server, "hello", max_tokens=4)
    assert text


def test_a_mode_the_models_cannot_do_is_a_400_naming_it(plain):
    server = plain["server"]
    for stream in (False, True):
        error = assert_error(post(server, "/completions", {"prompt": "hi", "mode": "tree", "stream": stream}),
                             400, "mode")
        assert "needs a draft model" in error["message"]
    _, reply = complete(server, "hello", max_tokens=4)
    assert reply.model_extra["speculation"]["mode"] == "ar"  # no draft: plain decoding


# -- concurrency --------------------------------------------------------------------------------------

def test_eight_streaming_clients_get_their_own_replies(family):
    server = family["server"]
    alone = {p: complete(server, p, stream=True, max_tokens=12, temperature=0)[0] for p in PROMPTS}

    def client_run(prompt):
        return [complete(server, prompt, stream=True, max_tokens=12, temperature=0)[0] for _ in range(3)]

    with ThreadPoolExecutor(8) as pool:
        replies = dict(zip(PROMPTS, pool.map(client_run, PROMPTS, timeout=300)))
    for prompt in PROMPTS:
        assert replies[prompt] == [alone[prompt]] * 3
    assert server.health()["rejected"] == 0


def test_a_full_queue_is_answered_429_with_retry_after(plain):
    server = plain["server"]
    before = server.health()
    running = raw_request(server, {"prompt": "hello", "max_tokens": SLOW})
    server.wait_health(lambda h: h["running"] == 1)
    waiting = raw_request(server, {"prompt": "hello", "max_tokens": SLOW})
    health = server.wait_health(lambda h: h["waiting"] == 1)
    assert health["running"] == 1 and health["waiting"] == 1
    try:
        response = post(server, "/completions", {"prompt": "hi", "max_tokens": 4})
        assert_error(response, 429)
        assert int(response.headers["Retry-After"]) >= 1
    finally:
        waiting.close()
        running.close()
    health = server.wait_health(lambda h: h["running"] == 0 and h["waiting"] == 0)
    assert health["running"] == 0 and health["waiting"] == 0
    assert health["rejected"] == before["rejected"] + 1
    text, _ = complete(server, "hello", max_tokens=4)
    assert text


def test_a_client_that_leaves_mid_stream_stops_its_generation(plain):
    server = plain["server"]
    before = server.health()
    body = {"model": _model_id(server), "prompt": "hello", "max_tokens": SLOW, "stream": True}
    with httpx.stream("POST", server.base_url + "/completions", json=body, timeout=60) as response:
        lines = response.iter_lines()
        first = json.loads(next(line for line in lines if line.startswith("data: "))[6:])
        for _, line in zip(range(5), lines):
            pass
    health = server.wait_health(lambda h: h["running"] == 0, timeout=10)
    assert health["running"] == 0 and health["cancelled"] == before["cancelled"] + 1
    summary = read_trace(plain["traces"], first["id"])[-1]
    assert summary["stats"]["stop_reason"] == "interrupted" and summary["stats"]["tokens"] < SLOW
    text, _ = complete(server, "hello", max_tokens=4)
    assert text


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_finishes_the_round_answers_the_queue_503_and_exits_0(tmp_path_factory, tiny_target, sig):
    server = ServerProcess(edge_tree_exe(), "-m", tiny_target, "-t", "1", "-c", SLOW + 192,
                           env=server_env(tmp_path_factory))
    answers: dict[str, httpx.Response] = {}

    def ask(name):
        answers[name] = post(server, "/completions", {"prompt": "hello", "max_tokens": SLOW})

    threads = {name: threading.Thread(target=ask, args=(name,), daemon=True) for name in ("running", "queued")}
    try:
        threads["running"].start()
        server.wait_health(lambda h: h["running"] == 1)
        threads["queued"].start()
        server.wait_health(lambda h: h["waiting"] == 1)
        assert server.terminate(sig, timeout=60) == 0, server.stderr
        for thread in threads.values():
            thread.join(30)
    finally:
        server.stop()
    assert "Traceback" not in server.stderr
    running = answers["running"]
    assert running.status_code == 200, running.text
    assert running.json()["speculation"]["stop_reason"] == "interrupted"
    assert running.json()["usage"]["completion_tokens"] < SLOW
    assert_error(answers["queued"], 503)


# -- the demo pair ------------------------------------------------------------------------------------

@pytest.mark.demo
def test_demo_pair_serves_the_text_of_generate(demo_pair):
    """Pair B (the Q4_0 draft): the user's cache, where its reduced copy and costs are kept."""
    load = ["-m", demo_pair.target, "-md", demo_pair.draft_q4_0, "-t", "2", "-c", "512"]
    env = os.environ.copy()
    server = ServerProcess(edge_tree_exe(), *load, env=env)
    try:
        prompt = "The capital of France is"
        whole, reply = complete(server, prompt, max_tokens=MAX_TOKENS, temperature=0)
        streamed, last = complete(server, prompt, stream=True, max_tokens=MAX_TOKENS, temperature=0)
        assert whole == streamed == generate_cli(load, env, prompt)
        assert reply.model_extra["speculation"]["mode"] == "tree"
        _, chain = complete(server, prompt, max_tokens=MAX_TOKENS, temperature=0,
                            extra_body={"mode": "chain", "max_depth": 4})
        speculation = chain.model_extra["speculation"]  # drafts whatever the policy thinks of costs
        assert speculation["mode"] == "chain" and 0 < speculation["drafted"]
        assert speculation["accepted"] == round(speculation["mean_accepted_per_pass"] * speculation["target_passes"])
        # the demo target is a base model: no chat template, so chat is a clear 400
        assert_error(post(server, "/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
                     400, "messages")
    finally:
        server.stop()
