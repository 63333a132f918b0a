"""The HL7 v2 message log: who sent what, when, and the ACK it got (admins only)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request

from services.xds_api.deps import IndexDep, PageOffset
from services.xds_api.schemas import Hl7MessageOut, Hl7MessagePage
from services.xds_api.security import audit_context, authorize
from storage.index.hl7 import list_messages
from vna.access import Action, Principal
from vna.documents.entry import PATIENT_ID_PATTERN

router = APIRouter(prefix="/api/v1/hl7", tags=["hl7"])

MESSAGE_TYPE_PATTERN = r"^[A-Z0-9]{3}(\^[A-Z0-9]{3})?$"


@router.get("/messages", response_model=Hl7MessagePage)
def list_hl7_messages(
    request: Request,
    index: IndexDep,
    _: Annotated[Principal, authorize(Action.HL7_LIST)],
    patientId: Annotated[str | None, Query(pattern=PATIENT_ID_PATTERN)] = None,
    messageType: Annotated[str | None, Query(
        pattern=MESSAGE_TYPE_PATTERN, description="`ADT^A40`, or `ADT` for all its events")
    ] = None,
    ackCode: Literal["AA", "AE", "AR"] | None = None,
    since: Annotated[datetime | None, Query(alias="from")] = None,
    until: Annotated[datetime | None, Query(alias="to")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: PageOffset = 0,
) -> Hl7MessagePage:
    """The HL7 messages received over MLLP, newest first, with their ACK codes."""
    audit_context(request).patient_id = patientId
    rows = list_messages(index, since=since, until=until, patient_id=patientId,
                         message_type=messageType, ack_code=ackCode, limit=limit,
                         offset=offset)
    return Hl7MessagePage(limit=limit, offset=offset,
                          messages=[Hl7MessageOut.of(r) for r in rows])
