"""The Celery app of the workers.

Broker: VNA_BROKER_URL (Redis in production). Without one, kombu's filesystem transport
under VNA_DATA_DIR/broker, which needs no server and works across the processes that
share one data dir.
"""

from __future__ import annotations

import os

from celery import Celery, signals

from services.supervision import die_with_parent
from vna.settings import Settings, get_settings

_MAIN_PID = os.getpid()  # the worker's main process, which forks the pool and beat


@signals.worker_process_init.connect
@signals.beat_embedded_init.connect
def _die_with_the_worker(**_: object) -> None:
    """A pool process or embedded beat does not outlive the worker that forked it."""
    die_with_parent(_MAIN_PID)


def make_celery(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    app = Celery("vna", broker=settings.resolved_broker_url, include=["services.worker.tasks"])
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

