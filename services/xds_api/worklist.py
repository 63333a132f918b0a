"""Routes of the worklist (SPEC "Worklist"): place, list, read and cancel scheduled procedure
steps, next to the HL7 orders. Thin: an item is checked by `vna.orders.ScheduledStep` (the
same rules as an HL7 order), placed by `storage.index.orders.place` in one transaction, and
read through `storage.index.worklist`, the Modality Worklist's own queries."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import IntegrityError
from starlette.responses import JSONResponse

from services.xds_api.deps import IndexDep, PageOffset, SettingsDep
from services.xds_api.schemas import WorklistItem, WorklistPage
from services.xds_api.security import audit_context, authorize, require_department
from storage.index import orders, worklist
from storage.index.db import Index
from vna.access import Action, Principal
from vna.dicom.identity import PatientIdentity
from vna.documents.entry import CODE_PATTERN, PATIENT_ID_PATTERN
from vna.orders import InvalidOrder, OrderStatus, PatientRecord, ScheduledStep, utc_now
from vna.worklist import WorklistEntry, WorklistQuery

router = APIRouter(prefix="/api/v1", tags=["worklist"])

Text = Annotated[str, Field(max_length=324)]


class WorklistItemRequest(BaseModel):
    """A scheduled procedure step to place (camelCase of `vna.orders.ScheduledStep`).
    Left out: requestedProcedureId and scheduledProcedureStepId default to the accession
    number, studyInstanceUID to a new 2.25 UID (as dcm4chee-arc does)."""

    model_config = ConfigDict(extra="forbid")

    patientId: Annotated[str, Field(min_length=1, max_length=64)]
    issuerOfPatientId: Annotated[str, Field(max_length=64)] = ""
    patientName: Text | None = None  # DICOM PN, Family^Given
    patientBirthDate: date | None = None
    patientSex: str | None = None  # M, F or O
    accessionNumber: str
    modality: str
    scheduledStartDateTime: datetime  # ISO 8601 with its zone
    requestedProcedureId: str = ""
    requestedProcedureDescription: Text | None = None
    scheduledProcedureStepId: str = ""
    scheduledProcedureStepDescription: Text | None = None
    scheduledStationAETitle: Text | None = None
    scheduledStationName: Text | None = None
    scheduledPerformingPhysicianName: Text | None = None
    referringPhysicianName: Text | None = None
    requestingPhysicianName: Text | None = None
    department: Annotated[str, Field(pattern=CODE_PATTERN)] | None = None
    priority: Text | None = None
    placerOrderNumber: Text | None = None
    fillerOrderNumber: Text | None = None
    studyInstanceUID: Text | None = None
    referralAt: datetime | None = None
    placedAt: datetime | None = None

    def step(self) -> ScheduledStep:
        """The domain's step; raises `InvalidOrder` naming the DICOM field."""
        for name, value in (("referralAt", self.referralAt), ("placedAt", self.placedAt)):
            if value is not None and value.tzinfo is None:
                raise InvalidOrder(name, "has no time zone")
        patient = PatientRecord(
            PatientIdentity(self.patientId, self.issuerOfPatientId), name=self.patientName,
            birth_date=self.patientBirthDate.strftime("%Y%m%d") if self.patientBirthDate
            else None, sex=self.patientSex)
        extra = {"study_instance_uid": self.studyInstanceUID} if self.studyInstanceUID \
            else {}
        return ScheduledStep(
            patient=patient, accession_number=self.accessionNumber, modality=self.modality,
            scheduled_at=self.scheduledStartDateTime,
            requested_procedure_id=self.requestedProcedureId,
            requested_procedure_description=self.requestedProcedureDescription,
            scheduled_procedure_step_id=self.scheduledProcedureStepId,
            scheduled_procedure_step_description=self.scheduledProcedureStepDescription,
            scheduled_station_aet=self.scheduledStationAETitle,
            scheduled_station_name=self.scheduledStationName,
            scheduled_performing_physician_name=self.scheduledPerformingPhysicianName,
            referring_physician_name=self.referringPhysicianName,
            requesting_physician_name=self.requestingPhysicianName,
            department=self.department, priority=self.priority,
            placer_order_number=self.placerOrderNumber,
            filler_order_number=self.fillerOrderNumber, referral_at=self.referralAt,
            placed_at=self.placedAt, **extra)


# `InvalidOrder` names DICOM fields (as HL7's ERR does); the API answers with its own names.
_FIELDS = {
    "PatientID": "patientId", "PatientBirthDate": "patientBirthDate",
    "PatientSex": "patientSex", "AccessionNumber": "accessionNumber", "Modality": "modality",
    "ScheduledProcedureStepStartDateTime": "scheduledStartDateTime",
    "RequestedProcedureID": "requestedProcedureId",
    "RequestedProcedureDescription": "requestedProcedureDescription",
    "ScheduledProcedureStepID": "scheduledProcedureStepId",
    "ScheduledProcedureStepDescription": "scheduledProcedureStepDescription",
    "ScheduledStationAETitle": "scheduledStationAETitle",
    "ScheduledStationName": "scheduledStationName",
    "ScheduledPerformingPhysicianName": "scheduledPerformingPhysicianName",
    "ReferringPhysicianName": "referringPhysicianName",
    "RequestingPhysician": "requestingPhysicianName", "PlacerOrderNumber": "placerOrderNumber",
    "FillerOrderNumber": "fillerOrderNumber", "StudyInstanceUID": "studyInstanceUID",
}


def _refusal(exc: InvalidOrder) -> str:
    return f"{_FIELDS.get(exc.field, exc.field)}: {exc.reason}"


@router.post("/worklist", status_code=201, response_model=WorklistItem,
             summary="Place a scheduled procedure step on the Modality Worklist")
def place_item(request: Request, body: WorklistItemRequest, index: IndexDep,
               settings: SettingsDep,
               principal: Annotated[Principal, authorize(Action.WORKLIST_WRITE)],
               ) -> JSONResponse:
    """201 with the item (its id, and the defaults filled in); 409 if an order with the
    accession number or Study Instance UID exists; 422 naming the field that is wrong.
    Nothing is written on a refusal."""
    ctx = audit_context(request)
    ctx.patient_id = body.patientId
    require_department(principal, body.department)
    try:
        step = body.step()
        entry = _place(index, step, settings.timezone)
    except orders.OrderExists as exc:
        raise HTTPException(409, _refusal(exc)) from None
    except InvalidOrder as exc:
        raise HTTPException(422, _refusal(exc)) from None
    order_id = entry.id
    ctx.resource = str(order_id)
    return JSONResponse(WorklistItem.of(entry).model_dump(mode="json"), status_code=201,
                        headers={"Location": f"/api/v1/worklist/{order_id}"})


def _place(index: Index, step: ScheduledStep, zone: str) -> WorklistEntry:
    """Place `step` in one transaction. A concurrent request that placed the same order or
    created the same patient meanwhile (a unique key on PostgreSQL) is seen on a second
    try: then the order exists (409), or the patient does (placed under it)."""
    for attempt in (1, 2):
        try:
            with index.begin() as conn:
                entry = worklist.get(conn, orders.place(conn, step, source="api", zone=zone,
                                                        now=utc_now()))
                assert entry is not None
                return entry
        except IntegrityError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _yyyymmdd(d: date | None) -> str | None:
    return d.strftime("%Y%m%d") if d else None


@router.get("/worklist", response_model=WorklistPage, summary="Find worklist items")
def list_items(
    request: Request,
    index: IndexDep,
    principal: Annotated[Principal, authorize(Action.WORKLIST_READ)],
    modality: Annotated[str | None, Query(max_length=16)] = None,
    scheduledStationAETitle: Annotated[str | None, Query(max_length=16)] = None,
    on: Annotated[date | None, Query(alias="date")] = None,
    since: Annotated[date | None, Query(alias="from")] = None,
    until: Annotated[date | None, Query(alias="to")] = None,
    patientId: Annotated[str | None, Query(pattern=PATIENT_ID_PATTERN)] = None,
    issuerOfPatientId: Annotated[str | None, Query(max_length=64)] = None,
    accessionNumber: Annotated[str | None, Query(max_length=16)] = None,
    status: Annotated[list[OrderStatus], Query()] = [],  # noqa: B006 - FastAPI query lists
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: PageOffset = 0,
) -> WorklistPage:
    """Items matching every filter given (exact values; `date` is the scheduled day in
    VNA_TIMEZONE, `from`/`to` a range of days; `status` repeatable, default every status),
    by scheduled time. A department-limited token sees its departments' items only."""
    audit_context(request).patient_id = patientId
    if on is not None and (since is not None or until is not None):
        raise HTTPException(422, "date: give either date or from/to")
    q = WorklistQuery.for_listing(
        modality=modality, station_aet=scheduledStationAETitle,
        date_from=_yyyymmdd(on or since), date_to=_yyyymmdd(on or until),
        patient_id=patientId, issuer=issuerOfPatientId, accession_number=accessionNumber,
        statuses=status, departments=principal.departments)
    with index.read_session() as s:
        total = worklist.count(s, q)
        entries = worklist.find(s, q, limit=limit, offset=offset)
    return WorklistPage(total=total, limit=limit, offset=offset,
                        items=[WorklistItem.of(e) for e in entries])


def _item(request: Request, index: IndexDep, principal: Principal, item_id: int,
          ) -> WorklistItem:
    ctx = audit_context(request)
    ctx.resource = str(item_id)
    with index.read_session() as s:
        entry = worklist.get(s, item_id)
    if entry is None:
        raise HTTPException(404, f"no worklist item {item_id}")
    ctx.patient_id = entry.patient_id
    require_department(principal, entry.department)
    return WorklistItem.of(entry)


# A row id: a 64-bit integer (a larger one is a 422, not an overflow in the database).
ItemId = Annotated[int, Path(ge=1, le=2**63 - 1)]


@router.get("/worklist/{item_id}", response_model=WorklistItem,
            summary="One worklist item")
def get_item(request: Request, item_id: ItemId, index: IndexDep,
             principal: Annotated[Principal, authorize(Action.WORKLIST_READ)],
             ) -> WorklistItem:
    return _item(request, index, principal, item_id)


@router.delete("/worklist/{item_id}", response_model=WorklistItem,
               summary="Cancel a worklist item")
def cancel_item(request: Request, item_id: ItemId, index: IndexDep,
                principal: Annotated[Principal, authorize(Action.WORKLIST_WRITE)],
                ) -> WorklistItem:
    """The item leaves the worklist (status CANCELLED) but is kept, for the lead times and
    the quality rules. 404 if unknown; 409 once the exam has started or ended; cancelling a
    cancelled item again changes nothing."""
    _item(request, index, principal, item_id)  # 404 / 403 before anything changes
    with index.begin() as conn:
        before = orders.cancel(conn, item_id, now=utc_now())
        entry = worklist.get(conn, item_id)
    if before is None or entry is None:
        raise HTTPException(404, f"no worklist item {item_id}")
    if before not in (OrderStatus.SCHEDULED, OrderStatus.CANCELLED):
        raise HTTPException(409, f"the item is {before.value} already: a performed or "
                                 f"discontinued step cannot be cancelled")
    return WorklistItem.of(entry)
