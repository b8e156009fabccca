"""`parvis train`: a YAML recipe plus flags plus key=value overrides -> a run folder.

`--nproc N` relaunches this command under torch.distributed.run with N local processes (DDP by
default, `--strategy fsdp` for FSDP2); `torchrun ... -m parvis train ...` works directly too.
"""

from __future__ import annotations

import os

from parvis.cli.launch import add_launcher_args, relaunch_under_torchrun
from parvis.errors import ParvisError

# Flags that map 1:1 onto TrainConfig keys; only the ones the user gives override the YAML.
FLAG_KEYS = (
    "task",
    "model",
    "data",
    "epochs",
    "size",
    "batch",
    "precision",
    "device",
    "out",
    "workers",
    "strategy",
    "on_bad_sample",
    "weights",
    "weights_backbone",
    "seed",
    "lr",
    "time",
    "mode",
    "max_false_reject",
    "min_recall",
)


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a model (classification, segmentation, detection, stereo or inspection)")
    p.add_argument("--config", default=None, help="YAML recipe (e.g. configs/segmentation.yaml)")
    p.add_argument(
        "--task", choices=("classification", "segmentation", "detection", "stereo", "inspection"), default=None
    )
    p.add_argument(
        "--mode", choices=("supervised", "anomaly"), default=None,
        help="inspection: supervised (defect examples, a segmenter; default) or anomaly (good parts only, PatchCore)",
    )  # fmt: skip
    p.add_argument(
        "--max-false-reject", dest="max_false_reject", type=float, default=None,
        help="inspection: the OK/NG threshold rejects at most this share of the val split's good parts (default 0.01)",
    )  # fmt: skip
    p.add_argument(
        "--min-recall", dest="min_recall", type=float, default=None,
        help="inspection: instead, the threshold catches at least this share of the val split's defective parts",
    )  # fmt: skip
    p.add_argument(
        "--model", default=None, help="registered model name (parvis models lists them; default: the task's own)"
    )
    p.add_argument("--data", default=None, help="dataset folder")
    p.add_argument("--epochs", type=int, default=None, help="passes over the data (default: recipe=auto chooses)")
    p.add_argument("--time", default=None, help="wall-clock budget, e.g. 90s, 5m, 1h: epochs are planned to fit it")
    p.add_argument(
        "--recipe",
        default=None,
        help="auto (default: choose what is not given from the data and model, one `auto:` line each), "
        "off (the plain defaults), or a YAML FILE of keys that override auto's choices",
    )
    p.add_argument("--size", type=int, default=None, help="input size in pixels")
    p.add_argument("--batch", type=int, default=None, help="images per step per process")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--precision", default=None, help="auto|fp32|tf32|bf16|fp16 (default auto)")
    p.add_argument("--device", default=None, help="auto|cpu|cuda|cuda:N|mps")
    p.add_argument("--workers", type=int, default=None, help="loader workers per process")
    p.add_argument("--out", default=None, help="run folder (default runs/train)")
    p.add_argument("--weights", default=None, help="initialize from a local weights file (not a resume)")
    p.add_argument(
        "--weights-backbone", dest="weights_backbone", default=None, metavar="FILE",
        help="initialize only the encoder from a parvis checkpoint of a model with the same encoder "
        "(e.g. a unet_small run's best.pt for convnet_small or centernet_small); the rest starts fresh",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--on-bad-sample", dest="on_bad_sample", default=None, help="error|skip")
    p.add_argument("--strategy", default=None, help="ddp|fsdp under torchrun (default ddp)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from last.pt")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    add_launcher_args(p)
    p.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="any TrainConfig key, e.g. ema=true clip_grad=none"
    )
    p.set_defaults(func=run)


def run(args) -> int:
    from parvis.config import TrainConfig, load_config

    if args.nproc < 1:
        raise ParvisError(f"--nproc {args.nproc} must be at least 1")
    under_torchrun = "LOCAL_RANK" in os.environ
    if not under_torchrun and (args.nproc > 1 or args.nnodes or args.rdzv_endpoint):
        return relaunch_under_torchrun(args, args.argv)
    values = {k: getattr(args, k) for k in FLAG_KEYS if getattr(args, k) is not None}
    files = [args.config] if args.config else []
    if args.recipe in ("auto", "off"):
        values["recipe"] = args.recipe
    elif args.recipe is not None:
        files.append(args.recipe)  # a recipe file: its keys count as given, auto fills the rest
    cfg = load_config(TrainConfig, files, overrides=args.overrides, values=values)
    from parvis.engine.trainer import train

    record = train(cfg, resume=args.resume, quiet=args.quiet)
    if int(os.environ.get("RANK", 0)) == 0:
        names = ("val_top1", "val_top5", "val_miou", "val_pixel_acc", "val_map50", "val_map", "val_epe", "val_bad3",
                 "val_d1", "val_plane_acc", "val_image_auroc", "val_pixel_auroc", "val_pro", "val_false_reject",
                 "val_escape")  # fmt: skip
        keys = [k for k in names if k in record]
        summary = ", ".join(f"{k[4:]} {record[k]:.4f}" for k in keys)
        print(f"done: {summary}; checkpoints in {cfg.out} (last.pt, best.pt)")
    return 0
