"""benchmarks/tls.py and benchmarks/abuse.py at small sizes, as part of the suite: each
script runs end to end (vna and DCMTK storescp over plain TCP and mutual TLS; vna alone
and under 500 idle connections, idle associations and a slow sender) and checks that every
target holds every instance. The figures are the full runs' (benchmarks/README.md);
nothing here is timed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, vna_env

pytestmark = pytest.mark.timeout(600)


def test_tls_benchmark_runs(tmp_path: Path, dcmtk_env: dict[str, str]) -> None:
    out = tmp_path / "tls.json"
    p = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "tls.py"), "--count", "100", "--rounds",
         "1", "--workdir", str(tmp_path / "work"), "--json", str(out)],
        env=vna_env({}), capture_output=True, text=True, timeout=500)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    figures = json.loads(out.read_text())
    assert set(figures["median"]) == {"vna", "vna-tls", "storescp", "storescp-tls"}
    assert all(rate > 0 for rate in figures["median"].values())


def test_abuse_benchmark_runs(tmp_path: Path, dcmtk_env: dict[str, str]) -> None:
    out = tmp_path / "abuse.json"
    p = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "abuse.py"), "--count", "100", "--rounds",
         "1", "--workdir", str(tmp_path / "work"), "--json", str(out)],
        env=vna_env({}), capture_output=True, text=True, timeout=500)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    figures = json.loads(out.read_text())
    seen = figures["abusive_client"]
    assert seen["idle_connections"] == 500 and seen["rejected"] > 0
    assert all(rate > 0 for rate in figures["median"].values())
