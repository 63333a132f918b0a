"""The HTTP API's answers: response models (camelCase, as the API speaks), and how domain
objects and index rows become them. Links and wire names are made here, nowhere below.

Times are pydantic's (UTC as `Z`), except the statistics' interval starts and peak hours,
which the API has always given as `datetime.isoformat()` (`+01:00`, `+00:00`): `IsoTime`.
The points of a statistics series are TypedDicts, not models: a year by the hour is tens of
thousands of them, and a model each would make the answer twice as slow.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Literal, Self

from pydantic import BaseModel, Field, PlainSerializer
from typing_extensions import TypedDict

from storage.index.documents import TimelineStudy
from storage.index.models import AuditEvent, Document, Hl7Message
from vna.documents.entry import AvailabilityStatus, Source
from vna.leadtimes import RELATIVE_RESOLUTION
from vna.quality import Distribution, Finding
from vna.stats import Forecast, Interval, Rates, StorageGrowth, Throughput
from vna.worklist import WorklistEntry

IsoTime = Annotated[datetime, PlainSerializer(lambda t: t.isoformat(), return_type=str,
                                              when_used="json")]
# The same, for series of thousands of points (a year by the hour): made with `isoformat()`
# once per interval start by whoever builds the series.
IsoTimeText = Annotated[str, Field(json_schema_extra={"format": "date-time"})]
Number = int | float  # a percentile keeps the type it was computed as (5, not 5.0)


# -- documents ------------------------------------------------------------------------------

class Review(BaseModel):
    decision: str
    reason: str | None
    reviewedBy: str | None
    reviewedAt: datetime | None


class DocumentEntry(BaseModel):
    """A stored document as the API returns it (IHE XDS attribute names)."""

    patientId: str
    classCode: str
    typeCode: str | None
    practiceSettingCode: str
    healthcareFacilityTypeCode: str | None
    title: str | None
    author: str | None
    creationTime: datetime
    serviceStartTime: datetime | None
    serviceStopTime: datetime | None
    confidentialityCode: str
    languageCode: str
    mimeType: str
    hash: str
    size: int
    uniqueId: str
    entryUUID: str
    repositoryUniqueId: str
    availabilityStatus: AvailabilityStatus
    source: Source
    filename: str | None = None
    submissionTime: datetime
    version: int = 1
    replaces: str | None = None  # uniqueId of the entry this one replaced (XDS RPLC)
    replacedBy: str | None = None
    review: Review | None = None


def to_entry(row: Document) -> DocumentEntry:
    review = None
    if row.review_decision:
        review = Review(decision=row.review_decision, reason=row.review_reason,
                        reviewedBy=row.reviewed_by, reviewedAt=row.reviewed_at)
    return DocumentEntry(
        patientId=row.patient_id, classCode=row.class_code, typeCode=row.type_code,
        practiceSettingCode=row.practice_setting_code,
        healthcareFacilityTypeCode=row.healthcare_facility_type_code,
        title=row.title, author=row.author,
        creationTime=row.creation_time,
        serviceStartTime=row.service_start_time,
        serviceStopTime=row.service_stop_time,
        confidentialityCode=row.confidentiality_code, languageCode=row.language_code,
        mimeType=row.mime_type, hash=row.sha256, size=row.size, uniqueId=row.unique_id,
        entryUUID=row.entry_uuid, repositoryUniqueId=row.repository_unique_id,
        availabilityStatus=AvailabilityStatus(row.availability_status),
        source=Source(row.source), filename=row.filename,
        submissionTime=row.submission_time,
        version=row.version, replaces=row.replaces, replacedBy=row.replaced_by,
        review=review)


class FindDocumentsResponse(BaseModel):
    total: int
    limit: int
    offset: int
    documents: list[DocumentEntry]


# -- the timeline ---------------------------------------------------------------------------

class DocumentLinks(BaseModel):
    entry: str
    content: str


class TimelineDocumentItem(BaseModel):
    kind: Literal["document"] = "document"
    time: datetime | None
    uniqueId: str
    title: str | None
    classCode: str
    typeCode: str | None
    practiceSettingCode: str
    mimeType: str
    size: int
    source: str
    links: DocumentLinks

    @classmethod
    def of(cls, d: Document) -> TimelineDocumentItem:
        return cls(time=d.creation_time, uniqueId=d.unique_id, title=d.title,
                   classCode=d.class_code, typeCode=d.type_code,
                   practiceSettingCode=d.practice_setting_code, mimeType=d.mime_type,
                   size=d.size, source=d.source,
                   links=DocumentLinks(entry=f"/api/v1/documents/{d.unique_id}",
                                       content=f"/api/v1/documents/{d.unique_id}/content"))


class Retrieve(BaseModel):
    """How a viewer opens a study: C-MOVE/C-GET from our AE by Study Instance UID."""

    aeTitle: str
    level: Literal["STUDY"] = "STUDY"
    studyInstanceUid: str


class TimelineStudyItem(BaseModel):
    kind: Literal["study"] = "study"
    time: datetime | None
    studyInstanceUid: str
    studyDate: str | None
    studyDescription: str | None
    accessionNumber: str | None
    referringPhysicianName: str | None
    modalities: list[str]
    numberOfSeries: int | None
    numberOfInstances: int | None
    retrieve: Retrieve

    @classmethod
    def of(cls, st: TimelineStudy, ae_title: str) -> TimelineStudyItem:
        return cls(time=st.time, studyInstanceUid=st.study_instance_uid,
                   studyDate=st.study_date, studyDescription=st.study_description,
                   accessionNumber=st.accession_number,
                   referringPhysicianName=st.referring_physician_name,
                   modalities=st.modalities, numberOfSeries=st.number_of_series,
                   numberOfInstances=st.number_of_instances,
                   retrieve=Retrieve(aeTitle=ae_title,
                                     studyInstanceUid=st.study_instance_uid))


TimelineItem = Annotated[TimelineDocumentItem | TimelineStudyItem, Field(discriminator="kind")]


class Timeline(BaseModel):
    patientId: str
    items: list[TimelineItem]

    @classmethod
    def of(cls, patient_id: str, items: list[Document | TimelineStudy],
           ae_title: str) -> Timeline:
        return cls(patientId=patient_id, items=[
            TimelineStudyItem.of(i, ae_title) if isinstance(i, TimelineStudy)
            else TimelineDocumentItem.of(i) for i in items])


# -- tokens and the audit trail -------------------------------------------------------------

class AuditEventOut(BaseModel):
    id: int
    at: datetime
    tokenId: str | None
    role: str | None
    action: str
    method: str
    route: str
    patientId: str | None
    resource: str | None
    status: int
    outcome: str
    client: str | None
    protocol: str = "http"
    callingAet: str | None = None
    tlsIdentity: str | None = None
    studies: list[str] | None = None
    instances: int | None = None
    exportedAt: datetime | None = None

    @classmethod
    def of(cls, r: AuditEvent) -> AuditEventOut:
        return cls(id=r.id, at=r.at, tokenId=r.token_id, role=r.role, action=r.action,
                   method=r.method, route=r.route, patientId=r.patient_id,
                   resource=r.resource, status=r.status, outcome=r.outcome, client=r.client,
                   protocol=r.protocol, callingAet=r.calling_aet,
                   tlsIdentity=r.tls_identity, studies=r.studies, instances=r.instances,
                   exportedAt=r.exported_at)


class AuditPage(BaseModel):
    limit: int
    offset: int
    events: list[AuditEventOut]


# -- operations -----------------------------------------------------------------------------

class Health(BaseModel):
    status: Literal["ok"] = "ok"
    version: str
    index: str  # the index database's dialect: sqlite or postgresql


# -- statistics -----------------------------------------------------------------------------

class Freshness(BaseModel):
    """The workers' backlog: how far behind the statistics may be."""

    pendingEvents: int
    lagSeconds: float


class Counted(BaseModel):
    instances: int
    bytes: int


class DepartmentCounts(BaseModel):
    instances: int = 0
    documents: int = 0
    bytes: int = 0


class StatsSummary(BaseModel):
    from_: date = Field(serialization_alias="from")
    to: date
    patients: int
    studies: int
    series: int
    instances: int
    documents: int
    bytes: int
    byModality: dict[str, Counted]
    byDepartment: dict[str, DepartmentCounts]
    freshness: Freshness


class VolumePoint(TypedDict):
    start: IsoTimeText
    count: int
    bytes: int


class VolumeSeries(BaseModel):
    key: str
    total: int
    points: list[VolumePoint]


class Volumes(BaseModel):
    interval: Interval
    dimension: str
    timezone: str
    series: list[VolumeSeries]
    freshness: Freshness


class Workload(BaseModel):
    timezone: str
    weekdays: list[str]
    matrix: list[list[int]]  # [weekday, Monday = 0][hour of day], local time
    freshness: Freshness


class PeakHourOut(BaseModel):
    hour: IsoTime
    instancesPerSecond: float
    mbPerSecond: float


class RatesOut(BaseModel):
    instancesPerSecond: float
    mbPerSecond: float
    peak: PeakHourOut | None
    activeHours: int

    @classmethod
    def of(cls, r: Rates) -> RatesOut:
        peak = None if r.peak is None else PeakHourOut(
            hour=r.peak.hour, instancesPerSecond=r.peak.instances_per_second,
            mbPerSecond=r.peak.mb_per_second)
        return cls(instancesPerSecond=r.instances_per_second, mbPerSecond=r.mb_per_second,
                   peak=peak, activeHours=r.active_hours)


class ThroughputOut(BaseModel):
    """The overall rates, then by source AE, and the workers' backlog."""

    instancesPerSecond: float
    mbPerSecond: float
    peak: PeakHourOut | None
    activeHours: int
    bySourceAe: dict[str, RatesOut]
    outbox: Freshness

    @classmethod
    def of(cls, t: Throughput, *, outbox: Freshness) -> ThroughputOut:
        overall = RatesOut.of(t.overall)
        return cls(instancesPerSecond=overall.instancesPerSecond,
                   mbPerSecond=overall.mbPerSecond, peak=overall.peak,
                   activeHours=overall.activeHours,
                   bySourceAe={ae: RatesOut.of(r) for ae, r in t.by_source_ae.items()},
                   outbox=outbox)


class GrowthPointOut(TypedDict):
    start: IsoTimeText
    added: int
    total: int


class GrowthSeriesOut(BaseModel):
    key: str
    points: list[GrowthPointOut]


class TotalPoint(TypedDict):
    start: IsoTimeText
    total: int


class ForecastOut(BaseModel):
    growthPerInterval: int
    method: str
    next: list[int]


class StorageOut(BaseModel):
    interval: Interval
    dimension: str
    timezone: str
    series: list[GrowthSeriesOut]
    total: list[TotalPoint]
    forecast: ForecastOut | None

    @classmethod
    def of(cls, g: StorageGrowth, *, interval: Interval, dimension: str,
           timezone: str) -> StorageOut:
        iso = [t.isoformat() for t in g.starts]  # once per start, not once per point
        series: list[GrowthSeriesOut] = []
        for key, added in g.added.items():
            points: list[GrowthPointOut] = [  # as in stats.volumes: typed here, not checked
                {"start": s, "added": a, "total": t}
                for s, a, t in zip(iso, added, g.stored[key], strict=True)]
            series.append(GrowthSeriesOut.model_construct(key=key, points=points))
        total: list[TotalPoint] = [{"start": s, "total": v}
                                   for s, v in zip(iso, g.total, strict=True)]
        return cls(interval=interval, dimension=dimension, timezone=timezone, series=series,
                   total=total, forecast=_forecast(g.forecast))


def _forecast(f: Forecast | None) -> ForecastOut | None:
    if f is None:
        return None
    return ForecastOut(growthPerInterval=f.growth_per_interval, method=f.method, next=f.next)


def _absent(value: object) -> bool:
    return value is None


class Percentiles(BaseModel):
    """A count and its p50/p90 in seconds; without values the percentiles are left out,
    not null."""

    n: int
    p50: Number | None = Field(default=None, exclude_if=_absent)
    p90: Number | None = Field(default=None, exclude_if=_absent)


class DistributionOut(Percentiles):
    byModality: dict[str, Percentiles]

    @classmethod
    def of(cls, d: Distribution) -> Self:
        return cls(n=d.n, **d.percentiles,
                   byModality={m: Percentiles(n=v.n, **v.percentiles)
                               for m, v in d.by_modality.items()})


class ArrivalsOut(DistributionOut):
    relativeResolution: float = round(RELATIVE_RESOLUTION, 4)


class LeadTime(DistributionOut):
    """One step of an exam's chain: count, p50/p90 seconds, by modality and by department."""

    byDepartment: dict[str, Percentiles]

    @classmethod
    def of(cls, d: Distribution) -> Self:
        return cls(n=d.n, **d.percentiles,
                   byModality={m: Percentiles(n=v.n, **v.percentiles)
                               for m, v in d.by_modality.items()},
                   byDepartment={k: Percentiles(n=v.n, **v.percentiles)
                                 for k, v in d.by_department.items()})


class LeadTimes(BaseModel):
    """The lead times of the period (docs/api.md defines each). `acquisitionToArchive` is
    kept by modality only: null when a filter names another dimension."""

    acquisitionToArchive: ArrivalsOut | None
    examDuration: LeadTime
    referralToScheduled: LeadTime
    referralToExam: LeadTime
    scheduledToPerformed: LeadTime
    examEndToArchive: LeadTime
    archiveToReport: LeadTime
    examToReport: LeadTime
    exams: int  # the period's exams that passed the filters
    examsWithMpps: int
    freshness: Freshness


class FindingOut(BaseModel):
    rule: str
    description: str
    count: int
    examples: list[str]

    @classmethod
    def of(cls, f: Finding) -> FindingOut:
        return cls(rule=f.rule, description=f.description, count=f.count,
                   examples=f.examples)


class Quality(BaseModel):
    rules: list[FindingOut]
    freshness: Freshness


# -- HL7 messages (issue 14) ------------------------------------------------------------------

class Hl7MessageOut(BaseModel):
    """One HL7 v2 message as received over MLLP, and the ACK it got."""

    id: int
    receivedAt: datetime
    peer: str | None
    sendingApplication: str | None
    sendingFacility: str | None
    messageType: str | None
    controlId: str | None
    patientId: str | None
    ackCode: Literal["AA", "AE", "AR"]
    error: str | None
    message: str

    @classmethod
    def of(cls, r: Hl7Message) -> Hl7MessageOut:
        return cls(id=r.id, receivedAt=r.received_at, peer=r.peer,
                   sendingApplication=r.sending_application,
                   sendingFacility=r.sending_facility, messageType=r.message_type,
                   controlId=r.control_id, patientId=r.patient_id,
                   ackCode=r.ack_code,  # type: ignore[arg-type]
                   error=r.error, message=r.message)


class Hl7MessagePage(BaseModel):
    limit: int
    offset: int
    messages: list[Hl7MessageOut]


# -- the worklist ---------------------------------------------------------------------------

class WorklistItem(BaseModel):
    """A scheduled procedure step (a worklist item) as the API returns it: the fields of
    `POST /api/v1/worklist`, with the archive's id, status and the defaults it filled in
    (Study Instance UID, requested procedure and step IDs)."""

    id: int
    status: str  # vna.orders.OrderStatus
    source: str  # hl7 | api
    patientId: str
    issuerOfPatientId: str
    patientName: str | None
    patientBirthDate: date | None
    patientSex: str | None
    accessionNumber: str
    modality: str
    scheduledStartDateTime: datetime
    scheduledProcedureStepStartDate: str  # as the Modality Worklist answers it (VNA_TIMEZONE)
    scheduledProcedureStepStartTime: str
    requestedProcedureId: str
    requestedProcedureDescription: str | None
    scheduledProcedureStepId: str
    scheduledProcedureStepDescription: str | None
    scheduledStationAETitle: str | None
    scheduledStationName: str | None
    scheduledPerformingPhysicianName: str | None
    referringPhysicianName: str | None
    requestingPhysicianName: str | None
    department: str | None
    priority: str | None
    placerOrderNumber: str | None
    fillerOrderNumber: str | None
    studyInstanceUID: str
    referralAt: datetime | None
    placedAt: datetime | None
    createdAt: datetime
    updatedAt: datetime

    @classmethod
    def of(cls, e: WorklistEntry) -> WorklistItem:
        birth = e.patient_birth_date
        return cls(
            id=e.id, status=e.status, source=e.source, patientId=e.patient_id,
            issuerOfPatientId=e.issuer_of_patient_id, patientName=e.patient_name,
            patientBirthDate=date(int(birth[:4]), int(birth[4:6]), int(birth[6:8]))
            if birth and len(birth) == 8 and birth.isdigit() else None,
            patientSex=e.patient_sex, accessionNumber=e.accession_number,
            modality=e.modality, scheduledStartDateTime=e.scheduled_at,
            scheduledProcedureStepStartDate=e.scheduled_date,
            scheduledProcedureStepStartTime=e.scheduled_time.split(".")[0],
            requestedProcedureId=e.requested_procedure_id,
            requestedProcedureDescription=e.requested_procedure_description,
            scheduledProcedureStepId=e.scheduled_procedure_step_id,
            scheduledProcedureStepDescription=e.scheduled_procedure_step_description,
            scheduledStationAETitle=e.scheduled_station_aet,
            scheduledStationName=e.scheduled_station_name,
            scheduledPerformingPhysicianName=e.scheduled_performing_physician_name,
            referringPhysicianName=e.referring_physician_name,
            requestingPhysicianName=e.requesting_physician_name,
            department=e.department, priority=e.priority,
            placerOrderNumber=e.placer_order_number, fillerOrderNumber=e.filler_order_number,
            studyInstanceUID=e.study_instance_uid, referralAt=e.referral_at,
            placedAt=e.placed_at, createdAt=e.created_at, updatedAt=e.updated_at)


class WorklistPage(BaseModel):
    total: int
    limit: int
    offset: int
    items: list[WorklistItem]
