#!/usr/bin/env bash
# INT8 detection benchmarks of the detection issue, on this machine, written to benchmarks/results/.
#   1. parvis optimize on the demo's detector (runs/demo/detection: centernet_small, 128 px) with budget 1 point
#      of mAP@0.5: the full CPU matrix, plain INT8 over budget, the mixed-precision search, NNCF's INT8
#   2. parvis's mixed INT8 vs NNCF's quantize_with_accuracy_control: same model, budget, data and clock
#      (benchmarks/int8_accuracy_control.py)
#   3. parvis bench video: the optimize folder's winner vs the bf16 checkpoint on 4 synthetic streams, fps and MOTA
# Usage: make demo && bash benchmarks/run_int8.sh   (about 10 minutes; needs pip install ".[int8]")
source "$(dirname "$0")/common.sh"
DATA=${DATA:-data/shapes}
MODEL=${MODEL:-runs/demo/detection/best.pt}
OPT=${OPT:-runs/demo/optimize-detection}
rm -rf "$OPT"
$PY -m parvis optimize "$MODEL" --data "$DATA" --budget 1.0 --out "$OPT" | tee "$RES/optimize-detection-$TAG.txt"
cp "$OPT/optimize.json" "$RES/optimize-detection-$TAG.json"
$PY benchmarks/int8_accuracy_control.py "$MODEL" "$DATA" --budget 1.0
rm -rf "$WORK/video"
$PY -m parvis data synth --task video --out "$WORK/video" --n 4 --frames 150 --size 320x240
$PY -m parvis bench video "$OPT" --versus "$MODEL" --streams 4 --batch 4 --clips "$WORK/video" \
    --json "$RES/bench-video-int8-centernet_small-$TAG.json" | tee "$RES/bench-video-int8-centernet_small-$TAG.txt"
