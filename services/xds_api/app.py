"""The HTTP service: FastAPI app factory. Documents, tokens and audit mount here; DICOMweb
and statistics will."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

import vna
from services.runtime import open_runtime
from services.xds_api import admin, dashboard, documents, metrics, stats
from services.xds_api.audit import AuditMiddleware
from services.xds_api.security import ensure_admin_token
from storage.errors import FailureLog, is_storage_full
from storage.index.documents import Documents
from storage.index.tokens import AuditTrail, Tokens
from storage.objectstore import ObjectNotFound
from vna.settings import Settings, get_settings

log = logging.getLogger("vna.http")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    runtime = open_runtime(settings)
    index = runtime.index
    app = FastAPI(title="vna", version=vna.__version__,
                  description="Enterprise imaging archive: DICOM and XDS-style documents. "
                              "Every endpoint but /health needs `Authorization: Bearer`.")
    app.state.settings = settings
    app.state.index = index
    app.state.store = runtime.store
    app.state.documents = Documents(index)
    app.state.tokens = Tokens(index)
    app.state.audit = AuditTrail(index)
    app.state.tokens.install_bootstrap(ensure_admin_token(settings)[0])
    app.include_router(documents.router)
    app.include_router(admin.router)
    app.include_router(stats.router)
    app.include_router(metrics.router)
    app.include_router(dashboard.router)
    app.state.metrics = metrics.Metrics(index, settings.scp_metrics_dir)
    failures = FailureLog(log)
    app.add_middleware(AuditMiddleware, trail=app.state.audit, metrics=app.state.metrics,
                       failures=failures)

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

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # One readable sentence, like every other error of this API, not a list of dicts.
        detail = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                           for e in exc.errors())
        return JSONResponse({"detail": detail}, status_code=422)

    @app.get("/health", tags=["operations"])
    def health() -> Any:
        """Liveness and index reachability; the only endpoint without a token."""
        try:
            with index.read_session() as s:
                s.execute(text("SELECT 1"))
        except Exception:
            return JSONResponse({"status": "error", "index": "unreachable"}, status_code=503)
        return {"status": "ok", "version": vna.__version__, "index": index.dialect}

    return app
