"""pynetdicom event handlers: thin edges between DIMSE messages and the archive."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.sop_class import (
    ModalityWorklistInformationFind,
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
)
from sqlalchemy.engine import Connection

from services.dicom_scp.audit import DicomAudit, per_patient, who
from services.dicom_scp.commitment import CommitmentService
from services.dicom_scp.metrics import ScpMetrics
from services.dicom_scp.mpps import InTransaction, MppsService
from services.dicom_scp.pynetdicom_compat import partial_receive_file, receive_failed
from services.dicom_scp.retrieve import ArchivedInstance, contexts_for
from services.dicom_scp.worklist import WorklistService
from storage.archive import Archive
from storage.audit import AssociationAudit
from storage.errors import FailureLog
from storage.index.query import FindQuery, find, retrieve_instances
from storage.index.tokens import AuditRecord, AuditTrail
from vna.atna import DicomAction
from vna.dicom.attributes import UNIQUE_KEY, Level
from vna.dicom.dimse import (
    ARCHIVE_UNAVAILABLE,
    INVALID_QUERY_LEVEL,
    QUERY_FAILED,
    STATUS_CANCEL,
    STATUS_IDENTIFIER_MISMATCH,
    STATUS_OUT_OF_RESOURCES,
    STATUS_PENDING,
    STATUS_SUCCESS,
    STATUS_UNABLE_TO_PROCESS,
    error_comment,
    refusal_status,
    status_dataset,
)
from vna.dicom.matching import InvalidQuery, Universal
from vna.dicom.part10 import ReceivedFile
from vna.settings import Settings

log = logging.getLogger("vna.scp")

PATIENT_ROOT = {
    str(PatientRootQueryRetrieveInformationModelFind),
    str(PatientRootQueryRetrieveInformationModelGet),
    str(PatientRootQueryRetrieveInformationModelMove),
}


def _level(event: Any) -> tuple[Level | None, Dataset]:
    ident: Dataset = event.identifier
    raw = str(ident.get("QueryRetrieveLevel", "") or "").strip().upper()
    try:
        level = Level(raw)
    except ValueError:
        return None, ident
    model = str(event.request.AffectedSOPClassUID)
    if level is Level.PATIENT and model not in PATIENT_ROOT:
        return None, ident
    return level, ident


def _items(ident: Dataset) -> list[tuple[str, Any]]:
    out = []
    for elem in ident:
        if not elem.keyword or elem.tag.group in (0x0000, 0x0002):
            continue
        out.append((elem.keyword, None if elem.VR == "SQ" else elem.value))
    return out


class DicomService:
    """The handlers of one SCP process, bound to its archive and settings."""

    def __init__(self, settings: Settings, archive: Archive,
                 receive_dir: Path | None = None) -> None:
        self.settings = settings
        self.archive = archive
        self.receive_dir = receive_dir  # the process's own folder, swept by it
        self.peers = settings.peers
        self.metrics = ScpMetrics()
        self.failures = FailureLog(log)
        self.audit = DicomAudit(AuditTrail(archive.index))
        self.worklist = WorklistService(settings, archive, self.audit)
        self.mpps = MppsService(settings, archive)
        self.commitment = CommitmentService(settings, archive)

    def handlers(self) -> list[tuple[Any, Any]]:
        return [
            (evt.EVT_ACCEPTED, self.on_accepted),
            (evt.EVT_C_STORE, self.on_store),
            (evt.EVT_C_FIND, self.on_find),
            (evt.EVT_C_GET, self.on_get),
            (evt.EVT_C_MOVE, self.on_move),
            (evt.EVT_N_CREATE, self.on_n_create),  # MPPS is the only N-CREATE served
            (evt.EVT_N_SET, self.on_n_set),
            (evt.EVT_N_ACTION, self.on_n_action),  # Storage Commitment's request
            (evt.EVT_REJECTED, self.on_rejected),
            # a C-STORE cut short leaves its partly received file: never acknowledged. The
            # association may stop its DUL before that handles the closed connection, so
            # on release and abort too; a later call finds nothing left.
            (evt.EVT_CONN_CLOSE, self.drop_partial),
            (evt.EVT_ABORTED, self.drop_partial),
            (evt.EVT_RELEASED, self.drop_partial),
        ]

    def on_accepted(self, event: Any) -> None:
        event.assoc._vna_audit = self.association_accepted(who(event.assoc))

    def association_accepted(self, base: AuditRecord) -> AssociationAudit:
        """An association was accepted: its audit (written when it ends)."""
        self.metrics.associations.inc()
        return self.audit.association(base)

    def association_ended(self, audit: AssociationAudit | None, outcome: str) -> None:
        self.audit.ended(audit, outcome)

    def drop_partial(self, event: Any) -> None:
        """Remove the file of a C-STORE whose dataset had not arrived when the association
        ended (released, aborted, connection lost), as pynetdicom keeps it; and write the
        association's audit record (once, whichever event comes first)."""
        partial = partial_receive_file(event.assoc)
        if partial is not None:
            partial.discard()
        audit = getattr(event.assoc, "_vna_audit", None)
        if audit is not None:
            event.assoc._vna_audit = None
            self.association_ended(audit, "aborted" if event.event is evt.EVT_ABORTED
                                   else "success")

    def on_rejected(self, event: Any) -> None:
        log.warning("association from %s (%s) rejected (calling AE title not allowed, "
                    "or too many associations)", event.assoc.requestor.ae_title,
                    event.assoc.requestor.address)
        self.audit.rejected(who(event.assoc), "calling AE title not allowed, or too many "
                            "associations")

    # -- MPPS, Storage Commitment: recorded in their own transaction ---------------------

    def on_n_create(self, event: Any) -> tuple[int | Dataset, Dataset | None]:
        return self._recorded(event, "N-CREATE", DicomAction.MPPS, self.mpps.create)

    def on_n_set(self, event: Any) -> tuple[int | Dataset, Dataset | None]:
        return self._recorded(event, "N-SET", DicomAction.MPPS, self.mpps.set)

    def on_n_action(self, event: Any) -> tuple[int | Dataset, Dataset | None]:
        return self._recorded(event, "N-ACTION", DicomAction.COMMITMENT,
                              self.commitment.action)

    def _recorded(self, event: Any, method: str, action: DicomAction,
                  serve: Callable[[Any, InTransaction], tuple[int | Dataset, Dataset | None]],
                  ) -> tuple[int | Dataset, Dataset | None]:
        """Serve an N-CREATE/N-SET/N-ACTION with its audit record: written in the
        transaction of what it changes (no change without its record), or, for a request
        refused with nothing changed, on its own before the response."""
        def records(status: int) -> list[AuditRecord]:
            patient = None
            with contextlib.suppress(Exception):
                patient = str(event.attribute_list.get("PatientID", "") or "") or None
            uid = event.request.AffectedSOPInstanceUID if method == "N-CREATE" \
                else getattr(event.request, "RequestedSOPInstanceUID", None)
            sop_class = getattr(event.request, "AffectedSOPClassUID" if method == "N-CREATE"
                                else "RequestedSOPClassUID", "")
            return per_patient(who(event.assoc), action, method, str(sop_class or ""),
                               [(patient, None)] if patient else [], status=status,
                               outcome=_outcome(status), resource=str(uid or "")[:128] or None)

        def in_transaction(conn: Connection) -> None:
            for rec in records(STATUS_SUCCESS):
                self.audit.trail.insert_in(conn, rec)

        answer = serve(event, in_transaction)
        status = answer[0] if isinstance(answer[0], int) else int(answer[0].Status)
        if status != STATUS_SUCCESS:
            try:
                self.audit.request(records(status))
            except Exception as exc:
                self.failures.failed(
                    f"audit of {method} from {event.assoc.requestor.ae_title}", exc)
        return answer

    # -- C-STORE --------------------------------------------------------------------------

    def on_store(self, event: Any) -> Dataset | int:
        calling_aet = event.assoc.requestor.ae_title
        error = receive_failed(event.dataset_path)
        if error is not None:  # e.g. a full disk: nothing was kept
            log.error("C-STORE from %s: could not write the received file: %s", calling_aet,
                      error)
            self.metrics.stored("failed", 0.0)
            return status_dataset(STATUS_OUT_OF_RESOURCES, ARCHIVE_UNAVAILABLE)
        status, comment = self.store(event.dataset_path, calling_aet,
                                     str(event.request.AffectedSOPInstanceUID),
                                     getattr(event.assoc, "_vna_audit", None))
        return status_dataset(status, comment) if comment else status

    def store(self, received: Path | ReceivedFile, calling_aet: str,
              sop_instance_uid: str,
              audit: AssociationAudit | None = None) -> tuple[int, str | None]:
        """Archive one received instance: the C-STORE status and error comment to answer
        (both receive paths, pynetdicom's and `storage_association`, come here)."""
        started = time.perf_counter()
        try:
            result = self.archive.store_file(received, source_aet=calling_aet, move=True,
                                             expected_sop_instance_uid=sop_instance_uid,
                                             audit=audit)
        except Exception as exc:
            self.failures.failed(f"C-STORE from {calling_aet}", exc)
            self.metrics.stored("failed", time.perf_counter() - started)
            return STATUS_OUT_OF_RESOURCES, ARCHIVE_UNAVAILABLE
        self.metrics.stored(result.outcome, time.perf_counter() - started)
        if result.ok:
            return STATUS_SUCCESS, None
        log.warning("C-STORE from %s refused (%s): %s", calling_aet, result.sop_instance_uid,
                    result.outcome if result.conflict else result.reason)
        return refusal_status(result.outcome, result.unreadable), \
            error_comment(result.reason or "")

    # -- C-FIND ---------------------------------------------------------------------------

    def on_find(self, event: Any) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        if str(event.request.AffectedSOPClassUID) == str(ModalityWorklistInformationFind):
            yield from self.worklist.find(event)
            return
        level, ident = _level(event)
        if level is None:
            yield status_dataset(STATUS_IDENTIFIER_MISMATCH, INVALID_QUERY_LEVEL), None
            return
        touched: set[tuple[str, str | None]] = set()
        model = str(event.request.AffectedSOPClassUID)
        try:
            q = FindQuery.from_identifier(level, _items(ident))
            with self.archive.index.read_session() as s:
                matches = find(s, q, touched=touched)
            # committed before the first match goes out
            self.audit.request(per_patient(
                who(event.assoc), DicomAction.FIND, "C-FIND", model, touched,
                resource=_query_keys(level, q), instances=len(matches)))
        except InvalidQuery as exc:
            yield status_dataset(STATUS_UNABLE_TO_PROCESS, str(exc)), None
            return
        except Exception as exc:
            self.failures.failed("C-FIND", exc)
            yield status_dataset(STATUS_UNABLE_TO_PROCESS, QUERY_FAILED), None
            return
        for match in matches:
            if event.is_cancelled:
                yield STATUS_CANCEL, None
                return
            yield STATUS_PENDING, self._response(level, ident, match)

    def _response(self, level: Level, ident: Dataset, match: dict[str, Any]) -> Dataset:
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.QueryRetrieveLevel = level.value
        ds.RetrieveAETitle = self.settings.dicom_aet
        for elem in ident:
            kw = elem.keyword
            if not kw or kw in ("QueryRetrieveLevel", "SpecificCharacterSet", "RetrieveAETitle"):
                continue
            if elem.VR == "SQ":
                setattr(ds, kw, [])
                continue
            value = match.get(kw)
            setattr(ds, kw, "" if value is None and elem.VR not in ("US", "UL", "SS", "SL")
                    else value)
        return ds

    # -- C-GET / C-MOVE -------------------------------------------------------------------

    def _instances(self, level: Level, ident: Dataset) -> list[ArchivedInstance]:
        q = FindQuery.from_identifier(Level.IMAGE, _items(ident))
        unique = UNIQUE_KEY[level].keyword
        if isinstance(q.matchers.get(unique, Universal()), Universal):
            raise InvalidQuery(f"{unique} is required at {level.value} level")
        # Retrieval uses the unique keys only (PS3.4 C.4.2.2.1)
        q.matchers = {k: m for k, m in q.matchers.items()
                      if k in {a.keyword for a in UNIQUE_KEY.values()}}
        with self.archive.index.read_session() as s:
            stored = retrieve_instances(s, q)
        return [ArchivedInstance(self.archive.store, i.storage_key, i.sop_class_uid,
                                 i.sop_instance_uid, i.transfer_syntax_uid, self.receive_dir,
                                 patient_id=i.patient_id, study_uid=i.study_instance_uid)
                for i in stored]

    def _retrieve(self, event: Any) -> tuple[list[ArchivedInstance] | None, Dataset | None]:
        level, ident = _level(event)
        if level is None:
            return None, status_dataset(STATUS_IDENTIFIER_MISMATCH, INVALID_QUERY_LEVEL)
        try:
            return self._instances(level, ident), None
        except InvalidQuery as exc:
            return None, status_dataset(STATUS_IDENTIFIER_MISMATCH, str(exc))

    def _record_retrieve(self, event: Any, action: DicomAction, method: str,
                         instances: list[ArchivedInstance]) -> Dataset | None:
        """Commit the retrieval's records before its first sub-operation; a failure
        status if they cannot be."""
        touched = [(i._vna_patient, i._vna_study) for i in instances]
        try:
            self.audit.request(per_patient(
                who(event.assoc), action, method, str(event.request.AffectedSOPClassUID),
                touched, instances=len(instances)))
        except Exception as exc:
            self.failures.failed(method, exc)
            return status_dataset(STATUS_OUT_OF_RESOURCES, ARCHIVE_UNAVAILABLE)
        return None

    def on_get(self, event: Any) -> Iterator[Any]:
        instances, error = self._retrieve(event)
        if instances is not None:
            error = self._record_retrieve(event, DicomAction.GET, "C-GET", instances)
        if instances is None or error is not None:
            yield 1
            yield error, None
            return
        yield from _sub_operations(event, instances)

    def on_move(self, event: Any) -> Iterator[Any]:
        dest = event.move_destination
        dest = (dest.decode("ascii", "replace") if isinstance(dest, bytes) else str(dest)).strip()
        peer = self.peers.get(dest)
        if peer is None:
            log.warning("C-MOVE to unknown destination %r refused", dest)
            yield None, None
            return
        instances, error = self._retrieve(event)
        if instances is not None:
            error = self._record_retrieve(event, DicomAction.MOVE, "C-MOVE", instances)
        if instances is None or error is not None:
            yield peer.host, peer.port
            yield 1
            yield error, None
            return
        pairs = {(str(i.SOPClassUID), i._vna_ts) for i in instances}
        yield peer.host, peer.port, {"contexts": contexts_for(pairs),
                                     "ae_title": peer.ae_title}
        yield from _sub_operations(event, instances)


def _query_keys(level: Level, q: FindQuery) -> str:
    """What a query matched on: its level and the keys with a value, never the values."""
    keys = sorted(k for k, m in q.matchers.items() if not isinstance(m, Universal))
    return f"{level.value} {','.join(keys)}"[:128]


def _outcome(status: int) -> str:
    if status == STATUS_SUCCESS or 0xB000 <= status <= 0xBFFF:
        return "success"
    return "refused" if 0xA000 <= status < 0xC000 or status < 0x0200 else "error"


def _sub_operations(event: Any, instances: list[ArchivedInstance]) -> Iterator[Any]:
    """The count, then one pending C-STORE sub-operation per instance, until cancelled."""
    yield len(instances)
    for inst in instances:
        if event.is_cancelled:
            yield STATUS_CANCEL, None
            return
        yield STATUS_PENDING, inst

