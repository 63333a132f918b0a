"""Worker tasks: thin wrappers around `storage.derive`, the outbox's consumer."""

from __future__ import annotations

from functools import cache
from zoneinfo import ZoneInfo

from celery import shared_task

from services.runtime import open_runtime
from storage.consistency import sweep
from storage.derive import Deriver
from storage.fixity import run_fixity


@shared_task(name="vna.ping", ignore_result=False)
def ping() -> str:
    """A liveness probe: the tests send it through the broker to a real worker process."""
    return "pong"


@cache
def _deriver() -> Deriver:
    """The worker process's deriver, on the index and store of its runtime (opened once per
    process: a pool process's own, after the fork)."""
    runtime = open_runtime()
    return Deriver(runtime.index, runtime.store, ZoneInfo(runtime.settings.timezone))


@shared_task(name="vna.outbox.drain", ignore_result=True, acks_late=True,
             autoretry_for=(Exception,), retry_backoff=True, retry_backoff_max=60,
             max_retries=None)
def drain_outbox() -> int:
    """Process what the outbox holds (idempotent: results are upserts keyed by subject).
    Beat sends this every few seconds; a lost or doubled message changes nothing."""
    return _deriver().drain()


@shared_task(name="vna.objects.sweep", ignore_result=True, acks_late=True)
def sweep_objects() -> int:
    """Remove objects without index rows and unfinished uploads past their grace period
    (what a process killed between object and row, or mid-upload, left)."""
    deriver = _deriver()
    return sweep(deriver.index, deriver.store)


@shared_task(name="vna.fixity.run", ignore_result=True, acks_late=True)
def fixity_run(sample: int = 100) -> int:
    """Re-hash a random sample of objects; mismatches are logged and kept in fixity_check."""
    deriver = _deriver()
    return len(run_fixity(deriver.index, deriver.store, sample=sample).mismatches)
