"""The trainer's extras, called at four fixed points: train start, step end, epoch end, train end.

Order matters at epoch end: EvalHook makes the epoch's record, CheckpointHook saves it with the
weights, MetricsFileHook appends it to metrics.csv / metrics.jsonl, ProgressHook prints it.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib
import io
import json
import os
import sys
import time

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from parvis.config import config_to_dict
from parvis.engine.recipe import Choice as _Choice
from parvis.errors import ParvisError
from parvis.io import atomic_write_text


class Hook:
    def on_train_start(self, trainer) -> None: ...

    def on_step_end(self, trainer, loss: torch.Tensor, images: int) -> None: ...

    def on_epoch_end(self, trainer) -> None: ...

    def on_train_end(self, trainer) -> None: ...


class EvalHook(Hook):
    """Evaluate every `eval_every` epochs (and at the end) and append the epoch's record to history."""

    def on_train_start(self, trainer) -> None:
        self._reset(trainer)

    def _reset(self, trainer) -> None:
        self.loss_sum = torch.zeros((), device=trainer.device)
        self.steps, self.images, self.t0 = 0, 0, time.perf_counter()

    def on_step_end(self, trainer, loss, images) -> None:
        self.loss_sum += loss.float()  # stays on the device: no sync per step
        self.steps += 1
        self.images += images

    def on_epoch_end(self, trainer) -> None:
        cfg = trainer.cfg
        last = trainer.epoch >= cfg.epochs or trainer._done()
        seconds = time.perf_counter() - self.t0
        record = {
            "epoch": trainer.epoch,
            "step": trainer.step,
            "lr": trainer.optimizer.param_groups[0]["lr"],
            "train_loss": float(self.loss_sum / max(1, self.steps)),
            "train_img_s": self.images * trainer.dist.world_size / seconds if seconds > 0 else 0.0,
            "train_data_wait": trainer.train_stats.wait_fraction,
            "train_skipped": trainer.train_stats.skipped,
            # training seconds since the run began, evaluation excluded (a learning curve's x axis)
            "train_s": (trainer.history[-1].get("train_s", 0.0) if trainer.history else 0.0) + seconds,
        }
        if trainer.epoch % cfg.eval_every == 0 or last:
            record.update({f"val_{k}": v for k, v in trainer.evaluate().items()})
        trainer.history.append(record)
        self._reset(trainer)


class CheckpointHook(Hook):
    """last.pt every epoch, best.pt when the monitored validation metric improves (rank 0 writes)."""

    def on_epoch_end(self, trainer) -> None:
        state = trainer.state_dict()  # a collective under FSDP: every rank takes part
        if not trainer.dist.is_main:
            return
        metrics = _latest_with(trainer.history, f"val_{trainer.monitor}")
        trainer.checkpoints.save(state, {trainer.monitor: metrics.get(f"val_{trainer.monitor}", float("nan"))})


def _latest_with(history: list[dict], key: str) -> dict:
    for record in reversed(history):
        if key in record:
            return record
    return {}


class MetricsFileHook(Hook):
    """metrics.jsonl and metrics.csv in the run folder, rewritten atomically after every epoch."""

    def on_epoch_end(self, trainer) -> None:
        if not trainer.dist.is_main:
            return
        history = trainer.history
        atomic_write_text(trainer.out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))
        keys: list[str] = []
        for record in history:
            keys += [k for k in record if k not in keys]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)
        atomic_write_text(trainer.out / "metrics.csv", buf.getvalue())


class ProgressHook(Hook):
    """A rich progress bar (images/s, data wait, loss, ETA) on a terminal; plain lines otherwise."""

    def __init__(self, quiet: bool = False, every: int = 10):
        self.quiet = quiet
        self.every = every
        self.progress = None

    def on_train_start(self, trainer) -> None:
        if self.quiet or not trainer.dist.is_main:
            self.quiet = True
            return
        cfg = trainer.cfg
        self.console = Console(stderr=False)
        print(
            f"train {cfg.model} ({_what(trainer.meta)}) on {trainer.device} "
            f"x{trainer.dist.world_size}: precision {trainer.precision.name} ({trainer.precision.reason}), "
            f"{'channels-last' if trainer.memory_format == torch.channels_last else 'contiguous'}, "
            f"batch {cfg.batch}x{cfg.grad_accum}, {getattr(trainer.train_loader, 'num_workers', 0)} loader workers, "
            f"{trainer.total_steps} steps -> {trainer.out}",
            flush=True,
        )
        if self.console.is_terminal:
            self.progress = Progress(
                TextColumn("epoch {task.fields[epoch]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"),
                TimeRemainingColumn(),
                console=self.console,
                transient=True,
            )
            self.progress.start()
            self.task = self.progress.add_task(
                "train", total=trainer.total_steps, completed=trainer.step, epoch=trainer.epoch + 1, stats=""
            )
        self.t0, self.images = time.perf_counter(), 0

    def on_step_end(self, trainer, loss, images) -> None:
        if self.quiet:
            return
        self.images += images
        if trainer.step % self.every:
            return
        rate = self.images / max(1e-9, time.perf_counter() - self.t0)
        wait = trainer.train_stats.wait_fraction * 100
        stats = f"loss {loss.item():.4f}  {rate:,.0f} img/s  data wait {wait:.0f}%"  # .item(): a sync point
        if self.progress is not None:
            self.progress.update(self.task, completed=trainer.step, epoch=trainer.epoch + 1, stats=stats)
        else:
            print(f"epoch {trainer.epoch + 1} step {trainer.step}/{trainer.total_steps}  {stats}", flush=True)

    def on_epoch_end(self, trainer) -> None:
        if self.quiet or not trainer.history:
            return
        r = trainer.history[-1]
        parts = [
            f"epoch {r['epoch']}/{trainer.cfg.epochs}",
            f"train loss {r['train_loss']:.4f}",
            f"{r['train_img_s']:,.0f} img/s",
            f"data wait {r['train_data_wait'] * 100:.0f}%",
        ]
        for key in (
            "val_top1",
            "val_top5",
            "val_miou",
            "val_pixel_acc",
            "val_map50",
            "val_map",
            "val_epe",
            "val_bad3",
            "val_plane_acc",
            "val_image_auroc",
            "val_pixel_auroc",
            "val_pro",
            "val_loss",
            "val_ema_top1",
            "val_ema_miou",
            "val_ema_map50",
        ):
            if key in r:
                parts.append(f"{key[4:]} {r[key]:.4f}")
        line = "  ".join(parts)
        if self.progress is not None:
            self.progress.console.print(line)
        else:
            print(line, flush=True)
        sys.stdout.flush()
        self.t0, self.images = time.perf_counter(), 0

    def on_train_end(self, trainer) -> None:
        if self.progress is not None:
            self.progress.stop()


class TimeBudgetHook(Hook):
    """`time=5m`: plan the epochs that fit the budget from measured speed, not from a guess.

    After the first `probe` optimizer steps (the first two, which pay for worker start-up, are not
    timed) it sets the epochs from seconds per step plus an evaluation estimate; after the first epoch
    it re-plans once from that epoch's wall time (training, evaluation, checkpoint), and after later
    epochs it drops epochs when the machine has slowed so that the rest no longer fits. An epoch longer
    than the whole budget becomes a step limit instead. Either way the cosine horizon follows, and
    each plan is printed as an `auto: epochs` line. Under torchrun rank 0's clock decides for every rank.
    """

    def __init__(self, budget_s: float, quiet: bool = False, probe: int = 20):
        self.budget_s, self.quiet, self.probe = budget_s, quiet, probe

    def on_train_start(self, trainer) -> None:
        self.t0 = time.perf_counter()
        self.probe = max(3, min(self.probe, trainer.steps_per_epoch))
        self.t_probe = None
        self.replanned = False

    def _apply(self, trainer, plan: tuple[int, int | None, str] | None) -> None:
        """Rank 0's plan (epochs, step limit or None, reason) on every rank: a rank with a plan of its own
        would run a different number of collective steps and hang the others."""
        if trainer.dist.world_size > 1 and torch.distributed.is_initialized():
            box = [plan]
            torch.distributed.broadcast_object_list(box, src=0)
            plan = box[0]
        if plan is None:
            return
        epochs, max_steps, reason = plan
        if max_steps is not None:
            trainer.cfg = dataclasses.replace(trainer.cfg, max_steps=max_steps)
        trainer.choices = [c for c in trainer.choices if c.key != "epochs"]
        trainer.choices.append(_Choice("epochs", epochs, reason + f"; fits time={trainer.cfg.time}"))
        trainer.set_epochs(epochs)
        if not self.quiet:
            print(f"auto: epochs {epochs} ({reason}; fits time={trainer.cfg.time})", flush=True)

    def on_step_end(self, trainer, loss, images) -> None:
        self.t_step = time.perf_counter()
        if trainer.step == 2:
            self.t_probe = time.perf_counter()
        if trainer.step != self.probe or self.t_probe is None:
            return
        now = time.perf_counter()
        per_step = (now - self.t_probe) / (self.probe - 2)
        self.per_step = per_step
        val_batches = len(trainer.val_loader) if trainer.val_loader is not None else 0
        self.eval_s = eval_s = val_batches * per_step * 0.4  # a forward pass is about a third of a training step
        # Evaluation every `eval_every` epochs and always after the last: its share per epoch, plus one
        # held back for the end when epochs without it exist.
        every = max(1, int(trainer.cfg.eval_every))
        epoch_s = trainer.steps_per_epoch * per_step + eval_s / every
        remaining = self.budget_s - (now - self.t0) - (eval_s if every > 1 else 0)
        first_eval = eval_s if every == 1 else 0.0
        rest_of_first = (trainer.steps_per_epoch - trainer.step) * per_step + first_eval
        if rest_of_first > remaining:  # not even one epoch fits: stop after the steps that do
            steps = trainer.step + max(1, int((remaining - eval_s) / per_step))
            plan = (1, steps, f"{per_step:.2f} s per step measured: {steps} steps, less than one epoch")
        else:
            epochs = 1 + int((remaining - rest_of_first) / epoch_s)
            plan = (epochs, None, f"{epoch_s:.1f} s per epoch measured over steps 3-{self.probe}")
        self._apply(trainer, plan)

    def on_epoch_end(self, trainer) -> None:
        if trainer.cfg.max_steps or not hasattr(self, "per_step"):
            return
        if self.replanned:
            self._apply(trainer, self._shorten_if_late(trainer))
            return
        if trainer.epoch != 1:
            return
        self.replanned = True
        now = time.perf_counter()
        self.t_epoch1 = now
        # An epoch from here on: its steps at the measured pace, plus what this one spent after its last
        # step (evaluation, checkpoint); the first epoch's worker start-up is not repeated. When epoch 1
        # did not evaluate, evaluation's share per epoch and one final evaluation are added.
        every = max(1, int(trainer.cfg.eval_every))
        epoch_s = trainer.steps_per_epoch * self.per_step + (now - self.t_step)
        remaining = self.budget_s - (now - self.t0)
        if every > 1:
            epoch_s += self.eval_s / every
            remaining -= self.eval_s
        epochs = 1 + max(0, int(remaining / epoch_s))
        reason = f"re-planned after epoch 1: {epoch_s:.1f} s per epoch with evaluation"
        self._apply(trainer, (epochs, None, reason) if epochs != trainer.cfg.epochs else None)

    def _shorten_if_late(self, trainer) -> tuple[int, None, str] | None:
        """A machine that slows down mid-run (shared cores) would overrun the plan: from the epochs since the
        first one, when the rest no longer fits, drop epochs (at least one more is kept, which evaluates)."""
        done, left = trainer.epoch - 1, trainer.cfg.epochs - trainer.epoch
        if done < 1 or left < 2:
            return None
        now = time.perf_counter()
        per_epoch = (now - self.t_epoch1) / done
        remaining = self.budget_s - (now - self.t0)
        if left * per_epoch <= remaining * 1.02:
            return None
        epochs = trainer.epoch + max(1, int(remaining / per_epoch))
        reason = f"re-planned after epoch {trainer.epoch}: {per_epoch:.1f} s per epoch lately"
        return (epochs, None, reason) if epochs < trainer.cfg.epochs else None


LOGGERS = ("files", "tensorboard", "mlflow")


def parse_loggers(spec: str) -> list[str]:
    """`log=tensorboard,mlflow` -> the names, checked; `files` (metrics.csv / .jsonl) is always on."""
    names = [name.strip() for name in str(spec).split(",") if name.strip()]
    for name in names:
        if name not in LOGGERS:
            raise ParvisError(f"log={spec}: {name!r} is unknown; choose from {', '.join(LOGGERS)} (comma-separated)")
    return names


def logger_hooks(spec: str) -> list[Hook]:
    """The hooks `log=` asks for; an uninstalled one fails here, before any training."""
    hooks: list[Hook] = []
    for name in parse_loggers(spec):
        if name == "tensorboard":
            hooks.append(TensorBoardHook())
        elif name == "mlflow":
            hooks.append(MLflowHook())
    return hooks


def _require_module(module: str, package: str, key: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ParvisError(f"log={key} needs {package}, which is not installed; pip install {package}") from None


def run_params(trainer) -> dict[str, str]:
    """The resolved config and the `auto` choices as flat string parameters."""
    params = {k: str(v) for k, v in config_to_dict(trainer.cfg).items()}
    params.update({f"auto.{c.key}": c.reason for c in trainer.choices})
    return params


def epoch_metrics(record: dict) -> dict[str, float]:
    return {k: float(v) for k, v in record.items() if isinstance(v, (int, float)) and k not in ("epoch",)}


class TensorBoardHook(Hook):
    """Scalars per epoch (losses, metrics, lr, img/s) and the config as text, in RUN/tensorboard."""

    def __init__(self):
        self.writer = None
        _require_module("tensorboard", "tensorboard", "tensorboard")

    def on_train_start(self, trainer) -> None:
        if not trainer.dist.is_main:
            return
        from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415 - tensorboard is optional

        self.writer = SummaryWriter(str(trainer.out / "tensorboard"))
        table = "\n".join(f"| {k} | {v} |" for k, v in run_params(trainer).items())
        self.writer.add_text("config", "| key | value |\n|---|---|\n" + table, trainer.step)

    def on_epoch_end(self, trainer) -> None:
        if self.writer is None or not trainer.history:
            return
        for key, value in epoch_metrics(trainer.history[-1]).items():
            self.writer.add_scalar(key.replace("_", "/", 1), value, trainer.epoch)
        self.writer.flush()

    def on_train_end(self, trainer) -> None:
        if self.writer is not None:
            self.writer.close()


class MLflowHook(Hook):
    """One MLflow run per training run: the config and `auto` choices as parameters, every epoch's
    record as metrics (step = epoch), best.pt's path as a tag. Tracking goes where MLFLOW_TRACKING_URI
    points, else to RUN/mlruns (MLflow's file store, allowed with MLFLOW_ALLOW_FILE_STORE)."""

    def __init__(self):
        self.mlflow = _require_module("mlflow", "mlflow-skinny", "mlflow")
        self.active = False

    def on_train_start(self, trainer) -> None:
        if not trainer.dist.is_main:
            return
        mlflow = self.mlflow
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            # The run folder's own file store. MLflow keeps that backend in maintenance mode and refuses
            # it unless allowed; a database or a server is one MLFLOW_TRACKING_URI away.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            mlflow.set_tracking_uri((trainer.out / "mlruns").resolve().as_uri())
        if mlflow.get_experiment_by_name("parvis") is None:  # created quietly (set_experiment logs it)
            mlflow.create_experiment("parvis")
        mlflow.set_experiment("parvis")
        mlflow.start_run(run_name=trainer.out.name)
        self.active = True
        params = run_params(trainer)
        mlflow.log_params({k: v[:500] for k, v in params.items()})

    def on_epoch_end(self, trainer) -> None:
        if self.active and trainer.history:
            self.mlflow.log_metrics(epoch_metrics(trainer.history[-1]), step=trainer.epoch)

    def on_train_end(self, trainer) -> None:
        if self.active:
            self.mlflow.set_tag("checkpoint", str(trainer.out / "best.pt"))
            self.mlflow.end_run()
            self.active = False


def _what(meta) -> str:
    """'classification, 5 classes' or, for stereo, its disparity range."""
    if meta.task == "stereo":
        return f"stereo, disparity 0..{meta.extra.get('max_disp', '?')} px"
    return f"{meta.task}, {meta.num_classes} classes"
