"""Model calls behind a bounded queue: `size` calls at once, each on a thread of the slots' own pool so the event
loop keeps answering while a model works; at most `max_waiting` requests wait for a slot, and further ones are
refused with a 503 to retry later instead of piling up."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from .errors import ServiceError
from .gate import RequestCounts

T = TypeVar("T")


class CallSlots:
    def __init__(self, size: int, max_waiting: int, counts: RequestCounts, thread_name: str):
        self.size, self.max_waiting, self.counts, self.thread_name = size, max_waiting, counts, thread_name
        self._semaphore: asyncio.Semaphore | None = None
        self._executor: ThreadPoolExecutor | None = None

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[None]:
        """The semaphore and the threads, for the app's lifespan (they belong to its event loop)."""
        self._semaphore = asyncio.Semaphore(self.size)
        self._executor = ThreadPoolExecutor(self.size, thread_name_prefix=self.thread_name)
        try:
            yield
        finally:
            self._executor.shutdown(wait=True, cancel_futures=True)

    @contextlib.asynccontextmanager
    async def held(self) -> AsyncIterator[None]:
        """A slot, once one is free; a 503 ServiceError straight away when `max_waiting` requests already wait."""
        if self.counts.waiting >= self.max_waiting:
            raise ServiceError(f"the server is busy ({self.counts.waiting} requests waiting): retry later", 503, "busy")
        with self.counts.waiting_for_slot():
            await self._semaphore.acquire()
        try:
            with self.counts.running_call():
                yield
        finally:
            self._semaphore.release()

    async def call(self, function: Callable[..., T], *args) -> T:
        """`function(*args)` on the slots' threads (hold a slot around it)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)
