"""Peer server for the serving benchmark: plain FastAPI on uvicorn, one model call per request.

This is the server most people write first, and the baseline parvis's own server is compared
against. It serves the same model on the same runtime as parvis (loaded with parvis's own
`open_predictor`) and speaks the same protocol:

    POST /v1/models/{name}/predict   body: the encoded image (JPEG/PNG/...)
        200 -> the result dict as JSON, header `X-Batch-Size: 1` (never batched)
        400 -> {"detail": "..."} when the body is not a usable image
        404 -> unknown model name
    GET  /healthz                    200 once the model is loaded

Idiom: an `async def` endpoint reads the body on the event loop, then hands the blocking work
(decode + preprocess, the batch-of-1 model call, result_dict) to Starlette's thread pool with
`await starlette.concurrency.run_in_threadpool(...)`. That is what FastAPI itself does for a plain
`def` endpoint; writing it out keeps the body read async. No batching, no queue, no admission
control: concurrency is bounded only by the thread pool (anyio's default, 40 threads).

The model call itself is serialized with a `threading.Lock` (decode, preprocessing and result_dict
still run concurrently in the pool): parvis's runtime models are not safe to call from several
threads at once (the OpenVINO runtime has a single InferRequest and fails with "Infer Request is
busy"), and the lock is the usual fix a hand-written server gets after meeting that error.

    python benchmarks/serve_peers/fastapi_peer.py SOURCE --name NAME --port PORT \
        [--host 127.0.0.1] [--threads N]
"""

from __future__ import annotations

import argparse
import threading

import torch
import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from parvis.errors import BadSampleError
from parvis.runtimes import open_predictor
from parvis.serve.preprocess import Preprocessor, result_dict


def build_app(source: str, name: str, threads: int | None = None) -> FastAPI:
    model, info = open_predictor(source, torch.device("cpu"), threads=threads)
    pre = Preprocessor(model.meta)
    model_lock = threading.Lock()

    def predict_one(body: bytes) -> dict:
        x, size = pre(body)
        with model_lock, torch.inference_mode():
            logits = model(x[None])
        return result_dict(model.meta, logits[0], size, "png")

    app = FastAPI(title=f"fastapi peer ({name})")
    app.state.info = info

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok", "model": name, "runtime": info.get("runtime")}

    @app.post("/v1/models/{model_name}/predict")
    async def predict(model_name: str, request: Request) -> JSONResponse:
        if model_name != name:
            raise HTTPException(404, f"no model named {model_name!r}; this server has {name!r}")
        body = await request.body()
        try:
            result = await run_in_threadpool(predict_one, body)
        except BadSampleError as exc:
            return JSONResponse({"detail": str(exc)}, status_code=400)
        return JSONResponse(result, headers={"X-Batch-Size": "1"})

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="checkpoint, `parvis optimize` folder, .onnx file or registered name")
    parser.add_argument("--name", required=True, help="model name in the URL path")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--threads", type=int, default=None, help="runtime threads (open_predictor threads=)")
    args = parser.parse_args()
    app = build_app(args.source, args.name, args.threads)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
