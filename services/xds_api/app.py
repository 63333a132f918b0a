"""The HTTP service: FastAPI app factory. Documents, DICOMweb and stats mount here."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from sqlalchemy import text

import vna
from storage.index.db import Index
from vna.settings import Settings, get_settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    index = Index(settings.resolved_database_url, fsync=settings.fsync)
    app = FastAPI(title="vna", version=vna.__version__,
                  description="Enterprise imaging archive: DICOM and XDS-style documents")

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
