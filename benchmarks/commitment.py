"""Storage Commitment: time from the N-ACTION to the N-EVENT-REPORT for a 1,000-instance
study. Target: < 2 s.

Starts `vna scp` and `vna worker --beat` on one data dir (embedded: files + SQLite + the
filesystem broker; or with --pg: files + PostgreSQL + Redis), a modality (pynetdicom) with
an SCP of its own for the report, sends a study of `--count` small instances with DCMTK
storescu, and at once asks for their commitment: the first run meets a worker busy with
the study's outbox events, as a modality that commits right after sending does. Further
runs ask again about the same study under new Transaction UIDs (idle workers). Each
report is checked: Event Type 1, every instance in ReferencedSOPSequence.

    .venv/bin/python benchmarks/commitment.py --count 1000 --runs 5
"""

from __future__ import annotations

import argparse
import json
import queue
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from corpus import DEFAULT_WORKDIR  # noqa: E402
from servers import (  # noqa: E402
    VNA,
    BenchError,
    Endpoint,
    VnaTarget,
    cleanup_on_exit,
    free_port,
    start_process,
    stop_process,
    storescu,
    tail,
    vna_env,
)

MODALITY = "BENCHMOD"
TARGET_SECONDS = 2.0
CT = "1.2.840.10008.5.1.4.1.1.2"


def make_study(folder: Path, count: int) -> list[tuple[str, Path]]:
    """One study of `count` 64x64 CT images in one series: (SOP Instance UID, file)."""
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    pixels = (np.arange(64 * 64, dtype=np.uint16) % 4096).tobytes()
    out = []
    for i in range(count):
        uid = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CT
        meta.MediaStorageSOPInstanceUID = uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CT, uid
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.PatientID, ds.PatientName = "BENCH-COMMIT", "Bench^Commit"
        ds.Modality, ds.StudyDate, ds.StudyTime = "CT", "20261205", "101500"
        ds.AccessionNumber, ds.InstanceNumber = "BENCHSC1", i + 1
        ds.Rows = ds.Columns = 64
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        ds.SamplesPerPixel, ds.PixelRepresentation = 1, 0
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.PixelData = pixels
        path = folder / f"{i:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        out.append((uid, path))
    return out


class Modality:
    """The modality's SCP for N-EVENT-REPORTs: when each arrived and what it said."""

    def __init__(self, port: int) -> None:
        from pynetdicom import AE, evt
        from pynetdicom.sop_class import StorageCommitmentPushModel

        self.port = port
        self.reports: queue.Queue[tuple[float, int, Any]] = queue.Queue()
        ae = AE(ae_title=MODALITY)
        ae.add_supported_context(StorageCommitmentPushModel, scu_role=False, scp_role=True)

        def on_report(event: Any) -> tuple[int, None]:
            self.reports.put((time.perf_counter(), event.event_type, event.event_information))
            return 0x0000, None

        self.server = ae.start_server(("127.0.0.1", port), block=False,
                                      evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])

    def stop(self) -> None:
        self.server.shutdown()


def ask(endpoint: Endpoint, uids: list[str]) -> tuple[float, float, str]:
    """One N-ACTION for `uids`: (sent at, answered at, Transaction UID)."""
    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid
    from pynetdicom import AE
    from pynetdicom.sop_class import StorageCommitmentPushModel

    info = Dataset()
    info.TransactionUID = generate_uid()
    items = []
    for uid in uids:
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = CT, uid
        items.append(item)
    info.ReferencedSOPSequence = items
    ae = AE(ae_title=MODALITY)
    ae.add_requested_context(StorageCommitmentPushModel)
    assoc = ae.associate(endpoint.host, endpoint.port, ae_title=endpoint.aet)
    if not assoc.is_established:
        raise BenchError("the N-ACTION association was not accepted")
    try:
        sent = time.perf_counter()
        status, _ = assoc.send_n_action(info, 1, StorageCommitmentPushModel,
                                        "1.2.840.10008.1.20.1.1")
        answered = time.perf_counter()
    finally:
        assoc.release()
    if int(status.get("Status", -1)) != 0:
        raise BenchError(f"N-ACTION answered {status}")
    return sent, answered, str(info.TransactionUID)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=1000, help="instances in the study")
    ap.add_argument("--runs", type=int, default=5, help="N-ACTIONs (the first right after "
                    "the study was sent)")
    ap.add_argument("--pg", action="store_true", help="files + PostgreSQL + Redis")
    ap.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args(argv)

    from services.dicom_scp.pynetdicom_compat import install_requestor

    install_requestor()  # TCP_NODELAY on the modality's association
    study = make_study(args.workdir / "commitment" / f"study-{args.count}", args.count)
    uids = [uid for uid, _ in study]
    delays: list[float] = []
    answers: list[float] = []
    with cleanup_on_exit():
        modality = Modality(free_port())
        extra = {"VNA_DICOM_PEERS": f"{MODALITY}@127.0.0.1:{modality.port}"}
        if args.pg:  # the SCP wakes the worker through the same broker
            extra["VNA_BROKER_URL"] = "redis://127.0.0.1:6379/13"
        target = VnaTarget(args.workdir, pg=args.pg, extra_env=extra)
        try:
            endpoint = target.start()
            env = target.env()
            assert target.data_dir is not None
            log = target.data_dir.parent / "worker.log"
            worker = start_process([*VNA, "worker", "--beat"], env=vna_env(env), log=log,
                                   cwd=target.data_dir.parent, group=True)
            time.sleep(4)  # the worker's consumer and its reporter up
            if worker.poll() is not None:
                raise BenchError(f"vna worker did not start:\n{tail(log)}")
            tmp = target.data_dir.parent
            wall = storescu([p for _, p in study], endpoint, 1, tmp=tmp, timeout=900)
            print(f"{args.count} instances stored in {wall:.1f} s "
                  f"({'files+PostgreSQL+Redis' if args.pg else 'files+SQLite+filesystem broker'})")
            for run in range(args.runs):
                sent, answered, transaction = ask(endpoint, uids)
                try:
                    arrived, event_type, info = modality.reports.get(timeout=60)
                except queue.Empty:
                    raise BenchError(f"no N-EVENT-REPORT within 60 s:\n{tail(log)}") from None
                if (event_type != 1 or info.TransactionUID != transaction
                        or len(info.ReferencedSOPSequence) != len(uids)):
                    raise BenchError(f"unexpected report: type {event_type}, "
                                     f"{len(info.get('ReferencedSOPSequence', []))} committed")
                delays.append(arrived - sent)
                answers.append(answered - sent)
                print(f"  run {run + 1}{' (outbox busy)' if run == 0 else ''}: N-ACTION "
                      f"answered in {answers[-1] * 1000:.0f} ms, N-EVENT-REPORT after "
                      f"{delays[-1] * 1000:.0f} ms")
                time.sleep(0.5)
            stop_process(worker)
        finally:
            modality.stop()
            target.stop()
    median = statistics.median(delays)
    worst = max(delays)
    ok = worst < TARGET_SECONDS
    print(f"N-ACTION to N-EVENT-REPORT for {args.count} instances: median {median:.2f} s, "
          f"worst {worst:.2f} s; N-ACTION answered in median "
          f"{statistics.median(answers) * 1000:.0f} ms")
    print(f"- report < {TARGET_SECONDS:.0f} s: {worst:.2f} s: {'met' if ok else 'NOT met'}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "count": args.count, "pg": args.pg, "delays": delays, "answers": answers,
            "median": median, "worst": worst, "target_met": ok}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
