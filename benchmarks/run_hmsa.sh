#!/usr/bin/env bash
# HMSA: train hmsa_unet_small on the shapes data (two training scales, 0.5 and 1.0), then evaluate
# the same checkpoint at one scale (1.0) and at three (0.5, 1.0, 2.0) on the validation split.
# Needs the demo's data (make demo, or: parvis data synth --out data/shapes --n 4000 --size 256).
set -euo pipefail
source "$(dirname "$0")/common.sh"
DATA=${DATA:-data/shapes}
RUN=${RUN:-runs/hmsa}
PARVIS="$PY -m parvis"
$PARVIS train --task segmentation --model hmsa_unet_small --data "$DATA" --size 64 --batch 16 --epochs 7 \
    --out "$RUN" lr=0.003 weight_decay=0.0001 warmup_epochs=0.2 crop_scale=0.6,1
$PARVIS eval "$RUN/best.pt" --data "$DATA" --scales 1.0 --json "$RES/hmsa-1scale-$TAG.json"
$PARVIS eval "$RUN/best.pt" --data "$DATA" --scales 0.5,1.0 --json "$RES/hmsa-2scale-$TAG.json"
$PARVIS eval "$RUN/best.pt" --data "$DATA" --scales 0.5,1.0,2.0 --json "$RES/hmsa-3scale-$TAG.json"
