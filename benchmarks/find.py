"""C-FIND latency at scale: STUDY level by PatientID on a large index, vna vs Orthanc.

The index (default 100,000 instances: 10,000 patients x 1 study x 2 series x 5 instances) is
loaded once per corpus and kept under the work dir, because loading is the slow part: vna by
`vna import` (its bulk path through the C-STORE ingest code) or by storescu, Orthanc by storescu
with 4 parallel associations. Then each target is started on its loaded index and queried over
ONE open association per target (pynetdicom, TCP_NODELAY on), queries alternating between the
targets so that drift hits both alike. DCMTK's findscu --repeat is timed too, as a second
client, and so is what most workstations do: one findscu (and one echoscu) process, so one
fresh association, per query, wall time of the whole process.

    .venv/bin/python benchmarks/find.py --help
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from corpus import DEFAULT_WORKDIR, Corpus, generate  # noqa: E402
from servers import (  # noqa: E402
    REPO,
    VNA,
    BenchError,
    Endpoint,
    OrthancTarget,
    Target,
    VnaTarget,
    cleanup_on_exit,
    dcmtk,
    dcmtk_env,
    make_tempdir,
    remove_tempdir,
    storescu,
    tail,
    vna_env,
)

FIND_TARGETS = ("vna", "orthanc")
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"  # Study Root Query/Retrieve Model - FIND
RETURN_KEYS = ("StudyInstanceUID", "StudyDate", "PatientName", "ModalitiesInStudy",
               "NumberOfStudyRelatedInstances")


def _index_dir(workdir: Path, corpus: Corpus, vna_load: str) -> Path:
    return workdir / "find-index" / f"{corpus.name}-{vna_load}"


def _loaded(d: Path, name: str, corpus: Corpus) -> bool:
    marker = d / f"{name}.loaded.json"
    if not marker.is_file():
        return False
    return bool(json.loads(marker.read_text()).get("count") == len(corpus.files))


def _mark_loaded(d: Path, name: str, corpus: Corpus, seconds: float) -> None:
    (d / f"{name}.loaded.json").write_text(json.dumps(
        {"count": len(corpus.files), "seconds": round(seconds, 1)}))


def _target(name: str, d: Path, workdir: Path) -> Target:
    if name == "vna":
        return VnaTarget(workdir, data_dir=d / "vna-data")
    return OrthancTarget(workdir, storage_dir=d / "orthanc")


def load(name: str, corpus: Corpus, d: Path, workdir: Path, vna_load: str,
         timeout: float) -> None:
    """Fill the index of one target from the corpus (once; kept for the next run)."""
    (d / f"{name}.loaded.json").unlink(missing_ok=True)
    for sub in ("vna-data",) if name == "vna" else ("orthanc",):
        shutil.rmtree(d / sub, ignore_errors=True)
    d.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if name == "vna" and vna_load == "import":
        env = vna_env({"VNA_DATA_DIR": str(d / "vna-data"), "VNA_FSYNC": "true"})
        log = d / "vna-import.log"
        print(f"loading vna: vna import {corpus.root} ({len(corpus.files)} files)",
              file=sys.stderr, flush=True)
        with open(log, "wb") as out:
            r = subprocess.run([*VNA, "import", str(corpus.root)], env=env,
                               stdout=out, stderr=subprocess.STDOUT, timeout=timeout,
                               cwd=d)
        if r.returncode != 0:
            raise BenchError(f"vna import failed ({r.returncode}):\n{tail(log)}")
    else:
        target = _target(name, d, workdir)
        print(f"loading {name}: storescu, 4 associations ({len(corpus.files)} files)",
              file=sys.stderr, flush=True)
        with target as endpoint:
            tmp = make_tempdir(workdir, "load-")
            try:
                storescu(corpus.files, endpoint, 4, tmp=tmp, timeout=timeout)
            finally:
                remove_tempdir(tmp)
    seconds = time.perf_counter() - t0
    print(f"loaded {name}: {len(corpus.files)} instances in {seconds:.0f} s "
          f"({len(corpus.files) / seconds:.0f} inst/s)", file=sys.stderr, flush=True)
    _mark_loaded(d, name, corpus, seconds)


def study_query(patient_id: str) -> Any:
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientID = patient_id
    for key in RETURN_KEYS:
        setattr(ds, key, "")
    return ds


class Client:
    """One open pynetdicom association to one target, timing each C-FIND."""

    def __init__(self, name: str, endpoint: Endpoint) -> None:
        from pynetdicom import AE

        from services.dicom_scp.pynetdicom_compat import install_requestor

        install_requestor()  # pynetdicom sets no TCP_NODELAY: ~40 ms per message
        self.name = name
        self.model = STUDY_ROOT_FIND
        ae = AE(ae_title="BENCHFIND")
        ae.add_requested_context(self.model)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
        self.assoc = ae.associate(endpoint.host, endpoint.port, ae_title=endpoint.aet)
        if not self.assoc.is_established:
            raise BenchError(f"{name}: association refused or aborted")
        self.ms: list[float] = []

    def query(self, patient_id: str, *, record: bool = True) -> int:
        """One STUDY-level C-FIND; the number of matches."""
        ds = study_query(patient_id)
        t0 = time.perf_counter()
        matches, final = 0, None
        for status, identifier in self.assoc.send_c_find(ds, self.model):
            if not status:
                raise BenchError(f"{self.name}: C-FIND got no response (association lost?)")
            if status.Status in (0xFF00, 0xFF01):
                matches += identifier is not None
            else:
                final = status.Status
        dt = (time.perf_counter() - t0) * 1000
        if final != 0x0000:
            raise BenchError(f"{self.name}: C-FIND for {patient_id} ended with status "
                             f"0x{final or 0:04X}")
        if record:
            self.ms.append(dt)
        return matches

    def close(self) -> None:
        if self.assoc.is_established:
            self.assoc.release()


def findscu_ms(endpoint: Endpoint, patient_id: str, repeat: int) -> float:
    """Per-query ms of findscu over one association: (T(repeat) - T(1)) / (repeat - 1)."""
    def run(n: int) -> float:
        cmd = [dcmtk("findscu"), "-S", "-aet", "BENCHFIND", "-aec", endpoint.aet,
               "-k", "QueryRetrieveLevel=STUDY", "-k", f"PatientID={patient_id}",
               *(a for k in RETURN_KEYS for a in ("-k", k)), "--repeat", str(n),
               endpoint.host, str(endpoint.port)]
        t0 = time.perf_counter()
        r = subprocess.run(cmd, env=dcmtk_env(), capture_output=True, timeout=300)
        if r.returncode != 0:
            raise BenchError(f"findscu failed: {r.stderr.decode(errors='replace')[-500:]}")
        return time.perf_counter() - t0

    one = min(run(1) for _ in range(3))
    many = run(repeat)
    return max(0.0, (many - one) / (repeat - 1) * 1000)


def per_process_ms(tool: str, endpoint: Endpoint, patient_id: str) -> float:
    """Wall ms of one DCMTK process that opens an association, sends one C-FIND (findscu)
    or C-ECHO (echoscu), and releases it."""
    if tool == "findscu":
        cmd = [dcmtk("findscu"), "-S", "-aet", "BENCHFIND", "-aec", endpoint.aet,
               "-k", "QueryRetrieveLevel=STUDY", "-k", f"PatientID={patient_id}",
               *(a for k in RETURN_KEYS for a in ("-k", k)), endpoint.host, str(endpoint.port)]
    else:
        cmd = [dcmtk("echoscu"), "-aet", "BENCHFIND", "-aec", endpoint.aet, endpoint.host,
               str(endpoint.port)]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=dcmtk_env(), capture_output=True, timeout=60)
    ms = (time.perf_counter() - t0) * 1000
    if r.returncode != 0:
        raise BenchError(f"{tool} failed: {r.stderr.decode(errors='replace')[-500:]}")
    return ms


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="C-FIND STUDY-level latency by PatientID on a large index: vna vs Orthanc.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--count", type=int, default=100_000,
                    help="instances in the index (10 per patient)")
    ap.add_argument("--queries", type=int, default=300, help="measured C-FINDs per target")
    ap.add_argument("--warmup", type=int, default=20, help="unmeasured C-FINDs per target first")
    ap.add_argument("--targets", default=",".join(FIND_TARGETS),
                    help=f"comma-separated, of {', '.join(FIND_TARGETS)}")
    ap.add_argument("--vna-load", choices=("import", "storescu"), default="import",
                    help="how vna's index is filled: `vna import` or C-STORE (4 associations)")
    ap.add_argument("--reload", action="store_true",
                    help="load the index again even if a loaded one is kept in the work dir")
    ap.add_argument("--findscu-repeat", type=int, default=100,
                    help="also time DCMTK findscu --repeat N (0 = skip)")
    ap.add_argument("--per-process", type=int, default=20,
                    help="also time N findscu and N echoscu processes per target, one "
                         "association each (0 = skip)")
    ap.add_argument("--seed", type=int, default=1, help="for the choice of patients")
    ap.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR,
                    help="corpus, loaded indexes, temporary files (env VNA_BENCH_DIR)")
    ap.add_argument("--load-timeout", type=float, default=0.0,
                    help="max seconds to load one index; 0 = 300 + 0.1 s per instance")
    args = ap.parse_args(argv)

    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if not targets or set(targets) - set(FIND_TARGETS):
        ap.error(f"--targets takes {', '.join(FIND_TARGETS)}")
    workdir = args.workdir.resolve()
    if workdir.is_relative_to(REPO):
        ap.error(f"--workdir must be outside the repository ({REPO})")

    with cleanup_on_exit():
        corpus = generate("find", args.count, workdir)
        d = _index_dir(workdir, corpus, args.vna_load)
        timeout = args.load_timeout or 300 + 0.1 * len(corpus.files)
        for t in targets:
            if args.reload or not _loaded(d, t, corpus):
                load(t, corpus, d, workdir, args.vna_load, timeout)
            else:
                print(f"{t}: reusing the index loaded in {d}", file=sys.stderr)

        rng = random.Random(args.seed)
        pids = corpus.patient_ids()
        started: list[Target] = []
        clients: list[Client] = []
        try:
            for t in targets:
                target = _target(t, d, workdir)
                started.append(target)
                endpoint = target.start()
                held = target.count()
                if held is not None and held != len(corpus.files):
                    raise BenchError(f"{t} holds {held} instances, expected "
                                     f"{len(corpus.files)}; try --reload")
                clients.append(Client(t, endpoint))
            for c in clients:
                for _ in range(args.warmup):
                    c.query(rng.choice(pids), record=False)
            for i in range(args.queries):
                pid = rng.choice(pids)
                order = clients if i % 2 == 0 else clients[::-1]
                for c in order:
                    n = c.query(pid)
                    if n != 1:
                        raise BenchError(f"{c.name}: {n} studies for {pid}, expected 1")
            for c in clients:
                c.close()
            findscu: dict[str, float] = {}
            if args.findscu_repeat > 1:
                for t, target in zip(targets, started, strict=True):
                    assert target.endpoint is not None
                    findscu[t] = findscu_ms(target.endpoint, rng.choice(pids),
                                            args.findscu_repeat)
            fresh: dict[tuple[str, str], list[float]] = {}
            for i in range(args.per_process):
                pid = rng.choice(pids)
                pairs = list(zip(targets, started, strict=True))
                for tool in ("findscu", "echoscu"):
                    for t, target in (pairs if i % 2 == 0 else pairs[::-1]):
                        assert target.endpoint is not None
                        fresh.setdefault((t, tool), []).append(
                            per_process_ms(tool, target.endpoint, pid))
        finally:
            for c in clients:
                with contextlib.suppress(Exception):
                    c.close()
            for target in started:
                target.stop()

        print()
        print(f"C-FIND STUDY level by PatientID, Study Root, {len(corpus.files):,} instances "
              f"({len(pids):,} patients), {args.queries} queries over one association per "
              "target (pynetdicom client, TCP_NODELAY)")
        print()
        print("| target | median ms | p90 ms | mean ms | findscu ms/query |")
        print("|---|---:|---:|---:|---:|")
        for c in clients:
            fs = f"{findscu[c.name]:.1f}" if c.name in findscu else ""
            print(f"| {c.name} | {statistics.median(c.ms):.1f} | {pct(c.ms, 0.9):.1f} | "
                  f"{statistics.fmean(c.ms):.1f} | {fs} |")
        by = {c.name: c for c in clients}
        if "vna" in by and "orthanc" in by:
            v, o = by["vna"].ms, by["orthanc"].ms
            print()
            print(f"vna/orthanc latency ratio (lower is better for vna): median "
                  f"{statistics.median(v) / statistics.median(o):.2f}, "
                  f"p90 {pct(v, 0.9) / pct(o, 0.9):.2f}"
                  + (f", findscu {findscu['vna'] / findscu['orthanc']:.2f}"
                     if findscu.get("orthanc") else ""))
        if fresh:
            print()
            print(f"One DCMTK process (one fresh association) per request, {args.per_process} "
                  "each, interleaved; wall ms of the process")
            print()
            print("| target | findscu median | findscu p90 | echoscu median | echoscu p90 |")
            print("|---|---:|---:|---:|---:|")
            for t in targets:
                f, e = fresh[(t, "findscu")], fresh[(t, "echoscu")]
                print(f"| {t} | {statistics.median(f):.1f} | {pct(f, 0.9):.1f} | "
                      f"{statistics.median(e):.1f} | {pct(e, 0.9):.1f} |")
            if ("vna", "findscu") in fresh and ("orthanc", "findscu") in fresh:
                ratio = statistics.median(fresh[("vna", "findscu")]) / \
                    statistics.median(fresh[("orthanc", "findscu")])
                print(f"\nvna/orthanc fresh-association findscu ratio (lower is better for "
                      f"vna): {ratio:.2f}")
        print(f"\n(loaded indexes are kept in {d}; delete it or pass --reload to rebuild)")
        return 0


if __name__ == "__main__":
    sys.exit(main())
