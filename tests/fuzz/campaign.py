"""One bounded atheris run of a harness in a subprocess: how many inputs it ran and the
crashing inputs it wrote (for `tests/test_fuzz.py` and `benchmarks/fuzz.py`)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CORPUS = Path(__file__).parent / "corpus"
HARNESS_NAMES = ("part10", "pdu", "storage_loop", "multipart", "hl7", "stow")


@dataclass
class Campaign:
    harness: str
    executions: int
    seconds: float
    crashes: list[Path] = field(default_factory=list)
    output: str = ""


def run(harness: str, seconds: int, workdir: Path, *, timeout_per_input: int = 10,
        rss_limit_mb: int = 2048) -> Campaign:
    """Fuzz `harness` for `seconds` from its seeds and kept inputs; crashing inputs are
    written to `workdir/crashes/` (libFuzzer stops at the first)."""
    from tests.fuzz.run import seeds

    corpus = workdir / "corpus" / harness
    crashes = workdir / "crashes" / harness
    for d in (corpus, crashes):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    for i, seed in enumerate(seeds(harness)):
        (corpus / f"seed-{i}").write_bytes(seed)
    kept = CORPUS / harness
    if kept.is_dir():
        for f in kept.iterdir():
            shutil.copy(f, corpus / f.name)
    cmd = [sys.executable, "-m", "tests.fuzz.run", harness, f"-max_total_time={seconds}",
           f"-timeout={timeout_per_input}", f"-rss_limit_mb={rss_limit_mb}",
           "-print_final_stats=1", f"-artifact_prefix={crashes}/", str(corpus)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=seconds + 120)
    out = proc.stdout + proc.stderr
    executions = int(m.group(1)) if (m := re.search(
        r"stat::number_of_executed_units:\s*(\d+)", out)) else 0
    secs = float(m.group(1)) if (m := re.search(
        r"Done \d+ runs in (\d+) second", out)) else float(seconds)
    return Campaign(harness, executions, secs, sorted(crashes.iterdir()), out)
