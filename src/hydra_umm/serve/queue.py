"""The one bounded queue between the server's requests (page and API) and the model.

A single worker thread runs the jobs in arrival order, so the model never sees two requests at
once; at most ``depth`` jobs wait behind the running one. A job that finds the queue full is
refused at once (:class:`QueueFull`, answered 503 by the API) instead of piling up.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from typing import Any, Callable, Iterator, Optional


class QueueFull(RuntimeError):
    """The queue already holds ``depth`` waiting jobs."""


class ModelQueue:
    def __init__(self, depth: int):
        if depth < 1:
            raise ValueError(f"the queue depth must be >= 1, got {depth}")
        self.depth = depth
        self._jobs: queue.Queue[Optional[tuple[Future, Callable[[], Any]]]] = queue.Queue(maxsize=depth)
        self._worker = threading.Thread(target=self._work, name="hydra-umm-model", daemon=True)
        self._worker.start()

    @property
    def waiting(self) -> int:
        return self._jobs.qsize()

    def submit(self, job: Callable[[], Any]) -> Future:
        """Queue ``job`` (no arguments); its result or exception arrives in the returned future."""
        future: Future = Future()
        try:
            self._jobs.put_nowait((future, job))
        except queue.Full:
            raise QueueFull(f"the model queue is full ({self.depth} requests waiting); retry later") from None
        return future

    def stream(self, job: Callable[[Callable[[Any], None]], Any]) -> Iterator[Any]:
        """Queue ``job(emit)`` and iterate over what it emits while it runs (a model decoding token
        by token). Raises QueueFull at once when the queue is full; the job's exception, if any, is
        raised when the iteration reaches it."""
        items: queue.Queue = queue.Queue()
        end = object()

        def run() -> Any:
            try:
                return job(items.put)
            finally:
                items.put(end)

        future = self.submit(run)

        def emitted() -> Iterator[Any]:
            while (item := items.get()) is not end:
                yield item
            future.result()

        return emitted()

    def close(self) -> None:
        """Finish the queued jobs, then stop the worker."""
        self._jobs.put(None)
        self._worker.join()

    def _work(self) -> None:
        while (item := self._jobs.get()) is not None:
            future, job = item
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(job())
                except BaseException as e:  # handed to the waiting request, never kills the worker
                    future.set_exception(e)
