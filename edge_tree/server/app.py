"""The HTTP face: OpenAI's routes on FastAPI, each request a job for the one engine's worker.

A request is checked (wire.parse) and queued; its answer starts once the engine has produced
its first event, so an error found when the generation begins (a prompt longer than the
context) is still a plain 4xx, also for a streaming request. While a request waits, its client
is watched: one that leaves cancels its job, and a stream whose client leaves is cancelled by
Starlette, which stops the generation at the next round.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from ..core.chat import ChatTemplate, Prompt
from ..core.engine import GenerationResult
from ..errors import EdgeTreeError
from . import metrics, wire
from .guard import Guard
from .worker import Closed, Job, QueueFull, Unavailable, Worker

WATCH_S = 0.25  # how often a waiting request checks that its client is still there
RETRY_AFTER_S = 1


@dataclass
class Event:
    kind: str  # text | done
    value: object  # str for text, GenerationResult for done


class ClientGone(Exception):
    """The client closed its connection before its answer began."""


def create_app(worker: Worker, model_id: str, api_key: str | None, max_body: int, loopback_only: bool,
               cors_origins: tuple[str, ...], limits: wire.Limits) -> FastAPI:
    app = FastAPI(title="edge-tree", version="1", openapi_url=None)
    app.add_middleware(Guard, api_key=api_key, max_body=max_body, loopback_only=loopback_only)
    if cors_origins:  # outside the guard: a browser's preflight carries no key
        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    engine = worker.engine
    template = _template_or_error(engine.target_model)

    @app.exception_handler(wire.ApiError)
    async def api_error(request: Request, error: wire.ApiError):
        return JSONResponse(error.body(), error.status, headers=error.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException):  # unknown route, wrong method
        return await api_error(request, wire.ApiError(error.status_code, str(error.detail),
                                                      kind="invalid_request_error"))

    @app.exception_handler(Exception)
    async def crash(request: Request, error: Exception):
        return await api_error(request, wire.error_from(error, chat=False))

    @app.get("/health")
    async def health():
        counters = worker.counters
        state = {"status": "ok", "model": model_id, "running": len(worker.running),
                 "waiting": worker.waiting, "queue_size": worker.queue_size, "served": counters.served,
                 "cancelled": counters.cancelled, "rejected": counters.rejected,
                 "slots": worker.slot_states()}
        if worker.lost:  # answered, but unhealthy: a load balancer takes this server out
            return JSONResponse(state | {"status": "unavailable", "running": 0, "error": str(worker.lost)}, 503)
        if worker.stalled:  # until the host answers again
            return JSONResponse(state | {"status": "degraded", "error": str(worker.stalled)}, 503)
        return state

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.render(worker), media_type=metrics.CONTENT_TYPE)

    @app.get("/v1/models")
    async def models():
        draft = engine.draft_path and Path(engine.draft_path).stem  # names: paths stay on this machine
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": 0,
                                            "owned_by": "edge-tree", "draft": draft,
                                            "context_length": limits.n_ctx}]}

    # parsing a body of megabytes and rendering a template run on threads: the event loop goes
    # on answering /health, the queue's other clients and streams meanwhile
    @app.post("/v1/completions")
    async def completions(request: Request):
        call = await asyncio.to_thread(wire.parse, await request.body(), False, model_id, limits)
        return await answer(request, call, call.prompt)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        call = await asyncio.to_thread(wire.parse, await request.body(), True, model_id, limits)
        if isinstance(template, EdgeTreeError):
            raise wire.error_from(template, chat=True)
        try:
            prompt = await asyncio.to_thread(template.render, call.messages)
        except EdgeTreeError as e:
            raise wire.error_from(e, chat=True) from None
        return await answer(request, call, prompt)

    async def answer(request: Request, call: wire.Call, prompt: Prompt) -> Response:
        job = Job(prompt, call.options, call.id, asyncio.get_running_loop())
        try:
            worker.submit(job)
        except QueueFull:
            raise wire.ApiError(429, f"the server is busy: {worker.queue_size} requests are waiting; "
                                     "retry shortly", kind="rate_limit_error", code="queue_full",
                                headers={"Retry-After": str(RETRY_AFTER_S)}) from None
        except Closed:
            raise _closing() from None
        except Unavailable as e:
            raise wire.unavailable(e.args[0]) from None
        watcher = asyncio.create_task(watch_client(request, job, worker))
        try:
            event = await next_event(job, call)
            if call.stream:  # from here on Starlette watches the client, and cancels the stream
                return StreamingResponse(stream(job, call, event), media_type="text/event-stream",
                                         headers={"Cache-Control": "no-cache"})
            while event.kind == "text":  # the reply carries the whole text
                event = await next_event(job, call)
        except ClientGone:
            return Response(status_code=499)  # nobody reads it
        finally:
            watcher.cancel()
        return JSONResponse(wire.reply(call, event.value))

    return app


async def watch_client(request: Request, job: Job, worker: Worker) -> None:
    """Cancel the job when its client leaves before its answer begins (queued, or not streaming):
    a waiting job leaves the queue at once, a running one stops at its next round."""
    while not await request.is_disconnected():
        await asyncio.sleep(WATCH_S)
    job.cancelled.set()
    worker.withdraw(job)


async def next_event(job: Job, call: wire.Call) -> Event:
    """The job's next text or its end. An error event raises ApiError; a job dropped because
    its client left raises ClientGone."""
    kind, value = await job.events.get()
    if kind == "closed":
        raise _closing()
    if kind == "dropped":
        raise ClientGone
    if kind == "unavailable":
        raise wire.unavailable(value)
    if kind == "error":
        raise wire.error_from(value, call.chat)
    return Event(kind, value)


async def stream(job: Job, call: wire.Call, first: Event):
    """The server-sent events of a streaming answer, ending with `data: [DONE]`. If the client
    leaves, Starlette cancels this generator and `finally` stops the job within a round."""
    try:
        if call.chat:
            yield wire.sse(wire.chunk(call, role=True))
        event = first
        while event.kind == "text":
            yield wire.sse(wire.chunk(call, text=event.value))
            event = await next_event(job, call)
        result: GenerationResult = event.value
        yield wire.sse(wire.chunk(call, result=result))
        if call.include_usage:
            yield wire.sse(wire.usage_chunk(call, result))
    except wire.ApiError as error:  # the answer has begun: the error goes in the stream
        yield wire.sse(error.body())
    finally:
        job.cancelled.set()  # a no-op once the job is done
    yield wire.sse("[DONE]")


def _template_or_error(model) -> ChatTemplate | EdgeTreeError:
    """The target's chat template, or the error every chat request gets (completions still work)."""
    try:
        return ChatTemplate.of(model)
    except EdgeTreeError as e:
        return e


def _closing() -> wire.ApiError:
    return wire.ApiError(503, "the server is shutting down", kind="server_error", code="shutting_down")
