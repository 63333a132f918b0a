"""Routes for operations: `/health` (no token: liveness and index reachability) and
`/metrics` (Prometheus, admin token)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import JSONResponse, Response

import vna
from services.xds_api.deps import IndexDep, MetricsDep
from services.xds_api.schemas import Health
from services.xds_api.security import authorize
from vna.access import Action, Principal

router = APIRouter(tags=["operations"])


@router.get("/health", response_model=Health,
            responses={503: {"description": "the index database does not answer"}})
def health(index: IndexDep) -> Health | JSONResponse:
    """Liveness and index reachability; the only endpoint without a token."""
    if not index.ping():
        return JSONResponse({"status": "error", "index": "unreachable"}, status_code=503)
    return Health(version=vna.__version__, index=index.dialect)


@router.get("/metrics", response_class=Response)
def metrics(metrics: MetricsDep,
            _: Annotated[Principal, authorize(Action.METRICS_READ)]) -> Response:
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
