"""API tokens (only their SHA-256 is stored) and the audit trail of patient-data access."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, bindparam, delete, insert, or_, select, update

from storage.groupcommit import GroupCommit
from storage.index.db import CompiledStatement, Index
from storage.index.models import ApiToken, AuditEvent
from vna.access import Principal, Role, check_expiry, check_token_request
from vna.documents.entry import Source

BOOTSTRAP_TOKEN_ID = "admin"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token_secret() -> str:
    """256 bits of randomness: a plain SHA-256 of it is safe to store (no salt needed)."""
    return "vna_" + secrets.token_urlsafe(32)


class TokenExpired(Exception):
    """A known, unrevoked token past its `expires_at` (HTTP 401 saying so)."""

    def __init__(self, token_id: str, expired_at: datetime) -> None:
        super().__init__(f"the token {token_id} expired at {expired_at.isoformat()}")
        self.token_id = token_id
        self.expired_at = expired_at


class TokenNotRotatable(Exception):
    """A token that cannot be rotated: unknown, revoked, or the bootstrap admin token."""


class Tokens:
    def __init__(self, index: Index, *, last_used_every: float = 60.0) -> None:
        self.index = index
        # lastUsedAt is written at most once per `last_used_every` seconds per token and
        # process: the monotonic time of this process's last write, by token id.
        self.last_used_every = last_used_every
        self._last_used_written: dict[str, float] = {}
        self._last_used_lock = threading.Lock()

    def create(self, role: Role, departments: Iterable[str] = (), *,
               source: Source = Source.DEPARTMENT, label: str | None = None,
               created_by: str | None = None,
               expires_at: datetime | None = None) -> tuple[str, ApiToken]:
        """A new token: the secret (shown once) and its stored row. Raises `InvalidToken`."""
        departments = sorted(set(departments))
        check_token_request(role, departments, source)
        check_expiry(expires_at, datetime.now(UTC))
        secret, row = self._new_row(role.value, departments, source.value, label,
                                    created_by, expires_at)
        with self.index.begin() as conn:
            conn.execute(insert(ApiToken).values(**row))
        return secret, ApiToken(**row)

    @staticmethod
    def _new_row(role: str, departments: list[str], source: str, label: str | None,
                 created_by: str | None, expires_at: datetime | None,
                 ) -> tuple[str, dict[str, Any]]:
        secret = new_token_secret()
        return secret, dict(
            id="t" + secrets.token_hex(6), token_sha256=hash_token(secret), role=role,
            departments=departments, source=source, label=label,
            created_at=datetime.now(UTC), created_by=created_by, expires_at=expires_at)

    def rotate(self, token_id: str, *, created_by: str | None = None,
               expires_at: datetime | None = None) -> tuple[str, ApiToken]:
        """A new secret for the same role, departments, source and label; the old token is
        revoked and names its successor (`replaced_by`), in one transaction. Without
        `expires_at`, an expiring token's successor gets the same lifetime from now.
        Raises `TokenNotRotatable`, `InvalidToken`."""
        if token_id == BOOTSTRAP_TOKEN_ID:
            raise TokenNotRotatable("the bootstrap admin token is set by VNA_ADMIN_TOKEN "
                                    "(or the admin-token file): change it there")
        now = datetime.now(UTC)
        check_expiry(expires_at, now)
        with self.index.begin() as conn:
            old = conn.execute(select(ApiToken.__table__).where(
                ApiToken.id == token_id, ApiToken.revoked_at.is_(None))
                .with_for_update()).first()
            if old is None:
                raise TokenNotRotatable(f"no active token {token_id}")
            if expires_at is None and old.expires_at is not None:
                expires_at = now + (old.expires_at - old.created_at)
            secret, row = self._new_row(old.role, list(old.departments or []), old.source,
                                        old.label, created_by, expires_at)
            conn.execute(insert(ApiToken).values(**row))
            done = conn.execute(update(ApiToken).where(
                ApiToken.id == token_id, ApiToken.revoked_at.is_(None)).values(
                revoked_at=now, replaced_by=row["id"]))
            if done.rowcount != 1:  # revoked or rotated meanwhile: keep neither change
                raise TokenNotRotatable(f"no active token {token_id}")
        return secret, ApiToken(**row)

    def install_bootstrap(self, secret: str) -> None:
        """Make `secret` the bootstrap admin token (VNA_ADMIN_TOKEN or the generated one),
        replacing an earlier bootstrap token."""
        digest = hash_token(secret)
        with self.index.begin() as conn:
            current = conn.execute(select(ApiToken.token_sha256).where(
                ApiToken.id == BOOTSTRAP_TOKEN_ID)).scalar()
            if current is not None and hmac.compare_digest(current, digest):
                return
            conn.execute(delete(ApiToken).where(ApiToken.id == BOOTSTRAP_TOKEN_ID))
            conn.execute(insert(ApiToken).values(
                id=BOOTSTRAP_TOKEN_ID, token_sha256=digest, role=Role.ADMIN.value,
                departments=[], source=Source.DEPARTMENT.value,
                label="bootstrap (VNA_ADMIN_TOKEN)",
                created_at=datetime.now(UTC)))

    def authenticate(self, secret: str) -> Principal | None:
        """The principal of a valid, unrevoked token (every request asks: a Core select of
        a few columns, not an ORM object); None for an unknown or revoked one. Raises
        `TokenExpired`. Notes the use (`last_used_at`) at most once a `last_used_every`."""
        with self.index.read_engine.connect() as conn:
            row = conn.execute(self._authenticate, {"sha": hash_token(secret)}).first()
        if row is None:
            return None
        if row.expires_at is not None and row.expires_at <= datetime.now(UTC):
            raise TokenExpired(row.id, row.expires_at)
        self._note_use(row.id)
        return Principal(row.id, Role(row.role), frozenset(row.departments or ()),
                         Source(row.source))

    _authenticate = select(ApiToken.id, ApiToken.role, ApiToken.departments,
                           ApiToken.source, ApiToken.expires_at).where(
        ApiToken.token_sha256 == bindparam("sha"), ApiToken.revoked_at.is_(None))

    def _note_use(self, token_id: str) -> None:
        now = time.monotonic()
        with self._last_used_lock:
            last = self._last_used_written.get(token_id)
            if last is not None and now - last < self.last_used_every:
                return
            self._last_used_written[token_id] = now
        at = datetime.now(UTC)
        # Other processes write it too: only move it forward, and only when it is stale.
        with self.index.begin() as conn:
            conn.execute(update(ApiToken).where(
                ApiToken.id == token_id,
                or_(ApiToken.last_used_at.is_(None),
                    ApiToken.last_used_at < at - timedelta(seconds=self.last_used_every)))
                .values(last_used_at=at))

    def list(self) -> list[ApiToken]:
        with self.index.read_session() as s:
            return list(s.scalars(select(ApiToken).order_by(ApiToken.created_at)))

    def revoke(self, token_id: str) -> bool:
        with self.index.begin() as conn:
            done = conn.execute(update(ApiToken).where(
                ApiToken.id == token_id, ApiToken.revoked_at.is_(None)).values(
                revoked_at=datetime.now(UTC)))
        return done.rowcount == 1


@dataclass
class AuditRecord:
    """One HTTP access to patient data, as the audit middleware saw it."""

    action: str
    method: str
    route: str
    status: int
    principal: Principal | None = None
    patient_id: str | None = None
    resource: str | None = None
    client: str | None = None

    @property
    def outcome(self) -> str:
        if self.status < 400:
            return "success"
        if self.status in (401, 403):
            return "denied"
        if self.status == 499:
            return "aborted"
        return "refused" if self.status < 500 else "error"


_AUDIT_COLUMNS = ("at", "token_id", "role", "action", "method", "route", "patient_id",
                  "resource", "status", "outcome", "client")


class AuditTrail:
    """The audit trail: each record is committed before its request's answer is complete.
    Records of concurrent requests share a transaction (`GroupCommit`), written by a
    statement compiled once on the index's kept write connection: an audit record used to
    cost more than serving a WADO-RS frame."""

    def __init__(self, index: Index) -> None:
        self.index = index
        self._insert = CompiledStatement(insert(cast(Table, AuditEvent.__table__)),
                                         index.engine.dialect, _AUDIT_COLUMNS)
        self._group: GroupCommit[dict[str, object], None] = GroupCommit(self._write)

    def record(self, rec: AuditRecord) -> None:
        p = rec.principal
        self._group.submit({
            "at": datetime.now(UTC), "token_id": p.token_id if p else None,
            "role": p.role.value if p else None, "action": rec.action, "method": rec.method,
            "route": rec.route, "patient_id": rec.patient_id, "resource": rec.resource,
            "status": rec.status, "outcome": rec.outcome, "client": rec.client})

    def _write(self, rows: list[dict[str, object]]) -> list[None]:
        self.index.run_write(lambda cursor: self._insert.executemany(cursor, rows))
        return [None] * len(rows)

    def list(self, *, token_id: str | None = None, patient_id: str | None = None,
             action: str | None = None, since: datetime | None = None,
             until: datetime | None = None, limit: int = 100,
             offset: int = 0) -> list[AuditEvent]:
        """Matching records, newest first."""
        stmt = select(AuditEvent)
        if token_id:
            stmt = stmt.where(AuditEvent.token_id == token_id)
        if patient_id:
            stmt = stmt.where(AuditEvent.patient_id == patient_id)
        if action:
            stmt = stmt.where(AuditEvent.action == action)
        if since:
            stmt = stmt.where(AuditEvent.at >= since)
        if until:
            stmt = stmt.where(AuditEvent.at <= until)
        stmt = stmt.order_by(AuditEvent.id.desc()).limit(limit).offset(offset)
        with self.index.read_session() as s:
            return list(s.scalars(stmt))
