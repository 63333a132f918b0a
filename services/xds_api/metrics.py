"""Prometheus metrics for operations, served at `/metrics` (`operations.py`; admin token,
like every endpoint but /health; Prometheus sends it with `authorization: {credentials: ...}`).

Ingest counts and bytes come from the statistics rollup and the outbox at scrape time, so
they cover every SCP, API and import process, not just this one; HTTP request counts and
durations are this process's own; C-STORE durations are those of the `vna scp` on the same
data dir, if there is one (`services/dicom_scp/metrics.py`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

from storage.index.db import Index
from storage.index.stats import StatsReader
from storage.outbox import MAX_ATTEMPTS, given_up, lag


class Metrics:
    """One app's metrics registry: its HTTP figures and the archive-wide collector."""

    def __init__(self, index: Index, scp_metrics: Path | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.http_requests = Counter("vna_http_requests", "HTTP requests answered",
                                     ["method", "route", "status"], registry=self.registry)
        self.http_duration = Histogram(
            "vna_http_request_duration_seconds", "HTTP request time", ["method", "route"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60))
        self.auth_failures = Counter(
            "vna_http_auth_failures", "requests refused 401: no, an unknown or revoked, or an "
            "expired bearer token", ["reason"], registry=self.registry)
        self.limited = Counter(
            "vna_http_limited", "requests refused by a limit of this process: failed "
            "authentications from the address (429), concurrent uploads (503), a JSON body "
            "(413) or header count (431) over its limit", ["limit"], registry=self.registry)
        self.registry.register(ArchiveCollector(index))
        if scp_metrics is not None and _shared_dir(scp_metrics):
            MultiProcessCollector(self.registry, path=str(scp_metrics))

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.http_requests.labels(method, route, str(status)).inc()
        self.http_duration.labels(method, route).observe(seconds)


def _shared_dir(path: Path) -> bool:
    """The SCP processes' metrics folder, made if `vna scp` has not started yet; False
    where it cannot be (a data dir of the API's own, not writable: no SCP shares it)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return True


class ArchiveCollector:
    """Archive-wide figures, read from the index when Prometheus scrapes."""

    def __init__(self, index: Index) -> None:
        self.index = index
        self.stats = StatsReader(index)

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        stored = CounterMetricFamily("vna_stored", "instances and documents archived",
                                     labels=["kind", "source_ae"])
        stored_bytes = CounterMetricFamily("vna_stored_bytes", "bytes archived",
                                           labels=["kind"])
        size_by_kind: dict[str, int] = {}
        for kind, ae, count, size in self.stats.stored_by_source():
            stored.add_metric([kind, ae], count)
            size_by_kind[kind] = size_by_kind.get(kind, 0) + size
        for kind, size in size_by_kind.items():
            stored_bytes.add_metric([kind], size)
        pending, age = lag(self.index)
        yield stored
        yield stored_bytes
        yield GaugeMetricFamily("vna_outbox_pending", "outbox events waiting for a worker",
                                value=pending)
        yield GaugeMetricFamily("vna_outbox_lag_seconds", "age of the oldest waiting event",
                                value=age)
        yield GaugeMetricFamily("vna_outbox_failed", f"events given up after {MAX_ATTEMPTS} "
                                "attempts (see outbox_event.last_error)",
                                value=given_up(self.index))
