"""Request body limits as a pure ASGI middleware: 413 before reading when Content-Length is over the
limit, and 413 as soon as a streamed (chunked) body passes it. The body is buffered (at most the limit)
and replayed to the app, so the app never sees a partial body."""
from __future__ import annotations

import json
from typing import Callable


class BodyLimit:
    """`limit_for(path) -> bytes` picks the limit per route (ingest takes files; the rest takes small JSON)."""

    def __init__(self, app, limit_for: Callable[[str], int]):
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limit_for(scope["path"])
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                return await self._reply(send, 400, "Content-Length is not a number")
            if int(declared) > limit:
                return await self._reply(send, 413, f"request body over the limit of {limit} bytes")
        chunks, seen = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body = message.get("body", b"")
            seen += len(body)
            if seen > limit:
                return await self._reply(send, 413, f"request body over the limit of {limit} bytes")
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    @staticmethod
    async def _reply(send, status: int, detail: str) -> None:
        body = json.dumps({"detail": detail}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
