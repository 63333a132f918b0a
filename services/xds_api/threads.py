"""A thread of its own for work that lasts as long as a transfer.

An upload's writer and a download's reader live as long as their client: a paused video
player keeps its reader for minutes. In a shared, bounded pool a few dozen of them would
starve every other request; a thread each costs little and cannot block the others.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def in_own_thread(fn: Callable[[], T], name: str) -> asyncio.Future[T]:
    """Run `fn` in a new daemon thread; its result or exception arrives in the future."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.cancelled():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
            loop.call_soon_threadsafe(settle, None, exc)
        else:
            loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future
