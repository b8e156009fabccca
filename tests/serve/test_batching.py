"""The batcher on plain callables: no model, no HTTP."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from parvis.serve.batching import (
    BatcherClosedError,
    BatchSizeError,
    DynamicBatcher,
    QueueFullError,
)


class Recorder:
    """A batch callable that records every batch it ran and can be held back or made to fail."""

    def __init__(self, fail_on=None, gate: threading.Event | None = None, wrong_count: bool = False):
        self.batches: list[list] = []
        self.fail_on = fail_on
        self.gate = gate
        self.wrong_count = wrong_count

    def __call__(self, items: list) -> list:
        if self.gate is not None:
            self.gate.wait(10)
        self.batches.append(list(items))
        if self.fail_on is not None and self.fail_on in items:
            raise ValueError(f"bad item {self.fail_on}")
        out = [x * 10 for x in items]
        return out[:-1] if self.wrong_count else out


def test_fills_to_max_batch_size_when_items_are_on_their_way():
    fn = Recorder()
    batcher = DynamicBatcher([fn], max_batch_size=4, max_queue_delay_ms=5000, max_queue=16)
    slots = batcher.reserve(8)  # eight items announced; the former waits for them, not for the delay
    start = time.perf_counter()
    futures = [slot.submit(i) for i, slot in enumerate(slots)]
    results = [f.result(5) for f in futures]
    assert time.perf_counter() - start < 2.0  # far below the 5 s delay: full batches go at once
    assert [r.value for r in results] == [i * 10 for i in range(8)]
    assert [len(b) for b in fn.batches] == [4, 4]
    assert {r.batch_size for r in results} == {4}
    batcher.close()


def test_flushes_a_partial_batch_after_the_delay():
    fn = Recorder()
    batcher = DynamicBatcher([fn], max_batch_size=8, max_queue_delay_ms=200, max_queue=16)
    slots = batcher.reserve(3)  # 3 announced, 2 arrive; the third never comes until after the flush
    start = time.perf_counter()
    f0, f1 = slots[0].submit(0), slots[1].submit(1)
    r0, r1 = f0.result(5), f1.result(5)
    waited = time.perf_counter() - start
    assert 0.15 <= waited < 2.0, waited  # held for the delay (waiting for the announced third), then sent
    assert r0.batch_size == r1.batch_size == 2
    slots[2].release()
    batcher.close()


def test_a_lone_request_is_not_held_back():
    fn = Recorder()
    batcher = DynamicBatcher([fn], max_batch_size=8, max_queue_delay_ms=5000, max_queue=16)
    start = time.perf_counter()
    result = batcher.submit(7).result(10)
    assert time.perf_counter() - start < 2.5  # nothing else on its way: no reason to wait the 5 s
    assert (result.value, result.batch_size) == (70, 1)
    batcher.close()


def test_each_caller_gets_its_own_output_in_order_across_instances():
    fns = [Recorder(), Recorder()]
    batcher = DynamicBatcher(fns, max_batch_size=5, max_queue_delay_ms=2, max_queue=1000)
    with ThreadPoolExecutor(8) as pool:  # callers on many threads: each gets its own item's output
        futures = list(pool.map(lambda i: batcher.submit(i), range(400)))
        values = [f.result(10).value for f in futures]
    assert values == [i * 10 for i in range(400)]
    # One submitting thread: arrival order is known, and every batch keeps it.
    futures = [batcher.submit(i) for i in range(400, 800)]
    assert [f.result(10).value for f in futures] == [i * 10 for i in range(400, 800)]
    ran = [x for fn in fns for b in fn.batches for x in b]
    assert sorted(ran) == list(range(800))  # every item ran exactly once
    for fn in fns:
        for b in fn.batches:
            if b[0] >= 400:
                assert b == sorted(b)
    assert max(len(b) for fn in fns for b in fn.batches) <= 5
    batcher.close()


def test_bounded_queue_rejects_at_once_and_recovers():
    gate = threading.Event()
    fn = Recorder(gate=gate)
    batcher = DynamicBatcher([fn], max_batch_size=2, max_queue_delay_ms=0, max_queue=4)
    first = batcher.submit(0)  # taken by the instance, which then blocks on the gate
    deadline = time.time() + 5
    while batcher.busy == 0 and time.time() < deadline:
        time.sleep(0.01)
    queued = [batcher.submit(i) for i in range(1, 5)]
    start = time.perf_counter()
    with pytest.raises(QueueFullError, match="queue full"):
        batcher.submit(99)
    assert time.perf_counter() - start < 1.0  # refused at once, not after the instance's 10 s gate
    assert batcher.depth == 4
    gate.set()
    assert [f.result(5).value for f in [first, *queued]] == [0, 10, 20, 30, 40]
    assert batcher.submit(5).result(5).value == 50  # serves normally again
    batcher.close()


def test_a_failing_batch_fails_only_its_own_requests():
    gate = threading.Event()
    fn = Recorder(fail_on=3, gate=gate)
    batcher = DynamicBatcher([fn], max_batch_size=2, max_queue_delay_ms=0, max_queue=16)
    futures = [batcher.submit(i) for i in range(6)]
    gate.set()
    outcomes = []
    for f in futures:
        try:
            outcomes.append(f.result(5).value)
        except ValueError as exc:
            outcomes.append(str(exc))
    failed_batch = next(b for b in fn.batches if 3 in b)
    for i, outcome in enumerate(outcomes):
        assert outcome == ("bad item 3" if i in failed_batch else i * 10)
    assert len(failed_batch) < 6
    assert batcher.submit(8).result(5).value == 80  # the instance lives on
    batcher.close()


def test_output_count_must_match_input_count():
    batcher = DynamicBatcher([Recorder(wrong_count=True)], max_batch_size=4, max_queue_delay_ms=0)
    with pytest.raises(BatchSizeError, match="returned 0 outputs for 1 inputs"):
        batcher.submit(1).result(5)
    batcher.close()


def test_cancelled_items_are_not_run():
    gate = threading.Event()
    fn = Recorder(gate=gate)
    batcher = DynamicBatcher([fn], max_batch_size=1, max_queue_delay_ms=0, max_queue=16)
    first = batcher.submit(0)
    deadline = time.time() + 5
    while batcher.busy == 0 and time.time() < deadline:
        time.sleep(0.01)
    doomed = batcher.submit(1)
    expired = batcher.submit(2, timeout_s=0.01)
    kept = batcher.submit(3)
    assert doomed.cancel()
    time.sleep(0.05)
    gate.set()
    assert first.result(5).value == 0 and kept.result(5).value == 30
    assert expired.cancelled()
    assert [b for b in fn.batches] == [[0], [3]]
    batcher.close()


def test_close_drains_queued_items_then_refuses_new_ones():
    gate = threading.Event()
    fn = Recorder(gate=gate)
    batcher = DynamicBatcher([fn], max_batch_size=2, max_queue_delay_ms=0, max_queue=16)
    futures = [batcher.submit(i) for i in range(5)]
    closer = threading.Thread(target=batcher.close)
    closer.start()
    time.sleep(0.05)
    with pytest.raises(BatcherClosedError):
        batcher.submit(9)
    gate.set()
    closer.join(5)
    assert not closer.is_alive()
    assert [f.result(0).value for f in futures] == [0, 10, 20, 30, 40]
