"""A bounded hand-over from the event loop to one blocking thread.

An upload (documents, STOW-RS) arrives on the event loop and is written by a thread (to
object storage, to receive files): what is in between must stay bounded, or a fast client
and a slow disk fill the memory. `put` awaits room without blocking the loop; the thread
takes items with `take` under the pipe's condition and wakes the loop when room frees up.
What an item weighs is the caller's to say (bytes count, markers weigh nothing).
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class BoundedPipe(Generic[T]):
    """Items from the event loop to one reader thread, at most `high_water` of weight
    in between."""

    def __init__(self, loop: asyncio.AbstractEventLoop, high_water: int,
                 weight: Callable[[T], int]) -> None:
        self._loop = loop
        self._high = high_water
        self._weight = weight
        self._items: deque[T] = deque()
        self._size = 0
        self._closed = False
        self.reader_gone = False
        self._cond = threading.Condition()
        self._room = asyncio.Event()
        self._room.set()

    async def put(self, item: T) -> bool:
        """Hand `item` over once there is room; False (nothing handed) if the reader
        stopped."""
        while True:
            with self._cond:
                if self.reader_gone:
                    return False
                if self._size < self._high:
                    self._items.append(item)
                    self._size += self._weight(item)
                    self._cond.notify()
                    return True
                self._room.clear()
            await self._room.wait()

    def close(self) -> None:
        """No more items: the reader drains what is there, then sees the end."""
        with self._cond:
            self._closed = True
            self._cond.notify()

    def reader_done(self) -> None:
        """The reader thread stopped (done or failed): never wait for room again."""
        with self._cond:
            self.reader_gone = True
        self._loop.call_soon_threadsafe(self._room.set)

    def _taken(self, weight: int) -> None:
        """Under the condition: `weight` left the pipe; wake the loop if there is room."""
        self._size -= weight
        if weight and self._size < self._high:
            self._loop.call_soon_threadsafe(self._room.set)

    def get(self) -> T | None:
        """The next item (blocking the reader thread); None once closed and drained."""
        with self._cond:
            while not self._items and not self._closed:
                self._cond.wait()
            if not self._items:
                return None
            item = self._items.popleft()
            self._taken(self._weight(item))
            return item
