"""Worker tasks. Indexing, statistics, retention and fixity arrive with the outbox."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="vna.ping", ignore_result=False)
def ping() -> str:
    """A liveness probe: the tests send it through the broker to a real worker process."""
    return "pong"
