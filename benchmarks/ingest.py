"""C-STORE ingest throughput of vna next to Orthanc and DCMTK's storescp, with storescu as sender.

Every (corpus, associations, target) measurement starts the target fresh on empty storage,
sends the whole corpus with 1 or N parallel DCMTK storescu processes, checks that the target
holds every instance, and stops it. Targets are interleaved (A B C D, A B C D, ...) because short
runs on a shared machine drift; the table reports medians and ratios.

    .venv/bin/python benchmarks/ingest.py --help
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from corpus import DEFAULT_WORKDIR, Corpus, generate, warm  # noqa: E402
from servers import (  # noqa: E402
    ORTHANC_BIN,
    REPO,
    TARGETS,
    BenchError,
    CpuMeter,
    cleanup_on_exit,
    dcmtk,
    first_line,
    make_target,
    make_tempdir,
    remove_tempdir,
    storescu,
    sync_disk,
)


@dataclass
class Cell:
    """All runs of one target on one corpus with one association count."""

    corpus: str
    associations: int
    target: str
    files: int
    nbytes: int
    seconds: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    cpu: list[dict[str, float]] = field(default_factory=list)  # CPU seconds by component

    @property
    def rates(self) -> list[float]:
        return [self.files / s for s in self.seconds]

    def median_rate(self) -> float | None:
        return statistics.median(self.rates) if self.seconds else None

    def median_mbps(self) -> float | None:
        if not self.seconds:
            return None
        return self.nbytes / 1e6 / statistics.median(self.seconds)


def measure(corpus: Corpus, target_name: str, associations: int, workdir: Path,
            timeout: float) -> tuple[float, float, dict[str, float]]:
    """One run: fresh target, send everything, check the count; (send, startup) seconds and
    the CPU seconds each component spent during the send."""
    target = make_target(target_name, workdir)
    t0 = time.perf_counter()
    with target:
        startup = time.perf_counter() - t0
        tmp = make_tempdir(workdir, "send-")
        try:
            sync_disk()
            meter = CpuMeter()
            elapsed = storescu(corpus.files, target.endpoints, associations, tmp=tmp,
                               timeout=timeout)
            cpu = meter.stop()
        finally:
            remove_tempdir(tmp)
        held = target.count()
        if held is not None and held != len(corpus.files):
            raise BenchError(f"{target_name} holds {held} instances after {len(corpus.files)} "
                             f"were acknowledged")
    sync_disk()  # what the target left dirty is flushed before the next one starts
    return elapsed, startup, cpu


def _fmt(v: float | None, digits: int = 1) -> str:
    return "failed" if v is None else f"{v:,.{digits}f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "" if a is None or b is None or b == 0 else f"{a / b:.2f}"


def report(cells: dict[tuple[str, int, str], Cell], targets: list[str]) -> str:
    """A Markdown table: one row per corpus x associations x target, ratios on the vna rows."""
    lines = ["| corpus | assoc | target | inst/s (median) | MB/s (median) | runs inst/s "
             "| x orthanc | x orthanc-pg | x storescp |",
             "|---|---:|---|---:|---:|---|---:|---:|---:|"]
    keys = sorted({(c, a) for c, a, _ in cells}, key=lambda k: (k[0], k[1]))
    for corpus_name, assoc in keys:
        by_target = {t: cells[(corpus_name, assoc, t)] for t in targets
                     if (corpus_name, assoc, t) in cells}
        orthanc = by_target.get("orthanc")
        orthanc_pg = by_target.get("orthanc-pg")
        scp = by_target.get("storescp")
        for t, cell in by_target.items():
            rate = cell.median_rate()
            runs = " / ".join(f"{r:.0f}" for r in cell.rates)
            if cell.errors:
                runs += f" ({len(cell.errors)} failed)"
            vs_o = _ratio(rate, orthanc.median_rate()) if orthanc and t.startswith("vna") else ""
            vs_s = _ratio(rate, scp.median_rate()) if scp and t.startswith("vna") else ""
            vs_pg = _ratio(rate, orthanc_pg.median_rate()) \
                if orthanc_pg and t.startswith("vna") else ""
            lines.append(f"| {corpus_name} | {assoc} | {t} | {_fmt(rate)} | "
                         f"{_fmt(cell.median_mbps())} | {runs} | {vs_o} | {vs_pg} | {vs_s} |")
    return "\n".join(lines)


def where_the_time_goes(cells: dict[tuple[str, int, str], Cell]) -> str:
    """Per instance: the wall time, and the CPU time of each component (median of the runs).
    Two cores give 2 x wall of CPU; what the components leave of it is idle or waiting."""
    comps = sorted({k for c in cells.values() for run in c.cpu for k in run})
    lines = ["| corpus | assoc | target | wall ms | " + " | ".join(f"{k} ms" for k in comps)
             + " | CPU used of 2 cores |", "|---|---:|---|---:|" + "---:|" * len(comps)
             + "---:|"]
    for (corpus_name, assoc, t), cell in sorted(cells.items()):
        if not cell.cpu:
            continue
        wall = statistics.median(cell.seconds) / cell.files * 1000
        per = {k: statistics.median(run.get(k, 0.0) for run in cell.cpu) / cell.files * 1000
               for k in comps}
        used = sum(per.values()) / (2 * wall)
        lines.append(f"| {corpus_name} | {assoc} | {t} | {wall:.2f} | "
                     + " | ".join(f"{per[k]:.2f}" for k in comps) + f" | {used:.0%} |")
    return "\n".join(lines)


def environment() -> dict[str, str]:
    """What the figures depend on, printed with them."""
    return {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "host": f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs",
        "python": platform.python_version(),
        "vna": first_line(["git", "-C", str(REPO), "describe", "--always", "--dirty"]),
        "dcmtk": first_line([dcmtk("storescu"), "--version"]),
        "orthanc": first_line([ORTHANC_BIN, "--version"]),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="C-STORE ingest: vna vs Orthanc vs DCMTK storescp, storescu as sender.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--targets", default=",".join(TARGETS),
                    help=f"comma-separated, of {', '.join(TARGETS)}")
    ap.add_argument("--corpus", default="ct,tiny", help="comma-separated, of ct, tiny")
    ap.add_argument("--ct-count", type=int, default=2000, help="512x512x16 bit CT slices")
    ap.add_argument("--tiny-count", type=int, default=5000, help="64x64x16 bit images")
    ap.add_argument("--associations", default="1,4",
                    help="comma-separated counts of parallel storescu associations")
    ap.add_argument("--runs", type=int, default=3, help="runs per target (median reported)")
    ap.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR,
                    help="corpus and temporary storage (env VNA_BENCH_DIR); not in the repo")
    ap.add_argument("--timeout", type=float, default=0.0,
                    help="max seconds per send; 0 = 120 + 0.25 s per file")
    ap.add_argument("--json", type=Path, help="also write the raw results here")
    args = ap.parse_args(argv)

    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(targets) - set(TARGETS)
    if unknown:
        ap.error(f"unknown targets: {', '.join(sorted(unknown))}")
    kinds = [k.strip() for k in args.corpus.split(",") if k.strip()]
    if set(kinds) - {"ct", "tiny"}:
        ap.error("--corpus takes ct and/or tiny")
    assocs = [int(a) for a in args.associations.split(",") if a.strip()]
    workdir = args.workdir.resolve()
    if workdir.is_relative_to(REPO):
        ap.error(f"--workdir must be outside the repository ({REPO})")

    with cleanup_on_exit():
        env = environment()
        for k, v in env.items():
            print(f"# {k}: {v}")
        corpora = [generate(k, args.ct_count if k == "ct" else args.tiny_count, workdir)
                   for k in kinds]
        for c in corpora:
            warm(c)
        cells: dict[tuple[str, int, str], Cell] = {}
        for run in range(1, args.runs + 1):
            for corpus in corpora:
                timeout = args.timeout or 120 + 0.25 * len(corpus.files)
                for assoc in assocs:
                    for t in targets:
                        cell = cells.setdefault(
                            (corpus.name, assoc, t),
                            Cell(corpus.name, assoc, t, len(corpus.files), corpus.nbytes))
                        label = f"run {run}/{args.runs} {corpus.name} x{assoc} {t}"
                        try:
                            s, startup, cpu = measure(corpus, t, assoc, workdir, timeout)
                        except BenchError as exc:
                            cell.errors.append(str(exc))
                            print(f"{label}: FAILED: {exc}", file=sys.stderr, flush=True)
                            continue
                        cell.seconds.append(s)
                        cell.cpu.append(cpu)
                        print(f"{label}: {len(corpus.files) / s:8.1f} inst/s "
                              f"{corpus.nbytes / 1e6 / s:7.1f} MB/s ({s:.1f} s; "
                              f"started in {startup:.1f} s)",
                              file=sys.stderr, flush=True)
        print()
        print(f"C-STORE ingest, DCMTK storescu as sender, median of {args.runs} run(s); "
              "x orthanc / x storescp = vna inst/s divided by the peer's")
        print()
        print(report(cells, targets))
        print()
        print("Where the time goes: per instance, wall time and CPU time by component "
              "(medians)")
        print()
        print(where_the_time_goes(cells))
        if args.json:
            args.json.write_text(json.dumps(
                {"environment": env, "cells": [asdict(c) for c in cells.values()]}, indent=2))
        return 1 if any(c.errors for c in cells.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
