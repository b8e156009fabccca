"""`parvis predict MODEL INPUT... --engine torchrun`: the predict job on torchrun's processes.

Every rank lists the same inputs (sorted), and takes the unfinished shards whose index modulo the world
size is its rank: each image belongs to exactly one rank, with no padding (DistributedSampler pads the
last batch with repeats, which would count images twice). A rank runs parvis's own three-stage predict
loop (decode, model, write) on each of its shards and writes the shard's Parquet part itself; rank 0
writes the manifest first and the summary (over every part: rows, errors, duplicates, missing) last.
Across nodes this is torchrun's usual `--nnodes --node-rank --rdzv-endpoint`; the output folder must
then be shared storage that every node writes to.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import torch

from parvis import runtime as rt
from parvis.engine.predict import predict_files
from parvis.runtimes import open_predictor
from parvis.scale.shards import ShardStore, require_single_images, to_row


def run_torchrun(
    source: str,
    files: list[Path],
    out: str | Path,
    model_id: str,
    options: dict,
    batch: int = 16,
    overlays: bool = False,
    shard_size: int | None = None,
    decode_threads: int = 1,
    progress=None,
) -> dict | None:
    """This rank's share of the job; rank 0 returns the summary, the others None."""
    dist = rt.init_distributed(options.get("device", "auto"))
    try:
        store = ShardStore(out, files, shard_size, model_id, "torchrun")
        if dist.rank == 0:
            store.open()
        _barrier(dist)
        if dist.rank != 0:
            store.open()  # reads and checks the manifest rank 0 wrote
        todo = store.todo()
        _barrier(dist)  # every rank has listed the same unfinished shards before any writes one
        mine = [s for i, s in enumerate(todo) if i % dist.world_size == dist.rank]
        model, info = open_predictor(
            source, dist.device, options.get("runtime"), options.get("precision", "auto"), options.get("threads"),
            weights=options.get("weights"), given=options.get("given"),
        )  # fmt: skip
        require_single_images(model.meta, source)
        device = dist.device if info["runtime"] in ("torch", "torch-compile") else torch.device("cpu")
        node = f"{socket.gethostname()}/rank{dist.rank}"
        start, processed = time.perf_counter(), 0
        share = sum(len(store.shards[s]) for s in mine)
        for shard in mine:
            records = predict_files(model, store.shards[shard], out, device, batch, decode_threads, overlays,
                                    write_results=False)  # fmt: skip
            store.write(shard, [to_row(r, shard, model_id, node) for r in records])
            processed += len(store.shards[shard])
            if progress and dist.rank == 0:  # rank 0's own share: the others run at about its pace
                progress(processed, share, processed / (time.perf_counter() - start), "rank 0's images")
        counts = torch.tensor([processed], dtype=torch.int64, device=_collective_device(dist))
        if dist.world_size > 1:
            torch.distributed.all_reduce(counts)
        seconds = time.perf_counter() - start
        summary = None
        if dist.rank == 0:
            extra = {"ranks": dist.world_size, "skipped_shards": len(store.shards) - len(todo)}
            summary = store.summary(seconds, int(counts.item()), extra)
        return summary
    finally:
        rt.teardown_distributed()


def _barrier(dist) -> None:
    if dist.world_size > 1:
        torch.distributed.barrier()


def _collective_device(dist) -> torch.device:
    return dist.device if dist.backend == "nccl" else torch.device("cpu")
