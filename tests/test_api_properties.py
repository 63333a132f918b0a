"""Property-based API tests: schemathesis against `/openapi.json` of a running `vna api`,
every operation with every role's token and none (benchmarks/api_properties.py, bounded
here to about a minute; the long run is the script's default). No 5xx, every error JSON
`{"detail"}` with the status the role calls for, nothing changed by a refused request.

Below it, one regression test for each failure the property run found."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api_client import RunningAPI, start_api, stop_api
from tests.conftest import REPO, Backend, vna_env

pytestmark = pytest.mark.timeout(400)


def test_every_route_with_every_role(tmp_path: Path) -> None:
    out = tmp_path / "properties.json"
    p = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "api_properties.py"), "--max-examples",
         "8", "--seconds", "60", "--workdir", str(tmp_path / "work"), "--json", str(out)],
        env=vna_env({}), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-6000:] + p.stderr[-3000:]
    tally = json.loads(out.read_text())
    assert tally["failures"] == []
    statuses = {int(k) for k in tally["by_status"]}
    # Every role was exercised and refused somewhere: 401 (none), 403 (a role's limits).
    assert {200, 401, 403} <= statuses, statuses
    assert tally["requests"] > 500


# -- regressions found by the property run ----------------------------------------------------

@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAPI]:
    data_dir = tmp_path_factory.mktemp("props") / "vna-data"
    backend = Backend("file-sqlite", {"VNA_DATA_DIR": str(data_dir),
                                      "VNA_LOG_LEVEL": "WARNING", "VNA_HL7_PORT": "0"},
                      data_dir)
    running = start_api(backend)
    try:
        yield running
    finally:
        stop_api(running)


@pytest.mark.parametrize("path", [
    "/api/v1/worklist/66495837201817272320",  # was a 500: an integer overflow in SQLite
    "/api/v1/worklist/0",
])
def test_a_row_id_out_of_range_is_a_422(api: RunningAPI, path: str) -> None:
    for method in ("GET", "DELETE"):
        r = api.client().request(method, path)
        assert r.status_code == 422, r.text
        assert "item_id" in r.json()["detail"]


@pytest.mark.parametrize("path", ["/api/v1/documents", "/api/v1/worklist",
                                  "/api/v1/hl7/messages", "/api/v1/audit",
                                  "/dicomweb/studies"])
def test_a_huge_offset_is_not_a_server_error(api: RunningAPI, path: str) -> None:
    r = api.client().get(path, params={"offset": str(2**70), "patientId": "191212121212"})
    assert r.status_code in (400, 422), r.text  # QIDO's own parser says 400
    assert "offset" in r.json()["detail"]
