"""Bulk import speed: `vna import` of a folder of tiny instances into a fresh data dir.

`vna import` is how a legacy archive is migrated: the same ingest path as C-STORE, batched.
Each run imports twice, each time into a data dir of its own (embedded: files + SQLite,
VNA_FSYNC=true): a fresh, empty one, and one whose index `vna db upgrade` created before the
clock starts (an archive already in use). Three rates are reported: over the wall time of
the whole command as timed here (process start, schema creation where there is none yet,
import, exit) in each case, and over the import loop's own elapsed time, parsed from its
output.

    .venv/bin/python benchmarks/import_bench.py --help
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from corpus import DEFAULT_WORKDIR, generate, warm  # noqa: E402
from servers import (  # noqa: E402
    REPO,
    VNA,
    BenchError,
    VnaTarget,
    cleanup_on_exit,
    sync_disk,
    vna_env,
)

# "2000 files, 18.9 MB in 4.2 s (476 files/s)", as printed by `vna import`; the rate has more
# significant digits than the rounded seconds.
ELAPSED = re.compile(r"(\d+) files, [\d.]+ MB in ([\d.]+) s \((\d+) files/s\)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="`vna import` speed of a folder of tiny (64x64) instances, VNA_FSYNC=true.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--count", type=int, default=2000, help="files in the folder")
    ap.add_argument("--runs", type=int, default=3, help="runs (median reported)")
    ap.add_argument("--fsync", choices=("true", "false"), default="true", help="VNA_FSYNC")
    ap.add_argument("--s3", action="store_true",
                    help="import into the production shape (SeaweedFS S3 + PostgreSQL)")
    ap.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR,
                    help="corpus and temporary data dirs (env VNA_BENCH_DIR)")
    ap.add_argument("--timeout", type=float, default=0.0,
                    help="max seconds per import; 0 = 120 + 0.25 s per file")
    args = ap.parse_args(argv)
    workdir = args.workdir.resolve()
    if workdir.is_relative_to(REPO):
        ap.error(f"--workdir must be outside the repository ({REPO})")

    with cleanup_on_exit():
        corpus = generate("tiny", args.count, workdir)
        warm(corpus)
        timeout = args.timeout or 120 + 0.25 * args.count
        wall: dict[str, list[float]] = {"fresh": [], "existing": []}
        loop: list[float] = []
        for run in range(1, args.runs + 1):
            for case in ("fresh", "existing"):
                target = VnaTarget(workdir, s3=args.s3, extra_env={"VNA_FSYNC": args.fsync})
                try:
                    env = vna_env(target.env())
                    assert target.tmp is not None
                    if case == "existing":
                        subprocess.run([*VNA, "db", "upgrade"], env=env,
                                       cwd=target.tmp, check=True, capture_output=True)
                    seconds, text = _import(corpus.root, env, target.tmp, timeout)
                    held = target.count()
                    if held is not None and held != args.count:
                        raise BenchError(f"the index holds {held} instances, "
                                         f"expected {args.count}")
                    wall[case].append(seconds)
                    msg = (f"run {run}/{args.runs} ({case} archive): "
                           f"{args.count / seconds:7.1f} inst/s wall ({seconds:.1f} s)")
                    m = ELAPSED.search(text)
                    if m and int(m.group(1)) == args.count and int(m.group(3)) > 0:
                        loop.append(args.count / int(m.group(3)))
                        msg += f", {args.count / loop[-1]:7.1f} inst/s in the import loop"
                    print(msg, file=sys.stderr, flush=True)
                finally:
                    target.stop()  # also removes its data dir
        shape = "SeaweedFS S3 + PostgreSQL" if args.s3 else "files + SQLite"
        print()
        print(f"vna import, {args.count} tiny files (64x64x16 bit, "
              f"{corpus.nbytes / 1e6:.1f} MB), {shape}, VNA_FSYNC={args.fsync}, "
              f"median of {args.runs} run(s)")
        print()
        print("| measure | inst/s (median) | MB/s (median) | runs inst/s |")
        print("|---|---:|---:|---|")
        for label, secs in (("wall time of `vna import`, fresh archive", wall["fresh"]),
                            ("wall time of `vna import`, existing archive",
                             wall["existing"]),
                            ("import loop (as printed)", loop)):
            if secs:
                med = statistics.median(secs)
                runs = " / ".join(f"{args.count / s:.0f}" for s in secs)
                print(f"| {label} | {args.count / med:.1f} | {corpus.nbytes / 1e6 / med:.1f} "
                      f"| {runs} |")
        return 0


def _import(folder: Path, env: dict[str, str], cwd: Path,
            timeout: float) -> tuple[float, str]:
    """Seconds `vna import folder` took, and its output."""
    log = cwd / "import.log"
    sync_disk()
    t0 = time.perf_counter()
    with open(log, "wb") as out:
        r = subprocess.run([*VNA, "import", str(folder)], env=env, stdout=out,
                           stderr=subprocess.STDOUT, cwd=cwd, timeout=timeout)
    seconds = time.perf_counter() - t0
    text = log.read_text(errors="replace")
    if r.returncode != 0:
        raise BenchError(f"vna import exited with {r.returncode}:\n{text[-2000:]}")
    return seconds, text


if __name__ == "__main__":
    sys.exit(main())
