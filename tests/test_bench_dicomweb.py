"""benchmarks/dicomweb.py, at small sizes, as part of the suite: the script runs end to end
against `vna api` and Orthanc with its DICOMweb plugin, every answer is checked by the
script itself (datasets per /metadata, studies per QIDO, parts and bytes per retrieve,
frame sizes, STOW references, instance counts), and a vna route that is not there yet is
"n/a (not implemented)", never an error. The full run is the lead's (benchmarks/README.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from tests.conftest import REPO, vna_env

pytestmark = pytest.mark.timeout(600)

ORTHANC = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
NOT_IMPLEMENTED = "n/a (not implemented)"


def test_dicomweb_benchmark_runs_and_checks_its_answers(
        tmp_path: Path, dcmtk_env: dict[str, str]) -> None:
    targets = ["vna", "orthanc"]
    if not (ORTHANC.exists() and DICOMWEB_PLUGIN.exists()):
        warnings.warn("Orthanc with its DICOMweb plugin is not installed (Debian orthanc, "
                      "orthanc-dicomweb): the benchmark runs on vna alone", stacklevel=1)
        targets = ["vna"]
    out = tmp_path / "dicomweb.json"
    p = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "dicomweb.py"), "--quick",
         "--targets", ",".join(targets), "--qido-count", "1000", "--qido-queries", "20",
         "--metadata-count", "40", "--metadata-requests", "3", "--frames-count", "20",
         "--stow-count", "40", "--big-gb", "0.02", "--workdir", str(tmp_path / "work"),
         "--json", str(out)],
        env=vna_env({}), capture_output=True, text=True, timeout=500)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    figures = json.loads(out.read_text())["figures"]
    assert set(figures) == {"metadata", "qido", "retrieve", "frames", "stow1", "stow4",
                            "big_stow", "big_retrieve"}
    for key, fig in figures.items():
        assert set(fig["cells"]) == set(targets), key
        for target, cell in fig["cells"].items():
            if target == "vna" and cell["note"] == NOT_IMPLEMENTED and key != "qido":
                continue  # WADO-RS and STOW-RS are being built
            assert cell["value"] is not None and not cell["note"], (key, target, cell)
            assert cell["value"] >= 0
    assert figures["qido"]["cells"]["vna"]["value"] > 0
    if "orthanc" in targets:
        assert figures["qido"]["ratio"] is not None
