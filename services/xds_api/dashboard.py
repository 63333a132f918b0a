"""`/dashboard`: one HTML page with charts of the stats API, for people who would rather
look than read. Chart.js is served from here (no CDN: hospital networks often have no way
out). The page holds no data and needs no token to load; it asks the stats API with the
admin token the user enters (or passes in the URL fragment, which browsers never send)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from starlette.responses import FileResponse

STATIC = Path(__file__).parent / "static"
router = APIRouter(tags=["statistics"], include_in_schema=False)
_HEADERS = {"Content-Security-Policy": "default-src 'self'; script-src 'self' 'unsafe-inline'; "
                                       "style-src 'unsafe-inline'; connect-src 'self'",
            "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}


@router.get("/dashboard")
def dashboard() -> FileResponse:
    return FileResponse(STATIC / "dashboard.html", media_type="text/html", headers=_HEADERS)


@router.get("/dashboard/chart.umd.min.js")
def chart_js() -> FileResponse:
    return FileResponse(STATIC / "chart.umd.min.js", media_type="text/javascript",
                        headers={"Cache-Control": "max-age=86400"})
