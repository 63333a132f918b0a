"""Typed dependencies of the HTTP routes: what a route needs, declared by type.

`create_app` puts one `ApiContext` on the app; the aliases below are the only readers of
`request.app.state`, so a route says `documents: DocumentsDep` and gets a `Documents`.
They are coroutines only so that FastAPI calls them on the event loop, not in a thread.
The caller's `Principal` comes from `security.authorize(action)`, which also checks the
role and opens the audit record.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Query, Request

from services.runtime import Runtime
from services.xds_api.metrics import Metrics
from storage.archive import Archive
from storage.index.db import Index
from storage.index.documents import Documents
from storage.index.stats import StatsReader
from storage.index.tokens import AuditTrail, Tokens
from storage.objectstore import ObjectStore
from vna.ratelimit import FailureWindow
from vna.settings import Settings


@dataclass(frozen=True)
class ApiContext:
    """What the HTTP app opened at start (from the runtime) and shares between requests."""

    runtime: Runtime
    documents: Documents
    tokens: Tokens
    audit: AuditTrail
    stats: StatsReader
    metrics: Metrics
    auth_failures: FailureWindow  # failed bearer attempts by client address (429 after N)

    @property
    def settings(self) -> Settings:
        return self.runtime.settings


def context(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.context
    return ctx


async def _settings(request: Request) -> Settings:
    return context(request).settings


async def _index(request: Request) -> Index:
    return context(request).runtime.index


async def _store(request: Request) -> ObjectStore:
    return context(request).runtime.store


async def _archive(request: Request) -> Archive:
    return context(request).runtime.archive


async def _documents(request: Request) -> Documents:
    return context(request).documents


async def _tokens(request: Request) -> Tokens:
    return context(request).tokens


async def _audit_trail(request: Request) -> AuditTrail:
    return context(request).audit


async def _stats(request: Request) -> StatsReader:
    return context(request).stats


async def _metrics(request: Request) -> Metrics:
    return context(request).metrics


SettingsDep = Annotated[Settings, Depends(_settings)]
IndexDep = Annotated[Index, Depends(_index)]
StoreDep = Annotated[ObjectStore, Depends(_store)]
ArchiveDep = Annotated[Archive, Depends(_archive)]  # the SOP Instance ingest path (STOW-RS)
DocumentsDep = Annotated[Documents, Depends(_documents)]
TokensDep = Annotated[Tokens, Depends(_tokens)]
AuditTrailDep = Annotated[AuditTrail, Depends(_audit_trail)]
StatsDep = Annotated[StatsReader, Depends(_stats)]
MetricsDep = Annotated[Metrics, Depends(_metrics)]

# A page's offset: non-negative and within a 64-bit integer (a larger one overflowed the
# database driver: a 500 found by the property tests, now a 422).
PageOffset = Annotated[int, Query(ge=0, le=2**63 - 1)]
