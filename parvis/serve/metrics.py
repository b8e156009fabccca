"""Prometheus metrics of one server (its own registry, so several servers in one process, e.g. in
tests, never share counters)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

from parvis.serve.batching import BatchObserver

# Latency buckets from 1 ms to 30 s; batch sizes in powers of two up to 256.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)  # process_resident_memory_bytes, cpu seconds, open fds
        self.requests = Counter(
            "parvis_requests",
            "HTTP requests by model, endpoint and status code",
            ["model", "endpoint", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "parvis_request_latency_seconds",
            "Time from request start to response, by endpoint",
            ["model", "endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.preprocess = Histogram(
            "parvis_preprocess_seconds",
            "Decode and preprocess time per image (worker pool)",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "parvis_queue_wait_seconds",
            "Time an item waited in the batch queue",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference = Histogram(
            "parvis_inference_seconds",
            "Wall time of one batch on a model instance",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "parvis_batch_size",
            "Items per batch sent to a model instance",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.batch_failures = Counter(
            "parvis_batch_failures", "Batches whose run raised (their requests got 500)", ["model"], registry=r
        )
        self.queue_depth = Gauge("parvis_queue_depth", "Items waiting for a batch", ["model"], registry=r)
        self.instances_busy = Gauge("parvis_instances_busy", "Model instances running a batch", ["model"], registry=r)
        self.loop_lag = Histogram(
            "parvis_event_loop_lag_seconds",
            "How late a 100 ms timer fires on the event loop (admission delay)",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=r,
        )
        self.rejected = Counter(
            "parvis_rejected", "Requests refused before inference, by reason", ["model", "reason"], registry=r
        )

    def observer(self, model: str, batcher_ref) -> BatchObserver:
        """A batch observer for `model`; `batcher_ref()` returns its batcher (for the gauges)."""
        metrics = self

        class Observer(BatchObserver):
            def batch_done(self, size: int, queue_waits: list[float], run_s: float, ok: bool) -> None:
                metrics.batch_size.labels(model).observe(size)
                metrics.inference.labels(model).observe(run_s)
                hist = metrics.queue_wait.labels(model)
                for wait in queue_waits:
                    hist.observe(wait)
                if not ok:
                    metrics.batch_failures.labels(model).inc()

            def dropped(self, reason: str) -> None:
                metrics.rejected.labels(model, reason).inc()

        self.queue_depth.labels(model).set_function(lambda: b.depth if (b := batcher_ref()) else 0)
        self.instances_busy.labels(model).set_function(lambda: b.busy if (b := batcher_ref()) else 0)
        return Observer()
