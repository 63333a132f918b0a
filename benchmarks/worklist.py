"""Modality Worklist C-FIND latency with 10,000 scheduled items, vna vs DCMTK's `wlmscpfs`.

The items (default 10,000: 40 stations, each with one modality, over 21 days around today,
~12 a station a day) are placed in a fresh index through `storage.index.orders.place`, the
path of `POST /api/v1/worklist`; the same items, as vna answers them with every return key,
are written as `.wl` files for `wlmscpfs` (DCMTK's worklist SCP on a folder of files). Then
the queries a modality really sends are timed against both, alternating A B A B:

- `station-day`: today + its station AE title + its modality, the usual worklist refresh;
- `patient`: one PatientID (a registration desk looking a patient up).

Each query asks for the return keys a modality needs (patient, accession, requested
procedure, Study Instance UID, the Scheduled Procedure Step). Three clients: one
`findscu -W` process per query (fresh association, wall time of the process, as many
modalities work), one kept pynetdicom association (TCP_NODELAY on, C-FIND request to final
response), and DCMTK's `findscu --repeat N` on one association for a few queries of each
kind ((T(N) - T(1)) / (N - 1): no Python in the client).
Every answer's count is checked against the other SCP's. DCMTK runs with TCP_NODELAY=1.

    .venv/bin/python benchmarks/worklist.py --help
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from servers import (  # noqa: E402
    BenchError,
    VnaTarget,
    cleanup_on_exit,
    dcmtk,
    dcmtk_env,
    first_line,
    free_port,
    start_process,
    stop_process,
    wait_port,
)

MWL_FIND = "1.2.840.10008.5.1.4.31"  # ModalityWorklistInformationFind
MODALITIES = ("CT", "MR", "US", "CR", "DX", "MG", "NM", "XA")
SPS = "ScheduledProcedureStepSequence[0]."
ITEM_RETURN = ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate",
               "PatientSex", "AccessionNumber", "ReferringPhysicianName",
               "RequestedProcedureID", "RequestedProcedureDescription", "StudyInstanceUID",
               "RequestingPhysician")
SPS_RETURN = ("ScheduledStationAETitle", "ScheduledStationName",
              "ScheduledProcedureStepStartDate", "ScheduledProcedureStepStartTime",
              "Modality", "ScheduledPerformingPhysicianName", "ScheduledProcedureStepID",
              "ScheduledProcedureStepDescription", "ScheduledProcedureStepStatus")
TARGET_MEDIAN_MS = 20.0


def load(settings: Any, items: int, stations: int, zone: str, today: datetime) -> None:
    """Place `items` orders in the index of `settings`, in one transaction."""
    from storage.index import orders
    from storage.index.db import Index
    from storage.migrate import upgrade
    from vna.dicom.identity import PatientIdentity
    from vna.orders import PatientRecord, ScheduledStep

    rng = random.Random(14)
    upgrade(settings.resolved_database_url)
    index = Index(settings.resolved_database_url)
    now = datetime.now(UTC)
    start = today - timedelta(days=10)
    try:
        with index.begin() as conn:
            for n in range(items):
                station = n % stations
                day = start + timedelta(days=rng.randrange(21))
                at = day.replace(hour=7, minute=0) + timedelta(minutes=5 * rng.randrange(120))
                orders.place(conn, ScheduledStep(
                    patient=PatientRecord(PatientIdentity(f"PAT{n:06d}", "REGION"),
                                          name=f"Patient^Number{n}", birth_date="19700101",
                                          sex="FM"[n % 2]),
                    accession_number=f"ACC{n:07d}", modality=MODALITIES[station % 8],
                    scheduled_at=at, requested_procedure_description="Examination",
                    scheduled_procedure_step_description="Protocol",
                    scheduled_station_aet=f"STATION{station:02d}",
                    scheduled_station_name=f"ROOM{station:02d}",
                    scheduled_performing_physician_name="Tech^Nician",
                    referring_physician_name="Refer^Ring",
                    requesting_physician_name="Reques^Ting"),
                    source="api", zone=zone, now=now)
    finally:
        index.dispose()


def write_wl_files(settings: Any, folder: Path) -> int:
    """Every scheduled item as vna answers it (all return keys), one `.wl` file each."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    from storage.index import worklist
    from storage.index.db import Index
    from vna.worklist import ITEM_KEYS, SPS_KEYS, WorklistQuery

    q = WorklistQuery(item_keys=[(k, a.vr) for k, a in ITEM_KEYS.items()],
                      sps_keys=[(k, a.vr) for k, a in SPS_KEYS.items()])
    index = Index(settings.resolved_database_url)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "lockfile").touch()
    try:
        with index.read_session() as s:
            entries = worklist.find(s, q)
    finally:
        index.dispose()
    for e in entries:
        ds: Dataset = q.response(e)
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = MWL_FIND
        ds.file_meta.MediaStorageSOPInstanceUID = e.study_instance_uid
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.save_as(folder / f"{e.accession_number}.wl", enforce_file_format=True)
    return len(entries)


def queries(count: int, items: int, stations: int, today: str,
            rng: random.Random) -> list[tuple[str, dict[str, str], dict[str, str]]]:
    """(kind, item keys, SPS keys) with values: half station-day, half patient."""
    out = []
    for n in range(count):
        if n % 2 == 0:
            station = rng.randrange(stations)
            out.append(("station-day", {}, {
                "ScheduledStationAETitle": f"STATION{station:02d}",
                "ScheduledProcedureStepStartDate": today,
                "Modality": MODALITIES[station % 8]}))
        else:
            out.append(("patient", {"PatientID": f"PAT{rng.randrange(items):06d}"}, {}))
    return out


def findscu_keys(keys: dict[str, str], sps: dict[str, str]) -> list[str]:
    out = [f"{k}={keys[k]}" if k in keys else k for k in ITEM_RETURN]
    out += [f"{SPS}{k}={sps[k]}" if k in sps else SPS + k for k in SPS_RETURN]
    return [a for k in out for a in ("-k", k)]


def time_findscu(port: int, aet: str, keys: dict[str, str], sps: dict[str, str],
                 env: dict[str, str], out: Path) -> tuple[float, int]:
    """Wall time of one `findscu -W` process, and the number of matches it received."""
    out.mkdir(parents=True, exist_ok=True)
    for f in out.glob("rsp*.dcm"):
        f.unlink()
    cmd = [dcmtk("findscu"), "-W", "-aec", aet, "-X", "-od", str(out),
           *findscu_keys(keys, sps), "127.0.0.1", str(port)]
    started = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    took = time.perf_counter() - started
    if p.returncode != 0:
        raise BenchError(f"findscu against {aet} exited {p.returncode}: {p.stderr[-500:]}")
    return took, len(list(out.glob("rsp*.dcm")))


def time_findscu_repeat(port: int, aet: str, keys: dict[str, str], sps: dict[str, str],
                        env: dict[str, str], repeat: int) -> float:
    """Seconds per query of `findscu -W --repeat` over one association (DCMTK as the
    client, so no Python in the client): (T(repeat) - T(1)) / (repeat - 1)."""
    def run(n: int) -> float:
        cmd = [dcmtk("findscu"), "-W", "-aec", aet, *findscu_keys(keys, sps), "--repeat",
               str(n), "127.0.0.1", str(port)]
        started = time.perf_counter()
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        if p.returncode != 0:
            raise BenchError(f"findscu against {aet} exited {p.returncode}: {p.stderr[-500:]}")
        return time.perf_counter() - started

    one = run(1)
    return max(0.0, (run(repeat) - one) / (repeat - 1))


class KeptAssociation:
    """One pynetdicom association kept open for every query (TCP_NODELAY on)."""

    def __init__(self, port: int, aet: str) -> None:
        from pynetdicom import AE

        from services.dicom_scp.pynetdicom_compat import install_requestor

        install_requestor()
        ae = AE(ae_title="BENCHSCU")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
        ae.add_requested_context(MWL_FIND, ["1.2.840.10008.1.2.1"])
        self.assoc = ae.associate("127.0.0.1", port, ae_title=aet)
        if not self.assoc.is_established:
            raise BenchError(f"{aet} refused the association")

    def find(self, keys: dict[str, str], sps: dict[str, str]) -> tuple[float, int]:
        from pydicom.dataset import Dataset

        ident = Dataset()
        for k in ITEM_RETURN:
            setattr(ident, k, keys.get(k, ""))
        step = Dataset()
        for k in SPS_RETURN:
            setattr(step, k, sps.get(k, ""))
        ident.ScheduledProcedureStepSequence = [step]
        started = time.perf_counter()
        found = 0
        for status, _ds in self.assoc.send_c_find(ident, MWL_FIND):
            if status is None:
                raise BenchError("C-FIND: no response (association aborted?)")
            if status.Status in (0xFF00, 0xFF01):
                found += 1
            elif status.Status != 0:
                raise BenchError(f"C-FIND failed: 0x{status.Status:04X}")
        return time.perf_counter() - started, found

    def close(self) -> None:
        self.assoc.release()


def summary(seconds: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in seconds)
    return {"median_ms": round(statistics.median(ms), 2),
            "p90_ms": round(ms[max(0, int(len(ms) * 0.9) - 1)], 2), "n": len(ms)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--stations", type=int, default=40)
    ap.add_argument("--queries", type=int, default=200, help="per client and target")
    ap.add_argument("--repeat", type=int, default=10,
                    help="findscu --repeat N over one association (per query and target)")
    ap.add_argument("--repeat-queries", type=int, default=5,
                    help="queries of each kind timed with findscu --repeat")
    ap.add_argument("--pg", action="store_true", help="vna on PostgreSQL (default SQLite)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/vna-bench"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from vna.settings import Settings

    env = dcmtk_env()
    zone = Settings().timezone
    today_local = datetime.now(ZoneInfo(zone)).replace(hour=0, minute=0, second=0,
                                                        microsecond=0)
    today = today_local.strftime("%Y%m%d")
    rng = random.Random(7)
    with cleanup_on_exit():
        vna = VnaTarget(args.workdir, pg=args.pg, extra_env={"VNA_TIMEZONE": zone})
        settings = Settings(**{k[4:].lower(): v for k, v in vna.env().items()
                               if k.startswith("VNA_")})
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        load(settings, args.items, args.stations, zone, today_local)
        loaded = time.perf_counter() - started
        assert vna.data_dir is not None
        wl_root = vna.data_dir.parent / "wlmscpfs"
        files = write_wl_files(settings, wl_root / "WLM")
        database = "PostgreSQL" if args.pg else "SQLite"
        print(f"{args.items} items placed in {loaded:.1f} s ({database}); {files} .wl files "
              f"for wlmscpfs", flush=True)
        endpoint = vna.start()
        wl_port = free_port()
        wl_log = wl_root.parent / "wlmscpfs.log"
        wl_proc = start_process([dcmtk("wlmscpfs"), "-dfp", str(wl_root), "-dfr",
                                 str(wl_port)], env=env, log=wl_log)
        wait_port(wl_port, 30, wl_proc)
        targets = {"vna": (endpoint.port, "VNA"), "wlmscpfs": (wl_port, "WLM")}
        plan = queries(args.queries, args.items, args.stations, today, rng)
        times: dict[tuple[str, str, str], list[float]] = {}
        matches: dict[str, list[int]] = {}
        try:
            kept = {name: KeptAssociation(port, aet) for name, (port, aet) in targets.items()}
            for _kind, keys, sps in plan[:4]:  # warm up both
                for name in targets:
                    kept[name].find(keys, sps)
            for client in ("kept", "findscu"):
                for i, (kind, keys, sps) in enumerate(plan):
                    order = list(targets) if i % 2 == 0 else list(reversed(targets))
                    counts = {}
                    for name in order:
                        port, aet = targets[name]
                        took, found = kept[name].find(keys, sps) if client == "kept" else \
                            time_findscu(port, aet, keys, sps, env,
                                         wl_root.parent / f"out-{name}")
                        times.setdefault((client, kind, name), []).append(took)
                        counts[name] = found
                    if counts["vna"] != counts["wlmscpfs"]:
                        raise BenchError(f"{client} {kind} {keys or sps}: vna found "
                                         f"{counts['vna']}, wlmscpfs {counts['wlmscpfs']}")
                    matches.setdefault(kind, []).append(counts["vna"])
            for k in kept.values():
                k.close()
            for kind in ("station-day", "patient"):  # DCMTK's client on one association
                for _kind, keys, sps in [p for p in plan if p[0] == kind][:args.repeat_queries]:
                    for name, (port, aet) in targets.items():
                        times.setdefault(("findscu-repeat", kind, name), []).append(
                            time_findscu_repeat(port, aet, keys, sps, env, args.repeat))
        finally:
            stop_process(wl_proc)
            vna.stop()
    figures: dict[str, Any] = {}
    print(f"\nMWL C-FIND, {args.items} scheduled items, {args.queries} queries per client "
          f"(DCMTK: {first_line([dcmtk('findscu'), '--version'])})")
    print(f"{'client':<14} {'query':<12} {'matches':>7} {'vna median/p90 ms':>19} "
          f"{'wlmscpfs median/p90 ms':>24} {'ratio':>6}")
    for client in ("kept", "findscu-repeat", "findscu"):
        for kind in ("station-day", "patient"):
            ours = summary(times[(client, kind, "vna")])
            theirs = summary(times[(client, kind, "wlmscpfs")])
            ratio = round(ours["median_ms"] / theirs["median_ms"], 2)
            figures[f"{client}/{kind}"] = {"vna": ours, "wlmscpfs": theirs, "ratio": ratio,
                                           "matches": statistics.median(matches[kind])}
            print(f"{client:<14} {kind:<12} {statistics.median(matches[kind]):>7.0f} "
                  f"{ours['median_ms']:>9.1f} / {ours['p90_ms']:<7.1f} "
                  f"{theirs['median_ms']:>12.1f} / {theirs['p90_ms']:<9.1f} {ratio:>6.2f}")
    kept_ok = all(figures[f"kept/{k}"]["vna"]["median_ms"] < TARGET_MEDIAN_MS
                  for k in ("station-day", "patient"))
    parity = all(figures[f"{c}/{k}"]["ratio"] <= 1.0
                 for c in ("kept", "findscu-repeat", "findscu")
                 for k in ("station-day", "patient"))
    print(f"\ntarget: median < {TARGET_MEDIAN_MS:.0f} ms on a kept association: "
          f"{'met' if kept_ok else 'NOT met'}; no slower than wlmscpfs: "
          f"{'met' if parity else 'NOT met'}")
    if args.json:
        args.json.write_text(json.dumps({"items": args.items, "queries": args.queries,
                                         "figures": figures, "target_met": kept_ok,
                                         "parity": parity}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
