"""benchmarks/http_abuse.py, at small sizes, as part of the suite: the script runs end to end
against `vna api` (a normal client uploading and downloading documents, alone and beside
slow-loris connections and a flood of bad tokens), every download is checked by hash, the
slow connections are dropped by the server and the flood gets 429 once its address is over
the limit. The figures (the ratio, target >= 0.8) are the full run's (benchmarks/README.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, vna_env

pytestmark = pytest.mark.timeout(300)


def test_http_abuse_benchmark_runs_and_checks_its_answers(tmp_path: Path) -> None:
    out = tmp_path / "abuse.json"
    p = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "http_abuse.py"), "--quick",
         "--workdir", str(tmp_path / "work"), "--json", str(out)],
        env=vna_env({}), capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    figures = json.loads(out.read_text())
    assert figures["errors"] == []
    assert all(r > 0 for r in figures["alone"] + figures["abused"])
    assert figures["ratio"] > 0
    (abuse,) = figures["abuse"]
    assert abuse["slow_dropped"] > 0  # closed by VNA_HTTP_HEADER_TIMEOUT_SECONDS (2 s here)
    assert abuse["flood_status"].get("429", 0) > 0
    assert set(abuse["flood_status"]) <= {"401", "429"}
    assert "ratio" in p.stdout
