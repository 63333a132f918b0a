"""benchmarks/hl7.py, at a small size, as part of the suite: the script runs end to end on
both indexes, every message is acknowledged AA and logged in the index (the script checks
both and fails otherwise), and it reports a rate for every kind and connection count. The
figures themselves are the full run's (benchmarks/README.md), never asserted here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, vna_env

pytestmark = pytest.mark.timeout(300)


def test_hl7_benchmark_runs_and_checks_its_answers(tmp_path: Path, pg_server: str) -> None:
    out = tmp_path / "hl7.json"
    p = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "hl7.py"), "--count", "60", "--runs", "1",
         "--workdir", str(tmp_path / "work"), "--json", str(out)],
        env=vna_env({}), capture_output=True, text=True, timeout=280)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    figures = json.loads(out.read_text())["figures"]
    assert set(figures) == {"sqlite", "postgres"}
    for kinds in figures.values():
        assert set(kinds) == {"adt", "orm"}
        for rates in kinds.values():
            assert set(rates) == {"1", "4"} and all(r > 0 for r in rates.values())
    assert "messages/s" in p.stdout
