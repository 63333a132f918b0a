"""Admin routes: API tokens and the audit trail."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from pydantic import BaseModel, Field

from services.xds_api.deps import AuditTrailDep, PageOffset, TokensDep
from services.xds_api.schemas import AuditEventOut, AuditPage
from services.xds_api.security import audit_context, authorize
from storage.index.models import ApiToken
from storage.index.tokens import BOOTSTRAP_TOKEN_ID, TokenNotRotatable
from vna.access import Action, InvalidToken, Principal, Role
from vna.atna import DicomAction
from vna.documents.entry import CODE_PATTERN, PATIENT_ID_PATTERN, Source

router = APIRouter(prefix="/api/v1", tags=["admin"])


class TokenRequest(BaseModel):
    role: Role
    departments: list[Annotated[str, Field(pattern=CODE_PATTERN)]] = []
    source: Source = Source.DEPARTMENT  # `patient`: a patient portal's uploader
    label: Annotated[str, Field(max_length=128)] | None = None
    expiresAt: datetime | None = Field(default=None, description=(
        "when the token stops working (with its time zone); none: never"))


class RotateRequest(BaseModel):
    expiresAt: datetime | None = Field(default=None, description=(
        "the new token's expiry; none: the old token's lifetime again, from now (or never, "
        "if it had none)"))


class TokenInfo(BaseModel):
    id: str
    role: Role
    departments: list[str]
    source: Source
    label: str | None
    createdAt: datetime
    createdBy: str | None
    revokedAt: datetime | None
    expiresAt: datetime | None = None
    lastUsedAt: datetime | None = None  # to within VNA_TOKEN_LAST_USED_SECONDS
    replacedBy: str | None = None  # the token this one was rotated to

    @classmethod
    def of(cls, row: ApiToken) -> TokenInfo:
        return cls(id=row.id, role=Role(row.role), departments=row.departments or [],
                   source=Source(row.source or Source.DEPARTMENT.value), label=row.label,
                   createdAt=row.created_at,
                   createdBy=row.created_by, revokedAt=row.revoked_at,
                   expiresAt=row.expires_at, lastUsedAt=row.last_used_at,
                   replacedBy=row.replaced_by)


class CreatedToken(TokenInfo):
    token: str  # shown once; only its hash is kept


@router.post("/tokens", status_code=201, response_model=CreatedToken)
def create_token(request: Request, body: TokenRequest, tokens: TokensDep,
                 principal: Annotated[Principal, authorize(Action.TOKEN_CREATE)]) -> Any:
    """A new bearer token with a role, optionally limited to departments (empty: all)."""
    try:
        secret, row = tokens.create(
            body.role, body.departments, source=body.source, label=body.label,
            created_by=principal.token_id, expires_at=body.expiresAt)
    except InvalidToken as exc:
        raise HTTPException(422, str(exc)) from None
    audit_context(request).resource = row.id
    return CreatedToken(**TokenInfo.of(row).model_dump(), token=secret)


@router.get("/tokens", response_model=list[TokenInfo])
def list_tokens(tokens: TokensDep,
                _: Annotated[Principal, authorize(Action.TOKEN_LIST)]) -> Any:
    return [TokenInfo.of(r) for r in tokens.list()]


@router.delete("/tokens/{token_id}", status_code=204)
def revoke_token(request: Request, token_id: str, tokens: TokensDep,
                 _: Annotated[Principal, authorize(Action.TOKEN_REVOKE)]) -> None:
    audit_context(request).resource = token_id
    if not tokens.revoke(token_id):
        raise HTTPException(404, f"no active token {token_id}")


@router.post("/tokens/{token_id}/rotate", status_code=201, response_model=CreatedToken,
             responses={404: {"description": "no active token with this id"},
                        409: {"description": "the bootstrap admin token (set it in "
                                              "VNA_ADMIN_TOKEN)"}})
def rotate_token(request: Request, token_id: str, tokens: TokensDep,
                 principal: Annotated[Principal, authorize(Action.TOKEN_ROTATE)],
                 body: RotateRequest | None = None) -> Any:
    """A new token for the same role, departments and source; the old one is revoked and
    names the new one (`replacedBy`). The new secret is shown once."""
    audit_context(request).resource = token_id
    try:
        secret, row = tokens.rotate(token_id, created_by=principal.token_id,
                                    expires_at=body.expiresAt if body else None)
    except InvalidToken as exc:
        raise HTTPException(422, str(exc)) from None
    except TokenNotRotatable as exc:
        raise HTTPException(409 if token_id == BOOTSTRAP_TOKEN_ID else 404,
                            str(exc)) from None
    return CreatedToken(**TokenInfo.of(row).model_dump(), token=secret)


@router.get("/audit", response_model=AuditPage)
def list_audit(
    request: Request,
    trail: AuditTrailDep,
    _: Annotated[Principal, authorize(Action.AUDIT_LIST)],
    tokenId: str | None = None,
    patientId: Annotated[str | None, Query(pattern=PATIENT_ID_PATTERN)] = None,
    action: Action | DicomAction | None = None,
    protocol: Literal["http", "dicom"] | None = None,
    callingAet: Annotated[str | None, Query(max_length=16)] = None,
    since: Annotated[datetime | None, Query(alias="from")] = None,
    until: Annotated[datetime | None, Query(alias="to")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: PageOffset = 0,
) -> AuditPage:
    """Who read or wrote which patient's data, when, and how it ended, over HTTP and DICOM
    (`protocol`, `callingAet`); newest first."""
    audit_context(request).patient_id = patientId
    events = trail.list(
        token_id=tokenId, patient_id=patientId, action=action and action.value,
        protocol=protocol, calling_aet=callingAet and callingAet.strip(),
        since=since, until=until, limit=limit, offset=offset)
    return AuditPage(limit=limit, offset=offset, events=[AuditEventOut.of(e) for e in events])
