"""Modality Performed Procedure Step SOP Class (PS3.4 F.7): N-CREATE when an exam starts,
N-SET while it runs and when it is COMPLETED or DISCONTINUED.

Thin: the rules are `vna.mpps`, the writes `storage.index.workflow`; each request is one
index transaction, committed before the response goes out."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from pydicom.dataset import Dataset
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from storage.archive import Archive
from storage.errors import FailureLog
from storage.index import workflow
from vna import mpps
from vna.dicom.dimse import (
    ARCHIVE_UNAVAILABLE,
    STATUS_PROCESSING_FAILURE,
    STATUS_SUCCESS,
    status_dataset,
)
from vna.orders import new_uid, utc_now
from vna.settings import Settings

log = logging.getLogger("vna.scp.mpps")

# What else the request's transaction writes (its audit record), given the connection.
InTransaction = Callable[[Connection], None] | None


def _refused(request: str, uid: str, calling: str, exc: mpps.MppsRefused,
             ) -> tuple[Dataset, None]:
    """Log a refusal (no patient data) and answer its status, Error Comment and ID."""
    log.warning("MPPS %s %s from %s refused: %s", request, uid, calling, exc.comment)
    ds = status_dataset(exc.status, exc.comment)
    if exc.error_id is not None:
        ds.ErrorID = exc.error_id
    return ds, None


def _failure() -> tuple[Dataset, None]:
    return status_dataset(STATUS_PROCESSING_FAILURE, ARCHIVE_UNAVAILABLE), None


class MppsService:
    """The MPPS N-CREATE and N-SET handlers of one SCP process."""

    def __init__(self, settings: Settings, archive: Archive) -> None:
        self.settings = settings
        self.archive = archive
        self.failures = FailureLog(log)

    def create(self, event: Any, audited: InTransaction = None,
               ) -> tuple[int | Dataset, Dataset | None]:
        """`audited(conn)` writes the request's audit record in the step's transaction."""
        calling = event.assoc.requestor.ae_title
        # the SCU may leave the UID to us (PS3.4 F.7.2.1.1); pynetdicom then answers it
        given = event.request.AffectedSOPInstanceUID
        uid = str(given) if given else new_uid()
        try:
            step = mpps.created(uid, event.attribute_list, self.settings.timezone)
            with self.archive.index.begin() as conn:
                order = workflow.create_step(conn, step, station_aet=calling, now=utc_now())
                if audited is not None:
                    audited(conn)
        except IntegrityError:  # the same UID created by another association meanwhile
            return _refused("N-CREATE", uid, calling, mpps.duplicate(uid))
        except mpps.MppsRefused as exc:
            return _refused("N-CREATE", uid, calling, exc)
        except Exception as exc:
            self.failures.failed(f"MPPS N-CREATE from {calling}", exc)
            return _failure()
        log.info("MPPS %s IN PROGRESS from %s (order %s)", uid, calling, order)
        reply = Dataset()
        if not given:
            reply.AffectedSOPInstanceUID = uid
        return STATUS_SUCCESS, reply

    def set(self, event: Any, audited: InTransaction = None,
            ) -> tuple[int | Dataset, Dataset | None]:
        calling = event.assoc.requestor.ae_title
        uid = str(event.request.RequestedSOPInstanceUID or "")
        try:
            modification = event.modification_list
            with self.archive.index.begin() as conn:
                current = workflow.step_attributes(conn, uid)
                if current is None:
                    raise mpps.unknown(uid)
                step = mpps.updated(uid, mpps.from_json(current), modification,
                                    self.settings.timezone)
                order = workflow.update_step(conn, step, now=utc_now())
                if audited is not None:
                    audited(conn)
        except mpps.MppsRefused as exc:
            return _refused("N-SET", uid, calling, exc)
        except Exception as exc:
            self.failures.failed(f"MPPS N-SET from {calling}", exc)
            return _failure()
        log.info("MPPS %s %s from %s (order %s)", uid, step.status.value, calling, order)
        return STATUS_SUCCESS, None
