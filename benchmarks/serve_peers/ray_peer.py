"""Peer server for the serving benchmark: Ray Serve with `@serve.batch` dynamic batching.

The same model on the same runtime as parvis (loaded with parvis's own `open_predictor` inside the
replica), behind the same protocol:

    POST /v1/models/{name}/predict   body: the encoded image (JPEG/PNG/...)
        200 -> the result dict as JSON, header `X-Batch-Size: <n>` (the batch it ran in)
        400 -> {"detail": "..."} when the body is not a usable image
        404 -> unknown model name
    GET  /healthz                    200 once the replica (and so the model) is up

Idiom, as in Ray Serve's batching guide: one deployment (a FastAPI app mounted with
`@serve.ingress`, so both paths route) whose `async` handler takes the starlette Request, reads the
body, preprocesses it and awaits a `@serve.batch` method; that method stacks the tensors, runs the
model once on the whole batch and returns one result per request. Everything in the replica runs on
its user event loop, as in the guide: preprocessing is not offloaded, and one batch runs at a time
(`max_concurrent_batches=1`). `max_ongoing_requests` (Serve's default is 5, which would cap a batch
at 5, and Serve warns when max_batch_size exceeds it) is raised to 2 x max_batch_size.

Ray runs locally: `ray.init(num_cpus=N, include_dashboard=False)`, usage stats off, the Serve HTTP
proxy on --host/--port; the one replica asks for all N CPUs, so Ray sets OMP_NUM_THREADS=N in it
(with Serve's default of 1 CPU a torch model would run single-threaded). The script blocks until
SIGINT or SIGTERM, then shuts Serve and Ray down. Serve logs at WARNING without per-request access
lines, like the FastAPI peer's uvicorn at log_level warning.

    python benchmarks/serve_peers/ray_peer.py SOURCE --name NAME --port PORT [--host 127.0.0.1] \
        [--threads N] [--max-batch-size 32] [--batch-wait-ms 5] [--num-cpus 2]

Ray Serve is not a parvis dependency: pip install "ray[serve]".
"""

# No `from __future__ import annotations` here: the deployment class travels to the replica by value
# (cloudpickle), and FastAPI there could not resolve the string annotation "Request" (it then takes
# `request` for a query parameter and answers 422).

import argparse
import os
import signal
import threading
import time

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report to the internet
# Node IP 127.0.0.1, so Ray's own servers (GCS, raylet, workers) listen on loopback, not on every
# interface. (Ray resolves a `_node_ip_address` of 127.0.0.1 to the host's IP; this switch, meant for
# single-machine Ray on macOS/Windows, is the one that keeps it on loopback.) Inherited by Ray's processes.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import ray  # noqa: E402
import torch  # noqa: E402
from fastapi import FastAPI, HTTPException, Request  # noqa: E402
from fastapi.responses import JSONResponse  # noqa: E402
from ray import serve  # noqa: E402

app = FastAPI(title="ray serve peer")


@serve.deployment(name="parvis_peer")
@serve.ingress(app)
class Peer:
    def __init__(self, source: str, name: str, threads: int | None, max_batch_size: int, batch_wait_s: float):
        from parvis.runtimes import open_predictor
        from parvis.serve.preprocess import Preprocessor

        self.name = name
        self.model, self.info = open_predictor(source, torch.device("cpu"), threads=threads)
        self.pre = Preprocessor(self.model.meta)
        self.predict_batch.set_max_batch_size(max_batch_size)
        self.predict_batch.set_batch_wait_timeout_s(batch_wait_s)

    @app.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok", "model": self.name, "runtime": self.info.get("runtime")}

    @app.post("/v1/models/{model_name}/predict")
    async def predict(self, model_name: str, request: Request) -> JSONResponse:
        from parvis.errors import BadSampleError

        if model_name != self.name:
            raise HTTPException(404, f"no model named {model_name!r}; this server has {self.name!r}")
        body = await request.body()
        try:
            x, size = self.pre(body)
        except BadSampleError as exc:
            return JSONResponse({"detail": str(exc)}, status_code=400)
        result, batch_size = await self.predict_batch((x, size))
        return JSONResponse(result, headers={"X-Batch-Size": str(batch_size)})

    # The real limits are set in __init__ from the command line (set_max_batch_size / set_batch_wait_timeout_s).
    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def predict_batch(self, items: list[tuple[torch.Tensor, tuple[int, int]]]) -> list[tuple[dict, int]]:
        from parvis.serve.preprocess import result_dict

        with torch.inference_mode():
            logits = self.model(torch.stack([x for x, _ in items]))
        n = len(items)
        return [(result_dict(self.model.meta, logits[i], size, "png"), n) for i, (_, size) in enumerate(items)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="checkpoint, `parvis optimize` folder, .onnx file or registered name")
    parser.add_argument("--name", required=True, help="model name in the URL path")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--threads", type=int, default=None, help="runtime threads (open_predictor threads=)")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--batch-wait-ms", type=float, default=5.0)
    parser.add_argument("--num-cpus", type=int, default=2, help="CPUs for the local Ray node, all given to the replica")
    args = parser.parse_args()

    t0 = time.perf_counter()
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, namespace="parvis-serve-peer", log_to_driver=True)
    # ray.init installs its own SIGTERM handler in the driver; ours replaces it so both signals stop cleanly.
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        # Like uvicorn at log_level warning in the FastAPI peer: no access log line per request.
        logging_config = {"log_level": "WARNING", "enable_access_log": False}
        serve.start(http_options={"host": args.host, "port": args.port}, logging_config=logging_config)
        deployment = Peer.options(
            ray_actor_options={"num_cpus": args.num_cpus},
            max_ongoing_requests=2 * args.max_batch_size,
        )
        serve.run(
            deployment.bind(args.source, args.name, args.threads, args.max_batch_size, args.batch_wait_ms / 1000),
            name="parvis_peer",
            route_prefix="/",
            logging_config=logging_config,
        )
        print(
            f"ray serve peer: {args.name} on http://{args.host}:{args.port} "
            f"(ray {ray.__version__}, up in {time.perf_counter() - t0:.1f}s)",
            flush=True,
        )
        while not stop.wait(0.5):
            pass
    finally:
        shutdown()


def shutdown(serve_timeout_s: float = 15.0) -> None:
    """Serve, then Ray. serve.shutdown() waits for the controller, and hangs when Ray's own processes
    are already gone (a SIGTERM sent to the whole process group reaches the raylet too), so it gets a
    bounded wait; ray.shutdown() then stops the processes this driver started."""
    t = threading.Thread(target=serve.shutdown, name="serve-shutdown", daemon=True)
    t.start()
    t.join(serve_timeout_s)
    if t.is_alive():
        print(f"serve.shutdown() still running after {serve_timeout_s:.0f}s; stopping Ray anyway", flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main()
