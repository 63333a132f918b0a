"""STOW-RS (PS3.18 10.5): instances stored from a multipart/related body.

`POST /dicomweb/studies` and `/studies/{study}` take `multipart/related;
type="application/dicom"` (type and boundary quoted or not), one Part 10 file per part.
`StowReceiver` reads the body as it arrives (`services.multipart.read_parts`, on the event
loop) and hands each part's bytes through a bounded pipe to one thread of its own
(`threads.in_own_thread`), which writes them to a receive file (`Part10Writer`: hashed, its
head kept) and, when the part is complete, archives it through the C-STORE ingest path
(`Archive.store_file(move=True)`: the object durable and the index committed before the
answer; a re-sent identical instance is a success; the same refusals). Receiving part N+1
overlaps archiving part N; memory stays at about PIPE_BYTES whatever the size.

The answer is the Store Instances Response (`vna.dicom.stow`) in the DICOM JSON model: 200
all stored, 202 some failed, 409 none stored (503/507 when only because the archive is out
of resources), each failure in FailedSOPSequence with its FailureReason. A request STOW-RS
does not take at all gets `{"detail": ...}`: 415 (not multipart/related of
application/dicom), 413 (over VNA_MAX_UPLOAD_BYTES, by Content-Length at once or as it
arrives), 400 (malformed, cut off, no part).

A body cut off (or malformed, or over the limit) mid-stream: the part being received leaves
nothing (no receive file, no object, no row). The parts completed before the cut stay
archived, as the instances a C-STORE association acknowledged before an abort do: each was
archived whole and durably, removing them again could race an identical store by someone
else, and sending the body again is safe (a re-sent identical instance is a success). The
400's detail says how many were stored.

Access: uploaders and admins (`Action.DICOMWEB_STORE`). A department-limited uploader stores
only instances of its departments (InstitutionalDepartmentName, the department a study
list and QIDO-RS limit on), as a document upload must name one of its departments; others
fail with 0x0124. The audit record names the study (the URL's, or the first stored) and
the patient of the first stored instance. The index records the source as "STOW-RS".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, FastAPI, HTTPException, Request
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from services import incoming as receive_folders
from services.multipart import (
    MalformedBody,
    PartData,
    PartEnd,
    PartStart,
    TruncatedBody,
    read_parts,
)
from services.pipe import BoundedPipe
from services.xds_api.deps import ArchiveDep, SettingsDep
from services.xds_api.dicomweb.common import (
    DICOM_JSON,
    DICOM_JSON_SCHEMA,
    PREFIX,
    DicomJSONResponse,
    audit_patient,
    audit_study,
    check_uid,
    dicomweb_base,
    instance_url,
    require_json,
    study_url,
)
from services.xds_api.security import authorize
from services.xds_api.threads import in_own_thread
from storage.archive import Archive, prepare_received
from storage.errors import FailureLog, failure_of, is_storage_full
from vna.access import Action, Principal
from vna.dicom import stow
from vna.dicom.attributes import InvalidInstance, UnreadableInstance
from vna.dicom.dimse import (
    STATUS_CANNOT_UNDERSTAND,
    STATUS_PROCESSING_FAILURE,
    error_comment,
    refusal_status,
)
from vna.dicom.part10 import PREAMBLE, Part10Writer, ReceivedFile, lacks_preamble
from vna.dicom.stow import FailedInstance, Outcome, StoredInstance
from vna.settings import Settings

log = logging.getLogger("vna.http")

RECEIVE_PREFIX = "stow-"  # VNA_DATA_DIR/incoming/stow-<host>-<pid>/: this process's folder
SOURCE_AET = "STOW-RS"  # the index's source AE of what STOW-RS stored (the token: audit)
PIPE_BYTES = 8 << 20  # part bytes between the event loop and the part thread
MAX_PARTS = 10_000  # per request: the response holds an item for each
MAX_PART_HEADERS = 16  # Content-Type, -ID, -Location, -Description, ... (unknown ones ignored)


@asynccontextmanager
async def _receive_folder(app: FastAPI) -> AsyncIterator[None]:
    """At start, remove what dead `vna api` processes of this host left in their receive
    folders (never acknowledged), and a folder of this pid (a dead process's); at stop,
    this process's own."""
    incoming = app.state.context.settings.incoming_dir
    own = incoming / receive_folders.folder_name(RECEIVE_PREFIX)
    receive_folders.remove_dead(incoming, RECEIVE_PREFIX)
    shutil.rmtree(own, ignore_errors=True)
    try:
        yield
    finally:
        shutil.rmtree(own, ignore_errors=True)


router = APIRouter(prefix=PREFIX, tags=["dicomweb"], lifespan=_receive_folder)
Storer = Annotated[Principal, authorize(Action.DICOMWEB_STORE)]


class StowError(Exception):
    """A request refused as a whole: HTTP status and a message for the client."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


# -- the pipe: event loop -> part thread ---------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Begin:
    """A part begins: its receive file."""

    path: str


class _End:
    """The current part is complete: archive it."""


_END = _End()
_Op = _Begin | bytes | _End | FailedInstance


class _PartPipe(BoundedPipe[_Op]):
    """What the event loop read, in order, to the part thread: at most `high_water` bytes
    of part data in between (markers weigh nothing). `close` ends the stream after what
    was put, `cut` after the last complete part (what was put of the part being received
    is dropped)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, high_water: int = PIPE_BYTES) -> None:
        super().__init__(loop, high_water, _weight)

    async def send(self, op: _Op) -> None:
        if not await self.put(op):
            raise RuntimeError("the part thread stopped")

    def cut(self) -> None:
        with self._cond:
            while self._items and isinstance(self._items[-1], bytes | _Begin):
                self._size -= _weight(self._items.pop())
            self._closed = True
            self._cond.notify()


def _weight(op: _Op) -> int:
    return len(op) if isinstance(op, bytes) else 0


# -- the part reader -------------------------------------------------------------------------

class _PartFile:
    """One part's receive file (`Part10Writer`: hashed, its head kept). A part that starts
    with its file meta group, without the 128-byte preamble and "DICM" (pydicom's
    `dcmwrite` of a dataset read from no file, which is what dicomweb-client sends), gets
    them put in front: the archive keeps Part 10 files that every reader takes, and the
    dataset and its file meta stay byte for byte as sent."""

    def __init__(self, path: str) -> None:
        self.writer = Part10Writer(path)
        self._head: bytearray | None = bytearray()  # until the preamble is decided

    def write(self, data: bytes) -> None:
        if self._head is None:
            self.writer.write(data)
            return
        self._head += data
        if len(self._head) >= len(PREAMBLE):
            self._write_head()

    def _write_head(self) -> None:
        head, self._head = bytes(self._head or b""), None
        self.writer.write(PREAMBLE + head if lacks_preamble(head) else head)

    def finish(self) -> ReceivedFile:
        if self._head:
            self._write_head()
        return self.writer.finish()

    def discard(self) -> None:
        self.writer.discard()


class _TooLarge(Exception):
    pass


class StowReceiver:
    """Reads one STOW-RS body: body chunks in, one `Outcome` per part out, in part order.

    `archive_part` turns a complete receive file into its outcome (and consumes the file,
    whatever happens); it runs in the part thread. A part that is not application/dicom is
    skipped (its bytes are not written) and fails with 0xC122. A body that is malformed,
    cut off, over `max_bytes` or with more than `max_parts` parts raises `StowError`; the
    part being received then leaves no file, and every part complete before it is archived
    all the same (`self.outcomes` says what became of them). Nothing here knows HTTP beyond
    the status of a StowError, so it can be driven (and fuzzed) with any async iterable of
    bytes and any `archive_part`.
    """

    def __init__(self, folder: Path, archive_part: Callable[[ReceivedFile], Outcome], *,
                 max_bytes: int, max_parts: int = MAX_PARTS) -> None:
        self.folder = folder
        self.archive_part = archive_part
        self.max_bytes = max_bytes
        self.max_parts = max_parts
        self.outcomes: list[Outcome] = []  # filled by the part thread
        self.received = 0  # body bytes read

    async def receive(self, body: AsyncIterable[bytes], boundary: bytes) -> list[Outcome]:
        pipe = _PartPipe(asyncio.get_running_loop())
        worker = in_own_thread(lambda: self._work(pipe), "stow-parts")
        try:
            await self._read(body, boundary, pipe)
            pipe.close()
            await asyncio.shield(worker)
        except BaseException:
            pipe.cut()
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await asyncio.shield(worker)  # the partial file is gone once it returns
            raise
        return self.outcomes

    async def _read(self, body: AsyncIterable[bytes], boundary: bytes,
                    pipe: _PartPipe) -> None:
        parts = 0
        writing = False  # the current part's bytes go to the pipe
        try:
            events = read_parts(self._limited(body), boundary,
                                max_header_count=MAX_PART_HEADERS)
            async with contextlib.aclosing(events):
                async for event in events:
                    if isinstance(event, PartData):  # by far the most frequent
                        if writing:
                            await pipe.send(event.data)
                    elif isinstance(event, PartStart):
                        parts += 1
                        if parts > self.max_parts:
                            raise StowError(413, f"more than {self.max_parts} instances in "
                                                 f"one request: send them in several")
                        content_type = event.content_type
                        writing = stow.is_dicom_part(content_type)
                        await pipe.send(_Begin(str(self.folder / f"{uuid.uuid4().hex}.part"))
                                       if writing else stow.not_dicom_part(str(content_type)))
                    else:
                        assert isinstance(event, PartEnd)
                        if writing:
                            await pipe.send(_END)
                        writing = False
        except ClientDisconnect:
            raise StowError(400, "the client disconnected before the body was complete"
                            ) from None
        except TruncatedBody:
            raise StowError(400, "the multipart body ended before its closing boundary"
                            ) from None
        except MalformedBody as exc:
            raise StowError(400, f"the multipart body is malformed: {exc}") from None
        except _TooLarge:
            raise StowError(413, f"the request body is larger than {self.max_bytes} bytes "
                                 f"(VNA_MAX_UPLOAD_BYTES)") from None
        if not parts:
            raise StowError(400, "the multipart body holds no part: nothing to store")

    async def _limited(self, body: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
        async for chunk in body:
            self.received += len(chunk)
            if self.received > self.max_bytes:
                raise _TooLarge()
            yield chunk

    # -- the part thread ------------------------------------------------------------------

    def _work(self, pipe: _PartPipe) -> None:
        """Write each part to its receive file and archive it when complete, until the
        pipe is closed (or cut: the part being written is then removed)."""
        writer: _PartFile | None = None
        failure: FailedInstance | None = None  # why the current part has no writer
        try:
            while True:
                op = pipe.get()
                if op is None:
                    return
                if isinstance(op, bytes):
                    if writer is not None:
                        try:
                            writer.write(op)
                        except OSError as exc:  # a full disk: the rest of the part is dropped
                            writer.discard()
                            writer, failure = None, _unavailable(exc)
                elif isinstance(op, _Begin):
                    try:
                        writer, failure = _PartFile(op.path), None
                    except OSError as exc:
                        writer, failure = None, _unavailable(exc)
                elif isinstance(op, _End):
                    if writer is not None:
                        self.outcomes.append(self._complete(writer))
                    else:
                        assert failure is not None
                        self.outcomes.append(failure)
                    writer = None
                else:  # decided on the event loop (a part that is not application/dicom)
                    self.outcomes.append(op)
        finally:
            if writer is not None:
                writer.discard()
            pipe.reader_done()

    def _complete(self, writer: _PartFile) -> Outcome:
        try:
            received = writer.finish()
        except ValueError as exc:
            writer.discard()
            return FailedInstance(STATUS_CANNOT_UNDERSTAND, str(exc))
        except OSError as exc:
            writer.discard()
            return _unavailable(exc)
        try:
            return self.archive_part(received)
        except Exception as exc:  # archive_part answers every failure it foresees
            log.exception("STOW-RS: archiving a part failed")
            with contextlib.suppress(OSError):
                os.unlink(received.path)
            return FailedInstance(STATUS_PROCESSING_FAILURE,
                                  f"processing failure ({type(exc).__name__})")


_failures = FailureLog(log)


def _unavailable(exc: BaseException) -> FailedInstance:
    """0xA700 for a disk, index or object store that failed under the archive."""
    what = failure_of(exc) or f"{type(exc).__name__}"
    return stow.out_of_resources(what, full=is_storage_full(exc))


@dataclass
class ArchivePart:
    """A complete part into the archive: read its header, STOW-RS's own checks
    (`vna.dicom.stow.refusal`), then the C-STORE ingest path. Consumes the file."""

    archive: Archive
    study: str | None
    departments: frozenset[str]

    def __call__(self, received: ReceivedFile) -> Outcome:
        try:
            return self._archive(received)
        finally:
            with contextlib.suppress(OSError):  # store_file(move=True) took it already
                os.unlink(received.path)

    def _archive(self, received: ReceivedFile) -> Outcome:
        try:
            prepared = prepare_received(received)
        except InvalidInstance as exc:  # a syntax it does not take first: why it is unread
            return stow.unsupported_transfer_syntax(received.transfer_syntax_uid) or \
                FailedInstance(refusal_status("refused", isinstance(exc, UnreadableInstance)),
                               str(exc))
        header = prepared.header
        refused = stow.refusal(header, received.transfer_syntax_uid, study=self.study,
                               departments=self.departments)
        if refused is not None:
            return refused
        try:
            result = self.archive.store_file(prepared, source_aet=SOURCE_AET, move=True)
        except Exception as exc:
            if failure_of(exc) is None:
                raise  # a bug: 0x0110 with its traceback
            _failures.failed("STOW-RS", exc)
            return _unavailable(exc)
        if result.ok:
            return StoredInstance(header.sop_class_uid, header.sop_instance_uid,
                                  header.study_instance_uid, header.series_instance_uid,
                                  header.patient.get("patient_id") or None)
        log.warning("STOW-RS refused %s: %s", result.sop_instance_uid,
                    result.outcome if result.conflict else result.reason)
        return FailedInstance(refusal_status(result.outcome, result.unreadable),
                              error_comment(result.reason or result.outcome),
                              header.sop_class_uid, header.sop_instance_uid)


# -- the routes --------------------------------------------------------------------------------

_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {DICOM_JSON: {"schema": DICOM_JSON_SCHEMA["items"]}},
          "description": "every instance stored: the Store Instances Response (PS3.18 "
                         "10.5.3) in the DICOM JSON model"},
    202: {"content": {DICOM_JSON: {"schema": DICOM_JSON_SCHEMA["items"]}},
          "description": "some instances stored; FailedSOPSequence says why the others "
                         "were not"},
    400: {"description": "the body is not multipart as announced, cut off, or empty"},
    409: {"content": {DICOM_JSON: {"schema": DICOM_JSON_SCHEMA["items"]}},
          "description": "no instance stored; FailedSOPSequence says why"},
    413: {"description": "over VNA_MAX_UPLOAD_BYTES, or more than 10,000 parts"},
    415: {"description": "not multipart/related; type=\"application/dicom\""},
    503: {"description": "nothing stored: the index or object storage is unavailable"},
    507: {"description": "nothing stored: the disk, index or object storage is full"},
}
_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {
    'multipart/related; type="application/dicom"': {"schema": {
        "type": "string", "format": "binary",
        "description": "one DICOM Part 10 file per part (Content-Type: application/dicom)"}}}}}


def _media_type(request: Request) -> str:
    """application/dicom+json, or application/json for a client that asks for that only."""
    types = {r.media_type for r in require_json(request)}
    return "application/json" if "application/json" in types and DICOM_JSON not in types \
        else DICOM_JSON


async def _store(request: Request, settings: Settings, archive: Archive, principal: Principal,
                 study: str | None) -> Response:
    if study is not None:
        check_uid("StudyInstanceUID", study)
        audit_study(request, study)
    media_type = _media_type(request)
    try:
        boundary = stow.request_boundary(request.headers.get("content-type"))
    except stow.UnsupportedMediaType as exc:
        raise HTTPException(415, str(exc)) from None
    except stow.MalformedRequest as exc:
        raise HTTPException(400, str(exc)) from None
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > settings.max_upload_bytes:
        raise HTTPException(413, f"the request body is larger than "
                                 f"{settings.max_upload_bytes} bytes (VNA_MAX_UPLOAD_BYTES)")
    folder = receive_folders.own_folder(settings.incoming_dir, RECEIVE_PREFIX)
    receiver = StowReceiver(folder, ArchivePart(archive, study, principal.departments),
                            max_bytes=settings.max_upload_bytes)
    try:
        outcomes = await receiver.receive(request.stream(), boundary)
    except StowError as exc:
        stored = [o for o in receiver.outcomes if isinstance(o, StoredInstance)]
        _audit(request, study, stored)
        kept = f"; the {len(stored)} instance(s) complete before that were stored" \
            if stored else "; nothing was stored"
        raise HTTPException(exc.status, exc.detail + kept) from None
    stored = [o for o in outcomes if isinstance(o, StoredInstance)]
    _audit(request, study, stored)
    base = dicomweb_base(request)
    body = stow.response(
        outcomes, study=study, study_url=lambda s: study_url(base, s),
        instance_url=lambda o: instance_url(base, o.study_instance_uid,
                                            o.series_instance_uid, o.sop_instance_uid))
    status = stow.http_status(outcomes)
    headers = {"Retry-After": "5"} if status == 503 else None
    return DicomJSONResponse(body, status_code=status, media_type=media_type, headers=headers)


def _audit(request: Request, study: str | None, stored: list[StoredInstance]) -> None:
    if stored:
        if study is None:
            audit_study(request, stored[0].study_instance_uid)
        audit_patient(request, stored[0].patient_id)


@router.post("/studies", responses=_RESPONSES, response_class=DicomJSONResponse,
             openapi_extra=_BODY, summary="Store instances (STOW-RS)")
async def store_instances(request: Request, settings: SettingsDep, archive: ArchiveDep,
                          principal: Storer) -> Response:
    """A multipart/related body of application/dicom parts, each archived as a C-STORE
    would be; the Store Instances Response says what became of each."""
    return await _store(request, settings, archive, principal, None)


@router.post("/studies/{study}", responses=_RESPONSES, response_class=DicomJSONResponse,
             openapi_extra=_BODY, summary="Store instances of one study (STOW-RS)")
async def store_study_instances(request: Request, study: str, settings: SettingsDep,
                                archive: ArchiveDep, principal: Storer) -> Response:
    """As POST /studies; an instance of another study fails (0xA900) and is not stored."""
    return await _store(request, settings, archive, principal, study)
