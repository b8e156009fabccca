#!/usr/bin/env bash
# Training benchmarks of the training issue, on this machine, written to benchmarks/results/.
#   1. parvis bench train resnet18 at 224 px, batch 32: every precision x layout and auto vs fp32
#   2. parvis bench train unet_resnet18 at 128 px, batch 16, with the real loader (end to end vs model only)
#   3. the same for the demo's segmenter: unet_small at 64 px, batch 16
# Usage: make setup && bash benchmarks/run_train.sh   (about 3 minutes on 2 cores)
source "$(dirname "$0")/common.sh"
$PY -m parvis bench train resnet18 --size 224 --batch 32 --steps 3 --rounds 2 \
    --json "$RES/bench-train-resnet18-224-$TAG.json" | tee "$RES/bench-train-resnet18-224-$TAG.txt"
$PY -m parvis data synth --out "$WORK/shapes" --n 1000 --size 256
$PY -m parvis bench train unet_resnet18 --size 128 --batch 16 --steps 6 --rounds 1 --data "$WORK/shapes" \
    --json "$RES/bench-train-unet_resnet18-128-$TAG.json" | tee "$RES/bench-train-unet_resnet18-128-$TAG.txt"
$PY -m parvis bench train unet_small --size 64 --batch 16 --steps 20 --rounds 2 --data "$WORK/shapes" \
    --json "$RES/bench-train-unet_small-64-$TAG.json" | tee "$RES/bench-train-unet_small-64-$TAG.txt"
rm -rf "$WORK"
