"""A seeded fuzz of the HTTP API: random and mutated bodies, headers and content types on every
route. Nothing a client sends may reach a 5xx or a traceback, and the server keeps answering good
requests correctly throughout."""

from __future__ import annotations

import json
import os
import random

import httpx
import pytest

from serving import ServerProcess, edge_tree_exe

KEY = "fuzz-key"
REQUESTS = 2000
SEED = 20261204
ROUTES = [("GET", "/health"), ("GET", "/v1/models"), ("POST", "/v1/completions"),
          ("POST", "/v1/chat/completions"), ("GET", "/v1/completions"), ("POST", "/v1/models"),
          ("DELETE", "/v1/chat/completions"), ("POST", "/v1/nothing"), ("PUT", "/v1/completions")]
ROUTE_WEIGHTS = [1, 1, 8, 8, 1, 1, 1, 1, 1]  # mostly the routes that read a body
CONTENT_TYPES = ["application/json", "application/json; charset=utf-8", "text/plain", "",
                 "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "APPLICATION/JSON",
                 "application/jsonx", "\u00e9/\u00e9"]
GOOD_COMPLETION = {"prompt": "hello", "max_tokens": 3, "temperature": 0}
GOOD_CHAT = {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
             "max_tokens": 3, "stream": False}
FIELDS = ["prompt", "messages", "max_tokens", "temperature", "top_p", "top_k", "min_p", "seed", "stop",
          "stream", "stream_options", "n", "mode", "max_depth", "max_total_nodes", "model", "tools",
          "tool_choice", "logprobs", "response_format", "user", "metadata", "ngram", "context_full",
          "max_time", "frobnicate", "role", "content", "echo"]


def random_value(rng: random.Random, depth: int = 0):
    kind = rng.randrange(12 if depth < 3 else 8)
    if kind == 0:
        return rng.choice([0, 1, -1, 3, 2**31, 2**64, -(2**63), 10**30])
    if kind == 1:
        return rng.choice([0.0, -0.5, 0.5, 1e308, -1e308, 1e-320, 2.0])
    if kind == 2:
        return rng.choice(["", "hi", "x" * rng.randrange(1, 3000), "\u00e9\u4e2d\U0001f600", "\x00\x01",
                           "<end_of_turn>", "{{ raise_exception('x') }}", "\ud800", "a\udfffb"])
    if kind == 3:
        return rng.choice([True, False])
    if kind == 4:
        return None
    if kind == 5:
        return rng.choice(["ar", "tree", "chain", "lookup", "stop", "error", "auto", "none", "text"])
    if kind == 6:
        return {"role": rng.choice(["user", "assistant", "system", "tool", "wizard", 3]),
                "content": random_value(rng, depth + 1)}
    if kind == 7:
        return {"type": rng.choice(["text", "image_url", "json_object"]), "text": "t"}
    if kind in (8, 9):
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(0, 4))]
    return {rng.choice(FIELDS): random_value(rng, depth + 1) for _ in range(rng.randrange(0, 4))}


def mutated_body(rng: random.Random, chat: bool) -> bytes:
    body = json.loads(json.dumps(GOOD_CHAT if chat else GOOD_COMPLETION))
    for _ in range(rng.randrange(1, 4)):
        action = rng.randrange(4)
        if action == 0 and body:
            body.pop(rng.choice(sorted(body)))
        elif action in (1, 2):
            body[rng.choice(FIELDS)] = random_value(rng)
        elif action == 3:
            body["max_tokens"] = rng.choice([1, 2, 5, 0, -1, "3", None, 300])
    if rng.random() < 0.3:
        body["stream"] = True
    raw = json.dumps(body, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")
    cut = rng.random()
    if cut < 0.05:
        raw = raw[:rng.randrange(len(raw))]  # truncated
    elif cut < 0.08:
        raw = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))  # garbage
    elif cut < 0.10:
        raw = b"[" * rng.randrange(10, 3000)  # deep or unclosed nesting
    return raw


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_target, tiny_draft_same):
    folder = tmp_path_factory.mktemp("fuzz")
    proc = ServerProcess(edge_tree_exe(), "-m", tiny_target, "-md", tiny_draft_same, "-t", "1", "-c", "512",
                         "--api-key", KEY, "--max-body", 65536, "--queue", "4",
                         env={**os.environ, "XDG_CACHE_HOME": str(folder)})
    try:
        yield proc
    finally:
        proc.stop()


def good_request_works(http: httpx.Client, url: str) -> None:
    response = http.post(url + "/v1/completions", json=GOOD_COMPLETION,
                         headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == GOOD_COMPLETION["max_tokens"]


def test_random_and_mutated_requests_never_reach_a_5xx(server):
    rng = random.Random(SEED)
    statuses: dict[int, int] = {}
    with httpx.Client(base_url=server.url, timeout=60) as http:
        for i in range(REQUESTS):
            method, path = rng.choices(ROUTES, weights=ROUTE_WEIGHTS)[0]
            headers = {}
            if rng.random() < 0.95:  # mostly past the guard, so that the bodies are what is tested
                headers["Authorization"] = rng.choice([f"Bearer {KEY}"] * 17 + ["Bearer nope", KEY, "Basic x"])
            content_type = "application/json" if rng.random() < 0.8 else rng.choice(CONTENT_TYPES)
            if content_type:
                headers["Content-Type"] = content_type
            body = mutated_body(rng, chat="chat" in path) if method in ("POST", "PUT") else None
            try:
                response = http.request(method, path, content=body, headers=headers)
            except UnicodeEncodeError:  # a header httpx cannot send: nothing reached the server
                continue
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            assert response.status_code < 500, (i, method, path, headers, body[:300] if body else None,
                                                response.text[:500])
            if response.status_code >= 400 and "json" in response.headers.get("content-type", ""):
                assert set(response.json()["error"]) == {"message", "type", "param", "code"}
            if i % 100 == 99:
                good_request_works(http, server.url)
    assert "Traceback" not in server.stderr, server.stderr[-3000:]
    assert statuses.get(200, 0) > 50 and statuses.get(400, 0) > 300, statuses  # both paths exercised
