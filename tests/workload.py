"""Load for the fault tests: a stream of C-STOREs and a stream of uploads that record what
each request was answered and how long it took, and the check that everything
acknowledged is in the archive, byte for byte."""

from __future__ import annotations

import hashlib
import io
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pydicom.uid import generate_uid

from tests import dicom_client as dc
from tests.factory import dataset_bytes, make_instance, write


@dataclass
class Answer:
    """One request: what it sent, what it was answered, when, and how long it waited."""

    subject: str  # SOP Instance UID, or the document's uniqueId once known
    status: int  # C-STORE status or HTTP status; -1: no answer at all
    seconds: float
    started: float  # time.monotonic()
    sent: Path | bytes
    detail: str = ""


class _Stream:
    """Requests from a thread of its own, from `start` until `stop`."""

    def __init__(self) -> None:
        self.answers: list[Answer] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        raise NotImplementedError

    def start(self) -> _Stream:
        self._thread.start()
        return self

    def stop(self) -> list[Answer]:
        self._stopping.set()
        self._thread.join(120)
        return self.answers

    def acknowledged(self, ok: int) -> list[Answer]:
        return [a for a in self.answers if a.status == ok]


class InstanceStream(_Stream):
    """Fresh instances, one C-STORE at a time on a kept association (opened again when one
    ends), a new study every `per_study` instances."""

    def __init__(self, port: int, folder: Path, *, calling: str = "STREAM",
                 per_study: int = 10, pause: float = 0.02) -> None:
        super().__init__()
        self.port, self.folder, self.calling = port, folder, calling
        self.per_study, self.pause = per_study, pause

    def run(self) -> None:
        assoc: Any = None
        study = series = ""
        n = 0
        while not self._stopping.is_set():
            if n % self.per_study == 0:
                study, series = str(generate_uid()), str(generate_uid())
            ds = make_instance(patient_id=f"P{n // self.per_study}", study_uid=study,
                               series_uid=series, instance_number=n)
            path = write(ds, self.folder / f"{ds.SOPInstanceUID}.dcm")
            n += 1
            started = time.monotonic()
            status, detail = -1, ""
            try:
                if assoc is None or not assoc.is_established:
                    assoc = dc.associate(self.port, [dc._cx(ds.SOPClassUID,  # noqa: SLF001
                                                           [ds.file_meta.TransferSyntaxUID])],
                                         calling=self.calling)
                rsp = assoc.send_c_store(path)
                status = int(rsp.Status) if "Status" in rsp else -1
                detail = str(rsp.get("ErrorComment", ""))
            except Exception as exc:  # the association ended: a new one for the next
                detail = type(exc).__name__
                assoc = None
            self.answers.append(Answer(str(ds.SOPInstanceUID), status,
                                       time.monotonic() - started, started, path, detail))
            if status == -1 and assoc is not None:
                assoc.abort()
                assoc = None
            time.sleep(self.pause)
        if assoc is not None and assoc.is_established:
            assoc.release()


class UploadStream(_Stream):
    """Small PDFs (each different), one upload at a time."""

    def __init__(self, url: str, token: str, *, pause: float = 0.05) -> None:
        super().__init__()
        self.url, self.token, self.pause = url, token, pause

    def run(self) -> None:
        from tests.media import make_pdf

        pdf = make_pdf()
        meta = ('{"patientId":"191212121212","classCode":"report",'
                '"practiceSettingCode":"lung"}')
        with httpx.Client(base_url=self.url, timeout=60,
                          headers={"Authorization": f"Bearer {self.token}"}) as client:
            n = 0
            while not self._stopping.is_set():
                content = pdf + f"%{n} {time.time()}\n".encode()
                n += 1
                started = time.monotonic()
                status, subject, detail = -1, "", ""
                try:
                    r = client.post("/api/v1/documents", data={"metadata": meta},
                                    files={"file": ("r.pdf", io.BytesIO(content),
                                                    "application/pdf")})
                    status = r.status_code
                    body = r.json()  # every answer is JSON, errors included
                    subject = body.get("uniqueId", "") if status == 201 else ""
                    detail = "" if status == 201 else str(body.get("detail"))
                except Exception as exc:
                    detail = type(exc).__name__
                self.answers.append(Answer(subject, status, time.monotonic() - started,
                                           started, content, detail))
                time.sleep(self.pause)


def verify(settings: Any, instances: list[Answer], documents: list[Answer]) -> list[str]:
    """What is wrong with the acknowledged instances and documents: each must have its
    index row, and its object the bytes sent with the hash the row records."""
    from sqlalchemy import select

    from services.runtime import open_archive
    from storage.index.models import Document, Instance

    problems: list[str] = []
    archive = open_archive(settings)
    try:
        with archive.index.read_session() as s:
            rows = {r.sop_instance_uid: r for r in s.execute(select(
                Instance.sop_instance_uid, Instance.sha256, Instance.storage_key,
                Instance.dataset_offset).where(Instance.sop_instance_uid.in_(
                    [a.subject for a in instances])))}
            docs = {r.unique_id: r for r in s.execute(select(
                Document.unique_id, Document.sha256, Document.storage_key).where(
                    Document.unique_id.in_([a.subject for a in documents])))}
        for a in instances:
            row = rows.get(a.subject)
            if row is None:
                problems.append(f"instance {a.subject}: acknowledged, not in the index")
                continue
            data = archive.store.read(row.storage_key)
            if hashlib.sha256(data).hexdigest() != row.sha256:
                problems.append(f"instance {a.subject}: object hash differs from the index")
            assert isinstance(a.sent, Path)
            if data[row.dataset_offset:] != dataset_bytes(a.sent):
                problems.append(f"instance {a.subject}: object is not what was sent")
        for a in documents:
            row = docs.get(a.subject)
            if row is None:
                problems.append(f"document {a.subject}: acknowledged, not in the index")
                continue
            sent = hashlib.sha256(a.sent if isinstance(a.sent, bytes) else b"").hexdigest()
            found = hashlib.sha256(archive.store.read(row.storage_key)).hexdigest()
            if not sent == row.sha256 == found:
                problems.append(f"document {a.subject}: hashes sent/index/object differ")
    finally:
        archive.index.dispose()
    return problems
