"""The HTTP service: FastAPI app factory. Documents, tokens, audit, statistics, DICOMweb,
the dashboard and operations (/health, /metrics) mount here."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError

import vna
from services.runtime import Runtime, open_runtime
from services.xds_api import (
    admin,
    dashboard,
    dicomweb,
    documents,
    hl7,
    operations,
    stats,
    viewer,
    worklist,
)
from services.xds_api.audit import AuditMiddleware
from services.xds_api.deps import ApiContext
from services.xds_api.limits import LimitsMiddleware
from services.xds_api.metrics import Metrics
from services.xds_api.security import ensure_admin_token
from storage.errors import FailureLog, is_storage_full
from storage.index.documents import Documents
from storage.index.stats import StatsReader
from storage.index.tokens import AuditTrail, Tokens
from storage.objectstore import ObjectNotFound
from vna.ratelimit import FailureWindow
from vna.settings import Settings

log = logging.getLogger("vna.http")


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> FastAPI:
    """The app on `runtime` (opened from `settings` if not given); its lifespan closes the
    runtime when the server stops."""
    runtime = runtime or open_runtime(settings)
    index = runtime.index

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            runtime.close()

    app = FastAPI(title="vna", version=vna.__version__, lifespan=lifespan,
                  description="Enterprise imaging archive: DICOM and XDS-style documents. "
                              "Every endpoint but /health needs `Authorization: Bearer`.")
    cfg = runtime.settings
    context = ApiContext(
        runtime=runtime, documents=Documents(index),
        tokens=Tokens(index, last_used_every=cfg.token_last_used_seconds),
        audit=AuditTrail(index), stats=StatsReader(index),
        metrics=Metrics(index, cfg.scp_metrics_dir),
        auth_failures=FailureWindow(cfg.http_auth_failures, cfg.http_auth_window_seconds))
    app.state.context = context
    _ = runtime.store  # opened now: an S3 server that is not there fails the start
    context.tokens.install_bootstrap(ensure_admin_token(runtime.settings)[0])
    app.include_router(documents.router)
    app.include_router(admin.router)
    app.include_router(stats.router)
    app.include_router(operations.router)
    app.include_router(dashboard.router)
    for router in dicomweb.ROUTERS:
        app.include_router(router)
    app.include_router(viewer.router)
    app.include_router(hl7.router)
    app.include_router(worklist.router)
    failures = FailureLog(log)
    app.add_middleware(AuditMiddleware, trail=context.audit, metrics=context.metrics,
                       failures=failures)
    app.add_middleware(LimitsMiddleware, metrics=context.metrics,
                       auth_failures=context.auth_failures,
                       max_uploads=cfg.http_max_uploads, max_json_bytes=cfg.http_max_json_bytes,
                       max_headers=cfg.http_max_headers,
                       max_header_bytes=cfg.http_max_header_bytes,
                       body_timeout=cfg.http_body_timeout_seconds)
    origins = runtime.settings.allowed_cors_origins
    if origins:  # outermost: a preflight is answered before anything asks for a token
        app.add_middleware(
            CORSMiddleware, allow_origins=origins, allow_credentials=True,
            allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "Accept", "Content-Type", "If-None-Match"],
            expose_headers=["ETag", "Warning", "Content-Location", "Content-Range"],
            max_age=600)

    @app.exception_handler(ObjectNotFound)
    async def _object_missing(_request: Request, exc: ObjectNotFound) -> JSONResponse:
        log.error("indexed object %s is missing from object storage", exc)
        return JSONResponse({"detail": "the document's bytes are missing from object "
                                       "storage; the archive's operators have been told"},
                            status_code=503)

    @app.exception_handler(DBAPIError)
    async def _index_unavailable(_request: Request, exc: DBAPIError) -> JSONResponse:
        # A database restart or a full disk: nothing was half written (one transaction);
        # the engine reconnects by itself, so the client may simply try again.
        failures.failed("an HTTP request", exc)
        if is_storage_full(exc):
            return JSONResponse({"detail": "the index database is full; nothing was "
                                           "stored"}, status_code=507)
        return JSONResponse({"detail": "the index database is unavailable; nothing was "
                                       "changed, try again"}, status_code=503,
                            headers={"Retry-After": "5"})

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        # A bug, not a failure under the archive: JSON like every other error (the
        # traceback is logged by the server); the property tests keep this from happening.
        log.error("unhandled %s on %s %s", type(exc).__name__, request.method,
                  getattr(request.scope.get("route"), "path", "(unrouted)"))
        return JSONResponse({"detail": "an internal error of the archive; its operators "
                                       "have been told"},
                            status_code=500)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # One readable sentence, like every other error of this API, not a list of dicts.
        detail = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                           for e in exc.errors())
        return JSONResponse({"detail": detail}, status_code=422)

    return app
