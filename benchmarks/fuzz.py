"""Fuzzing campaign: every harness of tests/fuzz/ under atheris for a while, from its seeds
and the inputs kept in tests/fuzz/corpus/; prints the executions per harness and the
crashes found (each crashing input is kept under the work folder: add it to
tests/fuzz/corpus/<harness>/ once fixed). The suite runs each harness 20 s
(tests/test_fuzz.py); this is the longer run.

    .venv/bin/python benchmarks/fuzz.py --seconds 300 [--harness part10,hl7]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fuzz import campaign  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--seconds", type=int, default=300, help="per harness")
    ap.add_argument("--harness", default=",".join(campaign.HARNESS_NAMES),
                    help="comma-separated, of " + ", ".join(campaign.HARNESS_NAMES))
    ap.add_argument("--workdir", type=Path, default=None,
                    help="corpus and crashes (default: a new temporary folder)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="vna-fuzz-"))
    rows = []
    print(f"{'harness':<14} {'seconds':>8} {'executions':>12} {'exec/s':>9}  crashes")
    for name in args.harness.split(","):
        r = campaign.run(name, args.seconds, workdir)
        rate = r.executions / r.seconds if r.seconds else 0.0
        crashes = ", ".join(str(c) for c in r.crashes) or "none"
        print(f"{name:<14} {r.seconds:>8.0f} {r.executions:>12,} {rate:>9,.0f}  {crashes}",
              flush=True)
        rows.append({"harness": name, "seconds": r.seconds, "executions": r.executions,
                     "crashes": [str(c) for c in r.crashes]})
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 1 if any(r["crashes"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
