"""VNA_CORS_ORIGINS: a browser viewer served from another origin (an OHIF elsewhere) may
call /dicomweb with its bearer token; other origins get no CORS headers, and without the
setting nobody does."""

from __future__ import annotations

import httpx

from tests.api_client import ADMIN_TOKEN, start_api, stop_api
from tests.conftest import Backend

VIEWER = "https://viewer.region.example"


def _preflight(url: str, origin: str) -> httpx.Response:
    return httpx.options(f"{url}/dicomweb/studies", headers={
        "Origin": origin, "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization, accept"})


def test_allowed_origin_gets_preflight_and_answers(embedded: Backend) -> None:
    api = start_api(embedded, VNA_CORS_ORIGINS=f"{VIEWER}/, https://other.example")
    try:
        r = _preflight(api.url, VIEWER)
        assert r.status_code == 200, r.text
        assert r.headers["access-control-allow-origin"] == VIEWER
        allowed = r.headers["access-control-allow-headers"].lower()
        assert "authorization" in allowed and "accept" in allowed
        assert "GET" in r.headers["access-control-allow-methods"]
        r = httpx.get(f"{api.url}/dicomweb/studies", headers={
            "Origin": VIEWER, "Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == VIEWER
        assert "warning" in r.headers["access-control-expose-headers"].lower()
        r = _preflight(api.url, "https://evil.example")
        assert "access-control-allow-origin" not in r.headers
    finally:
        stop_api(api)


def test_no_cors_without_the_setting(embedded: Backend) -> None:
    api = start_api(embedded)
    try:
        r = httpx.get(f"{api.url}/dicomweb/studies", headers={
            "Origin": VIEWER, "Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert r.status_code == 200
        assert "access-control-allow-origin" not in r.headers
        assert "access-control-allow-origin" not in _preflight(api.url, VIEWER).headers
    finally:
        stop_api(api)
