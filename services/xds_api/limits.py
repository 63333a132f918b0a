"""Limits of one `vna api` process against a client that would take it down.

A pure ASGI middleware, in front of the audit middleware (a refused request costs no index
write): a token from an address with too many failed authentications (429 with
Retry-After; the failures are counted where tokens are checked, `security.authorize`), too
many header fields or header bytes (431), a JSON or form body over VNA_HTTP_MAX_JSON_BYTES
(413, read no further), more concurrent uploads (documents and STOW-RS) than
VNA_HTTP_MAX_UPLOADS (503 with Retry-After, before a byte of the body is read), an upload
body that stalls for VNA_HTTP_BODY_TIMEOUT_SECONDS (408, nothing of the part in progress
stored). Upload bodies have their own size limit (VNA_MAX_UPLOAD_BYTES, in the
receivers). A head arriving in pieces and slow heads are uvicorn's side
(`services/xds_api/serve.py`). Each refusal is counted in /metrics
(`vna_http_limited_total{limit}`).
"""

from __future__ import annotations

import json
import math
import time

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.xds_api.metrics import Metrics
from services.xds_api.security import SESSION_COOKIE
from vna.ratelimit import FailureWindow

UPLOAD_RETRY_AFTER = 2  # seconds: uploads are long, but a slot frees as soon as one ends


def _credentials(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether the request carries a token (a bearer header or the viewer's cookie)."""
    for name, value in headers:
        if name == b"authorization" or (name == b"cookie" and SESSION_COOKIE.encode() in value):
            return True
    return False


def is_upload(method: str, path: str) -> bool:
    """The routes that stream a body to storage: their bodies are not JSON-limited but
    count against the concurrent upload slots."""
    if method != "POST":
        return False
    return (path == "/api/v1/documents"
            or (path.startswith("/api/v1/documents/") and path.endswith("/replace"))
            or path == "/dicomweb/studies" or path.startswith("/dicomweb/studies/"))


class LimitsMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics, auth_failures: FailureWindow,
                 max_uploads: int, max_json_bytes: int, max_headers: int,
                 max_header_bytes: int, body_timeout: float) -> None:
        self.app = app
        self.metrics = metrics
        self.auth_failures = auth_failures
        self.max_uploads = max_uploads
        self.max_json_bytes = max_json_bytes
        self.max_headers = max_headers
        self.max_header_bytes = max_header_bytes
        self.body_timeout = body_timeout
        self.uploads = 0  # on the event loop only: no lock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = scope["headers"]
        if len(headers) > self.max_headers:
            await self._refuse(send, "headers", 431,
                               f"more than {self.max_headers} request header fields")
            return
        if sum(len(k) + len(v) for k, v in headers) > self.max_header_bytes:
            # h11 bounds a head that arrives in pieces; one that came whole is counted here
            await self._refuse(send, "headers", 431,
                               f"the request headers are over {self.max_header_bytes} bytes")
            return
        if _credentials(headers):
            client = scope.get("client")
            address = client[0] if client else "-"
            wait = self.auth_failures.retry_after(address, time.monotonic())
            if wait > 0:
                # Before routing, the token lookup and the audit trail: a flood of bad
                # tokens from a refused address costs next to nothing.
                await self._refuse(
                    send, "auth", 429, f"too many failed authentications from {address}; "
                    f"try again in {math.ceil(wait)} s", {"retry-after": str(math.ceil(wait))})
                return
        method, path = scope["method"], scope["path"]
        if is_upload(method, path):
            if self.uploads >= self.max_uploads:
                await self._refuse(send, "uploads", 503,
                                   f"{self.max_uploads} uploads are in progress on this "
                                   "server; try again shortly",
                                   {"retry-after": str(UPLOAD_RETRY_AFTER)})
                return
            self.uploads += 1
            try:
                await self._upload(scope, receive, send)
            finally:
                self.uploads -= 1
            return
        if method in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        body = await self._small_body(scope, receive)
        if body is None:
            await self._refuse(send, "json_body", 413,
                               f"the request body is over {self.max_json_bytes} bytes")
            return
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # http.disconnect, when the client goes

        await self.app(scope, replay, send)

    async def _upload(self, scope: Scope, receive: Receive, send: Send) -> None:
        """An upload whose body stalls for `body_timeout` seconds is ended as if the client
        had gone (the receivers then store nothing of the part in progress) and answered
        408: a slow body cannot hold an upload slot for ever."""
        stalled = body_done = False

        async def guarded_receive() -> Message:
            nonlocal stalled, body_done
            if body_done:  # the body is in: waiting for a disconnect is no stall
                return await receive()
            with anyio.move_on_after(self.body_timeout):
                message = await receive()
                body_done = message["type"] != "http.request" or \
                    not message.get("more_body", False)
                return message
            stalled = True
            return {"type": "http.disconnect"}

        async def guarded_send(message: Message) -> None:
            if not stalled:
                await send(message)
            elif message["type"] == "http.response.start":  # the app's answer: ours instead
                await self._refuse(send, "body_timeout", 408,
                                   f"no bytes of the request body for {self.body_timeout:g} s;"
                                   " nothing of the part in progress was stored")

        await self.app(scope, guarded_receive, guarded_send)

    async def _small_body(self, scope: Scope, receive: Receive) -> bytes | None:
        """The whole body, or None once it is over the limit (by Content-Length or as
        read); the rest is not read."""
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    if int(value) > self.max_json_bytes:
                        return None
                except ValueError:
                    pass  # h11 refuses a malformed Content-Length before we see it
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_json_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    async def _refuse(self, send: Send, limit: str, status: int, detail: str,
                      headers: dict[str, str] | None = None) -> None:
        self.metrics.limited.labels(limit).inc()
        body = json.dumps({"detail": detail}).encode()
        raw = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]
        raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
        if status in (408, 413, 431):  # the rest of the request is not read: do not reuse
            raw.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})
