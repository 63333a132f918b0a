"""The audit trail at the HTTP edge: one record per request that touched patient data.

A pure ASGI middleware (it does not buffer streamed bodies). The record is written before
the last byte of the response goes out, so a client that has its answer can already find
the access in the trail; a client that hangs up mid-download is recorded as aborted (499).
It also writes the access log line, with the route template instead of the URL, so patient
IDs in paths and query strings never reach the logs, and counts the request in /metrics.
"""

from __future__ import annotations

import logging
import time

import anyio
import anyio.to_thread
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.xds_api.metrics import Metrics
from services.xds_api.security import AuditContext
from storage.errors import FailureLog
from storage.index.tokens import AuditRecord, AuditTrail

log = logging.getLogger("vna.http")


class AuditMiddleware:
    def __init__(self, app: ASGIApp, trail: AuditTrail, metrics: Metrics,
                 failures: FailureLog) -> None:
        self.app = app
        self.trail = trail
        self.metrics = metrics
        self.failures = failures

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})
        started = time.perf_counter()
        status = 0
        recorded = False

        async def record(final_status: int) -> None:
            nonlocal recorded
            if recorded:
                return
            recorded = True
            ctx: AuditContext | None = scope["state"].get("audit")
            p = ctx.principal if ctx else None
            route = ctx.route if ctx else _route(scope)
            log.info("%s %s %s token=%s", scope["method"], route, final_status,
                     p.token_id if p else "-")
            self.metrics.observe(scope["method"], route, final_status,
                                 time.perf_counter() - started)
            if ctx is None:
                return  # no patient data behind this route (/health, /openapi.json, 404s)
            client = scope.get("client")
            rec = AuditRecord(ctx.action.value, scope["method"], ctx.route, final_status,
                              p, ctx.patient_id, ctx.resource,
                              client[0] if client else None)
            try:
                await anyio.to_thread.run_sync(self.trail.record, rec)
            except Exception as exc:
                self.failures.failed(f"the audit record of {scope['method']} {ctx.route}",
                                     exc)

        async def audited_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                await record(status)
            await send(message)

        try:
            await self.app(scope, receive, audited_send)
        finally:
            if not recorded:  # an exception, or the client went away mid-response
                with anyio.CancelScope(shield=True):
                    await record(499 if status else 500)


def _route(scope: Scope) -> str:
    route = scope.get("route")
    return getattr(route, "path", None) or "(unrouted)"
