"""benchmarks/worklist.py, at a small size, as part of the suite: the script loads the items,
writes them for wlmscpfs, runs both SCPs and both clients, and checks that every query got
as many matches from vna as from wlmscpfs. The full run (10,000 items) is the lead's
(benchmarks/README.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, vna_env

pytestmark = pytest.mark.timeout(600)


def test_worklist_benchmark_runs_and_checks_its_answers(
        tmp_path: Path, dcmtk_env: dict[str, str]) -> None:
    out = tmp_path / "worklist.json"
    p = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "worklist.py"), "--items", "400",
         "--stations", "4", "--queries", "8", "--repeat", "3", "--repeat-queries", "1",
         "--workdir", str(tmp_path / "work"), "--json", str(out)],
        env=vna_env({}), capture_output=True, text=True, timeout=500)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    result = json.loads(out.read_text())
    assert set(result["figures"]) == {f"{client}/{kind}" for kind in ("station-day", "patient")
                                      for client in ("kept", "findscu", "findscu-repeat")}
    for key, fig in result["figures"].items():
        assert fig["vna"]["n"] == fig["wlmscpfs"]["n"] == (1 if "repeat" in key else 4)
        assert fig["vna"]["median_ms"] > 0 and fig["wlmscpfs"]["median_ms"] > 0
    assert result["figures"]["kept/patient"]["matches"] == 1
    assert result["figures"]["kept/station-day"]["matches"] > 0  # 400 items, 4 stations
