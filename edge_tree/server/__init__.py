"""`edge-tree serve`: an OpenAI-compatible local server (completions and chat) on tree decoding.

Layout: `wire.py` (the OpenAI request and answer shapes, errors), `worker.py` (the one engine,
its bounded FIFO and its thread), `app.py` (the routes, on FastAPI), `serve.py` (uvicorn until
SIGINT or SIGTERM), and this command, which checks the options, binds the port and loads the
models. FastAPI and uvicorn load only when the server starts.
"""

from __future__ import annotations

import click

from ..core.engine import Engine
from ..core.options import LoadOptions, click_options
from ..errors import UsageError, user_errors
from .listener import is_loopback, listen

DEFAULT_MAX_BODY = 8 * 2**20  # bytes: far above any context's worth of text, far below harm
MAX_SLOTS = 32  # each slot needs 8 of a context's 256 sequences at least
DEFAULT_CACHE_RAM = 8192  # MiB, as llama-server's --cache-ram

SERVE_EXAMPLES = """
\b
Examples:
  edge-tree serve                                   # the demo pair on http://127.0.0.1:8080/v1
  edge-tree serve -m qwen2.5-7b-instruct-q4_k_m.gguf -md qwen2.5-0.5b-instruct-q4_k_m.gguf -ngl 99 -ngld 99
  curl http://127.0.0.1:8080/v1/completions -H 'Content-Type: application/json' \
       -d '{"prompt": "The capital of France is", "max_tokens": 16}'
  EDGE_TREE_API_KEY=KEY edge-tree serve --host 0.0.0.0   # beyond loopback: clients send the key
"""


@click.command(epilog=SERVE_EXAMPLES)
@click_options(LoadOptions)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=8080, show_default=True, help="Port to listen on (0: any free one).")
@click.option("--trace-dir", type=click.Path(file_okay=False),
              help="Write each request's steps to DIR/<request id>/trace.jsonl (and report.html).")
@click.option("-np", "--parallel", type=int, default=1, show_default=True,
              help="Slots: requests generated side by side, every round's trees verified in one "
                   "target pass. --ctx-size is shared: each slot gets an equal part.")
@click.option("--queue", "queue_size", type=int, default=8, show_default=True,
              help="Requests that may wait while every slot is busy; more are answered 429 (0: "
                   "none wait, a request is served only when a slot is free).")
@click.option("-n", "--n-predict", type=int, default=-1, show_default=True,
              help="max_tokens of a request that names none (-1: up to the slot's context).")
@click.option("--timeout", type=float, default=600.0, show_default=True,
              help="Seconds a generation may run at most (0: no limit); a request's max_time may "
                   "only lower it. Past it the reply ends with finish_reason 'length'.")
@click.option("--rpc-timeout", type=float, default=30.0, show_default=True,
              help="With --rpc/--rpc-draft: seconds a round's pass over the hosts may take; past it "
                   "its requests fail (502) and others get 503 until the hosts answer (0: no limit).")
@click.option("--api-key", envvar="EDGE_TREE_API_KEY", show_envvar=True,
              help="Require 'Authorization: Bearer KEY' on every route but /health (401 otherwise).")
@click.option("--max-body", type=int, default=DEFAULT_MAX_BODY, show_default=True,
              help="Largest request body in bytes; a larger one is answered 413 before it is read.")
@click.option("-cram", "--cache-ram", type=int, default=DEFAULT_CACHE_RAM, show_default=True,
              help="MiB of host memory for prompts whose cells a slot gave up for a new request: a "
                   "later request that starts the same way takes them back instead of reading its "
                   "start again (llama-server's option; -1: no limit, 0: none kept). Off with --rpc: "
                   "saving would read the cells back from the hosts, beyond --rpc-timeout's watch.")
@click.option("--cors-origin", "cors_origins", multiple=True, metavar="ORIGIN",
              help="Let web pages from ORIGIN (e.g. http://localhost:3000) call the server from a "
                   "browser; repeat for more. None by default.")
def serve(host, port, trace_dir, parallel, queue_size, n_predict, timeout, rpc_timeout, api_key, max_body,
          cache_ram, cors_origins, **options):
    """Serve the target (with its draft) over OpenAI's API: /v1/completions, /v1/chat/completions,
    /v1/models, /health and /metrics, streaming or not, --parallel generations at a time.

    With no --target, edge-tree serves its demo pair (Gemma 3 270M: F32 target, Q4_K_M draft).
    """
    from ..viz.jsonl import check_trace_dir

    with user_errors():
        if not 1 <= parallel <= MAX_SLOTS:
            raise UsageError("--parallel", f"must be in 1..{MAX_SLOTS}, got {parallel}")
        if queue_size < 0:
            raise UsageError("--queue", f"must be at least 0, got {queue_size}")
        if n_predict < -1 or n_predict == 0:
            raise UsageError("--n-predict", f"must be -1 or at least 1, got {n_predict}")
        if timeout < 0:
            raise UsageError("--timeout", f"must be at least 0, got {timeout}")
        if rpc_timeout < 0:
            raise UsageError("--rpc-timeout", f"must be at least 0, got {rpc_timeout}")
        if cache_ram < -1:
            raise UsageError("--cache-ram", f"must be -1 (no limit), 0 (none) or more MiB, got {cache_ram}")
        if max_body < 1:
            raise UsageError("--max-body", f"must be at least 1, got {max_body}")
        if api_key is not None and not api_key.strip():
            raise UsageError("--api-key", "must not be empty")
        load_options = LoadOptions.from_mapping(options)
        if trace_dir:
            check_trace_dir(trace_dir)
        listener = listen(host, port)  # before the models load: a taken port fails at once
        loopback = is_loopback(listener)
        if not api_key and not loopback:
            click.echo(f"edge-tree: warning: listening on {host} without --api-key: anyone who can "
                       "reach this address can use the server", err=True)
        with listener:
            from .serve import Settings, run

            settings = Settings(queue_size, trace_dir, api_key, max_body, loopback, cors_origins,
                                n_predict if n_predict > 0 else None, timeout or None,
                                rpc_timeout or None,
                                tuple(dict.fromkeys(load_options.rpc_hosts + load_options.rpc_draft_hosts)),
                                0 if load_options.rpc_hosts else cache_ram)
            run(lambda: Engine(options=load_options, progress=True, lanes=parallel), listener, settings)
