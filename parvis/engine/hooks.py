"""The trainer's extras, called at four fixed points: train start, step end, epoch end, train end.

Order matters at epoch end: EvalHook makes the epoch's record, CheckpointHook saves it with the
weights, MetricsFileHook appends it to metrics.csv / metrics.jsonl, ProgressHook prints it.
"""

from __future__ import annotations

import csv
import io
import json
import sys
import time

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

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
            f"train {cfg.model} ({trainer.meta.task}, {trainer.meta.num_classes} classes) on {trainer.device} "
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
