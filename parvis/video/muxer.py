"""Batching across streams: frames from many sources leave in batches, the way DeepStream's
nvstreammux forms them. Knows nothing about models.

    mux = StreamMuxer(n_streams=4, batch_size=4, push_timeout_ms=20, live=[False] * 4)
    # source thread s:  mux.put(s, item) ... mux.end(s)
    for batch in mux.batches():          # lists of Packet(stream, index, item), mixed streams
        ...

Each stream has its own bounded queue. In file mode `put` blocks while the stream's queue is full
(back-pressure: a file is never read faster than it is processed, and no frame is dropped). In live
mode `put` never blocks: when the queue is full the oldest waiting frame is dropped and counted, so
a stream that falls behind shows recent frames, not a growing delay.

A batch takes frames round-robin across the streams that have any (starting one stream further each
time, so no stream is favoured), up to `batch_size`; a partial batch goes when `push_timeout_ms` has
passed since the batch started forming, so a slow or ended stream never stalls the others. Frames of
one stream keep their order. `batches()` ends when every stream has ended and its queue is drained.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Packet:
    stream: int
    index: int  # the frame's number in its stream (0-based, counting dropped frames too)
    item: Any
    t_in: float = field(default_factory=time.perf_counter)  # when it entered the muxer


class StreamMuxer:
    def __init__(
        self,
        n_streams: int,
        batch_size: int,
        push_timeout_ms: float = 20.0,
        queue_size: int = 4,
        live: bool | list[bool] = False,
    ):
        if n_streams < 1 or batch_size < 1 or queue_size < 1:
            raise ValueError("n_streams, batch_size and queue_size must be >= 1")
        self.n_streams = n_streams
        self.batch_size = batch_size
        self.push_timeout_s = push_timeout_ms / 1000.0
        self.queue_size = queue_size
        self.live = list(live) if isinstance(live, list) else [live] * n_streams
        self.queues: list[deque[Packet]] = [deque() for _ in range(n_streams)]
        self.ended = [False] * n_streams
        self.dropped = [0] * n_streams
        self.pushed = [0] * n_streams
        self._closed = False
        self._cond = threading.Condition()
        self._next = 0  # the stream a batch starts from: rotates for fairness

    # -- sources ---------------------------------------------------------------------------------
    def put(self, stream: int, index: int, item: Any) -> bool:
        """Hand over one frame; False once the muxer is closed (the source should stop)."""
        packet = Packet(stream, index, item)
        with self._cond:
            q = self.queues[stream]
            if self.live[stream]:
                if len(q) >= self.queue_size:
                    q.popleft()
                    self.dropped[stream] += 1
            else:
                while len(q) >= self.queue_size and not self._closed:
                    self._cond.wait()
            if self._closed:
                return False
            q.append(packet)
            self.pushed[stream] += 1
            self._cond.notify_all()
        return True

    def end(self, stream: int) -> None:
        """The stream has no more frames (finished or failed)."""
        with self._cond:
            self.ended[stream] = True
            self._cond.notify_all()

    def close(self) -> None:
        """Stop: blocked sources return False, batches() ends after what is queued."""
        with self._cond:
            self._closed = True
            for s in range(self.n_streams):
                self.ended[s] = True
            self._cond.notify_all()

    # -- consumer --------------------------------------------------------------------------------
    def _take(self, batch: list[Packet]) -> None:
        """Round-robin, one frame per stream per pass, until the batch is full or nothing is queued."""
        start = self._next
        while len(batch) < self.batch_size:
            took = False
            for k in range(self.n_streams):
                s = (start + k) % self.n_streams
                if self.queues[s] and len(batch) < self.batch_size:
                    batch.append(self.queues[s].popleft())
                    took = True
            if not took:
                break
        self._next = (start + 1) % self.n_streams

    def batches(self) -> Iterator[list[Packet]]:
        while True:
            with self._cond:
                while not any(self.queues):
                    if all(self.ended):
                        return
                    self._cond.wait()
                batch: list[Packet] = []
                self._take(batch)
                deadline = time.perf_counter() + self.push_timeout_s
                # Wait for the rest of the batch while a stream that is still running could fill it.
                while len(batch) < self.batch_size and not all(self.ended):
                    remaining = deadline - time.perf_counter()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                    self._take(batch)
                self._cond.notify_all()  # room in the queues: blocked sources may go on
            yield batch

    @property
    def depth(self) -> list[int]:
        return [len(q) for q in self.queues]
