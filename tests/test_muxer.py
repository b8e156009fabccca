"""The stream muxer on plain items: no video, no model."""

from __future__ import annotations

import threading
import time

from parvis.video.muxer import StreamMuxer


def feed(mux: StreamMuxer, stream: int, n: int, delay_s: float = 0.0) -> threading.Thread:
    def run():
        for i in range(n):
            if not mux.put(stream, i, (stream, i)):
                break
            if delay_s:
                time.sleep(delay_s)
        mux.end(stream)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_batches_take_round_robin_across_streams():
    mux = StreamMuxer(3, batch_size=3, push_timeout_ms=200, queue_size=10)
    for s in range(3):
        for i in range(10 if s < 2 else 4):
            mux.put(s, i, (s, i))
        mux.end(s)
    batches = [[(p.stream, p.index) for p in b] for b in mux.batches()]
    assert all(len({s for s, _ in b}) == min(3, len(b)) for b in batches[:4])  # one frame of each stream
    assert sum(len(b) for b in batches) == 24 and all(len(b) <= 3 for b in batches)


def test_concurrent_sources_keep_each_streams_order():
    mux = StreamMuxer(3, batch_size=3, push_timeout_ms=200, queue_size=4)
    threads = [feed(mux, s, 30) for s in range(3)]
    batches = list(mux.batches())
    for t in threads:
        t.join(5)
    seen = {s: [p.index for b in batches for p in b if p.stream == s] for s in range(3)}
    assert seen == {s: list(range(30)) for s in range(3)}  # all frames, in order, per stream
    assert all(len(b) <= 3 for b in batches)


def test_timeout_flushes_a_partial_batch():
    mux = StreamMuxer(2, batch_size=4, push_timeout_ms=50, queue_size=4)
    mux.put(0, 0, "a")  # stream 1 is running but sends nothing
    start = time.perf_counter()
    batch = next(mux.batches())
    waited = time.perf_counter() - start
    assert [p.item for p in batch] == ["a"]
    assert 0.03 <= waited < 2.0


def test_an_ended_stream_does_not_stall_the_others():
    mux = StreamMuxer(2, batch_size=2, push_timeout_ms=5000, queue_size=4)
    mux.end(1)  # stream 1 failed at once: batches must not wait 5 s for it
    feeder = feed(mux, 0, 6)
    start = time.perf_counter()
    batches = list(mux.batches())
    feeder.join(5)
    assert [p.index for b in batches for p in b] == list(range(6))
    assert time.perf_counter() - start < 2.5


def test_file_mode_applies_back_pressure_without_drops():
    mux = StreamMuxer(1, batch_size=1, push_timeout_ms=0, queue_size=2)
    feeder = feed(mux, 0, 10)
    time.sleep(0.2)
    assert mux.depth == [2] and feeder.is_alive()  # the source waits for room
    items = [p.index for b in mux.batches() for p in b]
    assert items == list(range(10)) and mux.dropped == [0]


def test_live_mode_drops_the_oldest_and_counts_them():
    mux = StreamMuxer(1, batch_size=1, push_timeout_ms=0, queue_size=3, live=True)
    for i in range(10):
        assert mux.put(0, i, i)  # never blocks
    mux.end(0)
    items = [p.index for b in mux.batches() for p in b]
    assert items == [7, 8, 9]  # the most recent frames survive
    assert mux.dropped == [7] and mux.pushed == [10]


def test_close_releases_blocked_sources():
    mux = StreamMuxer(1, batch_size=1, push_timeout_ms=0, queue_size=1)
    mux.put(0, 0, 0)
    result = []
    blocked = threading.Thread(target=lambda: result.append(mux.put(0, 1, 1)))
    blocked.start()
    time.sleep(0.05)
    mux.close()
    blocked.join(2)
    assert result == [False]
