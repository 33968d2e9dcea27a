"""The service's bounded worker pool: admission (a request that finds it full gets 503 + Retry-After at once)
and lanes, so the event loop never decodes, embeds or searches and a long upload never queues in front of a search.
"""
from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import partial
from typing import AsyncIterator, Callable, Literal, TypeVar

import faiss

from embedstore.errors import Busy
from embedstore.service.settings import Settings

T = TypeVar("T")


class Timeout(Busy):
    """The request ran past request_timeout_s (503, like Busy: the client may retry later)."""

    code = "timeout"


Lane = Literal["search", "filter", "media"]


class WorkerPool:
    """Admission (`worker_threads` + `queue_size` requests in flight; one more is refused with Busy) and two lanes.

    - "search": one thread for lookups and searches (a millisecond or so each, mostly FAISS without the GIL).
      One thread and the event loop already fill two cores; with two search threads each search also
      fought the event loop for the GIL (bench/rest.py, id queries at 8 clients, one process, when a
      lock still serialised the searches: 376-472 requests/s with two threads, 514-646 with one).
    - "media": `worker_threads` threads that decode and embed uploads and render thumbnails (seconds
      each), so a long upload never queues in front of a search.
    - "filter": `worker_threads` threads that evaluate a search's where filter (DuckDB, cached per Searcher)
      before the search itself goes to the search lane, so a costly filter never queues in front of
      another client's id search; its work is interrupted at filter_timeout_s.
    """

    def __init__(self, settings: Settings):
        # OpenMP thread counts are per calling thread: each worker sets its own, or every FAISS call would
        # start a team of threads that spin (burning ~30 ms of CPU a query here) after a 1 ms search.
        def lane(threads: int, name: str) -> ThreadPoolExecutor:
            return ThreadPoolExecutor(threads, thread_name_prefix=f"embedstore-{name}",
                                      initializer=faiss.omp_set_num_threads, initargs=(settings.search_threads,))

        self.lanes: dict[Lane, ThreadPoolExecutor] = {"search": lane(1, "search"), "media": lane(settings.worker_threads, "media"),
                                                      "filter": lane(settings.worker_threads, "filter")}
        self.capacity = self.free = settings.worker_threads + settings.queue_size
        self.timeout_s = settings.request_timeout_s

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """One request's share of capacity and time, held for the whole request (an upload's streaming too).

        Only the event loop thread counts slots, so a plain integer is enough.
        """
        if self.free <= 0:
            raise Busy(f"the service is at capacity ({self.capacity} requests running or queued); retry shortly")
        self.free -= 1
        try:
            async with asyncio.timeout(self.timeout_s) as deadline:
                yield
        except TimeoutError:
            if deadline.expired():
                raise Timeout(f"the request took longer than the service's {self.timeout_s:g} s limit; "
                              f"retry later or send a shorter video") from None
            raise
        finally:
            self.free += 1

    async def run(self, lane: Lane, fn: Callable[..., T], *args) -> T:
        """fn(*args) in a thread of `lane`; a request that times out first takes its job off the queue if it has not started."""
        return await asyncio.get_running_loop().run_in_executor(self.lanes[lane], partial(fn, *args))

    def close(self) -> None:
        for executor in self.lanes.values():
            executor.shutdown(wait=True, cancel_futures=True)
