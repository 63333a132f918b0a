"""benchmarks/leadtimes.py at a small size, as part of the suite: it generates its orders,
starts `vna api` on each database, checks the year's exam counts and prints its table.
The full run (100,000 orders) is the lead's (benchmarks/README.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, vna_env

pytestmark = pytest.mark.timeout(300)


def test_leadtimes_benchmark_runs_and_checks_its_answers(tmp_path: Path) -> None:
    out = tmp_path / "leadtimes.json"
    p = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "leadtimes.py"), "--orders", "1500",
         "--runs", "1", "--databases", "postgres,sqlite", "--workdir", str(tmp_path / "work"),
         "--json", str(out)],
        env=vna_env({}), capture_output=True, text=True, timeout=280)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    results = json.loads(out.read_text())["results"]
    for db in ("postgres", "sqlite"):
        timings = results[db]["timings"]
        assert len(timings) == 6 and not any(t["error"] for t in timings), timings
        assert any("exams" in c for c in results[db]["checks"])
    assert "leadtimes over the year < 1000 ms" in p.stdout
