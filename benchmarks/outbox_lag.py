"""Outbox lag under ingest load: how far the workers fall behind while modalities send.

Starts `vna scp` and `vna worker --beat` (embedded: files + SQLite + the filesystem broker,
or with --s3: SeaweedFS + PostgreSQL + Redis) on one data dir, sends a corpus with DCMTK
storescu over several associations, and samples the outbox every 0.25 s: events waiting
and the age of the oldest. Reports the peak age during ingest and how long the workers
needed after the last instance to catch up. Target: lag < 10 s.

    .venv/bin/python benchmarks/outbox_lag.py --corpus tiny --count 2000 --associations 4
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from corpus import DEFAULT_WORKDIR, generate  # noqa: E402
from servers import (  # noqa: E402
    VNA,
    VnaTarget,
    cleanup_on_exit,
    start_process,
    stop_process,
    storescu,
    vna_env,
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", choices=["tiny", "ct"], default="tiny")
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--associations", type=int, default=4)
    ap.add_argument("--s3", action="store_true", help="SeaweedFS + PostgreSQL + Redis")
    ap.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    args = ap.parse_args(argv)

    from sqlalchemy import create_engine  # noqa: F401 - fail early without the venv

    from storage.index.db import Index
    from storage.outbox import lag
    from vna.settings import Settings

    corpus = generate(args.corpus, args.count, args.workdir)
    with cleanup_on_exit():
        target = VnaTarget(args.workdir, s3=args.s3)
        endpoint = target.start()
        env = target.env()
        if args.s3:
            env["VNA_BROKER_URL"] = "redis://127.0.0.1:6379/14"
        env["VNA_OUTBOX_POLL_SECONDS"] = "1"
        assert target.data_dir is not None
        log = target.data_dir.parent / "worker.log"
        worker = start_process([*VNA, "worker", "--beat"], env=vna_env(env),
                               log=log, cwd=target.data_dir.parent, group=True)
        settings = Settings(**{k[4:].lower(): v for k, v in env.items()
                               if k.startswith("VNA_")})
        index = Index(settings.resolved_database_url)
        samples: list[tuple[float, int, float]] = []
        stop = threading.Event()

        def sample() -> None:
            t0 = time.monotonic()
            while not stop.is_set():
                try:
                    pending, age = lag(index)
                    samples.append((time.monotonic() - t0, pending, age))
                except Exception as exc:  # the schema may not exist in the first second
                    print(f"  (sampling: {type(exc).__name__})", file=sys.stderr)
                time.sleep(0.25)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        tmp = target.data_dir.parent
        t0 = time.monotonic()
        wall = storescu(corpus.files, endpoint, args.associations, tmp=tmp, timeout=1800)
        sent_at = time.monotonic() - t0
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if samples and samples[-1][1] == 0 and samples[-1][0] > sent_at:
                break
            time.sleep(0.25)
        caught_up = samples[-1][0] - sent_at if samples and samples[-1][1] == 0 else None
        stop.set()
        sampler.join()
        during = [s for s in samples if s[0] <= sent_at]
        peak_age = max((s[2] for s in samples), default=0.0)
        peak_pending = max((s[1] for s in samples), default=0)
        stop_process(worker)
        index.dispose()
        target.stop()
    rate = len(corpus.files) / wall
    print(f"\n{len(corpus.files)} {args.corpus} instances over {args.associations} "
          f"association(s) in {wall:.1f} s ({rate:.0f} inst/s), "
          f"{'S3+PostgreSQL+Redis' if args.s3 else 'files+SQLite+filesystem broker'}")
    print(f"outbox lag during ingest: peak {peak_age:.1f} s, median "
          f"{statistics.median([s[2] for s in during]) if during else 0:.1f} s; "
          f"peak waiting {peak_pending} events")
    print(f"caught up {caught_up:.1f} s after the last instance" if caught_up is not None
          else "did not catch up within 300 s")
    ok = peak_age < 10
    print(f"- outbox lag < 10 s: {peak_age:.1f} s: {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
