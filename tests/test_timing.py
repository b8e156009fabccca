"""The one timer (parvis.runtimes.timing): round-robin rounds, batch-1 latency, calls for a while."""

import numpy as np

from parvis.runtimes.timing import time_calls, time_runtimes


class _Counting:
    """A stand-in runtime that records the batch sizes it is run at."""

    def __init__(self, name: str, log: list):
        self.name, self.log = name, log

    def run(self, x):
        self.log.append((self.name, len(x)))
        return x


def test_time_runtimes_runs_in_turns_and_reports_each():
    log: list = []
    rts = [_Counting("a", log), _Counting("b", log)]
    applied = []
    out = time_runtimes(rts, np.zeros((4, 3, 8, 8), np.float32), rounds=2, iters=3, latency_iters=5,
                        before=applied.append)  # fmt: skip
    assert [set(o) for o in out] == [{"img_s", "img_s_runs", "latency_ms_p50", "latency_ms_p99"}] * 2
    assert all(len(o["img_s_runs"]) == 2 and o["img_s"] > 0 for o in out)
    timed = [name for name, n in log[4:] if n == 4]  # after the warm-up at both shapes
    assert timed == ["a"] * 3 + ["b"] * 3 + ["a"] * 3 + ["b"] * 3  # round-robin, not one after the other
    assert sum(1 for name, n in log if name == "a" and n == 1) == 1 + 1 + 5  # warm-up, re-warm, timed
    assert applied[:2] == [0, 1] and set(applied) == {0, 1}


def test_time_runtimes_without_latency_skips_batch_one():
    log: list = []
    out = time_runtimes([_Counting("a", log)], np.zeros((2, 3, 8, 8), np.float32), rounds=1, iters=1, latency_iters=0)
    assert "latency_ms_p50" not in out[0] and all(n == 2 for _, n in log)


def test_time_calls_min_and_cap():
    calls = []
    assert len(time_calls(lambda: calls.append(1), 0.0, min_calls=4)) == 4
    assert len(calls) == 5  # one untimed warm-up call
    assert len(time_calls(lambda: None, 10.0, min_calls=1, max_calls=20)) == 20
