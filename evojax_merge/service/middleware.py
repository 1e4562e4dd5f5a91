"""Pure ASGI layers in front of the routes: access log, API-key check, body-size limit.

They run before FastAPI reads the body, so a request without a valid key gets 401 whatever its
body holds, and an oversized body is refused before it is parsed.
"""

from __future__ import annotations

import json
import logging
import re
import time

from evojax_merge.service.auth import KeyRing, key_from_headers

access_log = logging.getLogger("evojax_merge.service.access")
_SESSION_IN_PATH = re.compile(r"^/v1/sessions/([^/]+)")


async def send_json(send, status: int, payload: dict, headers: tuple = ()) -> None:
    """Send a whole JSON response from an ASGI layer."""
    body = json.dumps(payload).encode()
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    *headers],
    })
    await send({"type": "http.response.body", "body": body})


def _headers(scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


class AccessLogMiddleware:
    """One log line per request: method, path, status, latency, session id. Never the body."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = {"code": 500}

        async def capture(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            path = scope.get("path", "")
            m = _SESSION_IN_PATH.match(path)
            sid = m[1] if m else scope.get("state", {}).get("session_id", "-")  # a create sets it
            access_log.info("%s %s %d %.1fms session=%s", scope.get("method"), path, status["code"],
                            1000 * (time.perf_counter() - start), sid)


class AuthMiddleware:
    """401 unless the request carries a configured key; the owner id goes to ``request.state``."""

    def __init__(self, app, keys: KeyRing, public_paths: frozenset[str] = frozenset({"/v1/health"})):
        self.app = app
        self.keys = keys
        self.public_paths = public_paths

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("path") in self.public_paths:
            return await self.app(scope, receive, send)
        owner = self.keys.check(key_from_headers(_headers(scope)))
        if owner is None:
            return await send_json(send, 401, {"detail": "missing or invalid API key"},
                                   ((b"www-authenticate", b"Bearer"),))
        scope.setdefault("state", {})["owner"] = owner
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """413 for a body over ``max_bytes``; the body is read (bounded) and replayed to the app."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_big = {"detail": f"request body over the limit of {self.max_bytes} bytes"}
        declared = _headers(scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await send_json(send, 413, too_big)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return await send_json(send, 413, too_big)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the disconnect, as the server would

        await self.app(scope, replay, send)
