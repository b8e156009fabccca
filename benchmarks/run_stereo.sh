#!/usr/bin/env bash
# Stereo benchmarks of the stereo issue, on this machine, written to benchmarks/results/:
#   1. the synthetic stereo set (2000 pairs at 256x128, max disparity 48) and its data check
#   2. parvis train --task stereo with recipe=auto and a 10 minute budget (the default model, stereonet_small)
#   3. parvis bench stereo: OpenCV StereoSGBM vs the trained model on the whole val split (EPE, bad-3, D1,
#      ms per pair, and ms per proximity plane of the plane head), same pairs, resolution and threads
#   4. parvis optimize with an EPE budget of 0.1 px, and the chosen artifact served over HTTP on one pair
# Usage: bash benchmarks/run_stereo.sh   (about 15 minutes on 2 cores; needs opencv-python-headless)
source "$(dirname "$0")/common.sh"
DATA=${DATA:-data/stereo}
RUN=${RUN:-runs/stereo}
if [ ! -f "$DATA/dataset.yaml" ]; then
    $PY -m parvis data synth --task stereo --out "$DATA" --n 2000 --seed 0
fi
$PY -m parvis data check "$DATA" > /dev/null
if [ ! -f "$RUN/best.pt" ]; then
    start=$SECONDS
    $PY -m parvis train --task stereo --data "$DATA" --time 10m --out "$RUN" | tee "$RES/train-stereo-$TAG.txt"
    echo "train wall time (process start to exit): $((SECONDS - start)) s" | tee -a "$RES/train-stereo-$TAG.txt"
fi
$PY -m parvis bench stereo "$RUN/best.pt" --data "$DATA" --json "$RES/stereo-bench-$TAG.json" \
    | tee "$RES/stereo-bench-$TAG.txt"
rm -rf "$RUN-optimize"
$PY -m parvis optimize "$RUN/best.pt" --data "$DATA" --budget 0.1 --batch 1 --out "$RUN-optimize" \
    | tee "$RES/optimize-stereo-$TAG.txt"
cp "$RUN-optimize/optimize.json" "$RES/optimize-stereo-$TAG.json"
$PY benchmarks/stereo_serve_check.py "$RUN-optimize" "$DATA" | tee "$RES/serve-stereo-$TAG.txt"
