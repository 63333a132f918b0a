"""Who may do what: roles, department limits and which documents a role may see.

The HTTP edge authenticates a bearer token into a `Principal`; these rules decide. Kept
free of HTTP so that the matrix in docs/api.md and the tests read from one place.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from vna.documents.entry import AvailabilityStatus, Source


class Role(StrEnum):
    ADMIN = "admin"  # everything, tokens and the audit trail included
    UPLOADER = "uploader"  # stores and replaces documents; reads nothing back
    VIEWER = "viewer"  # finds and opens approved documents, studies and timelines
    REVIEWER = "reviewer"  # a viewer who also approves or rejects patients' uploads
    SCHEDULER = "scheduler"  # a RIS or booking system: places and reads worklist items


class Action(StrEnum):
    """What a request does to patient data; recorded in the audit trail under this name."""

    DOCUMENT_CREATE = "document.create"
    DOCUMENT_REPLACE = "document.replace"
    DOCUMENT_FIND = "document.find"
    DOCUMENT_READ = "document.read"
    DOCUMENT_CONTENT = "document.content"
    DOCUMENT_REVIEW = "document.review"
    TIMELINE_READ = "timeline.read"
    TOKEN_CREATE = "token.create"
    TOKEN_LIST = "token.list"
    TOKEN_REVOKE = "token.revoke"
    TOKEN_ROTATE = "token.rotate"  # a new secret for the same grant, the old one revoked
    AUDIT_LIST = "audit.list"
    DICOMWEB_QUERY = "dicomweb.query"  # QIDO-RS
    DICOMWEB_RETRIEVE = "dicomweb.retrieve"  # WADO-RS: instances, metadata, frames, renders
    DICOMWEB_STORE = "dicomweb.store"  # STOW-RS
    SESSION_CREATE = "session.create"  # a browser signs in with a token (the viewer's cookie)
    SESSION_END = "session.end"  # and signs out
    WORKLIST_READ = "worklist.read"  # scheduled procedure steps (patient data)
    WORKLIST_WRITE = "worklist.write"  # place or cancel one
    HL7_LIST = "hl7.list"  # the HL7 messages received, with their ACKs
    STATS_READ = "stats.read"  # no patient data: counts and sizes
    METRICS_READ = "metrics.read"


_READERS = frozenset({Role.ADMIN, Role.VIEWER, Role.REVIEWER})
_WRITERS = frozenset({Role.ADMIN, Role.UPLOADER})
ALLOWED_ROLES: dict[Action, frozenset[Role]] = {
    Action.DOCUMENT_CREATE: _WRITERS,
    Action.DOCUMENT_REPLACE: _WRITERS,
    Action.DOCUMENT_FIND: _READERS,
    Action.DOCUMENT_READ: _READERS,
    Action.DOCUMENT_CONTENT: _READERS,
    Action.DOCUMENT_REVIEW: frozenset({Role.ADMIN, Role.REVIEWER}),
    Action.TIMELINE_READ: _READERS,
    Action.DICOMWEB_QUERY: _READERS,
    Action.DICOMWEB_RETRIEVE: _READERS,
    Action.DICOMWEB_STORE: _WRITERS,
    Action.SESSION_CREATE: frozenset(Role),  # what a session may do is its token's role's
    Action.SESSION_END: frozenset(Role),
    Action.TOKEN_CREATE: frozenset({Role.ADMIN}),
    Action.TOKEN_LIST: frozenset({Role.ADMIN}),
    Action.TOKEN_REVOKE: frozenset({Role.ADMIN}),
    Action.TOKEN_ROTATE: frozenset({Role.ADMIN}),
    Action.AUDIT_LIST: frozenset({Role.ADMIN}),
    Action.WORKLIST_READ: frozenset({Role.ADMIN, Role.SCHEDULER}),
    Action.WORKLIST_WRITE: frozenset({Role.ADMIN, Role.SCHEDULER}),
    Action.HL7_LIST: frozenset({Role.ADMIN}),
    Action.STATS_READ: frozenset({Role.ADMIN}),
    Action.METRICS_READ: frozenset({Role.ADMIN}),
}

# Which availability statuses each role may see at all. Rejected uploads are kept for the
# audit trail and shown to nobody but admins.
_VISIBLE: dict[Role, frozenset[AvailabilityStatus]] = {
    Role.ADMIN: frozenset(AvailabilityStatus),
    Role.REVIEWER: frozenset({AvailabilityStatus.APPROVED, AvailabilityStatus.DEPRECATED,
                              AvailabilityStatus.SUBMITTED}),
    Role.VIEWER: frozenset({AvailabilityStatus.APPROVED, AvailabilityStatus.DEPRECATED}),
    Role.UPLOADER: frozenset(),
    Role.SCHEDULER: frozenset(),
}


class InvalidToken(ValueError):
    """A token that must not be made (HTTP 422, `vna token create` exit 2)."""


def check_token_request(role: Role, departments: Iterable[str], source: Source) -> None:
    """Admins are never department-limited (an admin makes tokens and reads the whole audit
    trail, so a limit would be a fiction); only uploaders upload for patients."""
    if role is Role.ADMIN and any(True for _ in departments):
        raise InvalidToken("an admin token cannot be limited to departments")
    if source is Source.PATIENT and role is not Role.UPLOADER:
        raise InvalidToken("only an uploader token can be a patient portal's "
                           "(source=patient)")


def check_expiry(expires_at: datetime | None, now: datetime) -> None:
    """An expiry must name its time zone and lie ahead: a token born expired is a mistake."""
    if expires_at is None:
        return
    if expires_at.tzinfo is None:
        raise InvalidToken("expiresAt needs a time zone (e.g. 2027-01-01T00:00:00Z)")
    if expires_at <= now:
        raise InvalidToken(f"expiresAt {expires_at.isoformat()} is not in the future")


_DURATION = re.compile(r"^(\d+)([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_expiry(text: str, now: datetime) -> datetime:
    """`vna token create --expires`: a lifetime (`90d`, `12h`, `30m`, `2w`) or an ISO 8601
    time with its zone. Raises `InvalidToken`."""
    m = _DURATION.match(text.strip())
    if m:
        at = now + timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})
    else:
        try:
            at = datetime.fromisoformat(text.strip())
        except ValueError:
            raise InvalidToken(f"--expires {text!r}: give a lifetime such as 90d, 12h or "
                               "30m, or an ISO 8601 time with its zone") from None
    check_expiry(at, now)
    return at


@dataclass(frozen=True)
class Principal:
    """An authenticated token: its id (for the audit trail), role, departments, and for
    uploaders whose documents they store (a patient portal's always wait for review)."""

    token_id: str
    role: Role
    departments: frozenset[str] = frozenset()  # empty: every department
    source: Source = Source.DEPARTMENT

    def may(self, action: Action) -> bool:
        return self.role in ALLOWED_ROLES[action]

    def in_department(self, practice_setting_code: str | None) -> bool:
        return not self.departments or practice_setting_code in self.departments

    def departments_within(self, codes: Iterable[str]) -> bool:
        return not self.departments or set(codes) <= self.departments

    def sees(self, status: AvailabilityStatus | str) -> bool:
        return AvailabilityStatus(status) in _VISIBLE[self.role]

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN
