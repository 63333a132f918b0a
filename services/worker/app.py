"""The Celery app of the workers.

Broker: VNA_BROKER_URL (Redis in production). Without one, kombu's filesystem transport
under VNA_DATA_DIR/broker, which needs no server and works across the processes that
share one data dir.

Workers and beat log like every other vna process (`services.supervision.configure_logging`),
and what they say every few seconds when all is well (beat sending the outbox poll, the
worker receiving it and its success) is logged at DEBUG: on `vna up`'s console it would
bury what a person needs to see. A poll that fails or is retried still shows.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery, signals
from celery.app.trace import LOG_RECEIVED, LOG_SUCCESS

from services.supervision import configure_logging, die_with_parent
from vna.settings import Settings, get_settings

_MAIN_PID = os.getpid()  # the worker's main process, which forks the pool and beat

OUTBOX_POLL = "vna.outbox.drain"
_BEAT_SENDS = "Scheduler: Sending due task %s (%s)"  # celery.beat's line for every send


class RoutinePollAtDebug(logging.Filter):
    """Logs the outbox poll's routine lines (sent by beat, received, succeeded) at DEBUG:
    they come every VNA_OUTBOX_POLL_SECONDS and say nothing when all is well. Every other
    record, a failed or retried poll's included, passes unchanged."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._routine(record):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)

    @staticmethod
    def _routine(record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO:
            return False
        args: Any = record.args
        if record.msg in (LOG_RECEIVED, LOG_SUCCESS):
            return isinstance(args, dict) and args.get("name") == OUTBOX_POLL
        return record.msg == _BEAT_SENDS and isinstance(args, tuple) and OUTBOX_POLL in args


ROUTINE_POLL_AT_DEBUG = RoutinePollAtDebug()
# The loggers of those three lines (celery.beat, celery.worker.strategy, celery.app.trace).
ROUTINE_LOGGERS = ("celery.beat", "celery.worker.strategy", "celery.app.trace")


class _NoDefaultHostname(logging.Filter):
    """kombu warns that the filesystem transport's URL names no host: it needs none."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No hostname was supplied")


_NO_DEFAULT_HOSTNAME = _NoDefaultHostname()


@signals.setup_logging.connect
def _log_like_vna(loglevel: int | str | None = None, **_: object) -> None:
    """Celery's worker and beat processes: vna's log format instead of Celery's, and the
    routine poll at DEBUG (a receiver here also stops Celery configuring logging itself)."""
    level = logging.getLevelName(loglevel) if isinstance(loglevel, int) else loglevel
    configure_logging(str(level or "INFO"))
    for name in ROUTINE_LOGGERS:
        logging.getLogger(name).addFilter(ROUTINE_POLL_AT_DEBUG)


@signals.worker_process_init.connect
@signals.beat_embedded_init.connect
def _die_with_the_worker(**_: object) -> None:
    """A pool process or embedded beat does not outlive the worker that forked it."""
    die_with_parent(_MAIN_PID)


@signals.worker_ready.connect
def _start_commitment_reports(**_: object) -> None:
    """The worker's main process sends Storage Commitment reports from a thread of its own
    (services/worker/commitment.py: not behind the pool's outbox work)."""
    from services.runtime import open_runtime
    from services.worker.commitment import start_reporter

    start_reporter(get_settings(), open_runtime().index)


@signals.worker_shutdown.connect
def _stop_commitment_reports(**_: object) -> None:
    from services.worker.commitment import stop_reporter

    stop_reporter()


@signals.worker_ready.connect
def _start_atna_export(**_: object) -> None:
    """The worker's main process sends the audit trail to VNA_AUDIT_SYSLOG from a thread of
    its own (services/worker/atna.py)."""
    from services.runtime import open_runtime
    from services.worker.atna import start_exporter

    start_exporter(get_settings(), open_runtime().index)


@signals.worker_shutdown.connect
def _stop_atna_export(**_: object) -> None:
    from services.worker.atna import stop_exporter

    stop_exporter()


def make_celery(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    # services.worker.commitment registers the remote-control command that wakes its reporter
    app = Celery("vna", broker=settings.resolved_broker_url,
                 include=["services.worker.tasks", "services.worker.commitment"])
    conf: dict[str, object] = {
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "broker_connection_retry_on_startup": True,
        "task_ignore_result": True,
        # Celery 6's default: a task running when the broker connection is lost is
        # cancelled and redelivered (ours are idempotent: the outbox says what is done).
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        # The outbox is the source of truth; this only says "look now". Its period bounds
        # the lag between ingest and derived data (header JSON, media facts, statistics).
        "beat_schedule": {
            "drain-outbox": {"task": "vna.outbox.drain",
                             "schedule": settings.outbox_poll_seconds,
                             "options": {"expires": 60}},
            "fixity": {"task": "vna.fixity.run", "schedule": 24 * 3600.0},
            "sweep-objects": {"task": "vna.objects.sweep", "schedule": 24 * 3600.0},
        },
    }
    if settings.resolved_broker_url.startswith("filesystem://"):
        logging.getLogger("kombu.connection").addFilter(_NO_DEFAULT_HOSTNAME)
        folder = (settings.data_dir / "broker").resolve()
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        conf["broker_transport_options"] = {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "store_processed": False,
            "control_folder": str(folder / "control"),
        }
        results = (settings.data_dir / "results").resolve()
        results.mkdir(parents=True, exist_ok=True)
        conf["result_backend"] = f"file://{results}"
    app.conf.update(conf)
    return app

