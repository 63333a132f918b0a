"""What the C-STORE audit records cost the ingest path, in process: `Archive.store_file`
for batches of instances with and without an association's audit (`storage.audit`),
alternating, on a fresh SQLite index and file store. CPU and wall time per instance,
medians. `--per-study 1` is the worst case (every instance a new study: one audit row
each); a CT or MR study has hundreds. `benchmarks/ingest.py` gives the same comparison
end to end (storescu to `vna scp`) when the machine is quiet enough to resolve it.

    .venv/bin/python benchmarks/audit_cost.py --per-study 50
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pydicom.uid import generate_uid  # noqa: E402

from services.dicom_scp.audit import base_record  # noqa: E402
from services.runtime import open_archive  # noqa: E402
from storage.audit import AssociationAudit  # noqa: E402
from storage.index.tokens import AuditTrail  # noqa: E402
from storage.migrate import upgrade  # noqa: E402
from tests.factory import make_instance, write  # noqa: E402
from vna.settings import Settings  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--per-study", type=int, default=50, help="instances per study")
    ap.add_argument("--batch", type=int, default=400, help="instances per measurement")
    ap.add_argument("--rounds", type=int, default=6, help="of each, alternating")
    ap.add_argument("--fsync", action="store_true", help="VNA_FSYNC=true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vna-audit-cost-"))
    try:
        settings = Settings(data_dir=work / "data", fsync=args.fsync)
        settings.data_dir.mkdir(parents=True)
        upgrade(settings.resolved_database_url)
        archive = open_archive(settings)
        trail = AuditTrail(archive.index)
        src = work / "src"
        src.mkdir()
        figures: dict[str, list[tuple[float, float]]] = {"without": [], "with": []}
        for rnd in range(args.rounds * 2):
            mode = ("without", "with")[rnd % 2]
            files = []
            for i in range(args.batch):
                if i % args.per_study == 0:
                    study, series = generate_uid(), generate_uid()
                files.append(write(make_instance(study_uid=study, series_uid=series,
                                                 instance_number=i),
                                   src / f"{generate_uid()}.dcm"))
            audit = AssociationAudit(trail, base_record("BENCH", "127.0.0.1", None)) \
                if mode == "with" else None
            t0, c0 = time.perf_counter(), time.process_time()
            for f in files:
                assert archive.store_file(f, source_aet="BENCH", move=True, audit=audit).ok
            if audit is not None:
                audit.close()
            figures[mode].append(((time.process_time() - c0) / len(files) * 1e3,
                                  (time.perf_counter() - t0) / len(files) * 1e3))
        cpu = {m: statistics.median(x[0] for x in v) for m, v in figures.items()}
        wall = {m: statistics.median(x[1] for x in v) for m, v in figures.items()}
        print(f"{args.per_study} instance(s) a study, fsync {'on' if args.fsync else 'off'}, "
              f"{args.rounds} x {args.batch} instances each")
        print("| audit | CPU ms/instance | wall ms/instance |")
        print("|---|---:|---:|")
        for m in ("without", "with"):
            print(f"| {m} | {cpu[m]:.3f} | {wall[m]:.3f} |")
        print(f"| ratio | {cpu['with'] / cpu['without']:.3f} | "
              f"{wall['with'] / wall['without']:.3f} |")
        archive.index.dispose()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
