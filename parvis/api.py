"""The Python API the CLI stands on: one model object for every model source.

    import parvis

    m = parvis.load("torchvision:mobilenet_v2", weights="mobilenet_v2-b0353104.pth")
    m.predict("photo.png")                       # {"file", "label", "class_name", "score", "top5"}
    m.predict(["a.jpg", "b.jpg"], out="runs/p")  # also writes results.json (+ masks, overlays) like `parvis predict`
    m.evaluate("data/shapes")                    # the task metrics on a labelled split
    m.export("runs/m.onnx")                      # a verified ONNX artifact (parity checked)
    m.optimize("photos/", out="runs/opt", metric="agreement")
    m.inspect()                                  # what `parvis inspect` prints, as a dict
    parvis.train(task="classification", model="timm:resnet18", data="data/shapes", weights="r18.safetensors")

Every argument means what the command's flag of the same name means (see docs/api.md).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from parvis import runtime as rt
from parvis.artifact import Preprocess, read_labels
from parvis.config import TrainConfig, load_config
from parvis.data.check import open_dataset
from parvis.data.loader import DevicePrefetcher, build_loader
from parvis.describe import inspect_model
from parvis.engine.evaluate import evaluate as evaluate_batches
from parvis.engine.loading import load_model
from parvis.engine.predict import expand_inputs, predict_files
from parvis.engine.trainer import train as run_training
from parvis.errors import ParvisError
from parvis.export import export_model
from parvis.models import eval_transform
from parvis.optimize import optimize as optimize_model
from parvis.runtimes import ARTIFACT_SUFFIXES, open_predictor, require_images
from parvis.scale.ray_engine import run_ray
from parvis.scale.shards import require_single_images
from parvis.scale.torchrun_engine import run_torchrun

__all__ = ["Model", "evaluate", "load", "train"]


def _given(task=None, size=None, mean=None, std=None, labels=None, crop_pct=None, interpolation=None) -> Preprocess:
    if isinstance(labels, (str, Path)):
        labels = read_labels(labels)
    return Preprocess(task, size, tuple(mean) if mean else None, tuple(std) if std else None, labels, crop_pct,
                      interpolation)  # fmt: skip


class Model:
    """A model from any source, opened once on first use (`parvis.load` makes one)."""

    def __init__(
        self,
        source: str | Path,
        weights: str | Path | None = None,
        device: str = "auto",
        runtime: str | None = None,
        precision: str = "auto",
        threads: int | None = None,
        ema: bool = False,
        given: Preprocess | None = None,
        **preprocess,
    ):
        """`given` (the CLI's flags) or the preprocessing keywords task, size, mean, std, labels, ..."""
        self.source, self.weights, self.ema = str(source), weights, ema
        self.device = rt.resolve_device(device)
        self.runtime_name, self.precision, self.threads = runtime, precision, threads
        self.given = given or _given(**preprocess)
        self._opened = None

    def _open(self):
        if self._opened is None:
            self._opened = open_predictor(
                self.source, self.device, self.runtime_name, self.precision, self.threads, weights=self.weights,
                given=self.given, use_ema=self.ema,
            )  # fmt: skip
        return self._opened

    @property
    def meta(self):
        return self._open()[0].meta

    @property
    def info(self) -> dict:
        """What runs the model: runtime, device, precision, threads."""
        return self._open()[1]

    def __repr__(self) -> str:
        runs = f"{self.info['runtime']} {self.info['precision']}"
        return f"parvis.Model({self.source!r}, task={self.meta.task!r}, runs={runs!r})"

    def predict(
        self,
        images,
        out: str | Path | None = None,
        batch: int = 16,
        overlays: bool = True,
        decode_threads: int = 1,
        stats: dict | None = None,
    ):
        """Results for image files, folders or globs: one dict for one file, else a list. With `out`,
        results.json, masks and overlays are written there too (as `parvis predict` does). `stats`
        receives the wall time, images/s and each stage's busy time."""
        model, _ = self._open()
        require_images(model.meta, self.source)
        single = isinstance(images, (str, Path)) and Path(images).is_file()
        files = expand_inputs([str(p) for p in ([images] if isinstance(images, (str, Path)) else images)])
        if out is None:
            with tempfile.TemporaryDirectory() as tmp:
                results = predict_files(model, files, tmp, self.device, batch, decode_threads, False, stats)
            # files written in the temporary folder are gone: leave out their paths
            results = [{k: v for k, v in r.items() if k not in ("mask", "overlay")} for r in results]
        else:
            results = predict_files(model, files, out, self.device, batch, decode_threads, overlays, stats)
        return results[0] if single else results

    def evaluate(self, data: str | Path, split: str = "val", batch: int = 64, workers: int | None = None) -> dict:
        """The task metrics on `data`'s labelled `split` (top1/top5, miou, map50, ...)."""
        return evaluate(self, data, split, batch, workers)

    def export(self, out: str | Path, format: str = "onnx", opset: int = 18) -> dict:
        """A verified artifact (ONNX or torch.export), as `parvis export`."""
        if self.source.endswith(ARTIFACT_SUFFIXES):
            raise ParvisError(f"{self.source} is already an artifact; export starts from a PyTorch model")
        return export_model(load_model(self.source, weights=self.weights, given=self.given), out, format, opset)

    def optimize(self, data: str | Path, out: str | Path = "runs/optimize", **options) -> dict:
        """The fastest configuration within the budget, as `parvis optimize` (options: budget, metric,
        batches, threads, objective, calib, rounds, ...)."""
        return optimize_model(self.source, str(data), out, weights=self.weights, given=self.given, **options)

    def inspect(self) -> dict:
        return inspect_model(self.source, weights=self.weights, given=self.given)


def load(source: str | Path, weights: str | Path | None = None, **options) -> Model:
    """A model object for any source parvis reads: a registered name, `torchvision:NAME`, `timm:NAME`
    (with `weights`), a parvis checkpoint, an .onnx / .pt2 artifact (also made elsewhere: give `task`,
    `size`, `mean`, `std`, `labels` for image commands) or a `parvis optimize` folder.
    Options: device, runtime, precision, threads, ema, task, size, mean, std, labels, crop_pct, interpolation."""
    return Model(source, weights, **options)


def predict_at_scale(
    model: Model,
    inputs: list[str],
    out: str | Path,
    engine: str,
    address: str | None = None,
    actors: int | None = None,
    batch: int = 16,
    overlays: bool = False,
    shard_size: int | None = None,
    decode_threads: int = 1,
    progress=None,
    device: str | None = None,
) -> dict | None:
    """`parvis predict --engine ray|torchrun`: results as Parquet parts under `out`/results/ (one row per
    image: path, label, score, result JSON, error, model, node), resumable by shard; returns the summary
    (None on torchrun ranks other than 0). The model is opened here once, for its metadata and to fail
    early on a bad source; every actor or rank opens its own copy."""
    if engine not in ("ray", "torchrun"):
        raise ParvisError(f"--engine {engine}: use local, ray or torchrun")
    files = expand_inputs(inputs)
    # `device` as the user gave it ("auto"): each actor or rank resolves it where it runs (a driver without
    # a GPU must not turn a GPU cluster's actors into CPU ones).
    options = {"device": device or str(model.device), "runtime": model.runtime_name, "precision": model.precision,
               "threads": model.threads, "weights": model.weights, "given": model.given}  # fmt: skip
    model_id = model.source if model.weights is None else f"{model.source}+{model.weights}"
    if engine == "torchrun":  # each rank opens the model on its own device
        return run_torchrun(model.source, files, out, model_id, options, batch, overlays, shard_size, decode_threads,
                            progress)  # fmt: skip
    predictor, _ = model._open()
    require_images(predictor.meta, model.source)
    require_single_images(predictor.meta, model.source)
    return run_ray(model.source, files, out, predictor.meta, model_id, options, address, actors, batch, overlays,
                   shard_size, progress)  # fmt: skip


def evaluate(model: Model | str | Path, data, split: str = "val", batch: int = 64, workers: int | None = None,
             scales=None, **options) -> dict:  # fmt: skip
    """The task metrics of any model source on a labelled split, preprocessed by the model's own metadata.
    The model applies its own precision (the `precision` option), in its own runtime."""
    model = model if isinstance(model, Model) else load(model, **options)
    predictor, info = model._open()
    meta = predictor.meta
    require_images(meta, model.source)
    if scales:
        module = getattr(getattr(predictor, "runtime", None), "module", None)
        if not hasattr(module, "set_scales"):
            raise ParvisError(f"--scales is for hmsa_* models run by PyTorch; {meta.name} runs at one scale")
        module.set_scales([float(s) for s in scales])
    if info["runtime"] not in ("torch", "torch-compile") and workers is None:
        # Forking loader workers after ONNX Runtime / OpenVINO started their thread pools can deadlock the child.
        workers = 0
    device = model.device if info["runtime"] in ("torch", "torch-compile") else torch.device("cpu")
    ds = open_dataset(data, meta.task, split, transform=eval_transform(meta))
    loader = build_loader(ds, batch, train=False, device=device, workers=workers, mean=meta.mean, std=meta.std)
    fp32 = rt.resolve_precision("fp32", device, "infer")  # the model applies its own precision inside
    metrics = evaluate_batches(predictor, DevicePrefetcher(loader, device, meta.mean, meta.std), meta, fp32, device)
    return {"model": meta.name, "task": meta.task, "split": split, "runtime": info["runtime"],
            "precision": info["precision"], "device": str(device), **metrics}  # fmt: skip


def train(resume: bool = False, quiet: bool = False, config: str | Path | None = None, **keys) -> dict:
    """Train as `parvis train` does: any TrainConfig key (task, model, data, epochs, size, batch, weights,
    ...). Returns the final epoch's record (val metrics)."""
    return run_training(load_config(TrainConfig, config, values=keys), resume=resume, quiet=quiet)
