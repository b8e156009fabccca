"""The HTTP server: FastAPI on uvicorn, one DynamicBatcher per model.

    POST /v1/models/{name}/predict   an image (raw body or multipart) -> JSON result
    POST /v1/models/{name}/infer     KServe v2 JSON tensors in -> raw outputs out
    GET  /v1/models[/{name}]         metadata: task, input, classes, runtime, precision, batching
    GET  /healthz  /readyz  /metrics

Request handling never blocks the event loop: decoding, preprocessing and result encoding run in a
worker pool, inference in the batcher's instance threads. Every request takes a queue slot before
its body is read, so an overloaded server refuses work (503 + Retry-After) before spending anything
on it, and memory is bounded by max_queue requests per model.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import hmac
import json
import logging
import math
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.datastructures import UploadFile

from parvis import runtime
from parvis.artifact import TENSOR_TASK
from parvis.data.decode import MAX_IMAGE_PIXELS
from parvis.errors import BadSampleError, ParvisError
from parvis.serve.batching import BatcherClosedError, QueueFullError
from parvis.serve.metrics import ServeMetrics
from parvis.serve.models import ModelSpec, ServedModel, numpy_dtype
from parvis.serve.preprocess import MASK_FORMATS, Preprocessor, result_dict

log = logging.getLogger("parvis.serve")

OPEN_PATHS = ("/healthz", "/readyz")  # answered without an API key (probes)
API_KEY_ENV = "PARVIS_API_KEY"
_STATUS_OF_KIND = {"format": 415, "size": 413, "corrupt": 400, "io": 400}
_ENDPOINT = re.compile(r"^/v1/models/[^/]+/(predict|infer)$")


@dataclass
class ServerConfig:
    api_key: str | None = None
    max_body_bytes: int = 20 * 1024 * 1024
    max_pixels: int = MAX_IMAGE_PIXELS
    workers: int = 0  # decode/preprocess threads; 0 = usable cores
    retry_after_s: int = 1
    # Niceness added to the compute threads (decode, preprocessing, inference), so that on a saturated
    # CPU the event loop, which admits and refuses requests, answers first (see lower_priority).
    compute_nice: int = 10


def release_memory() -> None:
    """Collect garbage and return free heap pages to the OS (glibc's malloc_trim; elsewhere a no-op)."""
    gc.collect()
    libc = ctypes.util.find_library("c")
    if libc:
        try:
            ctypes.CDLL(libc).malloc_trim(0)
        except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
            pass


def lower_priority(nice: int) -> None:
    """Make the calling thread (and the threads it starts later) `nice` steps less urgent.

    Measured on the 2-core EPYC at 10x overload (open loop, 1,800 requests/s offered to a server
    sustaining 180): with every thread at one priority the 503 answers took p99 798 ms, because the
    event loop waited for cores behind inference and decoding; with compute threads at +10, p99 58 ms
    (p50 0.3 ms) and the same throughput. Linux only (per-thread nice); elsewhere a no-op."""
    if nice <= 0 or not hasattr(os, "setpriority") or not hasattr(threading, "get_native_id"):
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0) + nice)
    except OSError:
        pass  # not permitted or not per-thread on this system: everything keeps one priority


class HTTPError(Exception):
    def __init__(self, status: int, detail: str, headers: dict | None = None):
        self.status, self.detail, self.headers = status, detail, headers or {}


class Server:
    """The state behind the app: served models, their preprocessors, the worker pool, metrics."""

    def __init__(self, specs: list[ModelSpec], config: ServerConfig):
        self.config = config
        self.models = {s.name: ServedModel(s) for s in specs}
        self.preprocessors: dict[str, Preprocessor] = {}
        self.metrics = ServeMetrics()
        self.pool = ThreadPoolExecutor(
            config.workers or runtime.usable_cores(),
            thread_name_prefix="parvis-pre",
            initializer=lower_priority,
            initargs=(config.compute_nice,),
        )
        self.load_error: str | None = None
        self.on_load_error = None  # called with the message when loading fails (the runner stops the server)

    @property
    def ready(self) -> bool:
        return all(m.ready for m in self.models.values())

    def load_all(self) -> None:
        # Model instances (and the runtime threads they start) inherit this thread's priority.
        lower_priority(self.config.compute_nice)
        try:
            for name, model in self.models.items():
                model.load(self.metrics.observer(name, lambda m=model: m.batcher))
                if model.meta.task != TENSOR_TASK:  # raw-tensor models take no images
                    self.preprocessors[name] = Preprocessor(model.meta, self.config.max_pixels)
                log.info("model %s ready: %s", name, json.dumps(model.describe()))
            # Everything loaded so far (torch, the models, the runtimes) lives as long as the server:
            # keep it out of the cyclic collector's full passes, which otherwise stall the event loop.
            gc.collect()
            gc.freeze()
        except Exception as exc:  # noqa: BLE001 - reported as one line, then the server stops
            self.load_error = str(exc) if isinstance(exc, ParvisError) else f"{type(exc).__name__}: {exc}"
            log.error("loading failed: %s", self.load_error)
            if self.on_load_error is not None:
                self.on_load_error(self.load_error)

    @property
    def idle(self) -> bool:
        return all(m.batcher is None or m.batcher.free == m.spec.config.max_queue and not m.batcher.busy
                   for m in self.models.values())  # fmt: skip

    async def release_memory_when_idle(self, period_s: float = 1.0) -> None:
        """After a busy spell, once the server has been idle for two checks in a row, hand freed heap
        back to the OS. glibc keeps what a burst's requests used (bodies, tensors, per-thread arenas)
        otherwise: measured +40 to +340 MB of resident memory after overload bursts, kept for good."""
        busy_since_trim, idle_checks = False, 0
        while True:
            await asyncio.sleep(period_s)
            if not self.idle:
                busy_since_trim, idle_checks = True, 0
                continue
            idle_checks += 1
            if busy_since_trim and idle_checks >= 2:
                await asyncio.get_running_loop().run_in_executor(None, release_memory)
                busy_since_trim = False

    async def watch_loop_lag(self, period_s: float = 0.1) -> None:
        """How late the event loop wakes up: a busy or starved loop delays every answer, 503s included."""
        while True:
            start = time.perf_counter()
            await asyncio.sleep(period_s)
            self.metrics.loop_lag.observe(max(0.0, time.perf_counter() - start - period_s))

    def close(self) -> None:
        for model in self.models.values():
            if model.batcher is not None:
                model.batcher.close(drain=True)
        self.pool.shutdown(wait=True)

    def model(self, name: str) -> ServedModel:
        model = self.models.get(name)
        if model is None:
            raise HTTPError(404, f"model {name!r} is not served here; GET /v1/models lists the served models")
        if not model.ready:
            raise HTTPError(503, f"model {name!r} is still loading; retry shortly", self.retry_headers)
        return model

    @property
    def retry_headers(self) -> dict:
        return {"Retry-After": str(self.config.retry_after_s)}

    def overloaded(self, model: ServedModel) -> JSONResponse:
        detail = f"model {model.name!r} is overloaded: queue full ({model.spec.config.max_queue} places); retry later"
        return JSONResponse({"detail": detail}, 503, headers=self.retry_headers)

    def reject(self, name: str, reason: str, detail: str) -> HTTPError:
        self.metrics.rejected.labels(name, reason).inc()
        return HTTPError(503, detail, self.retry_headers)


class Gate:
    """ASGI middleware: API key check and per-request metrics, without Starlette's
    BaseHTTPMiddleware overhead."""

    def __init__(self, app, server: Server):
        self.app, self.server = app, server
        key = server.config.api_key
        self.key = key.encode() if key else None

    def _authorized(self, scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"x-api-key" and hmac.compare_digest(value, self.key):
                return True
            if (
                name == b"authorization"
                and value[:7].lower() == b"bearer "
                and hmac.compare_digest(value[7:], self.key)
            ):
                return True
        return False

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        path = scope["path"]
        status = [500]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        match = _ENDPOINT.match(path)
        try:
            if self.key is not None and path not in OPEN_PATHS and not self._authorized(scope):
                response = JSONResponse(
                    {"detail": "missing or wrong API key; send it as 'Authorization: Bearer KEY' or 'X-API-Key: KEY'"},
                    401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
                await response(scope, receive, send_status)
            elif match and (model := self.server.models.get(path.split("/")[3])) and model.full:
                # Overloaded: refuse here, before routing, so a flood of refusals costs the event loop
                # as little as possible (the batcher's own check below stays the authority).
                self.server.metrics.rejected.labels(model.name, "queue_full").inc()
                await self.server.overloaded(model)(scope, receive, send_status)
            else:
                await self.app(scope, receive, send_status)
        finally:
            if match:
                name = path.split("/")[3]
                model = name if name in self.server.models else ""  # no label per unknown name sent
                endpoint = match.group(1)
            else:
                model, endpoint = "", path if path in ("/healthz", "/readyz", "/metrics", "/v1/models") else "other"
                if path.startswith("/v1/models/") and path.count("/") == 3:
                    endpoint = "/v1/models/{name}"
            self.server.metrics.requests.labels(model, endpoint, str(status[0])).inc()
            self.server.metrics.latency.labels(model, endpoint).observe(time.perf_counter() - start)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` bytes (never buffered whole)."""
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise HTTPError(400, f"Content-Length {length!r} is not a number")
        if int(length) > limit:
            raise HTTPError(
                413, f"body of {int(length):,} bytes is over the limit of {limit:,} bytes; send a smaller image"
            )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPError(413, f"body is over the limit of {limit:,} bytes; send a smaller image")
        chunks.append(chunk)
    return b"".join(chunks)


async def _form(request: Request, body: bytes, max_files: int, hint: str):
    """The multipart form of a body already read and size-checked; 400 naming `hint` when malformed."""

    async def replay():
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        return await Request(request.scope, replay).form(max_files=max_files, max_fields=16)
    except Exception as exc:  # noqa: BLE001 - python-multipart raises several types for malformed bodies
        raise HTTPError(400, f"malformed multipart body ({exc}); {hint}") from None


async def image_from_multipart(request: Request, body: bytes) -> bytes:
    """The first file part of a multipart/form-data body (already read and size-checked)."""
    form = await _form(request, body, 1, "send one image as a file part")
    for value in form.values():
        if isinstance(value, UploadFile):
            return await value.read()
    raise HTTPError(422, "multipart body has no file part; send the image as a file field (e.g. -F image=@x.jpg)")


async def pair_from_multipart(request: Request, body: bytes) -> tuple[bytes, bytes]:
    """A stereo pair from a multipart body: the file fields `left` and `right`, else the first two files."""
    form = await _form(request, body, 2, "send -F left=@L.png -F right=@R.png")
    files = {key: value for key, value in form.multi_items() if isinstance(value, UploadFile)}
    parts = [files[k] for k in ("left", "right") if k in files] if {"left", "right"} <= files.keys() else []
    parts = parts or list(files.values())
    if len(parts) != 2:
        raise HTTPError(422, f"a stereo model takes two images, got {len(parts)} file part(s); send "
                        "-F left=@L.png -F right=@R.png")  # fmt: skip
    return await parts[0].read(), await parts[1].read()


def create_app(server: Server) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # Load after the socket is bound: /healthz answers at once, /readyz turns 200 after warm-up.
        threading.Thread(target=server.load_all, name="parvis-load", daemon=True).start()
        background = [
            asyncio.create_task(server.release_memory_when_idle()),
            asyncio.create_task(server.watch_loop_lag()),
        ]
        yield
        for task in background:
            task.cancel()
        await asyncio.get_running_loop().run_in_executor(None, server.close)

    app = FastAPI(title="parvis", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(HTTPError)
    async def http_error(request: Request, exc: HTTPError):
        return JSONResponse({"detail": exc.detail}, exc.status, headers=exc.headers)

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        if server.load_error:
            return JSONResponse({"ready": False, "error": server.load_error}, 503)
        loading = [n for n, m in server.models.items() if not m.ready]
        if loading:
            return JSONResponse({"ready": False, "loading": loading}, 503, headers=server.retry_headers)
        return {"ready": True}

    @app.get("/metrics")
    async def metrics():
        return Response(generate_latest(server.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def list_models():
        return {"models": [m.describe() for m in server.models.values()]}

    @app.get("/v1/models/{name}")
    async def describe(name: str):
        if name not in server.models:
            raise HTTPError(404, f"model {name!r} is not served here; GET /v1/models lists the served models")
        return server.models[name].describe()

    @app.post("/v1/models/{name}/predict")
    async def predict(
        name: str, request: Request, mask: str = "png", min_score: float = 0.3, agnostic: bool = False,
        planes: str = "",
    ):  # fmt: skip
        model = server.model(name)
        try:
            plane_values = tuple(float(p) for p in planes.split(",") if p.strip())
        except ValueError:
            raise HTTPError(422, f"planes={planes!r}: expected disparities in pixels, e.g. planes=8,16") from None
        if mask not in MASK_FORMATS:
            raise HTTPError(422, f"mask={mask!r} is unknown; choose one of {', '.join(MASK_FORMATS)}")
        if not 0.0 <= min_score <= 1.0:
            raise HTTPError(422, f"min_score={min_score} is outside 0..1")
        timeout = model.spec.config.timeout_ms / 1000.0
        try:
            return await asyncio.wait_for(
                _predict(server, model, request, mask, timeout, min_score, agnostic, plane_values), timeout
            )
        except asyncio.TimeoutError:
            server.metrics.rejected.labels(name, "timeout").inc()
            raise HTTPError(504, f"model {name!r} did not answer within {timeout * 1000:.0f} ms; retry later") from None

    @app.post("/v1/models/{name}/infer")
    async def infer(name: str, request: Request):
        model = server.model(name)
        timeout = model.spec.config.timeout_ms / 1000.0
        try:
            return await asyncio.wait_for(_infer(server, model, request), timeout)
        except asyncio.TimeoutError:
            server.metrics.rejected.labels(name, "timeout").inc()
            raise HTTPError(504, f"model {name!r} did not answer within {timeout * 1000:.0f} ms; retry later") from None

    return Gate(app, server)


def _content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _reserve(server: Server, model: ServedModel, n: int = 1):
    try:
        return model.batcher.reserve(n)
    except QueueFullError as exc:
        raise server.reject(
            model.name, "queue_full", f"model {model.name!r} is overloaded: {exc}; retry later"
        ) from None
    except BatcherClosedError:
        raise server.reject(model.name, "shutting_down", "the server is shutting down; retry on another") from None


async def _await_batch(model: ServedModel, futures):
    try:
        return await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - the batch failed: this request (and its batch) get 500
        raise HTTPError(500, f"inference failed in model {model.name!r}: {type(exc).__name__}: {exc}") from None


async def _predict(
    server: Server,
    model: ServedModel,
    request: Request,
    mask: str,
    timeout: float,
    min_score: float = 0.3,
    agnostic: bool = False,
    planes: tuple[float, ...] = (),
):
    if model.meta.task == TENSOR_TASK:
        raise HTTPError(
            422,
            f"model {model.name!r} takes raw tensors, not images; POST KServe v2 JSON to /v1/models/{model.name}/infer",
        )
    ctype = _content_type(request)
    if ctype and not (ctype.startswith("image/") or ctype in ("application/octet-stream", "multipart/form-data")):
        raise HTTPError(
            415, f"Content-Type {ctype!r} is not an image; send image bytes (image/jpeg, image/png, ...) or multipart"
        )
    loop = asyncio.get_running_loop()
    with _reserve(server, model) as slot:
        body = await read_body(request, server.config.max_body_bytes)
        stereo = model.meta.task == "stereo"
        if stereo and ctype != "multipart/form-data":
            raise HTTPError(415, "a stereo model takes a pair: send multipart with -F left=@L.png -F right=@R.png")
        if stereo:
            body = await pair_from_multipart(request, body)
        elif ctype == "multipart/form-data":
            body = await image_from_multipart(request, body)
        if not body or (stereo and not all(body)):
            raise HTTPError(400, "empty body; send the image bytes as the request body")
        start = time.perf_counter()
        try:
            x, size = await loop.run_in_executor(server.pool, server.preprocessors[model.name], body)
        except BadSampleError as exc:
            raise HTTPError(_STATUS_OF_KIND.get(exc.kind, 400), f"{exc.path}: {exc.reason}") from None
        server.metrics.preprocess.labels(model.name).observe(time.perf_counter() - start)
        future = slot.submit(x, timeout)
    (done,) = await _await_batch(model, [future])
    if model.meta.task == "classification":  # a softmax over a few logits: cheaper than a pool hop
        result = result_dict(model.meta, done.value, size, mask)
    else:  # masks resized and PNG-encoded, detection peaks decoded: off the event loop
        result = await loop.run_in_executor(
            server.pool, result_dict, model.meta, done.value, size, mask, model.postprocess, min_score, agnostic,
            planes,
        )  # fmt: skip
    return JSONResponse(result, headers=_batch_headers(done))


def _batch_headers(done) -> dict:
    # Batching made visible per response: what batch this request ran in and what it waited.
    return {
        "X-Batch-Size": str(done.batch_size),
        "X-Queue-Wait-Ms": f"{done.queue_wait_s * 1000:.2f}",
        "X-Inference-Ms": f"{done.run_s * 1000:.2f}",
    }


def parse_v2_input(payload, meta, max_items: int) -> np.ndarray:
    """The one FP32 (N, 3, S, S) tensor of a KServe v2 inference request (a stereo model: the inputs `left`
    and `right`, each (N, 3, H, W), joined into (N, 6, H, W)); HTTPError 422 names the problem."""
    if meta.task == "stereo":
        return _parse_v2_pair(payload, max_items)
    if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), list) or len(payload["inputs"]) != 1:
        raise HTTPError(422, 'expected {"inputs": [{"name", "shape", "datatype", "data"}]} with exactly one input')
    size = meta.input_size
    return _v2_image_tensor(payload["inputs"][0], max_items, lambda shape: shape[1:] == [3, size, size],
                            f"[N, 3, {size}, {size}]")  # fmt: skip


def _parse_v2_pair(payload, max_items: int) -> np.ndarray:
    inputs = payload.get("inputs") if isinstance(payload, dict) else None
    names = [t.get("name") for t in inputs if isinstance(t, dict)] if isinstance(inputs, list) else []
    if sorted(names) != ["left", "right"] or len(inputs) != 2:
        raise HTTPError(422, 'a stereo model takes {"inputs": [{"name": "left", ...}, {"name": "right", ...}]}, '
                        "each FP32 [N, 3, H, W]")  # fmt: skip
    views = {t["name"]: _v2_image_tensor(t, max_items, lambda shape: shape[1] == 3, "[N, 3, H, W]") for t in inputs}
    if views["left"].shape != views["right"].shape:
        raise HTTPError(422, f"left {list(views['left'].shape)} and right {list(views['right'].shape)} differ; "
                        "send a rectified pair of one shape")  # fmt: skip
    return np.concatenate([views["left"], views["right"]], axis=1)


def _v2_image_tensor(tensor, max_items: int, shape_ok, expected: str) -> np.ndarray:
    if not isinstance(tensor, dict) or not {"shape", "datatype", "data"} <= tensor.keys():
        raise HTTPError(422, "input needs 'shape', 'datatype' and 'data'")
    if tensor["datatype"] != "FP32":
        raise HTTPError(422, f"datatype {tensor['datatype']!r} is not accepted; send FP32 (normalized NCHW floats)")
    shape = tensor["shape"]
    if (
        not isinstance(shape, list)
        or len(shape) != 4
        or not all(isinstance(d, int) and d > 0 for d in shape)
        or not shape_ok(shape)
        or not 1 <= shape[0] <= max_items
    ):
        raise HTTPError(422, f"shape {shape} is not accepted; send {expected} with 1 <= N <= {max_items}")
    try:
        data = np.asarray(tensor["data"], dtype=np.float32).reshape(-1)
    except (ValueError, TypeError):
        raise HTTPError(422, "data must be a list of numbers (flat, row-major, or nested by shape)") from None
    if data.size != math.prod(shape):
        raise HTTPError(422, f"data holds {data.size} values, shape {shape} needs {math.prod(shape)}")
    if not np.isfinite(data).all():
        raise HTTPError(422, "data holds NaN or infinity; send finite values")
    return data.reshape(shape)


def parse_v2_tensors(payload, meta, max_items: int) -> list[dict]:
    """A KServe v2 request for a raw-tensor model -> one {input name: array} per sample (the first axis
    of every input is the batch axis, the same N for all); HTTPError 422 names the problem."""
    specs = {t["name"]: t for t in meta.extra["inputs"]}
    if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), list):
        raise HTTPError(422, 'expected {"inputs": [{"name", "shape", "datatype", "data"}, ...]}')
    arrays: dict[str, np.ndarray] = {}
    for tensor in payload["inputs"]:
        if not isinstance(tensor, dict) or not {"name", "shape", "datatype", "data"} <= tensor.keys():
            raise HTTPError(422, "every input needs 'name', 'shape', 'datatype' and 'data'")
        name = tensor["name"]
        if name not in specs:
            raise HTTPError(422, f"input {name!r} is not an input of this model; it takes {', '.join(specs)}")
        spec, shape = specs[name], tensor["shape"]
        if tensor["datatype"] != spec["dtype"]:
            raise HTTPError(422, f"input {name!r}: datatype {tensor['datatype']!r}, the model takes {spec['dtype']}")
        fits = (
            isinstance(shape, list)
            and all(isinstance(d, int) and d >= 0 for d in shape)
            and len(shape) == len(spec["shape"])
            and all(not isinstance(m, int) or m == d for m, d in zip(spec["shape"][1:], shape[1:], strict=True))
            and 1 <= (shape[0] if shape else 0) <= max_items
        )
        if not fits:
            want = [d if isinstance(d, int) else "?" for d in spec["shape"]]
            raise HTTPError(422, f"input {name!r}: shape {shape} does not fit {want} (first axis 1..{max_items})")
        try:
            data = np.asarray(tensor["data"], dtype=numpy_dtype(spec["dtype"])).reshape(-1)
        except (ValueError, TypeError):
            raise HTTPError(422, f"input {name!r}: data must be a list of numbers") from None
        if data.size != math.prod(shape):
            raise HTTPError(
                422, f"input {name!r}: data holds {data.size} values, shape {shape} needs {math.prod(shape)}"
            )
        if data.dtype.kind == "f" and not np.isfinite(data).all():
            raise HTTPError(422, f"input {name!r}: data holds NaN or infinity; send finite values")
        arrays[name] = data.reshape(shape)
    missing = sorted(set(specs) - set(arrays))
    if missing:
        raise HTTPError(422, f"missing input(s) {', '.join(missing)}; the model takes {', '.join(specs)}")
    counts = {a.shape[0] for a in arrays.values()}
    if len(counts) != 1:
        raise HTTPError(422, f"inputs have different first-axis (batch) sizes {sorted(counts)}; send one N for all")
    n = counts.pop()
    return [{name: a[i] for name, a in arrays.items()} for i in range(n)]


def v2_outputs(samples: list[dict]) -> list[dict]:
    """Per-sample {output name: array} stacked back into KServe v2 output tensors."""
    out = []
    for name in samples[0]:
        value = np.stack([s[name] for s in samples])
        dtype = next((k for k, v in _V2_NAMES.items() if value.dtype == v), str(value.dtype).upper())
        out.append({"name": name, "shape": list(value.shape), "datatype": dtype, "data": value.reshape(-1).tolist()})
    return out


_V2_NAMES = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16, "INT64": np.int64, "INT32": np.int32,
             "INT8": np.int8, "UINT8": np.uint8, "BOOL": np.bool_}  # fmt: skip


async def _infer(server: Server, model: ServedModel, request: Request):
    ctype = _content_type(request)
    if ctype and ctype != "application/json":
        raise HTTPError(415, f"Content-Type {ctype!r} is not accepted here; send KServe v2 JSON (application/json)")
    body = await read_body(request, server.config.max_body_bytes)
    loop = asyncio.get_running_loop()

    def parse():
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise HTTPError(400, f"body is not valid JSON ({exc})") from None
        if model.meta.task == TENSOR_TASK:
            return payload, parse_v2_tensors(payload, model.meta, model.spec.config.max_queue)
        return payload, parse_v2_input(payload, model.meta, model.spec.config.max_queue)

    if model.meta.task == TENSOR_TASK:
        payload, samples = await loop.run_in_executor(server.pool, parse)
        slots = _reserve(server, model, len(samples))
        slots = slots if isinstance(slots, list) else [slots]
        timeout = model.spec.config.timeout_ms / 1000.0
        futures = [slot.submit(x, timeout) for slot, x in zip(slots, samples, strict=True)]
        done = await _await_batch(model, futures)
        result = {"model_name": model.name, "outputs": v2_outputs([d.value for d in done])}
        if isinstance(payload.get("id"), str):
            result["id"] = payload["id"]
        return JSONResponse(result, headers=_batch_headers(done[0]))

    payload, array = await loop.run_in_executor(server.pool, parse)
    slots = _reserve(server, model, array.shape[0])
    slots = slots if isinstance(slots, list) else [slots]
    timeout = model.spec.config.timeout_ms / 1000.0
    futures = [slot.submit(torch.from_numpy(x), timeout) for slot, x in zip(slots, array, strict=True)]
    done = await _await_batch(model, futures)
    out = torch.stack([d.value for d in done]).numpy()
    result = {
        "model_name": model.name,
        "outputs": [{"name": "output", "shape": list(out.shape), "datatype": "FP32", "data": out.reshape(-1).tolist()}],
    }
    if isinstance(payload.get("id"), str):
        result["id"] = payload["id"]
    return JSONResponse(result, headers=_batch_headers(done[0]))


def run_server(
    specs: list[ModelSpec],
    config: ServerConfig,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
    graceful_timeout_s: float = 30.0,
) -> None:
    """Serve until SIGINT/SIGTERM, then drain in-flight requests. ParvisError if a model fails to load."""

    class GracefulServer(uvicorn.Server):
        @contextmanager
        def capture_signals(self):
            # uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown, so the process would die
            # by the signal; a drained, orderly stop is a success: forget the signal, exit 0.
            with super().capture_signals():
                try:
                    yield
                finally:
                    self._captured_signals.clear()

    server = Server(specs, config)
    app = create_app(server)
    uv = GracefulServer(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level=log_level,
            access_log=False,  # per-request lines cost more than a small model's inference; /metrics counts
            timeout_graceful_shutdown=graceful_timeout_s,
            lifespan="on",
        )
    )

    def stop(_message: str) -> None:
        uv.should_exit = True

    server.on_load_error = stop
    uv.run()
    if server.load_error:
        raise ParvisError(f"serving stopped: {server.load_error}")
    if not uv.started:
        raise ParvisError(f"could not start serving on {host}:{port} (is the port in use? choose another --port)")
