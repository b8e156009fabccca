#!/usr/bin/env bash
# Inference benchmarks of the inference issue, on this machine, written to benchmarks/results/.
#   1. bench runtime resnet18 at 224 px, batch 32: every runtime x precision (INT8 calibrated on shapes)
#   2. bench partition / roofline / precision / scaling on resnet18 at 64 px
#   3. with the classifiers trained by `TRAIN=1` (resnet18 16 epochs, resnet50 12 epochs on data/shapes,
#      about 10 + 25 minutes): parvis optimize on each (resnet50 with a 30% channel-pruned variant) and
#      predict's decode/inference overlap with the resnet18 winner
# Usage: make demo (for data/shapes) && bash benchmarks/run_inference.sh   (about 8 minutes without TRAIN=1)
source "$(dirname "$0")/common.sh"
DATA=${DATA:-data/shapes}
$PY -m parvis bench runtime resnet18 --batch 32 --data "$DATA" --compile \
    --json "$RES/bench-runtime-resnet18-224-$TAG.json" | tee "$RES/bench-runtime-resnet18-224-$TAG.txt"
for suite in partition roofline precision scaling; do
    $PY -m parvis bench $suite resnet18 --size 64 \
        --json "$RES/bench-$suite-resnet18-64-$TAG.json" | tee "$RES/bench-$suite-resnet18-64-$TAG.txt"
done
if [ "${TRAIN:-0}" = 1 ]; then
    $PY -m parvis train --config configs/classification.yaml --model resnet18 --epochs 16 --lr 0.001 \
        --out runs/opt/resnet18 --quiet
    $PY -m parvis train --config configs/classification.yaml --model resnet50 --epochs 12 --lr 0.001 \
        --out runs/opt/resnet50 --quiet
fi
if [ -f runs/opt/resnet18/best.pt ]; then
    $PY -m parvis optimize runs/opt/resnet18/best.pt --data "$DATA" --budget 1.0 --out runs/opt/resnet18-optimize \
        | tee "$RES/optimize-resnet18-64-$TAG.txt"
    cp runs/opt/resnet18-optimize/optimize.json "$RES/optimize-resnet18-64-$TAG.json"
    $PY benchmarks/predict_overlap.py runs/opt/resnet18-optimize "$DATA/images/val" \
        --json "$RES/predict-overlap-resnet18-$TAG.json" | tee "$RES/predict-overlap-resnet18-$TAG.txt"
fi
if [ -f runs/opt/resnet50/best.pt ]; then
    $PY -m parvis optimize runs/opt/resnet50/best.pt --data "$DATA" --budget 1.0 --prune 0.3 --prune-epochs 2 \
        --out runs/opt/resnet50-optimize | tee "$RES/optimize-resnet50-64-prune0.3-$TAG.txt"
    cp runs/opt/resnet50-optimize/optimize.json "$RES/optimize-resnet50-64-prune0.3-$TAG.json"
    cp runs/opt/resnet50-optimize/pruned-0.3/prune.json "$RES/prune-resnet50-64-0.3-$TAG.json"
fi
$PY -m parvis report "$RES"/bench-*-resnet18-*"$TAG".json "$RES"/optimize-*"$TAG".json --out "$RES/report-$TAG.html"
