"""Prometheus figures of the DICOM service: how long a C-STORE takes to be acknowledged
(parse, store, index, fsync: what a modality waits for), by outcome, and the associations
accepted.

The service runs several processes on one port, so the figures go through
prometheus_client's multiprocess mode: each SCP process writes its own files under
`VNA_DATA_DIR/metrics/scp` (cleared when `vna scp` starts), and whoever serves them adds
them up: `vna scp` itself on VNA_DICOM_METRICS_PORT (one scrape target per SCP host or
container), and `vna api` when it shares the data dir (as in `vna up`). No patient data:
outcomes and counts only.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector

from vna.settings import Settings

log = logging.getLogger("vna.scp")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
STORE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


def prepare(settings: Settings) -> Path:
    """In the supervisor, before it starts SCP processes: an empty folder for their files,
    named in the environment they inherit."""
    path = settings.scp_metrics_dir
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    os.environ[MULTIPROC_ENV] = str(path)
    return path


class ScpMetrics:
    """The figures one SCP process records (into its multiprocess files, when the
    supervisor prepared them; into memory otherwise)."""

    def __init__(self) -> None:
        self.store_seconds = Histogram(
            "vna_dicom_store_seconds", "C-STORE request to response, in the archive",
            ["outcome"], buckets=STORE_BUCKETS, registry=None)
        self.associations = Counter("vna_dicom_associations",
                                    "DICOM associations accepted", registry=None)
        self._by_outcome: dict[str, Any] = {}  # labels() costs as much as observe()

    def stored(self, outcome: str, seconds: float) -> None:
        child = self._by_outcome.get(outcome)
        if child is None:
            child = self._by_outcome[outcome] = self.store_seconds.labels(outcome)
        child.observe(seconds)


def serve(settings: Settings, path: Path) -> None:
    """`vna scp`'s own /metrics (plain HTTP, no token: no patient data in it)."""
    if not settings.dicom_metrics_port:
        return
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(path))  # adds up the SCP processes' files
    start_http_server(settings.dicom_metrics_port, addr=settings.dicom_host, registry=registry)
    log.info("DICOM service metrics on http://%s:%d/metrics", settings.dicom_host,
             settings.dicom_metrics_port)
