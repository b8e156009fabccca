"""Dynamic batching: requests that arrive one by one leave in batches. Knows nothing about vision.

    batcher = DynamicBatcher([run_batch], max_batch_size=16, max_queue_delay_ms=5, max_queue=128)
    with batcher.reserve() as slot:        # QueueFullError at once when the queue is full
        item = prepare(request)            # e.g. decode an image; the slot counts it as on its way
        future = slot.submit(item)         # concurrent.futures.Future of a Completed
    completed = future.result()            # .value: run_batch(items)[i] for this item, .batch_size, ...

One thread per instance (`fns[i]` is instance i's callable, e.g. a model copy on its own cores or
GPU) takes batches from one shared bounded queue. Only one instance forms a batch at a time, so
batches are as large as the queue allows, and a batch goes when it holds `max_batch_size` items or
when its oldest item has waited `max_queue_delay_ms`. It also goes at once when nothing more is on
its way (no reserved slot is still being prepared): waiting then only adds latency, which is why a
lone request is never held back (Triton's delay, by contrast, always applies).

Each callable maps a list of items to a sequence of outputs of the same length, in order (checked:
Ray Serve's `@serve.batch` does the same). An exception, or a wrong output count, fails that batch's
futures only; the instance goes on with the next batch. A future cancelled by its caller (e.g. on a
timeout) before its batch forms is dropped from the queue, so no work is spent on it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any


class QueueFullError(RuntimeError):
    """The queue holds `max_queue` items (queued plus reserved); the caller should retry later."""


class BatcherClosedError(RuntimeError):
    """The batcher is shutting down and takes no new items."""


class BatchSizeError(RuntimeError):
    """A batch callable returned a different number of outputs than it was given inputs."""


@dataclass(frozen=True)
class Completed:
    """One item's output and how it was served."""

    value: Any
    batch_size: int
    queue_wait_s: float  # from submit until its batch started running
    run_s: float  # the batch callable's wall time


@dataclass
class _Pending:
    item: Any
    future: Future
    enqueued: float
    deadline: float | None


class BatchObserver:
    """Hooks for metrics; the default does nothing."""

    def batch_done(self, size: int, queue_waits: list[float], run_s: float, ok: bool) -> None: ...

    def dropped(self, reason: str) -> None: ...


class Slot:
    """A place in the queue, reserved before the item exists; submit once, or leave it unused."""

    def __init__(self, batcher: DynamicBatcher):
        self._batcher = batcher
        self._open = True

    def submit(self, item: Any, timeout_s: float | None = None) -> Future:
        if not self._open:
            raise RuntimeError("this slot was already used")
        self._open = False
        return self._batcher._enqueue(item, timeout_s)

    def __enter__(self) -> Slot:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def release(self) -> None:
        if self._open:
            self._open = False
            self._batcher._unreserve()


class DynamicBatcher:
    def __init__(
        self,
        fns: Sequence[Callable[[list], Sequence]],
        max_batch_size: int = 16,
        max_queue_delay_ms: float = 5.0,
        max_queue: int = 128,
        observer: BatchObserver | None = None,
        name: str = "batcher",
    ):
        if not fns:
            raise ValueError("a batcher needs at least one instance callable")
        if max_batch_size < 1 or max_queue < 1 or max_queue_delay_ms < 0:
            raise ValueError(
                f"max_batch_size ({max_batch_size}) and max_queue ({max_queue}) must be >= 1, "
                f"max_queue_delay_ms ({max_queue_delay_ms}) >= 0"
            )
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_ms / 1000.0
        self.max_queue = max_queue
        self.observer = observer or BatchObserver()
        self._queue: deque[_Pending] = deque()
        self._reserved = 0  # slots handed out whose items are not in the queue yet
        self._busy = 0
        self._closed = False
        self._cond = threading.Condition()
        self._forming = threading.Lock()  # one instance forms a batch at a time
        self._threads = [
            threading.Thread(target=self._serve, args=(fn,), name=f"{name}-instance-{i}", daemon=True)
            for i, fn in enumerate(fns)
        ]
        for thread in self._threads:
            thread.start()

    # -- producer side -------------------------------------------------------------------------
    def reserve(self, n: int = 1) -> Slot | list[Slot]:
        """`n` slots (one Slot when n == 1); QueueFullError at once if queued + reserved would pass max_queue."""
        with self._cond:
            if self._closed:
                raise BatcherClosedError("the server is shutting down")
            if len(self._queue) + self._reserved + n > self.max_queue:
                raise QueueFullError(
                    f"queue full ({len(self._queue) + self._reserved} of {self.max_queue} places taken)"
                )
            self._reserved += n
        slots = [Slot(self) for _ in range(n)]
        return slots[0] if n == 1 else slots

    def submit(self, item: Any, timeout_s: float | None = None) -> Future:
        """Reserve and submit in one step (for items that need no preparation)."""
        return self.reserve().submit(item, timeout_s)

    def _unreserve(self) -> None:
        with self._cond:
            self._reserved -= 1
            self._cond.notify_all()  # a former waiting for this item can stop waiting

    def _enqueue(self, item: Any, timeout_s: float | None) -> Future:
        future: Future = Future()
        now = time.perf_counter()
        with self._cond:
            self._reserved -= 1
            if self._closed and not self._threads_alive():
                raise BatcherClosedError("the server is shutting down")
            self._queue.append(_Pending(item, future, now, now + timeout_s if timeout_s else None))
            self._cond.notify_all()
        return future

    @property
    def depth(self) -> int:
        """Items waiting in the queue (not yet in a batch)."""
        return len(self._queue)

    @property
    def free(self) -> int:
        """Places left in the queue (queued and reserved items take one each)."""
        return self.max_queue - len(self._queue) - self._reserved

    @property
    def busy(self) -> int:
        """Instances running a batch right now."""
        return self._busy

    # -- consumer side -------------------------------------------------------------------------
    def _form(self) -> list[_Pending] | None:
        """The next batch; None once closed and drained."""
        with self._cond:
            while True:
                while not self._queue:
                    if self._closed and self._reserved == 0:
                        return None
                    self._cond.wait()
                # Wait for more only while more is on its way (reserved slots) and the oldest item's
                # delay has not run out.
                while len(self._queue) < self.max_batch_size and self._reserved > 0:
                    remaining = self._queue[0].enqueued + self.max_queue_delay_s - time.perf_counter()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                batch: list[_Pending] = []
                now = time.perf_counter()
                while self._queue and len(batch) < self.max_batch_size:
                    pending = self._queue.popleft()
                    if pending.deadline is not None and now > pending.deadline:
                        pending.future.cancel()
                        self.observer.dropped("timeout")
                    if not pending.future.set_running_or_notify_cancel():
                        continue  # cancelled by its caller (timed out, disconnected)
                    batch.append(pending)
                if batch:
                    self._busy += 1
                    return batch

    def _serve(self, fn: Callable[[list], Sequence]) -> None:
        while True:
            with self._forming:
                batch = self._form()
            if batch is None:
                return
            start = time.perf_counter()
            waits = [start - p.enqueued for p in batch]
            ok = False
            try:
                outputs = fn([p.item for p in batch])
                if len(outputs) != len(batch):
                    raise BatchSizeError(f"the batch callable returned {len(outputs)} outputs for {len(batch)} inputs")
                run_s = time.perf_counter() - start
                for pending, output, wait in zip(batch, outputs, waits, strict=True):
                    pending.future.set_result(Completed(output, len(batch), wait, run_s))
                ok = True
            except BaseException as exc:  # noqa: BLE001 - the batch's callers get the error, the thread lives on
                run_s = time.perf_counter() - start
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(exc)
            finally:
                with self._cond:
                    self._busy -= 1
            self.observer.batch_done(len(batch), waits, run_s, ok)

    # -- shutdown ------------------------------------------------------------------------------
    def _threads_alive(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def close(self, drain: bool = True, timeout: float | None = None) -> None:
        """Take no new reservations; with `drain`, finish every queued and reserved item first,
        otherwise fail the queued ones with BatcherClosedError. Joins the instance threads."""
        with self._cond:
            self._closed = True
            if not drain:
                while self._queue:
                    pending = self._queue.popleft()
                    if pending.future.set_running_or_notify_cancel():
                        pending.future.set_exception(BatcherClosedError("the server shut down before this ran"))
            self._cond.notify_all()
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
