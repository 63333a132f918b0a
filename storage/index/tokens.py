"""API tokens (only their SHA-256 is stored) and the audit trail of patient-data access."""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    Connection,
    Table,
    bindparam,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)

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
    """One access to patient data: an HTTP request as the audit middleware saw it, or a
    DICOM association or DIMSE request (`protocol` "dicom", `method` the DIMSE service,
    `status` its DIMSE status, `outcome` given)."""

    action: str
    method: str
    route: str
    status: int
    principal: Principal | None = None
    patient_id: str | None = None
    resource: str | None = None
    client: str | None = None
    protocol: str = "http"
    calling_aet: str | None = None
    tls_identity: str | None = None
    studies: list[str] | None = None
    instances: int | None = None
    given_outcome: str | None = None

    @property
    def outcome(self) -> str:
        if self.given_outcome is not None:
            return self.given_outcome
        if self.status < 400:
            return "success"
        if self.status in (401, 403):
            return "denied"
        if self.status == 499:
            return "aborted"
        return "refused" if self.status < 500 else "error"

    def row(self, at: datetime | None = None) -> dict[str, object]:
        """The `audit_event` row."""
        p = self.principal
        return {
            "at": at or datetime.now(UTC), "token_id": p.token_id if p else None,
            "role": p.role.value if p else None, "action": self.action,
            "method": self.method[:16], "route": self.route[:128],
            "patient_id": _cut(self.patient_id, 128), "resource": _cut(self.resource, 128),
            "status": self.status, "outcome": self.outcome, "client": _cut(self.client, 64),
            "protocol": self.protocol, "calling_aet": _cut(self.calling_aet, 16),
            "tls_identity": _cut(self.tls_identity, 256),
            "studies": self.studies, "instances": self.instances}


def _cut(value: str | None, n: int) -> str | None:
    """A value cut to its column (a peer's long TLS subject must not lose the record)."""
    return value[:n] if value else value


_AUDIT_COLUMNS = ("at", "token_id", "role", "action", "method", "route", "patient_id",
                  "resource", "status", "outcome", "client", "protocol", "calling_aet",
                  "tls_identity", "studies", "instances")
_AUDIT = cast(Table, AuditEvent.__table__)

# A C-STORE record is written when its association first stores an instance of its study
# and gets its count when the association ends; one whose association never ended (a
# killed process) is exported without a count after this long.
OPEN_STORE_RECORD_SECONDS = 3600
_EXPORT_LOCK = 0x564E4141544E41  # "VNAATNA": one ATNA exporter at a time


class AuditTrail:
    """The audit trail: each record is committed before its request's answer is complete.
    Records of concurrent requests share a transaction (`GroupCommit`), written by a
    statement compiled once on the index's kept write connection: an audit record used to
    cost more than serving a WADO-RS frame. A C-STORE's record goes into the ingest
    transaction itself (`insert`), so it commits atomically with the instance."""

    def __init__(self, index: Index) -> None:
        self.index = index
        dialect = index.engine.dialect
        self._insert = CompiledStatement(insert(_AUDIT), dialect, _AUDIT_COLUMNS)
        self._insert_returning = CompiledStatement(insert(_AUDIT).returning(_AUDIT.c.id),
                                                   dialect, _AUDIT_COLUMNS)
        self._count = CompiledStatement(
            update(_AUDIT).where(_AUDIT.c.id == bindparam("row_id")).values(
                instances=bindparam("instances"), outcome=bindparam("outcome"),
                status=bindparam("status")), dialect)
        self._group: GroupCommit[list[dict[str, object]], None] = GroupCommit(self._write)

    def record(self, rec: AuditRecord) -> None:
        self._group.submit([rec.row()])

    def record_all(self, recs: Iterable[AuditRecord]) -> None:
        """Several records of one request, committed together before it returns."""
        at = datetime.now(UTC)
        rows = [rec.row(at) for rec in recs]
        if rows:
            self._group.submit(rows)

    def insert(self, cursor: Any, rec: AuditRecord) -> int:
        """Write `rec` in the caller's transaction (`Index.run_write`): its id."""
        return int(self._insert_returning.scalar(cursor, rec.row()))

    def insert_in(self, conn: Connection, rec: AuditRecord) -> None:
        """Write `rec` in the caller's SQLAlchemy transaction."""
        conn.execute(insert(_AUDIT).values(**rec.row()))

    def close_association(self, rec: AuditRecord | None,
                          counts: Sequence[tuple[int, int, str, int]]) -> None:
        """At the end of an association: its own record and the final counts of its
        C-STORE records (row id, instances, outcome, status), in one transaction."""
        if rec is None and not counts:
            return

        def work(cursor: Any) -> None:
            if rec is not None:
                self._insert.execute(cursor, rec.row())
            for row_id, n, outcome, status in counts:
                self._count.execute(cursor, {"row_id": row_id, "instances": n,
                                             "outcome": outcome, "status": status})

        self.index.run_write(work)

    def _write(self, batches: list[list[dict[str, object]]]) -> list[None]:
        rows = [row for batch in batches for row in batch]
        self.index.run_write(lambda cursor: self._insert.executemany(cursor, rows))
        return [None] * len(batches)

    def list(self, *, token_id: str | None = None, patient_id: str | None = None,
             action: str | None = None, protocol: str | None = None,
             calling_aet: str | None = None, since: datetime | None = None,
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
        if protocol:
            stmt = stmt.where(AuditEvent.protocol == protocol)
        if calling_aet:
            stmt = stmt.where(AuditEvent.calling_aet == calling_aet)
        if since:
            stmt = stmt.where(AuditEvent.at >= since)
        if until:
            stmt = stmt.where(AuditEvent.at <= until)
        stmt = stmt.order_by(AuditEvent.id.desc()).limit(limit).offset(offset)
        with self.index.read_session() as s:
            return list(s.scalars(stmt))

    # -- the ATNA export queue ------------------------------------------------------------------

    def unexported(self, limit: int = 200,
                   now: datetime | None = None) -> builtins.list[AuditEvent]:
        """The oldest records not sent to the ATNA collector yet (`ix_audit_event_unexported`),
        leaving out the C-STORE records of associations still open."""
        now = now or datetime.now(UTC)
        open_until = now - timedelta(seconds=OPEN_STORE_RECORD_SECONDS)
        stmt = select(AuditEvent).where(
            AuditEvent.exported_at.is_(None),
            or_(AuditEvent.instances.is_not(None), AuditEvent.action != "dicom.store",
                AuditEvent.at < open_until)).order_by(AuditEvent.id).limit(limit)
        with self.index.read_session() as s:
            return list(s.scalars(stmt))

    @contextlib.contextmanager
    def exporting(self) -> Iterator[bool]:
        """Whether the caller exports now: with PostgreSQL, only the one worker that holds
        the export's advisory lock; SQLite has one worker."""
        if self.index.dialect != "postgresql":
            yield True
            return
        with self.index.engine.connect() as conn:
            mine = bool(conn.execute(select(func.pg_try_advisory_lock(_EXPORT_LOCK))).scalar())
            try:
                yield mine
            finally:
                if mine:
                    conn.execute(select(func.pg_advisory_unlock(_EXPORT_LOCK)))
                conn.commit()

    def mark_exported(self, ids: Sequence[int], at: datetime | None = None) -> None:
        if not ids:
            return
        with self.index.begin() as conn:
            conn.execute(update(AuditEvent).where(AuditEvent.id.in_(list(ids))).values(
                exported_at=at or datetime.now(UTC)))
