"""The hot routes (assign, assign batch, events) served straight from ASGI.

FastAPI's per-request machinery (route matching over every route, dependency solving,
stdlib JSON parsing then validation in Python mode, response encoding) costs more than
assigning does. For the POST routes front-ends call on every page view, `FastLane`
answers before FastAPI: body read with the size limit (413), API key and scope (401/403),
`model_validate_json` straight from the bytes (422 naming the field, same shape as
FastAPI's), the route's handler, orjson out. The handlers, models and error mapping are
the same objects the FastAPI routes declare, so `/openapi.json` still documents them.

Being the outermost layer, it also answers what nothing inside handled: a database outage
as 503 + Retry-After, anything else as a JSON 500. Starlette's last-resort handler would
send a plain-text 500 and re-raise, and uvicorn then closes the keep-alive connection.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from abplatform.api.deps import Services, authorize, bearer_key
from abplatform.api.errors import problem_response, server_error, validation_problem

log = logging.getLogger(__name__)

_NOT_AN_OBJECT = {
    "type": "model_attributes_type",
    "loc": (),
    "msg": "Input should be a valid dictionary or object to extract fields from",
}


@dataclass(frozen=True)
class HotRoute:
    """A POST route served by the lane: its scope, body model and handler."""

    scope: str
    body: type[BaseModel]
    handle: Callable[[Services, Any], Awaitable[Any]]


class _TooLarge(Exception):
    pass


def _is_json(content_type: bytes | None) -> bool:
    """As FastAPI decides: no content type, or application/json or any `+json` type."""
    if content_type is None:
        return True
    main = content_type.split(b";", 1)[0].strip().lower()
    if main == b"application/json":
        return True
    return main.startswith(b"application/") and main.endswith(b"+json")


class FastLane:
    """ASGI middleware answering `routes` (by exact path, POST) itself; the rest goes on."""

    def __init__(self, app: ASGIApp, routes: dict[str, HotRoute], max_bytes: int) -> None:
        self.app = app
        self.routes = routes
        self.max_bytes = max_bytes
        self.too_large = orjson.dumps({"detail": f"request body larger than {max_bytes} bytes"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Every answered request is counted and timed by route (`/metrics`).
        started = time.perf_counter()
        status = 500

        async def counting_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self._answer(scope, receive, counting_send)
        finally:
            services = getattr(scope["app"].state, "services", None)
            if services is not None:
                hot = scope["path"] in self.routes and scope["method"] == "POST"
                found = scope.get("route")
                template = scope["path"] if hot else getattr(found, "path", "unmatched")
                services.metrics.observe(
                    scope["method"], template, status, time.perf_counter() - started
                )

    async def _answer(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.routes.get(scope["path"])
        if route is None or scope["method"] != "POST":
            await self._guarded(scope, receive, send)
            return
        length = content_type = authorization = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = value
            elif name == b"content-type":
                content_type = value
            elif name == b"authorization":
                authorization = value
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await _send(send, 413, self.too_large)
            return
        try:
            body = await self._body(receive)
        except _TooLarge:
            await _send(send, 413, self.too_large)
            return
        services: Services = scope["app"].state.services
        try:
            key = bearer_key(authorization.decode("latin-1") if authorization else None)
            client = scope.get("client")
            await authorize(services, key, route.scope, client[0] if client else "")
            if not _is_json(content_type):  # FastAPI keeps such a body as bytes: not an object
                await validation_problem([_NOT_AN_OBJECT], ("body",))(scope, receive, send)
                return
            request = route.body.model_validate_json(body)
            payload = await route.handle(services, request)
        except ValidationError as exc:
            await validation_problem(exc.errors(), ("body",))(scope, receive, send)
            return
        except Exception as exc:
            await (problem_response(exc) or server_error(exc))(scope, receive, send)
            return
        await _send(send, 200, orjson.dumps(payload))

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The rest of the app; an error escaping it still gets a JSON answer."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if started:  # too late for another answer: uvicorn closes the connection
                raise
            await (problem_response(exc) or server_error(exc))(scope, receive, send)

    async def _body(self, receive: Receive) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                raise _TooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _send(send: Send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode("ascii")),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
