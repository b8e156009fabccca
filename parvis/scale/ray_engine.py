"""`parvis predict MODEL INPUT... --engine ray`: the predict job on Ray Data.

The pipeline, streaming (Ray Data's executor pulls blocks through it with back-pressure, so memory is
bounded by the blocks in flight, not by the number of images):

    from_items(paths of the unfinished shards)
      -> map_batches(Decode)            GPU actors only: CPU tasks read, decode, resize (the model's eval
                                        preset) and report bad files
      -> map_batches(Predict, actors)   one model copy per actor, opened once; (CPU actors: decode;)
                                        normalize, run, postprocess
      -> the driver                     groups rows by shard and writes each finished shard as one Parquet part

Choices made for the user (all overridable):
- with GPUs, one actor per GPU (`--actors` over the GPU count gives each actor a fraction of a GPU, so
  several share one), 2 threads each, fed by decode tasks of 1 CPU each: decoded, resized uint8 images
  travel through the object store (150 KB per 224 px image), a few batches at a time, so the GPU
  never waits for its own actor's decoding;
- without GPUs, each actor decodes its own batches: the CPUs that would decode are the ones that run
  the model, and an image then never crosses the object store (86 vs 74 img/s for mobilenet_v2 at 224 px
  on 2 cores, back to back). Actors: the cluster's CPUs / threads per actor;
  threads per actor: 1 up to 8 CPUs on the smallest node, else its CPUs / 8 (at most 8 model copies
  per node); spread over the nodes;
- order is preserved, so shards finish one after the other and the driver holds at most a shard or two
  of small result rows;
- a local instance (no --address) binds to 127.0.0.1, starts no dashboard, and gets an object store of
  a quarter of free RAM at most 2 GB (Ray's default of 30% of RAM invites spilling to /tmp when a
  large job decodes faster than the model consumes); Ray's own progress bars are off, parvis prints one.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from parvis import runtime as rt
from parvis.data.decode import read_image
from parvis.data.transforms import Normalize
from parvis.engine.predict import _decode, _write_outputs
from parvis.errors import ParvisError
from parvis.models import eval_transform
from parvis.runtimes import open_predictor
from parvis.scale.shards import ShardStore, from_transport, to_row

THREADS_PER_ACTOR = 2  # a GPU actor's threads (postprocessing, host-side work)
CPU_ACTORS_PER_NODE = 8  # CPU actors per node at most: more threads each on larger nodes


def _ray():
    try:
        import ray  # noqa: PLC0415 (optional dependency: the scale extra)
        import ray.data  # noqa: PLC0415, F401 (configures its loggers on import: quieted after it)
    except ImportError as exc:
        raise ParvisError("--engine ray needs Ray Data: pip install 'parvis[scale]' (ray[data])") from exc
    return ray


def decode_batch(batch: dict, meta) -> dict:
    """Ray Data batch function (run as tasks): paths -> the model's eval preset as HWC uint8 images (zeros and
    an error for bad files); normalization to float happens in the actor, so the object store carries a
    byte a value."""
    transform, side = eval_transform(meta), int(meta.input_size)
    images, heights, widths, errors = [], [], [], []
    for path in batch["path"]:
        _, array, image, error, _ = _decode(Path(path), transform)
        ok = error is None
        images.append(image.numpy() if ok else None)
        heights.append(array.shape[0] if ok else 0)
        widths.append(array.shape[1] if ok else 0)
        errors.append("" if ok else error)
    first = next((i for i in images if i is not None), np.zeros((side, side, 3), np.uint8))
    for k, image in enumerate(images):
        if image is not None and image.shape != first.shape:  # a preset without a fixed output size
            images[k], errors[k] = None, f"preprocessed to {image.shape}, not {first.shape}: a batch needs one size"
    stacked = np.stack([i if i is not None else np.zeros_like(first) for i in images])
    return {**batch, "image": stacked, "height": np.array(heights), "width": np.array(widths),
            "error": np.array(errors, dtype=object)}  # fmt: skip


class Predict:
    """Ray Data actor: one model copy, opened once; a batch of decoded images -> result rows."""

    def __init__(self, source: str, options: dict, out: str, overlays: bool, model_id: str):
        threads = options.get("threads") or THREADS_PER_ACTOR
        torch.set_num_threads(threads)
        # A Ray worker is not started by parvis's command line: tune its allocator as that does (without
        # it, every layer's activations were fresh mmap()s, and the actors ran at half the speed).
        rt.configure_host_allocator()
        device = rt.resolve_device(options.get("device", "auto"))
        self.model, self.info = open_predictor(
            source, device, options.get("runtime"), options.get("precision", "auto"), threads,
            weights=options.get("weights"), given=options.get("given"),
        )  # fmt: skip
        self.device = device if self.info["runtime"] in ("torch", "torch-compile") else torch.device("cpu")
        meta = self.model.meta
        self.normalize = Normalize(meta.mean, meta.std).to(self.device)
        self.out, self.overlays, self.model_id = Path(out), overlays, model_id
        self.node = _ray().get_runtime_context().get_node_id()
        self.ready_at = time.time()  # the job's clock starts at the first model ready, as the other engines' does

    @torch.no_grad()
    def __call__(self, batch: dict) -> dict:
        if "image" not in batch:  # a CPU actor decodes its own batch
            batch = decode_batch(batch, self.model.meta)
        errors = [e or None for e in batch["error"]]
        ok = np.array([e is None for e in errors], dtype=bool)
        raw = None
        if ok.any():
            images = torch.from_numpy(np.ascontiguousarray(batch["image"][ok])).permute(0, 3, 1, 2)
            raw = self.model(self.normalize(images.to(self.device))).float()
        decoded = []
        for path, h, w, error in zip(batch["path"], batch["height"], batch["width"], errors, strict=True):
            if error is None and self.overlays:
                array = read_image(Path(path))
            else:  # only the file's size is read (boxes and masks in the file's pixels)
                array = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (int(h), int(w), 3))
            decoded.append((Path(path), array, None, error, 0.0))
        records: list[dict] = []
        _write_outputs(self.model, decoded, raw, self.out, self.overlays, records)
        rows = [to_row(r, int(s), self.model_id, self.node) for r, s in zip(records, batch["shard"], strict=True)]
        # Columns of one type each (a None among strings would become NaN): "" and NaN mean missing.
        out = {k: np.array([r[k] or "" for r in rows], dtype=object) for k in ("path", "label", "result", "error")}
        out.update(
            model=np.array([self.model_id] * len(rows), dtype=object),
            node=np.array([self.node] * len(rows), dtype=object),
        )
        out["shard"] = np.array([r["shard"] for r in rows], dtype=np.int64)
        out["score"] = np.array([np.nan if r["score"] is None else r["score"] for r in rows], dtype=np.float64)
        out["ready_at"] = np.full(len(rows), self.ready_at)  # read (and dropped) by the driver
        return out


def default_threads(resources: dict, node_cpus: list[float]) -> int:
    """Threads per actor: THREADS_PER_ACTOR for GPU actors; a CPU actor gets 1 up to 8 CPUs on the
    smallest node, else that node's CPUs / 8 (so a node holds at most 8 model copies)."""
    if resources.get("GPU", 0):
        return THREADS_PER_ACTOR
    smallest = int(min(node_cpus)) if node_cpus else int(resources.get("CPU", 1))
    return max(1, smallest // CPU_ACTORS_PER_NODE)


def default_actors(resources: dict, threads: int) -> int:
    """Actors a cluster holds: its GPUs when it has any, else its CPUs / threads per actor (at least one)."""
    gpus = int(resources.get("GPU", 0))
    if gpus:
        return gpus
    return max(1, int(resources.get("CPU", 1)) // threads)


def actor_cpus(resources: dict, threads: int, actors: int, decode_tasks: bool) -> float:
    """The CPUs Ray reserves for each actor: its threads, less when the actors would not all fit (or,
    with decode tasks, would leave them no CPU); torch still runs each actor on its threads."""
    cpus = float(resources.get("CPU", 1)) - (1 if decode_tasks else 0)
    return max(0.25, min(float(threads), cpus / actors))


def gpu_per_actor(resources: dict, actors: int, device: str = "auto") -> float:
    """The GPU fraction Ray reserves for each actor: the cluster's GPUs shared by the actors (4 actors on
    1 GPU: 0.25 each, so they share it), at most a whole one; 0 without GPUs or with --device cpu."""
    gpus = float(resources.get("GPU", 0))
    return min(1.0, gpus / actors) if gpus and not str(device).startswith("cpu") else 0.0


def _spread() -> dict:
    """Actors spread over the nodes (one model copy per node first); no restarts: a lost actor fails the
    job, and a rerun redoes only the shards without a part."""
    return {"scheduling_strategy": "SPREAD", "max_restarts": 0}


def _quiet_ray_logs() -> None:
    """Ray's INFO lines and two notices parvis answers itself (token auth of a loopback instance; progress
    bars, which parvis prints) stay out of the terminal; Ray's warnings and errors still show."""
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    data = logging.getLogger("ray.data")
    data.setLevel(logging.WARNING)  # its file handler in the session's logs keeps everything
    for handler in data.handlers:
        if getattr(handler, "stream", None) is sys.stderr and not getattr(handler, "parvis_quiet", False):
            handler.setLevel(logging.WARNING)
            handler.addFilter(lambda record: "Progress bars disabled" not in record.getMessage())
            handler.parvis_quiet = True


def run_ray(
    source: str,
    files: list[Path],
    out: str | Path,
    meta,
    model_id: str,
    options: dict,
    address: str | None = None,
    actors: int | None = None,
    batch: int = 16,
    overlays: bool = False,
    shard_size: int | None = None,
    progress=None,
) -> dict:
    """Run the job; returns (and writes) the summary. `progress(done, total, img_s)` after each shard."""
    ray = _ray()
    store = ShardStore(out, files, shard_size, model_id, "ray")
    store.open()
    todo = store.todo()
    started = False
    _quiet_ray_logs()
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        else:
            store_bytes = min(2 << 30, max(256 << 20, rt.available_ram_bytes() // 4))
            ray.init(
                num_cpus=os.cpu_count(), include_dashboard=False, _node_ip_address="127.0.0.1",
                object_store_memory=store_bytes, log_to_driver=False, configure_logging=False,
            )  # fmt: skip
        started = True
    try:
        resources = ray.cluster_resources()
        alive = [n for n in ray.nodes() if n.get("Alive")]
        threads = options.get("threads") or default_threads(resources, [n["Resources"].get("CPU", 0) for n in alive])
        options = {**options, "threads": threads}
        n_actors = actors or default_actors(resources, threads)
        gpu_share = gpu_per_actor(resources, n_actors, options.get("device", "auto"))
        decode_tasks = gpu_share > 0  # CPU actors decode their own images
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.execution_options.preserve_order = True
        ctx.execution_options.verbose_progress = False
        ctx.print_on_execution_start = False
        start = time.time()
        first_ready = math.inf
        processed = 0
        if todo:
            items = [{"path": str(p), "shard": s} for s in todo for p in store.shards[s]]
            # A block a batch (at least two per actor, so every actor gets work), at most 1,000 blocks.
            blocks = min(len(items), max(-(-len(items) // batch), 2 * n_actors), 1000)
            ds = ray.data.from_items(items, override_num_blocks=blocks)
            if decode_tasks:
                ds = ds.map_batches(decode_batch, fn_kwargs={"meta": meta}, batch_size=batch, num_cpus=1)
            with warnings.catch_warnings():  # ray_remote_args_fn is the only way to SPREAD actors in Ray 2.60
                warnings.simplefilter("ignore", DeprecationWarning)
                ds = ds.map_batches(
                    Predict, batch_size=batch, num_cpus=actor_cpus(resources, threads, n_actors, decode_tasks),
                    num_gpus=gpu_share,
                    compute=ray.data.ActorPoolStrategy(size=n_actors), ray_remote_args_fn=_spread,
                    fn_constructor_kwargs={"source": source, "options": options, "out": str(out),
                                           "overlays": overlays, "model_id": model_id},
                )  # fmt: skip
            pending: dict[int, list[dict]] = {}
            for rows in ds.iter_batches(batch_size=None, batch_format="numpy"):
                first_ready = min(first_ready, float(np.min(rows.pop("ready_at"))))
                for i in range(len(rows["path"])):
                    row = from_transport({k: (v[i].item() if hasattr(v[i], "item") else v[i]) for k, v in rows.items()})
                    pending.setdefault(int(row["shard"]), []).append(row)
                for shard in [s for s, r in pending.items() if len(r) == len(store.shards[s])]:
                    store.write(shard, pending.pop(shard))
                    processed += len(store.shards[shard])
                    if progress:
                        progress(processed, len(items), processed / max(1e-9, time.time() - first_ready))
            if pending:
                raise RuntimeError(f"shards {sorted(pending)} ended incomplete")
        end = time.time()
        seconds = end - (first_ready if math.isfinite(first_ready) else start)
        extra = {"actors": n_actors, "threads_per_actor": threads, "gpu_per_actor": gpu_share,
                 "decode": "tasks" if decode_tasks else "actors", "nodes": len(alive),
                 "startup_s": round((first_ready if math.isfinite(first_ready) else end) - start, 2),
                 "skipped_shards": len(store.shards) - len(todo)}  # fmt: skip
        return store.summary(seconds, processed, extra)
    finally:
        if started:
            ray.shutdown()
