"""What every request passes before a route sees it (server/guard.py): the API key, a JSON body,
a body-size limit; and what the server shows of its files."""

from __future__ import annotations

import os
import socket

import httpx
import openai
import pytest
from click.testing import CliRunner

from edge_tree import server as serve_command
from edge_tree.cli import main
from serving import ServerProcess, assert_error, edge_tree_exe, post, raw_request

KEY = "s3cret-key"
LIMIT = 4096


@pytest.fixture(scope="module")
def guarded(tmp_path_factory, tiny_target, tiny_draft_same):
    env_cache = tmp_path_factory.mktemp("guard-cache")
    server = ServerProcess(edge_tree_exe(), "-m", tiny_target, "-md", tiny_draft_same, "-t", "1",
                           "-c", "512", "--api-key", KEY, "--max-body", LIMIT,
                           env={**os.environ, "XDG_CACHE_HOME": str(env_cache)})
    try:
        yield server
    finally:
        server.stop()


def with_key(key: str = KEY) -> dict:
    return {"Authorization": f"Bearer {key}"}


def test_every_route_but_health_wants_the_key(guarded):
    assert httpx.get(guarded.url + "/health", timeout=10).status_code == 200
    for headers in ({}, with_key("wrong"), {"Authorization": KEY}):
        assert_error(httpx.get(guarded.base_url + "/models", headers=headers, timeout=10), 401)
        assert_error(post(guarded, "/completions", {"prompt": "hi", "max_tokens": 2}, headers=headers), 401)
    assert httpx.get(guarded.base_url + "/models", headers=with_key(), timeout=10).status_code == 200
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=guarded.base_url, api_key="wrong", max_retries=0).models.list()
    api = openai.OpenAI(base_url=guarded.base_url, api_key=KEY, max_retries=0, timeout=120)
    reply = api.completions.create(model=api.models.list().data[0].id, prompt="hello", max_tokens=4)
    assert reply.usage.completion_tokens == 4


def test_a_body_must_be_json_by_its_content_type(guarded):
    body = b'{"prompt": "hi", "max_tokens": 2}'
    for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        response = httpx.post(guarded.base_url + "/completions", content=body, timeout=30,
                              headers={**with_key(), "Content-Type": kind})
        assert_error(response, 415)
    response = httpx.post(guarded.base_url + "/completions", content=body, timeout=30,
                          headers={**with_key(), "Content-Type": "application/json; charset=utf-8"})
    assert response.status_code == 200, response.text


def test_a_body_over_the_limit_is_413_whether_its_length_is_told_or_not(guarded):
    big = b'{"prompt": "' + b"x" * LIMIT + b'", "max_tokens": 2}'
    assert_error(post(guarded, "/completions", None, raw=big, headers=with_key()), 413)

    def chunks():  # no Content-Length: the server counts as it reads
        for start in range(0, len(big), 512):
            yield big[start:start + 512]

    response = httpx.post(guarded.base_url + "/completions", content=chunks(), timeout=30,
                          headers={**with_key(), "Content-Type": "application/json"})
    assert_error(response, 413)
    fits = post(guarded, "/completions", {"prompt": "hello", "max_tokens": 2}, headers=with_key())
    assert fits.status_code == 200, fits.text  # the server goes on


def test_models_names_the_files_without_their_paths(guarded, tiny_target, tiny_draft_same):
    model = httpx.get(guarded.base_url + "/models", headers=with_key(), timeout=10).json()["data"][0]
    assert model["id"] == tiny_target.stem and model["draft"] == tiny_draft_same.stem
    assert str(tiny_target.parent) not in str(model)


def test_a_server_beyond_loopback_without_a_key_is_warned_about(monkeypatch, tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as listener:
        assert serve_command.is_loopback(listener)
    monkeypatch.setattr(serve_command, "is_loopback", lambda listener: False)
    result = CliRunner().invoke(main, ["serve", "--port", "0", "-m", str(tmp_path / "absent.gguf")])
    assert result.exit_code == 1
    assert result.stderr.startswith("edge-tree: warning: listening on 127.0.0.1 without --api-key")
    result = CliRunner().invoke(main, ["serve", "--port", "0", "--api-key", "k",
                                       "-m", str(tmp_path / "absent.gguf")])
    assert "warning" not in result.stderr


@pytest.mark.parametrize("args, option", [(["--max-body", "0"], "--max-body"),
                                          (["--api-key", " "], "--api-key")])
def test_bad_guard_options_are_one_line(args, option, tmp_path):
    result = CliRunner().invoke(main, ["serve", *args, "-m", str(tmp_path / "absent.gguf")])
    assert result.exit_code == 2 and result.stderr.startswith(f"edge-tree: error: {option}:")
    assert len(result.stderr.strip().splitlines()) == 1


# -- a server with no waiting room, whose traces cannot be written --------------------------------

SLOW = 8000  # tokens: seconds of work for a tiny model, so a request is still running when we act


@pytest.fixture(scope="module")
def roomless(tmp_path_factory, tiny_target):
    folder = tmp_path_factory.mktemp("roomless")
    traces = folder / "traces"
    traces.mkdir()
    server = ServerProcess(edge_tree_exe(), "-m", tiny_target, "-t", "1", "-c", SLOW + 192, "--queue", "0",
                           "--trace-dir", traces, env={**os.environ, "XDG_CACHE_HOME": str(folder / "cache")})
    traces.rmdir()
    traces.write_text("a file where the trace folder was")  # every trace write now fails
    try:
        yield server
    finally:
        server.stop()


def test_queue_0_serves_a_request_when_the_engine_is_free_and_refuses_one_when_not(roomless):
    assert post(roomless, "/completions", {"prompt": "hi", "max_tokens": 4}).status_code == 200
    running = raw_request(roomless, {"prompt": "hello", "max_tokens": SLOW})
    try:
        roomless.wait_health(lambda h: h["running"] == 1)
        assert_error(post(roomless, "/completions", {"prompt": "hi", "max_tokens": 4}), 429)
    finally:
        running.close()
    roomless.wait_health(lambda h: h["running"] == 0)
    assert post(roomless, "/completions", {"prompt": "hi", "max_tokens": 4}).status_code == 200


def test_a_trace_that_cannot_be_written_is_logged_and_the_answer_still_goes_out(roomless):
    reply = post(roomless, "/completions", {"prompt": "hello", "max_tokens": 6})
    assert reply.status_code == 200, reply.text
    assert reply.json()["usage"]["completion_tokens"] == 6
    assert "edge-tree: trace of " in roomless.stderr and "not written" in roomless.stderr


def test_messages_name_the_body_fields_not_the_command_line_flags(guarded):
    response = post(guarded, "/completions", {"prompt": "hi", "max_tokens": 10**6}, headers=with_key())
    error = assert_error(response, 400, "max_tokens")
    assert "--max-tokens" not in error["message"] and "max_tokens" in error["message"]
    assert "--context-full" not in error["message"]


def test_a_loopback_server_answers_only_requests_that_name_a_loopback_host(guarded):
    """DNS rebinding: a page whose name points at 127.0.0.1 sends its own name as Host."""
    port = guarded.url.rsplit(":", 1)[1]
    for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1.evil.example:{port}"):
        response = httpx.get(guarded.base_url + "/models", headers={**with_key(), "Host": host}, timeout=10)
        assert_error(response, 403)
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", "localhost"):
        response = httpx.get(guarded.base_url + "/models", headers={**with_key(), "Host": host}, timeout=10)
        assert response.status_code == 200, (host, response.text)


def test_no_cors_headers_unless_an_origin_is_named(guarded, tmp_path_factory, tiny_target):
    origin = {"Origin": "http://localhost:3000"}
    response = httpx.get(guarded.base_url + "/models", headers={**with_key(), **origin}, timeout=10)
    assert response.status_code == 200 and "access-control-allow-origin" not in response.headers
    folder = tmp_path_factory.mktemp("cors")
    server = ServerProcess(edge_tree_exe(), "-m", tiny_target, "-t", "1", "-c", "256", "--api-key", KEY,
                           "--cors-origin", "http://localhost:3000",
                           env={**os.environ, "XDG_CACHE_HOME": str(folder)})
    try:
        preflight = httpx.options(server.base_url + "/completions", timeout=10, headers={
            **origin, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"})
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "http://localhost:3000"
        reply = post(server, "/completions", {"prompt": "hi", "max_tokens": 2}, headers={**with_key(), **origin})
        assert reply.status_code == 200 and reply.headers["access-control-allow-origin"] == origin["Origin"]
        other = httpx.get(server.base_url + "/models", timeout=10,
                          headers={**with_key(), "Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in other.headers
    finally:
        server.stop()
