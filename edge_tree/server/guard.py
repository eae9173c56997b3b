"""What every request passes before a route sees it: the Host it names, the API key, the body's
type and its size.

An ASGI middleware around the app, so that a request refused here costs no JSON parsing and no
read of a body larger than the limit: the key is checked from the headers, the size from
Content-Length where the client sends one and, where it streams the body in chunks, as the
chunks arrive (the route stops reading at the limit). A server bound to loopback answers only
requests that name a loopback Host: a web page whose name an attacker points at 127.0.0.1 (DNS
rebinding) names its own. Refusals are OpenAI-shaped errors (401, 403, 413, 415), like every other.
"""

from __future__ import annotations

import hmac

from starlette.responses import JSONResponse

from . import wire

OPEN_PATHS = ("/health",)  # answered without the key: a load balancer's probe
BODY_METHODS = ("POST", "PUT", "PATCH")
LOOPBACK_NAMES = (b"localhost", b"127.0.0.1", b"::1")


class Guard:
    def __init__(self, app, api_key: str | None, max_body: int, loopback_only: bool):
        self.app = app
        self.key = f"Bearer {api_key}".encode() if api_key else None
        self.max_body = max_body
        self.loopback_only = loopback_only

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        refusal = self._refusal(scope)
        if refusal:
            return await _reply(refusal, scope, receive, send)
        if scope["method"] not in BODY_METHODS:
            return await self.app(scope, receive, send)
        seen = 0

        async def counting_receive():
            # raised inside the route's read of the body: the app answers ApiError as it
            # answers every other
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_body:
                raise self._too_large()
            return message

        await self.app(scope, counting_receive, send)

    def _refusal(self, scope) -> wire.ApiError | None:
        headers = dict(scope["headers"])
        if self.loopback_only and _host_name(headers.get(b"host", b"")) not in LOOPBACK_NAMES:
            return wire.ApiError(403, "this server answers requests to localhost only (the Host header "
                                      "names another)", kind="invalid_request_error", code="invalid_host")
        if self.key and scope["path"] not in OPEN_PATHS:
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, self.key):
                return wire.ApiError(401, "a valid API key is required: send it as "
                                          "'Authorization: Bearer KEY'",
                                     kind="invalid_request_error", code="invalid_api_key")
        if scope["method"] in BODY_METHODS:
            kind = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
            if kind != b"application/json":
                return wire.ApiError(415, "the body must be JSON, sent with 'Content-Type: application/json'",
                                     kind="invalid_request_error", code="unsupported_media_type")
            length = headers.get(b"content-length", b"")
            if length.isdigit() and int(length) > self.max_body:
                return self._too_large()
        return None

    def _too_large(self) -> wire.ApiError:
        return wire.ApiError(413, f"the body is larger than this server takes ({self.max_body} bytes)",
                             kind="invalid_request_error", code="request_too_large")


def _host_name(host: bytes) -> bytes:
    """b"localhost:8080" -> b"localhost", b"[::1]:8080" -> b"::1"."""
    host = host.strip().lower()
    if host.startswith(b"["):
        return host[1:host.find(b"]")]
    return host.rsplit(b":", 1)[0] if host.count(b":") == 1 else host


async def _reply(error: wire.ApiError, scope, receive, send) -> None:
    response = JSONResponse(error.body(), error.status, headers=error.headers)
    await response(scope, receive, send)
