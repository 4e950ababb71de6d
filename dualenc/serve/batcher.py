"""Dynamic batching: one worker thread gathers concurrent queries into one call.

Requests arrive on the event loop; each is queued with a Future. The worker takes the first
queued item, then waits at most `max_wait_s` for more (never past `max_batch`), and hands the
whole batch to `process` — one encode, one search, one rerank for everything that arrived
together. Only this thread touches JAX and the tokenizers, so they are never used concurrently.
With a `respond` stage, a second thread turns each processed batch into its results (snippets,
JSON-ready dicts: pure Python) while the worker already encodes the next batch — the device
work releases the GIL, so the two overlap instead of adding up.
A request whose client went away is dropped before the batch runs (its Future was cancelled);
an exception in `process` or `respond` fails that batch's Futures, never the threads.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from typing import Any

log = logging.getLogger(__name__)
_STOP = object()


class QueueFull(RuntimeError):
    """More queries are waiting than the server accepts (`ServeConfig.max_queue`)."""


class DynamicBatcher:
    """Feeds `process(items) -> results` (same length, same order) with batches of queued items;
    with `respond`, results are `respond(process(items))`, the second call on its own thread."""

    def __init__(
        self,
        process: Callable[[list[Any]], Any],
        *,
        max_batch: int,
        max_wait_s: float,
        max_queue: int = 1024,
        respond: Callable[[Any], Sequence[Any]] | None = None,
    ):
        self.process, self.max_batch, self.max_wait_s = process, max_batch, max_wait_s
        self.respond = respond
        self._q: queue.Queue = queue.Queue(maxsize=max_queue)
        self._done: queue.Queue = queue.Queue(maxsize=2)  # processed batches awaiting respond
        self._thread: threading.Thread | None = None
        self._responder: threading.Thread | None = None
        self.batches = self.items = 0
        self.batch_sizes: dict[int, int] = {}  # batch size -> how many batches had it

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="dualenc-batcher", daemon=True)
            self._thread.start()
            if self.respond is not None:
                self._responder = threading.Thread(
                    target=self._respond_loop, name="dualenc-responder", daemon=True
                )
                self._responder.start()

    def alive(self) -> bool:
        threads = [self._thread] + ([self._responder] if self.respond is not None else [])
        return all(t is not None and t.is_alive() for t in threads)

    def pending(self) -> int:
        return self._q.qsize()

    def submit(self, item: Any) -> Future:
        """Queues one item; its Future gets the result. Raises QueueFull when saturated."""
        fut: Future = Future()
        try:
            self._q.put_nowait((item, fut, time.perf_counter()))
        except queue.Full:
            raise QueueFull(f"{self._q.maxsize} queries already waiting") from None
        return fut

    def close(self, timeout: float = 10.0) -> None:
        """Finishes the batch in flight, then stops the worker."""
        if self._thread is not None:
            self._q.put(_STOP)
            self._thread.join(timeout)
            self._thread = None
        if self._responder is not None:
            self._done.put(_STOP)
            self._responder.join(timeout)
            self._responder = None

    def _gather(self, first) -> tuple[list, bool]:
        batch, deadline = [first], time.perf_counter() + self.max_wait_s
        while len(batch) < self.max_batch:
            wait = deadline - time.perf_counter()
            try:
                nxt = self._q.get(timeout=wait) if wait > 0 else self._q.get_nowait()
            except queue.Empty:
                break
            if nxt is _STOP:
                return batch, True
            batch.append(nxt)
        return batch, False

    def _loop(self) -> None:
        stop = False
        while not stop:
            first = self._q.get()
            if first is _STOP:
                return
            batch, stop = self._gather(first)
            live = [(it, fut, t) for it, fut, t in batch if fut.set_running_or_notify_cancel()]
            if not live:
                continue
            started = time.perf_counter()
            items = [(it, started - t) for it, _, t in live]  # (item, seconds spent queued)
            try:
                results = self.process(items)
            except Exception as e:  # noqa: BLE001 - the batch fails, the worker lives on
                _fail(live, e)
                continue
            self.batches += 1
            self.items += len(live)
            self.batch_sizes[len(live)] = self.batch_sizes.get(len(live), 0) + 1
            if self.respond is None:
                _deliver(live, results)
            else:
                self._done.put((live, results))  # blocks while 2 batches await respond

    def _respond_loop(self) -> None:
        while (job := self._done.get()) is not _STOP:
            live, processed = job
            try:
                results = self.respond(processed)
            except Exception as e:  # noqa: BLE001 - the batch fails, the responder lives on
                _fail(live, e)
                continue
            _deliver(live, results)


def _fail(live: list, e: Exception) -> None:
    log.exception("batch of %d failed", len(live), exc_info=e)
    for _, fut, _ in live:
        _settle(fut, exc=e)


def _deliver(live: list, results: Sequence[Any]) -> None:
    for (_, fut, _), res in zip(live, results, strict=True):
        _settle(fut, result=res)


def _settle(fut: Future, result=None, exc: BaseException | None = None) -> None:
    try:
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)
    except InvalidStateError:  # already settled elsewhere: nothing to deliver
        pass
