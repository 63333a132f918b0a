"""Routes of the document archive (SPEC "Documents"): upload, FindDocuments, retrieve,
review, replace, and the patient timeline. Thin: validation lives in `vna.documents`,
queries in `storage.index.documents`, byte streaming in `upload` and `content`, the
answers' shapes and links in `schemas`."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import anyio.to_thread
from fastapi import APIRouter, HTTPException, Path, Query, Request
from pydantic import BaseModel, Field, ValidationError
from starlette.responses import JSONResponse, Response

from services.xds_api.content import content_response
from services.xds_api.deps import DocumentsDep, PageOffset, SettingsDep, StoreDep
from services.xds_api.schemas import DocumentEntry, FindDocumentsResponse, Timeline, to_entry
from services.xds_api.security import audit_context, authorize, require_department
from services.xds_api.upload import UploadError, UploadReceiver
from storage.index.documents import Conflict, Documents, FindDocumentsQuery, metadata_of
from storage.index.models import Document
from storage.keys import document_object_key
from storage.objectstore import ObjectStore
from vna.access import Action, Principal
from vna.documents.entry import (
    CODE_PATTERN,
    PATIENT_ID_PATTERN,
    UNIQUE_ID_PATTERN,
    AvailabilityStatus,
    DocumentMetadata,
    MetadataPatch,
    Source,
    as_utc,
    new_entry_uuid,
    new_unique_id,
    parse_metadata,
)
from vna.settings import Settings

router = APIRouter(prefix="/api/v1", tags=["documents"])

UniqueId = Annotated[str, Path(pattern=UNIQUE_ID_PATTERN, description="uniqueId (an OID)")]
PatientIdQuery = Annotated[str | None, Query(alias="patientId", pattern=PATIENT_ID_PATTERN)]
CodeList = Annotated[list[Annotated[str, Field(pattern=CODE_PATTERN)]], Query()]

_UPLOAD_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {
        "type": "object", "required": ["metadata", "file"],
        "properties": {
            "metadata": {"type": "string", "description":
                         "DocumentEntry attributes as JSON (send this part first)"},
            "file": {"type": "string", "format": "binary"}}}}}}}


class ReviewRequest(BaseModel):
    decision: Literal["approve", "reject"]
    reason: Annotated[str, Field(max_length=2000)] | None = None


def _visible(request: Request, documents: Documents, principal: Principal,
             unique_id: str) -> Document:
    """The entry, if this principal may see it: 404 if it does not exist or its status is
    hidden from the role (no hint that it exists), 403 outside the token's departments."""
    ctx = audit_context(request)
    ctx.resource = unique_id
    row = documents.get(unique_id)
    if row is None or not principal.sees(row.availability_status):
        raise HTTPException(404, f"no document {unique_id}")
    ctx.patient_id = row.patient_id
    require_department(principal, row.practice_setting_code)
    return row


async def _receive(request: Request, settings: Settings, store: ObjectStore,
                   principal: Principal, make_metadata: Any,
                   ) -> tuple[DocumentMetadata, Any, str, str, UploadReceiver]:
    """Stream the upload into the store; returns metadata, object and the new ids."""
    ctx = audit_context(request)
    entry_uuid, unique_id = new_entry_uuid(), new_unique_id()
    ctx.resource = unique_id

    def on_metadata(raw: bytes) -> DocumentMetadata:
        try:
            meta: DocumentMetadata = make_metadata(raw)
        except ValidationError as exc:
            raise UploadError(422, "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'metadata'}: {e['msg']}"
                for e in exc.errors(include_url=False))) from None
        except ValueError as exc:
            raise UploadError(400, str(exc)) from None
        ctx.patient_id = meta.patientId
        if not principal.in_department(meta.practiceSettingCode):
            raise UploadError(403, f"this token may not store documents of department "
                                   f"{meta.practiceSettingCode}")
        if principal.source is Source.PATIENT:  # a portal: what patients send waits for review
            meta = meta.model_copy(update={"source": Source.PATIENT})
        return meta

    receiver = UploadReceiver(
        store, document_object_key(entry_uuid, datetime.now(UTC)),
        allowed=settings.allowed_document_mime_types, max_bytes=settings.max_upload_bytes,
        on_metadata=on_metadata)
    try:
        upload = await receiver.receive(request)
    except UploadError as exc:
        raise HTTPException(exc.status, exc.detail) from None
    return upload.metadata, upload.object, unique_id, entry_uuid, receiver


async def _commit(settings: Settings, documents: Documents, principal: Principal,
                  receiver: UploadReceiver, **kwargs: Any) -> Document:
    """Write the index row; if that fails, the stored object goes again."""
    try:
        return await anyio.to_thread.run_sync(lambda: documents.add(
            repository_unique_id=settings.repository_unique_id,
            submitted_by=principal.token_id, **kwargs))
    except Conflict as exc:  # rolled back
        await receiver.discard()
        raise HTTPException(409, str(exc)) from None
    except BaseException:
        # A failed COMMIT may still have committed: delete the object only when the row is
        # certainly not there. An orphan object is harmless; a row without one is a loss.
        with contextlib.suppress(Exception):
            if not await anyio.to_thread.run_sync(documents.exists, kwargs["unique_id"]):
                await receiver.discard()
        raise


@router.post("/documents", status_code=201, response_model=DocumentEntry,
             openapi_extra=_UPLOAD_BODY, summary="Store a document (ITI-41 style)")
async def upload_document(
        request: Request, settings: SettingsDep, store: StoreDep, documents: DocumentsDep,
        principal: Annotated[Principal, authorize(Action.DOCUMENT_CREATE)]) -> JSONResponse:
    """multipart/form-data with `metadata` (JSON DocumentEntry attributes) and `file`. The
    file is streamed to object storage; its type is sniffed and must be allowed and agree
    with what was declared. 201 with the DocumentEntry; on any error nothing is kept."""
    meta, obj, unique_id, entry_uuid, receiver = await _receive(
        request, settings, store, principal,
        lambda raw: parse_metadata(raw, DocumentMetadata))
    row = await _commit(settings, documents, principal, receiver, meta=meta, obj=obj,
                        unique_id=unique_id, entry_uuid=entry_uuid)
    return JSONResponse(to_entry(row).model_dump(mode="json"), status_code=201,
                        headers={"Location": f"/api/v1/documents/{unique_id}"})


@router.post("/documents/{uniqueId}/replace", status_code=201, response_model=DocumentEntry,
             openapi_extra=_UPLOAD_BODY, summary="Replace a document with a new version")
async def replace_document(
        request: Request, uniqueId: UniqueId, settings: SettingsDep, store: StoreDep,
        documents: DocumentsDep,
        principal: Annotated[Principal, authorize(Action.DOCUMENT_REPLACE)]) -> JSONResponse:
    """Like an upload; `metadata` holds only what changes (it may be `{}`). The old entry
    becomes Deprecated, still retrievable by its uniqueId. A patient's replacement waits
    for review, and the old one stays Approved until it is approved."""
    ctx = audit_context(request)
    ctx.resource = uniqueId
    old = await anyio.to_thread.run_sync(documents.get, uniqueId)
    if old is None:
        raise HTTPException(404, f"no document {uniqueId}")
    ctx.patient_id = old.patient_id
    require_department(principal, old.practice_setting_code)
    if principal.source is Source.PATIENT and old.source != Source.PATIENT.value:
        raise HTTPException(403, "a patient portal's token may replace only documents "
                                 "patients submitted")
    if old.availability_status != AvailabilityStatus.APPROVED:
        raise HTTPException(409, "only an Approved document can be replaced")
    base = metadata_of(old)

    def merged(raw: bytes) -> DocumentMetadata:
        patch: MetadataPatch = parse_metadata(raw or b"{}", MetadataPatch)
        return patch.apply_to(base)

    meta, obj, unique_id, entry_uuid, receiver = await _receive(request, settings, store,
                                                                principal, merged)
    row = await _commit(settings, documents, principal, receiver, meta=meta, obj=obj,
                        unique_id=unique_id, entry_uuid=entry_uuid, replaces=old)
    return JSONResponse(to_entry(row).model_dump(mode="json"), status_code=201,
                        headers={"Location": f"/api/v1/documents/{unique_id}"})


@router.get("/documents", response_model=FindDocumentsResponse,
            summary="FindDocuments (ITI-18 style)")
def find_documents(
    request: Request,
    documents: DocumentsDep,
    principal: Annotated[Principal, authorize(Action.DOCUMENT_FIND)],
    patient_id: PatientIdQuery = None,
    classCode: CodeList = [],  # noqa: B006 - FastAPI query lists
    typeCode: CodeList = [],  # noqa: B006
    practiceSettingCode: CodeList = [],  # noqa: B006
    creationTimeFrom: datetime | None = None,
    creationTimeTo: datetime | None = None,
    availabilityStatus: Annotated[list[AvailabilityStatus], Query()] = [  # noqa: B006
        AvailabilityStatus.APPROVED],
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: PageOffset = 0,
) -> FindDocumentsResponse:
    """Entries matching all given filters (a list filter matches any of its values), newest
    first. `patientId` is required unless the token is an admin's; Deprecated entries are
    found only when asked for with `availabilityStatus`."""
    ctx = audit_context(request)
    ctx.patient_id = patient_id
    if patient_id is None and not principal.is_admin:
        raise HTTPException(400, "patientId is required")
    for status in availabilityStatus:
        if not principal.sees(status):
            raise HTTPException(403, f"role {principal.role.value} may not see {status} "
                                     f"documents")
    if practiceSettingCode and not principal.departments_within(practiceSettingCode):
        raise HTTPException(403, f"this token is limited to departments "
                                 f"{sorted(principal.departments)}")
    q = FindDocumentsQuery(
        patient_id=patient_id, class_codes=classCode, type_codes=typeCode,
        practice_setting_codes=practiceSettingCode,
        creation_from=creationTimeFrom and as_utc(creationTimeFrom),
        creation_to=creationTimeTo and as_utc(creationTimeTo),
        statuses=availabilityStatus, departments=principal.departments, limit=limit,
        offset=offset)
    rows, total = documents.find(q)
    return FindDocumentsResponse(total=total, limit=limit, offset=offset,
                                 documents=[to_entry(r) for r in rows])


@router.get("/documents/{uniqueId}", response_model=DocumentEntry,
            summary="The DocumentEntry of one document")
def get_document(request: Request, uniqueId: UniqueId, documents: DocumentsDep,
                 principal: Annotated[Principal, authorize(Action.DOCUMENT_READ)],
                 ) -> DocumentEntry:
    return to_entry(_visible(request, documents, principal, uniqueId))


@router.get("/documents/{uniqueId}/content", summary="The document's bytes (Range, ETag)",
            response_class=Response,
            responses={200: {"content": {"application/octet-stream": {}}},
                       206: {"description": "the requested byte range"},
                       304: {"description": "not modified (If-None-Match)"},
                       416: {"description": "range outside the document"}})
def get_content(request: Request, uniqueId: UniqueId, documents: DocumentsDep,
                store: StoreDep,
                principal: Annotated[Principal, authorize(Action.DOCUMENT_CONTENT)],
                ) -> Response:
    row = _visible(request, documents, principal, uniqueId)
    return content_response(
        store, key=row.storage_key, size=row.size, sha256=row.sha256,
        mime_type=row.mime_type, filename=row.filename, unique_id=row.unique_id,
        range_header=request.headers.get("range"),
        if_none_match=request.headers.get("if-none-match"),
        if_range=request.headers.get("if-range"))


@router.post("/documents/{uniqueId}/review", response_model=DocumentEntry,
             summary="Approve or reject a patient's upload")
def review_document(request: Request, uniqueId: UniqueId, body: ReviewRequest,
                    documents: DocumentsDep,
                    principal: Annotated[Principal, authorize(Action.DOCUMENT_REVIEW)],
                    ) -> DocumentEntry:
    """For `source=patient` entries in status Submitted. Rejected entries are kept (for
    the audit trail) and shown to nobody but admins; a rejection needs a reason."""
    row = _visible(request, documents, principal, uniqueId)
    if row.source != Source.PATIENT.value:
        raise HTTPException(409, "only documents a patient submitted are reviewed")
    if body.decision == "reject" and not (body.reason or "").strip():
        raise HTTPException(422, "a rejection needs a reason")
    try:
        row = documents.review(uniqueId, approve=body.decision == "approve",
                                         reason=body.reason, reviewer=principal.token_id)
    except Conflict as exc:
        raise HTTPException(409, str(exc)) from None
    return to_entry(row)


@router.get("/patients/{patientId}/timeline", tags=["patients"], response_model=Timeline,
            summary="Everything about one patient, newest first")
def patient_timeline(
    request: Request,
    patientId: Annotated[str, Path(pattern=PATIENT_ID_PATTERN)],
    documents: DocumentsDep,
    settings: SettingsDep,
    principal: Annotated[Principal, authorize(Action.TIMELINE_READ)],
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> Timeline:
    """DICOM studies (from the DICOM index) and Approved documents of the patient. A
    study names the AE and Study Instance UID to retrieve it with (C-MOVE / C-GET); a
    document links to its entry and content."""
    audit_context(request).patient_id = patientId
    items = documents.timeline(patientId, departments=principal.departments, limit=limit)
    return Timeline.of(patientId, items, ae_title=settings.dicom_aet)
