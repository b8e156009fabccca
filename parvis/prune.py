"""Structured (channel) pruning of a trained checkpoint with Torch-Pruning, then a short fine-tune.

Channels are really removed: Torch-Pruning's dependency graph finds every layer tied to a channel
(residual additions, skip concatenations, BatchNorm, depthwise convolutions) and slices them
together, so the pruned model is a smaller dense model that every runtime runs faster, not a masked
one. The layers whose channels reach the model's output (the classifier, the segmentation head, an
HMSA attention head) are found in the graph and left whole, so the classes do not change.

Scope: uniform by default, each prunable group loses the same `ratio` of its channels ranked by L2
magnitude, so the cost falls predictably (MACs and parameters to about (1 - ratio)^2) and no layer
becomes a bottleneck. Global ranking (`scope="global"`) compares magnitudes across layers whose scales
differ after training, so the share it removes varies by architecture; it is there to try, not the
default.

A pruned model no longer matches its registered architecture, so its checkpoint carries the changed
layer attributes under "pruned" (plain values only: weights_only loading keeps working) and
`parvis.engine.predict.load_trained` rebuilds the registered model and reshapes it before loading the
weights: eval, export, the runtimes and bench take a pruned checkpoint like any other.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import tempfile
import warnings
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
import torch_pruning as tp
from torch import nn

from parvis import runtime
from parvis.config import TrainConfig, config_to_dict, load_config
from parvis.data.check import open_dataset
from parvis.engine.checkpoint import load_checkpoint, save_checkpoint
from parvis.engine.evaluate import _unwrap, evaluate_checkpoint
from parvis.engine.hooks import EvalHook, ProgressHook
from parvis.engine.loading import load_trained
from parvis.engine.trainer import build_trainer
from parvis.errors import ParvisError
from parvis.io import atomic_write_text
from parvis.models import VisionModel
from parvis.models.build import build_from_meta

SCOPES = ("uniform", "global")
CHECKPOINT_NAME = "pruned.pt"
REPORT_NAME = "prune.json"
# Global ranking may empty a layer it finds unimportant; keep at least a tenth of every group.
MAX_GLOBAL_RATIO = 0.9
# Plain attribute types a pruned layer may change (ints for channels, tuples for LayerNorm shapes).
_STRUCTURE_TYPES = (int, float, bool, str, tuple, type(None))


METRIC_NAMES = {"classification": "top1", "segmentation": "miou", "detection": "map50"}


def metric_name(task: str) -> str:
    """The validation metric a pruned model is reported on (detection: COCO mAP@0.5)."""
    return METRIC_NAMES[task]


def output_layers(graph) -> list[nn.Module]:
    """Convolutions and linear layers whose output channels reach the model's output.

    From each layer, follow the traced graph forward through channel-preserving operations (norms,
    activations, additions, concatenations, interpolation, depthwise convolutions); a layer whose
    channels arrive at the output without passing another channel-mixing layer makes output channels.
    """
    found = []
    for module, node in graph.module2node.items():
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        stack, seen = list(node.outputs), set()
        reaches_output = not node.outputs
        while stack and not reaches_output:
            nxt = stack.pop()
            if id(nxt) in seen:
                continue
            seen.add(id(nxt))
            m = nxt.module
            if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups != m.in_channels):
                continue  # mixes channels: what lies behind it does not see this layer's channels
            reaches_output = not nxt.outputs
            stack.extend(nxt.outputs)
        if reaches_output:
            found.append(module)
    return found


def prune_model(model: VisionModel, ratio: float, scope: str = "uniform", round_to: int | None = None) -> VisionModel:
    """Remove `ratio` of the channels of `model` in place (CPU, fp32, eval mode); returns it."""
    check_options(ratio, scope, round_to)
    model = model.float().to("cpu", memory_format=torch.contiguous_format).eval()
    size = model.meta.input_size
    example = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(example).shape
    with warnings.catch_warnings():
        # Torch-Pruning warns when it finds parameters outside conv/linear/norm layers (ConvNeXt's
        # layer scale) and prunes their channel dimension, which is what these models need.
        warnings.filterwarnings("ignore", module="torch_pruning")
        heads = output_layers(tp.DependencyGraph().build_dependency(model, example_inputs=example))
        pruner = tp.pruner.MetaPruner(
            model,
            example,
            importance=tp.importance.MagnitudeImportance(p=2),
            pruning_ratio=ratio,
            global_pruning=scope == "global",
            max_pruning_ratio=MAX_GLOBAL_RATIO if scope == "global" else 1.0,
            ignored_layers=heads,
            round_to=round_to,
        )
        pruner.step()
    with torch.no_grad():
        got = model(example).shape
    if got != expected:  # the output layers were found wrongly; a model with other classes is no use
        raise ParvisError(f"pruning {model.meta.name} changed its output from {tuple(expected)} to {tuple(got)}")
    return model


def pruned_structure(model: VisionModel) -> dict[str, dict]:
    """{module name: {attribute: value}} where `model`'s layers differ from its registered architecture."""
    fresh = dict(build_from_meta(model.meta).named_modules())
    structure: dict[str, dict] = {}
    for name, module in model.named_modules():
        reference = vars(fresh[name])
        changed = {
            attr: value
            for attr, value in vars(module).items()
            if not attr.startswith("_")
            and attr != "training"  # train/eval mode is not structure
            and isinstance(value, _STRUCTURE_TYPES)
            and attr in reference
            and reference[attr] != value
        }
        if changed:
            structure[name] = changed
    return structure


def count_macs_params(model: nn.Module, size: int) -> tuple[int, int]:
    """Multiply-accumulates of one forward at batch 1 and `size` px, and the parameter count."""
    model = copy.deepcopy(model).float().to("cpu", memory_format=torch.contiguous_format).eval()
    with torch.no_grad():
        macs, params = tp.utils.count_ops_and_params(model, torch.zeros(1, 3, size, size))
    return int(macs), int(params)


def check_options(ratio: float, scope: str = "uniform", round_to: int | None = None) -> None:
    if not 0 < ratio < 1:
        raise ParvisError(f"--ratio {ratio}: must be between 0 and 1 (exclusive), e.g. 0.3 to remove 30% of channels")
    if scope not in SCOPES:
        raise ParvisError(f"--scope {scope!r} is unknown; choose one of {', '.join(SCOPES)}")
    if round_to is not None and round_to < 1:
        raise ParvisError(f"--round-to {round_to}: must be at least 1 (e.g. 8), or left out")


def _finetune_config(state: dict, meta, data, epochs: int, out: Path, lr: float | None, batch: int | None):
    """The checkpoint's own training recipe, shortened to `epochs` of fine-tuning."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    stored = {k: v for k, v in (state.get("config") or {}).items() if k in known}
    base = load_config(TrainConfig, values=stored)
    return dataclasses.replace(
        base,
        task=meta.task,
        model=meta.name,
        data=str(data),
        epochs=epochs,
        size=meta.input_size,
        batch=batch or base.batch,
        lr=lr or base.lr,
        warmup_epochs=min(base.warmup_epochs, 0.1 * epochs),
        eval_every=epochs,  # one evaluation, at the end
        out=str(out),
        weights=None,
        max_steps=None,
        ema=False,
        compile=False,
    )


def _finetune(model: VisionModel, cfg: TrainConfig, quiet: bool) -> tuple[VisionModel, dict]:
    trainer = build_trainer(cfg, hooks=[EvalHook(), ProgressHook(quiet)], quiet=quiet, model=model)
    try:
        record = trainer.fit()
        tuned = _unwrap(trainer.model)
    finally:
        trainer.close()
    tuned = tuned.float().to("cpu", memory_format=torch.contiguous_format).eval()
    return tuned, {"epochs": cfg.epochs, "steps": trainer.step, "lr": cfg.lr, "train_loss": record.get("train_loss")}


def _save(path: Path, model: VisionModel, pruned: dict, extra: dict) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_checkpoint(path, {"model": state, "meta": model.meta.to_dict(), "pruned": pruned, **extra})


def prune_checkpoint(
    checkpoint: str | Path,
    ratio: float,
    data: str | Path,
    epochs: int,
    out: str | Path,
    scope: str = "uniform",
    round_to: int | None = None,
    lr: float | None = None,
    batch: int | None = None,
    timer: Callable[[dict[str, str]], dict] | None = None,
    quiet: bool = True,
    progress: Callable[[str], None] = lambda _: None,
) -> dict:
    """Prune `ratio` of the channels of a trained checkpoint, fine-tune `epochs` epochs on `data`,
    and write `out/pruned.pt` and `out/prune.json` (the returned report).

    The report holds parameters, MACs (batch 1), the validation metric (top1, miou or map50) before pruning,
    right after it and after fine-tuning, and CPU timings of the source and the pruned model side by
    side: `timer` maps {"before": path, "after": path} to the report's "timing" section (e.g.
    `parvis.runtimes.time_checkpoints`, a later stage than this producer, so the caller hands it in);
    None skips timing.
    `lr` and `batch` default to the checkpoint's own recipe. Nothing is written on failure.
    """
    check_options(ratio, scope, round_to)
    if epochs < 0:
        raise ParvisError(f"--epochs {epochs}: must be 0 (no fine-tune) or more")
    out = Path(out)
    if (out / CHECKPOINT_NAME).exists():
        raise ParvisError(f"{out} already holds {CHECKPOINT_NAME}; choose another --out")
    state = load_checkpoint(checkpoint)
    cpu = torch.device("cpu")
    model = load_trained(checkpoint, cpu)
    meta, monitor = model.meta, metric_name(model.meta.task)
    val = open_dataset(data, meta.task, "val")  # a dataset without this task's layout fails here, by name
    if list(val.classes) != list(meta.class_names):
        raise ParvisError(
            f"{data}: {meta.task} classes {_few(list(val.classes))} differ from the checkpoint's "
            f"{_few(meta.class_names)}; "
            "pass the dataset the model was trained on"
        )

    progress(f"evaluating {meta.name} before pruning")
    before_metric = evaluate_checkpoint(checkpoint, data)[0][monitor]
    macs_before, params_before = count_macs_params(model, meta.input_size)

    progress(f"pruning {ratio:.0%} of the channels ({scope})")
    pruned = prune_model(copy.deepcopy(model), ratio, scope, round_to)
    structure = pruned_structure(pruned)
    info = {"ratio": ratio, "scope": scope, "importance": "l2", "round_to": round_to, "source": str(checkpoint)}
    with tempfile.TemporaryDirectory(prefix="parvis-prune-") as tmp:
        tmp = Path(tmp)
        _save(tmp / "pruned-no-finetune.pt", pruned, {**info, "modules": structure}, {})
        pruned_metric = evaluate_checkpoint(tmp / "pruned-no-finetune.pt", data)[0][monitor]
        finetune: dict = {"epochs": 0}
        cfg_dict = None
        if epochs > 0:
            progress(f"fine-tuning for {epochs} epoch(s)")
            cfg = _finetune_config(state, meta, data, epochs, tmp / "finetune", lr, batch)
            pruned, finetune = _finetune(pruned, cfg, quiet)
            cfg_dict = config_to_dict(cfg)
        _save(tmp / CHECKPOINT_NAME, pruned, {**info, "modules": structure}, {})
        progress("evaluating the pruned checkpoint")
        final_metric = evaluate_checkpoint(tmp / CHECKPOINT_NAME, data)[0][monitor]
        macs_after, params_after = count_macs_params(pruned, meta.input_size)
        timing: dict = {"device": "cpu", "threads": None, "batch": None, "rows": []}
        if timer is not None:
            progress("timing the source and the pruned model on the CPU")
            timing = timer({"before": str(checkpoint), "after": str(tmp / CHECKPOINT_NAME)})
    rows = timing["rows"]
    for row in rows:
        ref = next(r for r in rows if r["model"] == "before" and r["precision"] == row["precision"])
        row["speedup"] = row["img_s"] / ref["img_s"]
        row["latency_speedup"] = ref["latency_ms_p50"] / row["latency_ms_p50"]
    report = {
        "model": meta.name,
        "task": meta.task,
        "source": str(checkpoint),
        "checkpoint": str(out / CHECKPOINT_NAME),
        "ratio": ratio,
        "scope": scope,
        "importance": "l2 magnitude",
        "round_to": round_to,
        "input_size": meta.input_size,
        "layers_changed": len(structure),
        "metric_name": monitor,
        "metric": {"before": before_metric, "pruned": pruned_metric, "finetuned": final_metric},
        "params": {"before": params_before, "after": params_after},
        "macs": {"before": macs_before, "after": macs_after},
        "finetune": finetune,
        "timing": timing,
        **runtime.result_header(),
        "torch_pruning": _torch_pruning_version(),
    }
    # The checkpoint carries its own verification: what pruning cost in metric, measured on `data`.
    verified = {k: report[k] for k in ("metric_name", "metric", "params", "macs")}
    extra = {"config": cfg_dict} if cfg_dict else {}
    _save(out / CHECKPOINT_NAME, pruned, {**info, "modules": structure, "report": verified}, extra)
    atomic_write_text(out / REPORT_NAME, _json(report))
    return report


def _json(obj) -> str:
    return json.dumps(obj, indent=2) + "\n"


def _torch_pruning_version() -> str:
    try:
        return version("torch-pruning")
    except PackageNotFoundError:
        return "unknown"


def _few(names: list[str], n: int = 6) -> str:
    """A class list for a one-line message: the first few and how many more."""
    return str(names) if len(names) <= n else f"[{', '.join(map(repr, names[:n]))}, ... {len(names) - n} more]"
