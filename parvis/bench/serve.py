"""`parvis bench serve`: a bounded HTTP load generator for inference servers, loopback only.

    rows = sweep("http://127.0.0.1:8000", "resnet18", images, [1, 8, 32])
    result = compare_batching("runs/opt/resnet18-optimize", images, [1, 8, 32, 64])

Each load level runs `concurrency` async clients (aiohttp, or httpx), each sending the next request as soon as
its previous one is answered, until `requests` answers or `time_limit_s` (closed loop: offered load
follows the server, so an overloaded server is measured, not a client queue). Batch sizes come
from each response's X-Batch-Size header (parvis and the peer servers in benchmarks/ send it).

The comparison starts two `parvis serve` processes on free loopback ports, one batching and one
with max batch 1, and measures them side by side at every concurrency (alternating which goes
first); peers (other servers already running) join the same loop. The ceiling is measured in this
process on the same model and runtime, right after each level while the servers sit idle: a request costs at least its
preprocessing plus its share of a batch's inference, so with everything sharing the CPU no server
can answer more than 1 / (preprocess + inference per image at the batch size used) per second.
"""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import itertools
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import aiohttp
import httpx
import numpy as np
import simplejpeg
import torch

from parvis import runtime as rt
from parvis.data.synth import render_scene
from parvis.engine.predict import expand_inputs
from parvis.errors import ParvisError
from parvis.runtimes import open_predictor
from parvis.runtimes.timing import time_calls
from parvis.serve.preprocess import Preprocessor


def _auth(api_key: str | None) -> dict:
    return {"authorization": f"Bearer {api_key}"} if api_key else {}


def check_loopback(url: str) -> str:
    """`url` without a trailing slash; ParvisError unless it points at this machine."""
    host = urlparse(url).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ParvisError(f"--url {url}: the load generator only targets this machine (127.0.0.1 or localhost)")
    return url.rstrip("/")


def request_images(n: int = 8, size: int = 256, seed: int = 0, folder: str | None = None) -> list[bytes]:
    """JPEG request bodies: the files in `folder` (up to n), or `n` synthetic shapes scenes of size x size."""
    if folder:
        files = expand_inputs([folder])[:n]
        return [f.read_bytes() for f in files]
    return [simplejpeg.encode_jpeg(render_scene(i, size, seed)[0], quality=90) for i in range(n)]


def _percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


CLIENTS = ("aiohttp", "httpx")


class _Client:
    """The few HTTP calls the load generator makes, over aiohttp (default) or httpx.

    The generator shares the CPU with the server it measures, so its own cost matters: measured on
    the 2-core EPYC against the same server, httpx took 2.3 ms of client CPU per request at 32
    connections and 5.9 ms at 64 (its connection pool scans every connection per request), aiohttp
    0.15 ms at both; with httpx a third of the machine went to the client."""

    def __init__(self, kind: str, connections: int):
        if kind not in CLIENTS:
            raise ParvisError(f"--client {kind!r} is unknown; choose one of {', '.join(CLIENTS)}")
        self.kind, self.connections = kind, connections

    async def __aenter__(self) -> _Client:
        if self.kind == "aiohttp":
            connector = aiohttp.TCPConnector(limit=self.connections, force_close=False)
            self.session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120))
        else:
            limits = httpx.Limits(max_connections=self.connections, max_keepalive_connections=self.connections)
            self.session = httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(120.0))
        return self

    async def __aexit__(self, *exc) -> None:
        if self.kind == "aiohttp":
            await self.session.close()
        else:
            await self.session.aclose()

    async def post(self, url: str, body: bytes, headers: dict) -> tuple[int, dict, bytes]:
        """(status, lower-case headers, body); OSError-like failures raise ClientFailure."""
        try:
            if self.kind == "aiohttp":
                async with self.session.post(url, data=body, headers=headers) as r:
                    return r.status, {k.lower(): v for k, v in r.headers.items()}, await r.read()
            r = await self.session.post(url, content=body, headers=headers)
            return r.status_code, dict(r.headers), r.content
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - connection refused/reset, timeouts: counted, not fatal
            raise ClientFailure(type(exc).__name__) from None


class ClientFailure(Exception):
    pass


def _run(coro):
    """Run the generator on uvloop where installed (uvicorn[standard] brings it): a cheaper event loop
    leaves more of the shared CPU to the server and makes the client lag less at high request rates.
    The cyclic garbage collector is paused meanwhile: its full passes over thousands of live request
    objects stall the client for tens of ms, which would be counted as server latency."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        try:
            import uvloop  # noqa: PLC0415 - optional: uvicorn[standard] brings it
        except ImportError:
            return asyncio.run(coro)
        return uvloop.run(coro)
    finally:
        if enabled:
            gc.enable()


async def _load(url, model, images, concurrency, requests, time_limit_s, headers, client="aiohttp") -> dict:
    target = f"{url}/v1/models/{model}/predict"
    latencies: list[float] = []
    batch_sizes: list[int] = []
    statuses: dict[str, int] = {}
    failures: list[str] = []
    issued = 0
    deadline = time.perf_counter() + time_limit_s
    send_headers = {"content-type": "image/jpeg", **headers}

    async with _Client(client, concurrency) as session:

        async def worker() -> None:
            nonlocal issued
            while issued < requests and time.perf_counter() < deadline:
                body = images[issued % len(images)]
                issued += 1
                start = time.perf_counter()
                try:
                    status, response_headers, content = await session.post(target, body, send_headers)
                    code = str(status)
                except ClientFailure as exc:
                    code, status = str(exc), None
                elapsed = time.perf_counter() - start
                statuses[code] = statuses.get(code, 0) + 1
                if status == 200:
                    latencies.append(elapsed)
                    batch_sizes.append(int(response_headers.get("x-batch-size", 1)))
                elif len(failures) < 5:
                    failures.append(code if status is None else f"{code}: {content[:200].decode(errors='replace')}")

        start, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    ok = len(latencies)
    ms = [x * 1000 for x in latencies]
    total = sum(statuses.values())
    return {
        "concurrency": concurrency,
        "requests": total,
        "ok": ok,
        "errors": total - ok,
        "statuses": statuses,
        "wall_s": wall,
        "throughput_rps": ok / wall if wall > 0 else 0.0,
        "p50_ms": _percentile(ms, 50),
        "p95_ms": _percentile(ms, 95),
        "p99_ms": _percentile(ms, 99),
        "mean_ms": statistics.fmean(ms) if ms else None,
        # Per batch, not per request: n requests over the number of batches they ran in.
        "mean_batch_size": ok / sum(1 / b for b in batch_sizes) if batch_sizes else None,
        "client": client,
        "client_cpu_ms_per_request": cpu * 1000 / total if total else None,
        "first_errors": failures[:5],
    }


def load(
    url: str,
    model: str,
    images: list[bytes],
    concurrency: int,
    requests: int,
    time_limit_s: float = 60.0,
    api_key: str | None = None,
    warmup: int | None = None,
    client: str = "aiohttp",
) -> dict:
    """One closed-loop load level; untimed warm-up requests first (default: 2 per client)."""
    headers = _auth(api_key)
    warm = 2 * concurrency if warmup is None else warmup
    if warm:
        _run(_load(url, model, images, concurrency, warm, time_limit_s, headers, client))
    return _run(_load(url, model, images, concurrency, requests, time_limit_s, headers, client))


def sweep(
    url, model, images, concurrencies, requests, time_limit_s=60.0, api_key=None, progress=None, client="aiohttp"
) -> list[dict]:
    rows = []
    for c in concurrencies:
        rows.append(load(url, model, images, c, requests, time_limit_s, api_key, client=client))
        if progress:
            progress(rows[-1])
    return rows


# --------------------------------------------------------------------------- server processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """A `parvis serve` child process on a free loopback port; stopped with SIGTERM (graceful)."""

    def __init__(
        self, args: list[str], log_path: Path | None = None, ready_timeout_s: float = 300.0, env: dict | None = None
    ):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "parvis", "serve", *args, "--port", str(self.port), "--log-level", "warning"]
        self.log = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd, stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, **env} if env else None
        )
        self.wait_ready(ready_timeout_s)

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ParvisError(f"the server ({' '.join(self.proc.args[3:])}) exited with {self.proc.returncode}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise ParvisError(f"the server on port {self.port} was not ready after {timeout_s:.0f} s")

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.log is not subprocess.DEVNULL:
            self.log.close()
        return self.proc.returncode

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def resident_mb(url: str, api_key: str | None = None) -> float | None:
    """The server's resident memory in MB, from its /metrics (process_resident_memory_bytes)."""
    headers = _auth(api_key)
    try:
        text = httpx.get(f"{url}/metrics", headers=headers, timeout=10).text
    except httpx.HTTPError:
        return None
    match = re.search(r"^process_resident_memory_bytes ([0-9.e+]+)$", text, re.M)
    return float(match.group(1)) / 2**20 if match else None


# --------------------------------------------------------------------------- ceiling


class CeilingProbe:
    """The model and runtime a server runs, loaded in this process, to time what one request costs
    at the least: its preprocessing and its share of a batch's inference. Measured right after each
    load level (the servers idle meanwhile), so host-speed drift during a run hits both alike."""

    def __init__(self, source: str, images: list[bytes], threads: int | None = None,
                 runtime_name: str | None = None, precision: str = "auto"):  # fmt: skip
        self.model, self.info = open_predictor(
            source, torch.device("cpu"), runtime_name, precision, threads or rt.usable_cores()
        )
        self.meta = self.model.meta
        self.pre = Preprocessor(self.meta)
        self.images = images
        self.inputs = [self.pre(b)[0] for b in images]

    def preprocess_ms(self, seconds: float = 0.5) -> float:
        images = itertools.cycle(self.images)
        times = time_calls(lambda: self.pre(next(images)), seconds, 2 * len(self.images), max_calls=None)
        return statistics.fmean(times) * 1000

    def infer_ms_per_image(self, batch: int, seconds: float = 0.5) -> float:
        x = torch.stack([self.inputs[i % len(self.inputs)] for i in range(batch)])
        with torch.inference_mode():
            times = time_calls(lambda: self.model(x), seconds, 3, max_calls=None)
        return statistics.median(times) * 1000 / batch

    def measure(self, mean_batch: float | None) -> dict:
        """{"preprocess_ms", "infer_ms_b1", "batch", "infer_ms_per_image", "ceiling_rps"} at the batch
        size a level formed (its mean, rounded)."""
        batch = max(1, round(mean_batch or 1))
        pre = self.preprocess_ms()
        infer = self.infer_ms_per_image(batch)
        infer1 = infer if batch == 1 else self.infer_ms_per_image(1)
        return {"preprocess_ms": pre, "infer_ms_b1": infer1, "ceiling_batch": batch, "infer_ms_per_image": infer,
                "ceiling_rps": 1000.0 / (pre + infer)}  # fmt: skip


# --------------------------------------------------------------------------- comparison


def compare_batching(
    source: str,
    images: list[bytes],
    concurrencies: list[int],
    requests: int = 400,
    time_limit_s: float = 60.0,
    max_batch_size: int = 32,
    max_queue_delay_ms: float = 5.0,
    serve_args: list[str] | None = None,
    peers: dict[str, str] | None = None,
    log_dir: Path | None = None,
    progress=None,
    burst_factor: float = 0.0,
    burst_seconds: float = 3.0,
    soak_n: int = 0,
    client: str = "aiohttp",
) -> dict:
    """Batching on vs off (and peers) at every concurrency, with speedup, ceiling and ceiling_ratio;
    then, on the batching server, `burst_factor` x its best measured throughput for `burst_seconds`
    (open loop) and `soak_n` requests in a row."""
    extra = list(serve_args or [])
    peers = {name: check_loopback(url) for name, url in (peers or {}).items()}
    # Room for twice the largest client count, so the sweep itself never meets a 503.
    common = [source, "--max-queue", str(max(max_batch_size, 2 * max(concurrencies))), *extra]
    if log_dir:
        log_dir.mkdir(parents=True, exist_ok=True)
    threads = _flag(extra, "--threads")
    precision = extra[extra.index("--precision") + 1] if "--precision" in extra[:-1] else "auto"
    probe = CeilingProbe(source, images, threads, _flag(extra, "--runtime", str), precision)
    servers = {}
    try:
        servers["on"] = ServerProcess(
            [*common, "--max-batch-size", str(max_batch_size), "--max-queue-delay-ms", str(max_queue_delay_ms)],
            log_dir / "serve-batching-on.log" if log_dir else None,
        )
        servers["off"] = ServerProcess(
            [*common, "--max-batch-size", "1"], log_dir / "serve-batching-off.log" if log_dir else None
        )
        name = _served_name(servers["on"].url)
        described = httpx.get(f"{servers['on'].url}/v1/models/{name}", timeout=10).json()
        targets = {"on": (servers["on"].url, name), "off": (servers["off"].url, name)}
        for peer, url in peers.items():
            targets[f"peer_{peer}"] = (url, name)
        rows = []
        for i, c in enumerate(concurrencies):
            order = list(targets) if i % 2 == 0 else list(reversed(targets))
            measured = {
                k: load(targets[k][0], targets[k][1], images, c, requests, time_limit_s, client=client) for k in order
            }
            row = {k: v for k, v in measured["on"].items() if k not in ("statuses", "first_errors")}
            off = measured["off"]
            row.update(
                off_throughput_rps=off["throughput_rps"], off_p50_ms=off["p50_ms"], off_p99_ms=off["p99_ms"],
                off_mean_batch_size=off["mean_batch_size"], off_errors=off["errors"],
                speedup=row["throughput_rps"] / off["throughput_rps"] if off["throughput_rps"] else None,
                p99_over_mean=row["p99_ms"] / row["mean_ms"] if row["mean_ms"] else None,
            )  # fmt: skip
            best_peer = 0.0
            for k in targets:
                if k.startswith("peer_"):
                    m = measured[k]
                    row[f"{k}_rps"] = m["throughput_rps"]
                    row[f"{k}_p99_ms"] = m["p99_ms"]
                    row[f"{k}_mean_batch_size"] = m["mean_batch_size"]
                    row[f"{k}_errors"] = m["errors"]
                    best_peer = max(best_peer, m["throughput_rps"])
            if best_peer:
                row["vs_best_peer"] = row["throughput_rps"] / best_peer
            row["first_errors"] = measured["on"]["first_errors"] + off["first_errors"]
            row.update(probe.measure(row["mean_batch_size"]))
            row["ceiling_ratio"] = row["throughput_rps"] / row["ceiling_rps"]
            if c == 1 and row["p50_ms"] is not None:
                row["c1_overhead_ms"] = row["p50_ms"] - row["preprocess_ms"] - row["infer_ms_b1"]
            rows.append(row)
            if progress:
                progress(row)
        extras = {}
        if burst_factor:
            rate = burst_factor * max(r["throughput_rps"] for r in rows)
            extras["burst"] = {"factor": burst_factor, **burst(servers["on"].url, name, images, rate, burst_seconds,
                                                               client=client)}  # fmt: skip
        if soak_n:
            extras["soak"] = soak(servers["on"].url, name, images, soak_n, client=client)
    finally:
        for server in servers.values():
            server.stop()
    c1 = next((r for r in rows if r["concurrency"] == 1), None)
    meta = probe.meta
    return {
        "benchmark": "serve",
        "source": source,
        "model": meta.name,
        "task": meta.task,
        "input_size": meta.input_size,
        "runtime": described.get("runtime"),
        "precision": described.get("precision"),
        "threads": described.get("threads_per_instance"),
        "max_batch_size": max_batch_size,
        "max_queue_delay_ms": max_queue_delay_ms,
        "client": client,
        "requests_per_level": requests,
        "request_image_bytes_mean": int(statistics.fmean(len(b) for b in images)),
        "c1_overhead_ms": c1.get("c1_overhead_ms") if c1 else None,
        "peers": peers,
        "serve_args": extra,
        **_machine(),
        "rows": rows,
        **extras,
    }


def _served_name(url: str, api_key: str | None = None) -> str:
    """The first model a server lists."""
    headers = _auth(api_key)
    r = httpx.get(f"{url}/v1/models", headers=headers, timeout=10)
    if r.status_code != 200:
        raise ParvisError(f"{url}/v1/models: answered {r.status_code} ({r.text[:200]}); check --url and --api-key")
    models = r.json().get("models") or []
    if not models:
        raise ParvisError(f"{url}: serves no models")
    return models[0]["name"]


def _flag(args: list[str], flag: str, cast=int):
    return cast(args[args.index(flag) + 1]) if flag in args and args.index(flag) + 1 < len(args) else None


def _machine() -> dict:
    """The device/machine/versions block of a serve result (the client and server share the CPU)."""
    return rt.result_header("cpu")


# --------------------------------------------------------------------------- overload and soak


def burst(
    url: str,
    model: str,
    images: list[bytes],
    rate_rps: float,
    seconds: float = 3.0,
    api_key: str | None = None,
    settle_s: float = 3.0,
    client: str = "aiohttp",
) -> dict:
    """Open-loop overload: requests sent at `rate_rps` for `seconds` whatever the answers (e.g. 10x
    what the server sustains). How many are served vs refused, how fast refusals come, resident
    memory before and after, and whether service is normal right after."""
    headers = _auth(api_key)
    before = resident_mb(url, api_key)
    result = _run(_burst(url, model, images, rate_rps, seconds, headers, client))
    time.sleep(settle_s)
    after = resident_mb(url, api_key)
    recovery = load(url, model, images, 1, 20, 30.0, api_key, warmup=0, client=client)
    return {
        **result,
        "rss_mb_before": before,
        "rss_mb_after": after,
        "after_ok": recovery["ok"],
        "after_errors": recovery["errors"],
        "after_p50_ms": recovery["p50_ms"],
    }


async def _burst(url, model, images, rate_rps, seconds, headers, client) -> dict:
    target = f"{url}/v1/models/{model}/predict"
    n = max(1, int(rate_rps * seconds))
    results: list[tuple[str, float, float]] = []  # (status, latency, how late it was sent)
    send_headers = {"content-type": "image/jpeg", **headers}
    async with _Client(client, 4096) as session:

        async def one(i: int, scheduled: float) -> None:
            start = time.perf_counter()
            try:
                status, _, _ = await session.post(target, images[i % len(images)], send_headers)
                code = str(status)
            except ClientFailure as exc:
                code = str(exc)
            results.append((code, time.perf_counter() - start, start - scheduled))

        t0 = time.perf_counter()
        tasks = []
        for i in range(n):
            scheduled = t0 + i / rate_rps
            if (delay := scheduled - time.perf_counter()) > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i, scheduled)))
        await asyncio.gather(*tasks)
        wall = time.perf_counter() - t0
    statuses: dict[str, int] = {}
    for code, _, _ in results:
        statuses[code] = statuses.get(code, 0) + 1
    rejected = [t * 1000 for code, t, _ in results if code == "503"]
    served = [t * 1000 for code, t, _ in results if code == "200"]
    return {
        "offered_rps": rate_rps,
        "seconds": seconds,
        "burst_requests": n,
        "statuses": statuses,
        "wall_s": wall,
        "served_rps": len(served) / wall if wall > 0 else 0.0,
        "rejected_p50_ms": _percentile(rejected, 50),
        "rejected_p99_ms": _percentile(rejected, 99),
        "served_p50_ms": _percentile(served, 50),
        "served_p99_ms": _percentile(served, 99),
        "send_late_p99_ms": _percentile([late * 1000 for _, _, late in results], 99),
    }


def soak(
    url: str,
    model: str,
    images: list[bytes],
    n: int,
    concurrency: int = 8,
    api_key: str | None = None,
    client: str = "aiohttp",
) -> dict:
    """`n` requests in a row: resident memory before and after (after a warm-up of the same size as
    the first load level, so allocator pools are already filled)."""
    load(url, model, images, concurrency, 4 * concurrency, 60.0, api_key, warmup=0, client=client)
    before = resident_mb(url, api_key)
    row = load(url, model, images, concurrency, n, 3600.0, api_key, warmup=0, client=client)
    after = resident_mb(url, api_key)
    return {"requests": row["requests"], "ok": row["ok"], "errors": row["errors"],
            "throughput_rps": row["throughput_rps"], "rss_mb_before": before, "rss_mb_after": after,
            "rss_growth_mb": (after - before) if before is not None and after is not None else None}  # fmt: skip


def served_config(url: str, model: str, api_key: str | None = None) -> dict:
    headers = _auth(api_key)
    r = httpx.get(f"{url}/v1/models/{model}", headers=headers, timeout=10)
    if r.status_code != 200:
        raise ParvisError(
            f"{url}/v1/models/{model}: answered {r.status_code} ({r.text[:200]}); check --url and --model"
        )
    return r.json()


__all__ = ["ServerProcess", "burst", "check_loopback", "compare_batching", "load", "request_images", "soak", "sweep"]
