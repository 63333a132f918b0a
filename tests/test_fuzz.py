"""Hostile input: every fuzz harness runs a bounded time under atheris (no crash: no
exception but the parser's documented refusals, no receive file left, no hang), and every
input that once crashed one (tests/fuzz/corpus/) is replayed."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fuzz import campaign
from tests.fuzz.harnesses import HARNESSES

SECONDS = 8  # each; six harnesses: under a minute (benchmarks/fuzz.py runs longer)


@pytest.mark.parametrize("harness", campaign.HARNESS_NAMES)
def test_fuzz_harness(harness: str, tmp_path: Path) -> None:
    result = campaign.run(harness, SECONDS, tmp_path)
    crash = result.crashes[0].read_bytes() if result.crashes else None
    assert not result.crashes, f"{harness} crashed on {crash!r}:\n{result.output[-3000:]}"
    assert result.executions > 0, result.output[-3000:]


KEPT = sorted(p for p in campaign.CORPUS.glob("*/*") if p.is_file())


@pytest.mark.parametrize("kept", KEPT, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_kept_input_is_refused_cleanly(kept: Path) -> None:
    HARNESSES[kept.parent.name](kept.read_bytes())


def test_every_harness_is_run() -> None:
    assert set(HARNESSES) == set(campaign.HARNESS_NAMES)
