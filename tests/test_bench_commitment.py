"""benchmarks/commitment.py, at a small size, as part of the suite: the script stores a
study through `vna scp`, asks for its commitment and checks every N-EVENT-REPORT itself
(Event Type 1, every instance committed, the right Transaction UID). The figures are the
full run's (benchmarks/README.md); nothing here is timed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, vna_env

pytestmark = pytest.mark.timeout(600)


def test_commitment_benchmark_runs_and_checks_its_reports(
        tmp_path: Path, dcmtk_env: dict[str, str]) -> None:
    out = tmp_path / "commitment.json"
    p = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "commitment.py"), "--count", "100",
         "--runs", "2", "--workdir", str(tmp_path / "work"), "--json", str(out)],
        env=vna_env({}), capture_output=True, text=True, timeout=500)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    figures = json.loads(out.read_text())
    assert figures["count"] == 100 and len(figures["delays"]) == 2
    assert all(d > 0 for d in figures["delays"])
