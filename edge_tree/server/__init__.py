"""`edge-tree serve`: an OpenAI-compatible local server (completions and chat) on tree decoding.

Layout: `wire.py` (the OpenAI request and answer shapes, errors), `worker.py` (the one engine,
its bounded FIFO and its thread), `app.py` (the routes, on FastAPI), `runner.py` (uvicorn until
SIGINT or SIGTERM), and this command, which checks the options, binds the port and loads the
models. FastAPI and uvicorn load only when the server starts.
"""

from __future__ import annotations

import socket

import click

from ..core.engine import Engine
from ..core.options import LoadOptions, click_options
from ..errors import EdgeTreeError, UsageError, user_errors

SERVE_EXAMPLES = """
\b
Examples:
  edge-tree serve                                   # the demo pair on http://127.0.0.1:8080/v1
  edge-tree serve -m qwen2.5-7b-instruct-q4_k_m.gguf -md qwen2.5-0.5b-instruct-q4_k_m.gguf -ngl 99 -ngld 99
  curl http://127.0.0.1:8080/v1/completions -d '{"prompt": "The capital of France is", "max_tokens": 16}'
"""


@click.command(epilog=SERVE_EXAMPLES)
@click_options(LoadOptions)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=8080, show_default=True, help="Port to listen on (0: any free one).")
@click.option("--trace-dir", type=click.Path(file_okay=False),
              help="Write each request's steps to DIR/<request id>/trace.jsonl (and report.html).")
@click.option("--queue", "queue_size", type=int, default=8, show_default=True,
              help="Requests that may wait while one generates; more are answered 429.")
def serve(host, port, trace_dir, queue_size, **options):
    """Serve the target (with its draft) over OpenAI's API: /v1/completions, /v1/chat/completions,
    /v1/models and /health, streaming or not, one generation at a time.

    With no --target, edge-tree serves its demo pair (Gemma 3 270M: F32 target, Q4_K_M draft).
    """
    from ..viz.jsonl import check_trace_dir

    with user_errors():
        if queue_size < 0:
            raise UsageError("--queue", f"must be at least 0, got {queue_size}")
        load_options = LoadOptions.from_mapping(options)
        if trace_dir:
            check_trace_dir(trace_dir)
        listener = _listen(host, port)  # before the models load: a taken port fails at once
        with listener:
            from .runner import run

            run(lambda: Engine(options=load_options, progress=True), listener, queue_size, trace_dir)


def _listen(host: str, port: int) -> socket.socket:
    if not 0 <= port < 65536:
        raise UsageError("--port", f"must be in 0..65535, got {port}")
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family)
    except OSError as e:
        raise EdgeTreeError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
