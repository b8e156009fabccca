"""`parvis optimize`: the fastest configuration that stays within an accuracy budget, measured.

For a trained checkpoint, every candidate of the matrix runtime x precision (x batch x threads, and
extra artifacts such as a pruned export) is built, timed and scored on the validation split:

    torch eager fp32 (the baseline), torch eager bf16 (+ channels-last), torch.compile bf16,
    ONNX Runtime fp32 and INT8 (QDQ, calibrated on training images), OpenVINO fp32, bf16 and INT8
    (on the same QDQ file); on a GPU: torch fp32/tf32/bf16/fp16, torch.compile fp16, ONNX Runtime
    with the CUDA/TensorRT providers.

Throughput is images/s at each batch size, timed round-robin over all candidates (drift on a shared
machine hits all alike, median of rounds); latency is batch-1 p50/p99. The metric (top-1 or mIoU)
runs on the whole validation split, decoded once and fed identically to every candidate. A candidate
whose metric drops more than `budget` points below eager fp32 is rejected with the reason; so is one
that cannot be built (export or quantization failure, precision the device lacks). The winner's
artifact is copied to the output folder next to `optimize.json`.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import torch
from torchvision.ops import box_iou

from parvis import runtime as rt
from parvis.artifact import Preprocess, is_quantized, read_metadata
from parvis.data.check import open_dataset
from parvis.data.decode import read_image, to_tensor
from parvis.data.loader import Batch, DevicePrefetcher, build_loader
from parvis.data.transforms import Normalize, build_transform
from parvis.engine.evaluate import evaluate
from parvis.engine.loading import as_checkpoint, load_model
from parvis.engine.predict import expand_inputs
from parvis.errors import BadSampleError, ParvisError
from parvis.export import export_model
from parvis.io import atomic_copy, atomic_write_text
from parvis.models import eval_transform
from parvis.quantize import (
    Int8Quantizer,
    QuantPart,
    SensitivityProbe,
    calibration_feeds,
    nncf_available,
    node_labels,
    quantize_nncf,
    quantize_onnx,
    quantized_nodes,
    quantized_parts,
)
from parvis.runtimes import ARTIFACT_SUFFIXES, as_model, open_runtime, require_images
from parvis.runtimes.timing import time_runtimes

OBJECTIVES = ("throughput", "latency")
# auto/labels: the task's label metric (LABEL_METRICS); agreement: with eager fp32's answers; a metric name
# of the model's task (detection: map50 or map, COCO's IoU 0.5:0.95) budgets that one on the labels.
METRICS = (
    "auto",
    "labels",
    "agreement",
    "top1",
    "miou",
    "map50",
    "map",
    "epe",
    "bad3",
    "d1",
    "image_auroc",
    "pixel_auroc",
    "pro",
)
TASK_METRICS = {
    "classification": ("top1",),
    "segmentation": ("miou",),
    "detection": ("map50", "map"),
    "stereo": ("epe", "bad3", "d1"),
    "inspection": ("f1", "image_auroc", "pixel_auroc", "pro"),
}
# The metric each task is budgeted on: against labels, or (no labels the model knows) against fp32's answers.
LABEL_METRICS = {
    "classification": "top1",
    "segmentation": "miou",
    "detection": "map50",
    "stereo": "epe",
    "inspection": "image_auroc",
}
# Error metrics (lower is better) already in the budget's unit: EPE in pixels, bad-3 and D1 in % of pixels.
# Their drop is the increase, as is; the others are fractions in [0, 1] whose drop counts in points (x 100).
ERROR_METRICS = ("epe", "bad3", "d1")


def metric_drop(name: str, baseline: float, value: float) -> float:
    """How much worse `value` is than `baseline`, in the budget's unit (points, or px for EPE)."""
    if name in ERROR_METRICS:
        return round(value - baseline, 4)
    return round((baseline - value) * 100, 4)


AGREEMENT_METRICS = {
    "classification": "top1_agreement",  # share of images whose top-1 class equals eager fp32's
    "segmentation": "mask_iou_agreement",  # mean IoU between the candidate's and fp32's masks
    "detection": "box_f1_agreement",  # F1 of boxes matched to fp32's (same class, IoU >= 0.5, score >= 0.3)
    "stereo": "disparity_agreement",  # share of pixels whose disparity is within 1 px of fp32's
    # share of images with fp32's OK/NG decision (no threshold yet: image score within 2% of fp32's)
    "inspection": "decision_agreement",
}


@dataclass
class Candidate:
    variant: str  # which model: "base", a pruned variant, an extra artifact's name
    runtime: str
    precision: str
    artifact: str | None  # the file the runtime loads (None: could not be made, see reason)
    status: str = "ok"
    reason: str = ""
    metric: float | None = None
    runtimes: dict = field(default_factory=dict)  # threads -> opened Runtime
    streams: int = 1  # OpenVINO inference streams (parallel requests a batch is split across)
    # int8 rows: how the file was made: "qdq" (ONNX Runtime, every quantizable node), "mixed" (the same with
    # the most sensitive nodes kept in float, named in float_nodes), "nncf" (NNCF's quantization for OpenVINO).
    scheme: str = ""
    float_nodes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        """The precision as the table shows it: int8 says how it was made."""
        if self.scheme == "mixed":
            return f"int8 mixed ({len(self.float_nodes)} float)"
        return f"{self.precision} {self.scheme}" if self.scheme and self.scheme != "qdq" else self.precision

    @property
    def key(self) -> str:
        streams = f"/{self.streams}streams" if self.streams > 1 else ""
        return f"{self.variant}/{self.runtime}/{self.label}{streams}"


def matrix(device: torch.device) -> list[tuple[str, str]]:
    """(runtime, precision) pairs worth trying on `device`, eager fp32 first (the baseline)."""
    if device.type == "cuda":
        return [
            ("torch", "fp32"),
            ("torch", "tf32"),
            ("torch", "bf16"),
            ("torch", "fp16"),
            ("torch-compile", "fp16"),
            ("onnxruntime", "fp32"),
        ]
    pairs = [("torch", "fp32")]
    cpu_bf16 = rt.resolve_precision("auto", device, "infer").name == "bf16"
    if cpu_bf16:
        pairs += [("torch", "bf16"), ("torch-compile", "bf16")]
    else:
        pairs += [("torch-compile", "fp32")]
    pairs += [("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("openvino", "fp32")]
    if cpu_bf16:
        pairs.append(("openvino", "bf16"))
    pairs.append(("openvino", "int8"))
    return pairs


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def validation_batches(
    meta, data: str | Path, split: str = "val", batch: int = 64, limit: int | None = None, seed: int = 0
) -> list:
    """The split (or `limit` of its images, a seeded sample), decoded and normalized once by the model's own eval
    preprocessing (main process: forking loader workers next to ONNX Runtime / OpenVINO thread pools can
    deadlock)."""
    cpu = torch.device("cpu")
    ds = open_dataset(data, meta.task, split, transform=build_transform(meta.task, False, meta.input_size))
    if limit is not None and limit < len(ds):
        order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:limit]
        ds = torch.utils.data.Subset(ds, sorted(order.tolist()))
    if len(ds) == 0:
        raise ParvisError(f"{data}: the {split} split has no images to score candidates on")
    loader = build_loader(ds, batch, train=False, device=cpu, workers=0, mean=meta.mean, std=meta.std)
    prefetch = DevicePrefetcher(loader, cpu, meta.mean, meta.std, memory_format=torch.contiguous_format)
    # Copies: the prefetcher reuses its buffers. Detection targets are fresh dicts per batch already.
    return [type(b)(b.images.clone(), _copy_targets(b.targets), b.skipped) for b in prefetch]


def _copy_targets(targets):
    return targets.clone() if isinstance(targets, torch.Tensor) else targets


def labels_known(meta, data: str | Path, split: str) -> bool:
    """Whether `data` has a labelled `split` in the model's own classes (else only agreement can be scored)."""
    try:
        ds = open_dataset(data, meta.task, split)
    except ParvisError:
        return False
    classes = getattr(ds, "classes", None)
    if meta.task in ("classification", "detection"):  # class ids mean names: the names must be the model's
        return len(ds) > 0 and list(classes or []) == list(meta.class_names)
    return len(ds) > 0 and (classes is None or len(classes) == meta.num_classes)


def image_batches(meta, data: str | Path, batch: int = 64, limit: int | None = None) -> list[Batch]:
    """Every image under `data` (a folder, recursively), decoded and normalized once by the model's own
    eval preprocessing; unreadable files are left out. For scoring agreement, where no labels are read."""
    files = expand_inputs([str(data)])[:limit]
    transform = eval_transform(meta)
    normalize = Normalize(meta.mean, meta.std)
    images = []
    for path in files:
        try:
            images.append(transform(to_tensor(read_image(path))))
        except BadSampleError:
            continue
    if not images:
        raise ParvisError(f"--data {data}: no readable images to score candidates on")
    return [
        Batch(normalize(torch.stack(images[i : i + batch])).contiguous(), None, 0) for i in range(0, len(images), batch)
    ]


def outputs_of(runtime_obj, batches: list) -> torch.Tensor:
    model = as_model(runtime_obj)
    with torch.no_grad():
        return torch.cat([model(b.images).float().cpu() for b in batches])


def agreement(meta, raw: torch.Tensor, reference: torch.Tensor, postprocess) -> float:
    """How closely `raw` answers like `reference` (eager fp32's raw outputs), in [0, 1]."""
    if meta.task == "classification":
        return float((raw.argmax(1) == reference.argmax(1)).float().mean())
    if meta.task == "stereo":
        return float(((raw.float() - reference.float()).abs() <= 1.0).float().mean())
    if meta.task == "inspection":
        got, want = raw.float().flatten(1).amax(1), reference.float().flatten(1).amax(1)
        threshold = meta.extra.get("threshold")
        if threshold is not None:
            return float(((got >= threshold) == (want >= threshold)).float().mean())
        return float(((got - want).abs() <= 0.02 * want.abs()).float().mean())
    if meta.task == "segmentation":
        ious = []
        for a, b in zip(raw.argmax(1), reference.argmax(1), strict=True):
            per_class = []
            for c in torch.unique(torch.cat([a.unique(), b.unique()])):
                inter = ((a == c) & (b == c)).sum()
                union = ((a == c) | (b == c)).sum()
                per_class.append(float(inter) / float(union))
            ious.append(sum(per_class) / len(per_class))
        return sum(ious) / len(ious)
    matched = total = 0
    for got, want in zip(postprocess(raw), postprocess(reference), strict=True):
        g, w = got.boxes[got.scores >= 0.3], want.boxes[want.scores >= 0.3]
        gl, wl = got.labels[got.scores >= 0.3], want.labels[want.scores >= 0.3]
        total += len(g) + len(w)
        if len(g) and len(w):
            iou = box_iou(g.float(), w.float()) * (gl[:, None] == wl[None, :])
            used: set[int] = set()
            for row in iou:
                j = int(row.argmax())
                if row[j] >= 0.5 and j not in used:
                    used.add(j)
                    matched += 2
    return 1.0 if total == 0 else matched / total


def score(runtime_obj, batches: list, meta) -> dict:
    """Task metrics of an opened runtime on cached batches."""
    fp32 = rt.resolve_precision("fp32", torch.device("cpu"), "infer")
    return evaluate(as_model(runtime_obj), batches, meta, fp32, torch.device("cpu"))


@dataclass
class Int8Source:
    """What a variant's INT8 candidates were made from, kept for the mixed-precision search."""

    onnx_path: Path
    quantizer: Int8Quantizer | None = None
    nncf_path: Path | None = None
    nncf_error: str = ""


def _prepare_variant(
    variant: str,
    source: str,
    pairs: list[tuple[str, str]],
    workdir: Path,
    data: str,
    calib: int,
    progress: Callable[[str], None],
    given: Preprocess | None = None,
) -> tuple[list[Candidate], Int8Source]:
    """Candidates of one model: export to ONNX and quantize once, shared by the runtimes that use them.
    An .onnx `source` (parvis's or made elsewhere) is used as it is."""
    onnx_path = Path(source) if source.endswith(".onnx") else workdir / f"{variant}.onnx"
    int8_path = workdir / f"{variant}-int8.onnx"
    int8 = Int8Source(onnx_path)
    onnx_error = int8_error = ""
    if any(r in ("onnxruntime", "openvino") for r, _ in pairs) and not source.endswith(".onnx"):
        progress(f"{variant}: exporting to ONNX")
        try:
            export_model(load_model(source), onnx_path, "onnx")
        except Exception as exc:  # noqa: BLE001 - any export failure is a rejected candidate, not a crash
            onnx_error = f"export failed: {_first_line(exc)}"
    if any(p == "int8" for _, p in pairs):
        if onnx_error:
            int8_error = onnx_error
        else:
            progress(f"{variant}: quantizing to INT8 with {calib} calibration images")
            try:
                meta = read_metadata(onnx_path, given)
                feeds, _ = calibration_feeds(onnx_path, meta, data, calib)
                scratch = workdir / f"{variant}-quantizer"
                scratch.mkdir(exist_ok=True)
                int8.quantizer = Int8Quantizer(onnx_path, feeds, "minmax", scratch)
                quantize_onnx(onnx_path, int8_path, data, n=calib, given=given, quantizer=int8.quantizer)
            except Exception as exc:  # noqa: BLE001
                int8_error = f"quantization failed: {_first_line(exc)}"
            if ("openvino", "int8") in pairs and nncf_available():
                progress(f"{variant}: quantizing to INT8 with NNCF for OpenVINO")
                int8.nncf_path = workdir / f"{variant}-int8-nncf.onnx"
                try:
                    quantize_nncf(onnx_path, int8.nncf_path, int8.quantizer.feeds if int8.quantizer else [], given)
                except Exception as exc:  # noqa: BLE001
                    int8.nncf_error = f"NNCF quantization failed: {_first_line(exc)}"
    out = []
    for runtime_name, precision in pairs:
        if runtime_name in ("torch", "torch-compile"):
            out.append(Candidate(variant, runtime_name, precision, source))
        elif precision == "int8":
            out.append(
                Candidate(variant, runtime_name, precision, None if int8_error else str(int8_path), scheme="qdq")
            )
            if int8_error:
                out[-1].status, out[-1].reason = "failed", int8_error
            if runtime_name == "openvino" and int8.nncf_path is not None:
                error = int8.nncf_error
                out.append(Candidate(variant, runtime_name, precision, None if error else str(int8.nncf_path),
                                     status="failed" if error else "ok", reason=error, scheme="nncf"))  # fmt: skip
        else:
            out.append(Candidate(variant, runtime_name, precision, None if onnx_error else str(onnx_path)))
            if onnx_error:
                out[-1].status, out[-1].reason = "failed", onnx_error
    return out, int8


def _open(c: Candidate, threads: int, device: torch.device, given: Preprocess | None = None):
    kwargs = {"threads": threads, "precision": c.precision}
    if c.runtime in ("onnxruntime", "openvino") and given is not None:
        kwargs["given"] = given  # a foreign file's preprocessing, stated by the user
    if c.streams > 1:
        kwargs["streams"] = c.streams
    if device.type == "cuda":
        kwargs["device"] = str(device)
    return open_runtime(c.artifact, c.runtime, **kwargs)


def optimize(
    source: str,
    data: str,
    out: str | Path,
    budget: float = 1.0,
    batches: tuple[int, ...] = (32,),
    threads: tuple[int, ...] | None = None,
    objective: str = "throughput",
    device: str = "auto",
    pairs: list[tuple[str, str]] | None = None,
    extra: tuple[str, ...] = (),
    variants: tuple[tuple[str, str], ...] = (),
    calib: int = 128,
    streams: tuple[int, ...] = (1,),
    rounds: int = 3,
    iters: int = 3,
    latency_iters: int = 30,
    split: str = "val",
    progress: Callable[[str], None] = lambda _: None,
    weights: str | None = None,
    given: Preprocess | None = None,
    metric: str = "auto",
    int8_search: bool = True,
) -> dict:
    """Measure every candidate and write `out/optimize.json` plus the winner's artifact.

    `extra`: more artifacts (.onnx / .pt2) to consider as they are, in their default runtime;
    `variants`: (name, checkpoint) pairs (e.g. a pruned model) that go through the same matrix.
    `source`: a parvis checkpoint or a model name (registered or zoo, with `weights`).
    `metric`: labels (the task metric on `data`'s labelled split), agreement (with eager fp32's answers
    on the images under `data`, for data without labels the model knows), or auto (labels when there are).
    `int8_search`: when full INT8 is over budget, search for the fewest parts to keep in float (_mixed_search).
    Returns the optimize.json content.
    """
    if objective not in OBJECTIVES:
        raise ParvisError(f"--objective {objective!r} is unknown; choose one of {', '.join(OBJECTIVES)}")
    if budget < 0:
        raise ParvisError(f"--budget {budget}: the allowed metric drop in points cannot be negative")
    if str(source).endswith(".pt2") or Path(source).is_dir():
        raise ParvisError(
            f"{source}: optimize starts from a PyTorch model (a checkpoint, or a model name with --weights) or an "
            ".onnx file; pass other artifacts with --candidate"
        )
    if metric not in METRICS:
        raise ParvisError(f"--metric {metric!r} is unknown; choose one of {', '.join(METRICS)}")
    if not Path(data).exists():
        raise ParvisError(f"--data {data}: no such dataset folder")
    for path in extra:
        if not str(path).endswith(ARTIFACT_SUFFIXES) or not Path(path).is_file():
            raise ParvisError(f"--candidate {path}: expected an existing .onnx or .pt2 artifact")
    dev = rt.resolve_device(device)
    threads = tuple(threads or (rt.usable_cores(),))
    pairs = pairs or matrix(dev)
    onnx_source = str(source).endswith(".onnx")
    first = ("onnxruntime", "fp32") if onnx_source else ("torch", "fp32")
    if onnx_source:  # an ONNX file runs in the ONNX runtimes only; its fp32 ONNX Runtime row is the baseline
        pairs = [p for p in pairs if p[0] in ("onnxruntime", "openvino")]
    if pairs[0] != first:
        pairs = [first, *[p for p in pairs if p != first]]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    work = out / ".candidates"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    named = str(source)
    try:
        if onnx_source:
            if weights is not None:
                raise ParvisError(f"{source}: an ONNX file brings its own weights; drop --weights")
            meta = read_metadata(source, given)
            require_images(meta, source)
        else:
            source = as_checkpoint(source, work, weights, given)  # a name + weights: saved once, run by all
            meta = load_model(source).meta
        known = labels_known(meta, data, split)
        if metric in TASK_METRICS.get(meta.task, ()):
            metric_name, metric = metric, "labels"
        elif metric not in ("auto", "labels", "agreement"):
            raise ParvisError(
                f"--metric {metric} does not score a {meta.task} model; choose auto, labels, agreement or "
                f"{', '.join(TASK_METRICS[meta.task])}"
            )
        else:
            metric_name = ""
        if metric == "labels" and not known:
            raise ParvisError(
                f"--data {data}: no labelled {split} split in the model's classes ({meta.num_classes}); "
                "use --metric agreement to score agreement with fp32 on its images"
            )
        mode = "labels" if metric == "labels" or (metric == "auto" and known) else "agreement"
        if not metric_name and mode == "labels" and meta.task == "inspection" and "threshold" in meta.extra:
            # what predict and serve answer is the OK/NG decision at the model's threshold: a candidate
            # that ranks parts alike (AUROC) but shifts its scores (INT8 distances: every defect passed)
            # must not be chosen; F1 at the threshold catches both false rejects and escapes
            metric_name = "f1"
        metric_name = metric_name or (LABEL_METRICS if mode == "labels" else AGREEMENT_METRICS)[meta.task]
        progress(f"decoding the {split if mode == 'labels' else 'image'} set once for scoring")
        val = validation_batches(meta, data, split) if mode == "labels" else image_batches(meta, data)

        candidates, base_int8 = _prepare_variant("base", str(source), pairs, work, data, calib, progress, given)
        int8_sources = {"base": base_int8}
        for name, checkpoint in variants:
            more, int8_sources[name] = _prepare_variant(name, checkpoint, pairs, work, data, calib, progress)
            candidates += more
        if any(n > 1 for n in streams):  # OpenVINO with several streams: one more candidate per count
            more = []
            for c in candidates:
                if c.runtime == "openvino":
                    more += [dataclasses.replace(c, streams=n, runtimes={}, float_nodes=list(c.float_nodes))
                             for n in streams if n > 1]  # fmt: skip
            candidates += more
        for path in extra:
            runtime_name = "onnxruntime" if str(path).endswith(".onnx") else "torch"
            precision = "int8" if runtime_name == "onnxruntime" and is_quantized(path) else "fp32"
            candidates.append(Candidate(Path(path).stem, runtime_name, precision, str(path)))

        references: list[torch.Tensor] = []

        def score_candidate(c: Candidate) -> None:
            if c.status != "ok":
                return
            progress(f"opening and scoring {c.key}")
            try:
                for n in threads:
                    c.runtimes[n] = _open(c, n, dev, given)
                if mode == "labels":
                    c.metric = float(score(c.runtimes[threads[0]], val, meta)[metric_name])
                else:  # the first candidate is eager fp32: its answers are the reference
                    raw = outputs_of(c.runtimes[threads[0]], val)
                    references.extend([] if references else [raw])
                    c.metric = agreement(meta, raw, references[0], as_model(c.runtimes[threads[0]]).postprocess)
            except ParvisError as exc:
                c.status, c.reason, c.runtimes = "unavailable", _first_line(exc), {}
            except Exception as exc:  # noqa: BLE001 - a runtime that cannot run the model is a rejected row
                c.status, c.reason, c.runtimes = "failed", f"{type(exc).__name__}: {_first_line(exc)}", {}

        def judge(c: Candidate) -> None:
            if c.status == "ok":
                drop = metric_drop(metric_name, baseline.metric, c.metric)  # as the row's metric_drop
                if drop > budget:
                    c.status = "over budget"
                    unit = "px" if metric_name == "epe" else "points"
                    c.reason = f"{metric_name} drop {drop:.2f} {unit} > budget {budget:g}"  # epe: px worse

        for c in candidates:
            score_candidate(c)
        baseline = candidates[0]
        if baseline.status != "ok":
            raise ParvisError(f"{source}: the eager fp32 baseline could not run ({baseline.reason})")
        for c in candidates:
            judge(c)
        searches = {}
        for variant, int8 in int8_sources.items():
            plain = next((c for c in candidates if c.variant == variant and c.scheme == "qdq"), None)
            if not int8_search or plain is None or plain.status != "over budget" or int8.quantizer is None:
                continue
            scorer = None
            if mode == "labels":  # rank parts by the task metric on labelled training images, not val
                try:
                    probe_set = validation_batches(meta, data, "train", limit=PROBE_IMAGES)
                except ParvisError:
                    probe_set = []
                if probe_set:

                    def scorer(path: Path, probe_set=probe_set) -> float:
                        opened = open_runtime(str(path), "onnxruntime", precision="int8", threads=threads[0])
                        value = float(score(opened, probe_set, meta)[metric_name])
                        return -value if metric_name in ERROR_METRICS else value  # the probe ranks higher first

            found, searches[variant] = _mixed_search(
                variant, int8, plain, data, work, score_candidate, judge, pairs, progress, given, scorer
            )
            candidates += found

        rows = _timed_rows(candidates, val, threads, batches, meta, rounds, iters, latency_iters, progress)
        for row in rows:
            row["metric_name"] = metric_name
            if row["metric"] is not None:
                row["metric_drop"] = metric_drop(metric_name, baseline.metric, row["metric"])
            base = next(
                r
                for r in rows
                if r["variant"] == "base"
                and (r["runtime"], r["precision"]) == first
                and r["batch"] == row["batch"]
                and r["threads"] == row["threads"]
            )
            if row.get("img_s"):
                row["speedup_vs_eager_fp32"] = row["img_s"] / base["img_s"]
        ok = [r for r in rows if r["status"] == "ok"]
        best_key = (lambda r: r["img_s"]) if objective == "throughput" else (lambda r: -r["latency_ms_p50"])
        chosen = dict(max(ok, key=best_key))
        for r in rows:
            r["chosen"] = _same(r, chosen)
        chosen["artifact"] = str(_keep_artifact(chosen, out))
        result = {
            "benchmark": "optimize",
            "source": named,
            "data": str(data),
            "split": split,
            "model": meta.name,
            "task": meta.task,
            "input_size": meta.input_size,
            **rt.result_header(dev),
            "budget_points": budget,
            "objective": objective,
            "batches": list(batches),
            "threads": list(threads),
            "streams": list(streams),
            "rounds": rounds,
            "iters_per_round": iters,
            "metric_name": metric_name,
            "metric_mode": mode,
            # what speedup_vs_eager_fp32 divides by (for an ONNX source: its ONNX Runtime fp32 row)
            "baseline": "eager fp32" if first == ("torch", "fp32") else f"{first[0]} {first[1]}",
            "baseline_metric": baseline.metric,
            "validation_images": sum(len(b.images) for b in val),
            "weights": weights,
            # per variant whose full INT8 was over budget: node sensitivities and the float counts tried
            "int8_search": searches,
            "candidates": rows,
            "chosen": chosen,
        }
        atomic_write_text(out / "optimize.json", json.dumps(result, indent=2) + "\n")
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def precision_label(row: dict) -> str:
    """A row's precision as tables show it: INT8 says how it was made (nncf, mixed with N nodes in float)."""
    scheme = row.get("int8_scheme")
    if scheme == "mixed":
        return f"int8 mixed ({row['float_layers']} float)"
    return f"{row['precision']} {scheme}" if scheme and scheme != "qdq" else row["precision"]


def _same(a: dict, b: dict) -> bool:
    keys = ("variant", "runtime", "precision", "int8_scheme", "float_layers", "batch", "threads", "streams")
    return all(a.get(k) == b.get(k) for k in keys)


# The mixed-precision search: probes on this many calibration batches (of 8 images), a greedy pick per node for
# the first GREEDY_STEPS nodes, and at most this share of the quantized nodes kept in float (past half the
# model, INT8 has little speed left to offer).
SENSITIVITY_BATCHES = 4
PROBE_IMAGES = 128
GREEDY_STEPS = 8
MAX_FLOAT_SHARE = 0.5


def _timed_rows(candidates, val, threads, batches, meta, rounds, iters, latency_iters, progress) -> list[dict]:
    """One row per candidate x threads x batch; only candidates that run are timed (over-budget ones
    too, so the table shows what the budget cost)."""
    images = torch.cat([b.images for b in val])
    rows = []
    for b in batches:
        # Real validation images, repeated if the split is smaller than the batch.
        x = images[torch.arange(b) % len(images)].contiguous().numpy()
        for n in threads:
            live = [c for c in candidates if n in c.runtimes]
            progress(f"timing {len(live)} candidates at batch {b}, {n} thread(s)")
            speeds = time_runtimes(
                [c.runtimes[n] for c in live], x, rounds, iters, latency_iters, progress, [c.key for c in live]
            )
            timed = {c.key: s for c, s in zip(live, speeds, strict=True)}
            for c in candidates:
                row = {
                    "variant": c.variant,
                    "runtime": c.runtime,
                    "precision": c.precision,
                    "int8_scheme": c.scheme or None,
                    # INT8 rows: how many quantizable nodes stay in float, and which (module paths)
                    "float_layers": len(c.float_nodes) if c.precision == "int8" else None,
                    "float_layer_names": list(c.float_nodes),
                    "batch": b,
                    "threads": n,
                    "streams": c.streams,
                    "status": c.status,
                    "reason": c.reason,
                    "metric": c.metric,
                    "metric_drop": None,
                    "size_mb": _size_mb(c),
                    "img_s": None,
                    "latency_ms_p50": None,
                    "latency_ms_p99": None,
                    "speedup_vs_eager_fp32": None,
                    "source_artifact": c.artifact,
                }
                if c.key in timed:
                    row.update(timed[c.key])
                    row["info"] = c.runtimes[n].info()
                rows.append(row)
    return rows


def _size_mb(c: Candidate) -> float | None:
    """The deployable model's size: the file for artifacts; the weights (not a training checkpoint's
    optimizer state) for PyTorch candidates."""
    if c.artifact is None:
        return None
    if c.runtime in ("torch", "torch-compile") and not c.artifact.endswith(".pt2"):
        live = next(iter(c.runtimes.values()), None)
        module = getattr(live, "module", None)
        if module is None:
            return None
        sd = module.state_dict()
        return round(sum(t.numel() * t.element_size() for t in sd.values()) / 2**20, 2)
    return round(Path(c.artifact).stat().st_size / 2**20, 2)


def _keep_artifact(chosen: dict, out: Path) -> Path:
    """Copy the winner's file out of the scratch folder: model.onnx / model-int8.onnx / model.pt / model.pt2."""
    src = Path(chosen["source_artifact"])
    suffix = src.suffix if src.suffix in (".onnx", ".pt2") else ".pt"
    name = "model-int8" if chosen["precision"] == "int8" else "model"
    return atomic_copy(src, out / f"{name}{suffix}")


def _mixed_search(
    variant: str,
    int8: Int8Source,
    plain: Candidate,
    data: str,
    work: Path,
    score_candidate: Callable[[Candidate], None],
    judge: Callable[[Candidate], None],
    pairs: list[tuple[str, str]],
    progress: Callable[[str], None],
    given: Preprocess | None,
    scorer: Callable[[Path], float] | None = None,
) -> tuple[list[Candidate], dict]:
    """Full INT8 of `variant` was over budget: keep its most sensitive parts in float, fewest first, until the
    metric on the whole validation split is back within budget.

    A part is one quantized activation tensor with the nodes that write and read it (quantized_parts). Greedy:
    each step probes every remaining part (the INT8 model with it in float as well: the task metric on
    PROBE_IMAGES labelled training images when `scorer` is given, then its outputs against fp32's on calibration
    images, channel_snr_db) and keeps the one that recovers most; parts interact, so the ranking
    is redone after each pick. After GREEDY_STEPS picks, the last ranking adds parts in bulk (x1.5 per try) until
    MAX_FLOAT_SHARE of the quantized nodes are float. Returns the candidates (ONNX Runtime and, when in the
    matrix, OpenVINO, on one file) and what the search measured."""
    start = time.perf_counter()
    quantizer = int8.quantizer
    assert quantizer is not None and plain.artifact is not None
    model = onnx.load(plain.artifact)
    parts, nodes = quantized_parts(model), quantized_nodes(model)
    labels = node_labels(onnx.load(str(int8.onnx_path)))
    progress(f"{variant}: INT8 is over budget; searching which of its {len(parts)} quantized tensors to keep in float")
    probe_runs = SensitivityProbe(quantizer, quantizer.feeds[:SENSITIVITY_BATCHES], work, scorer)
    chosen: list[QuantPart] = []
    record: dict = {"quantized_nodes": len(nodes), "quantized_tensors": len(parts), "steps": []}
    limit = max(1, int(len(nodes) * MAX_FLOAT_SHARE))
    ranked: list[QuantPart] = []
    found: list[Candidate] = []

    def floating() -> tuple[str, ...]:
        return tuple(dict.fromkeys(n for part in chosen for n in part.nodes))

    while len(chosen) < len(parts):
        if len(chosen) < GREEDY_STEPS:
            rest = [p for p in parts if p not in chosen]
            if not rest:
                break
            gains = probe_runs.gains(rest, floating(), progress)
            ranked = sorted(rest, key=lambda p: gains[p.tensor], reverse=True)
            added = [ranked[0]]
            metric_gain, db_gain = gains[ranked[0].tensor]
            step: dict = {"probe_metric_gain": round(metric_gain, 4) if scorer else None, "gain_db": round(db_gain, 3)}
        else:
            added = [p for p in ranked if p not in chosen][: max(1, len(chosen) // 2)]
            step = {"probe_metric_gain": None, "gain_db": None}
            if not added:
                break
        chosen += added
        step["added"] = [{"tensor": p.tensor, "nodes": [labels.get(n, n) for n in p.nodes]} for p in added]
        keep = floating()
        last = len(keep) >= limit or len(chosen) == len(parts)
        path = work / f"{variant}-int8-float{len(chosen)}.onnx"
        quantize_onnx(int8.onnx_path, path, data, given=given, exclude=keep, quantizer=quantizer)
        names = [labels.get(n, n) for n in keep]
        probe = Candidate(variant, "onnxruntime", "int8", str(path), scheme="mixed", float_nodes=names)
        score_candidate(probe)
        judge(probe)
        record["steps"].append({**step, "float_nodes": len(keep), "metric": probe.metric, "status": probe.status})
        if probe.status == "over budget" and not last:
            probe.runtimes.clear()
            continue
        found.append(probe)
        if probe.status == "ok" and ("openvino", "int8") in pairs:
            twin = Candidate(variant, "openvino", "int8", str(path), scheme="mixed", float_nodes=names)
            score_candidate(twin)
            judge(twin)
            found.append(twin)
        if probe.status == "over budget":
            probe.reason += f"; the most mixed model tried ({len(keep)} of {len(nodes)} nodes in float)"
        break
    record["seconds"] = round(time.perf_counter() - start, 1)
    within = bool(found) and found[0].status == "ok"
    record["float_nodes"] = found[0].float_nodes if within else None
    record["float_onnx_nodes"] = list(floating()) if within else None  # the graph's own names: to rebuild it
    return found, record
