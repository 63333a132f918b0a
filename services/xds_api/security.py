"""Bearer tokens at the HTTP edge: the bootstrap admin token and the per-route check.

Every route but /health declares its `Action` through `authorize(action)`, as
`principal: Annotated[Principal, authorize(Action.X)]`; that one dependency authenticates
the token, checks the role and opens the audit record, so a route cannot forget any of the
three.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from services.xds_api.deps import TokensDep, context
from storage.index.tokens import TokenExpired, Tokens
from vna.access import Action, Principal
from vna.documents.entry import PATIENT_ID_PATTERN, UNIQUE_ID_PATTERN
from vna.settings import Settings

_PATIENT_ID = re.compile(PATIENT_ID_PATTERN)
_UNIQUE_ID = re.compile(UNIQUE_ID_PATTERN)
_bearer = HTTPBearer(auto_error=False, description="an API token (`vna token create`)")

# A browser viewer (OHIF at /viewer) cannot send a bearer header with every image it loads:
# after one sign-in it sends this HttpOnly, SameSite=Strict cookie, which holds the token
# and is taken in place of the header under these paths only.
SESSION_COOKIE = "vna_session"
SESSION_COOKIE_PATHS = ("/dicomweb",)


def ensure_admin_token(settings: Settings) -> tuple[str, bool]:
    """The admin token and whether it was generated just now (then it is shown once)."""
    if settings.admin_token:
        return settings.admin_token, False
    path = settings.data_dir / "admin-token"
    if path.exists():
        return path.read_text().strip(), False
    token = "vna_" + secrets.token_urlsafe(32)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another vna process made it first
        return path.read_text().strip(), False
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token, True


@dataclass
class AuditContext:
    """What the audit middleware records for this request; routes fill in the patient."""

    action: Action
    route: str
    principal: Principal | None = None
    patient_id: str | None = None
    resource: str | None = None


def audit_context(request: Request) -> AuditContext:
    ctx = getattr(request.state, "audit", None)
    assert isinstance(ctx, AuditContext), "route without authorize()"
    return ctx


def authorize(action: Action) -> Any:
    """A dependency (`Depends`): the caller's `Principal`, or 401/403. Opens the audit
    record first, so refused attempts are recorded too."""

    def dependency(request: Request, tokens: TokensDep,
                   credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),
                   ) -> Principal:
        route = getattr(request.scope.get("route"), "path", request.url.path)
        params = request.path_params
        patient = params.get("patientId") or request.query_params.get("patientId")
        resource = params.get("uniqueId")
        # Recorded before the route validates them: keep only what is well-formed.
        ctx = AuditContext(
            action, route,
            patient_id=patient if patient and _PATIENT_ID.match(patient) else None,
            resource=resource if resource and _UNIQUE_ID.match(resource) else None)
        request.state.audit = ctx
        secret = credentials.credentials if credentials is not None and \
            credentials.scheme.lower() == "bearer" else None
        if secret is None and request.url.path.startswith(SESSION_COOKIE_PATHS):
            secret = request.cookies.get(SESSION_COOKIE) or None
        api = context(request)
        if secret is None:
            api.metrics.auth_failures.labels("missing").inc()
            raise HTTPException(401, "a bearer token is required",
                                headers={"WWW-Authenticate": "Bearer"})
        # An address with too many failures is refused before this (LimitsMiddleware).
        principal, refusal = authenticate(request, tokens, secret)
        if principal is None:
            raise HTTPException(401, refusal, headers={"WWW-Authenticate": (
                'Bearer error="invalid_token", error_description="the token expired"'
                if "expired" in refusal else 'Bearer error="invalid_token"')})
        ctx.principal = principal
        if not principal.may(action):
            raise HTTPException(403, f"role {principal.role.value} may not {action.value}")
        return principal

    return Depends(dependency)


def authenticate(request: Request, tokens: Tokens, secret: str,
                 ) -> tuple[Principal, str] | tuple[None, str]:
    """The principal of a token, or None and why not (a sentence for the 401). A failure
    (unknown, revoked, expired) counts against the client's address (429 after
    VNA_HTTP_AUTH_FAILURES) and in /metrics. Every place that takes a token asks here."""
    api = context(request)
    address = request.client.host if request.client else "-"
    try:
        principal = tokens.authenticate(secret)
    except TokenExpired as exc:
        api.auth_failures.failed(address, time.monotonic())
        api.metrics.auth_failures.labels("expired").inc()
        return None, f"{exc}; ask an administrator to rotate it"
    if principal is None:
        api.auth_failures.failed(address, time.monotonic())
        api.metrics.auth_failures.labels("unknown").inc()
        return None, "the token is unknown or revoked"
    return principal, ""


def address_refused(request: Request) -> float:
    """Seconds the client's address must wait (too many failed authentications), or 0:
    for a token that LimitsMiddleware cannot see (a sign-in form's field)."""
    address = request.client.host if request.client else "-"
    return context(request).auth_failures.retry_after(address, time.monotonic())


def require_department(principal: Principal, code: str | None) -> None:
    if not principal.in_department(code):
        raise HTTPException(403, f"this token is limited to departments "
                                 f"{sorted(principal.departments)}")
