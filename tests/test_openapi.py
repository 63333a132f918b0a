"""The HTTP API describes itself: /openapi.json is a valid OpenAPI document and every route
that answers JSON names the shape of its answer (a response model), so a client generated
from it knows what it gets."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.openapi.models import OpenAPI

from tests.conftest import Backend

# Routes whose success is not JSON: bytes, CSV/Parquet, Prometheus text, no content.
NOT_JSON = {("get", "/api/v1/documents/{uniqueId}/content"), ("get", "/api/v1/stats/export"),
            ("get", "/metrics"), ("delete", "/api/v1/tokens/{token_id}"),
            ("delete", "/api/v1/session")}


@pytest.fixture
def spec(embedded: Backend) -> Iterator[dict[str, Any]]:
    from starlette.testclient import TestClient

    from services.xds_api.app import create_app
    from storage.migrate import upgrade

    settings: Any = embedded.settings()
    settings.data_dir.mkdir(parents=True)
    upgrade(settings.resolved_database_url)
    with TestClient(create_app(settings)) as client:  # the lifespan closes the runtime
        yield client.get("/openapi.json").json()


def test_openapi_is_valid_and_json_routes_have_response_models(spec: dict[str, Any]) -> None:
    OpenAPI.model_validate(spec)
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            if (method, path) in NOT_JSON:
                continue
            ok = {code: r for code, r in op["responses"].items() if code.startswith("2")}
            assert ok, (method, path)
            for code, response in ok.items():
                content = response.get("content", {})
                if content and not {"application/json", "application/dicom+json"} & set(content):
                    continue  # documented as bytes: multipart/related, images, DICOM
                schema = (content.get("application/json")
                          or content.get("application/dicom+json") or {}).get("schema")
                assert schema, f"{method.upper()} {path} {code}: no response model"
