"""The soak benchmark, for a minute, as part of the suite: the production shape (two SCP
nodes, API, worker; PostgreSQL, SeaweedFS, Redis) under 8 DCMTK senders, a C-FIND loop and
document uploads and downloads; nothing acknowledged may be lost and no request fail.
The ten-minute run is `benchmarks/soak.py` (figures in benchmarks/RESULTS.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, vna_env


def test_a_minute_of_soak_loses_nothing(tmp_path: Path, pg_server: str,
                                        dcmtk_env: dict[str, str]) -> None:
    out = tmp_path / "soak.json"
    p = subprocess.run([sys.executable, str(REPO / "benchmarks" / "soak.py"),
                        "--duration", "60", "--sample-seconds", "5", "--drain-timeout", "0",
                        "--workdir", str(tmp_path / "work"), "--json", str(out)],
                       env=vna_env({}), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    result = json.loads(out.read_text())
    ops = result["operations"]
    assert result["verified"]["lost"] == 0
    assert ops["c_store"]["ok"] > 500 and ops["c_store"]["failed"] == 0
    for name in ("c_find", "upload", "download"):
        assert ops[name]["ok"] > 10 and ops[name]["failed"] == 0, (name, ops[name])
    assert result["verified"]["instances"] == ops["c_store"]["ok"]
