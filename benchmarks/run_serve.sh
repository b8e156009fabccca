#!/usr/bin/env bash
# Serving benchmark of the serving issue, on this machine, written to benchmarks/results/.
#   1. a resnet18 at 224 px (the 64 px shapes classifier of run_inference.sh fine-tuned 1 epoch at 224 px)
#      through `parvis optimize` (its chosen runtime is what every server below runs)
#   2. the two peers of benchmarks/serve_peers/ on that same optimize folder (Ray Serve only if installed)
#   3. `parvis bench serve --compare-batching` at concurrency 1, 8, 32, 64: batching on vs off vs peers,
#      the in-process ceiling, then a 10x open-loop overload burst and 10,000 requests in a row
# Usage: bash benchmarks/run_serve.sh   (after `TRAIN=1 bash benchmarks/run_inference.sh` made
#        runs/opt/resnet18; about 15 minutes the first time, 4 after)
source "$(dirname "$0")/common.sh"
DATA=${DATA:-data/shapes}
OPT=runs/serve/resnet18-224-optimize
if [ ! -f "$OPT/optimize.json" ]; then
    $PY -m parvis train --config configs/classification.yaml --model resnet18 --size 224 --batch 32 --epochs 1 \
        --lr 0.0003 warmup_epochs=0.1 --weights runs/opt/resnet18/best.pt --out runs/serve/resnet18-224 --quiet
    $PY -m parvis optimize runs/serve/resnet18-224/best.pt --data "$DATA" --budget 1.0 --out "$OPT" \
        --calib 64 --rounds 2 | tee "$RES/optimize-resnet18-224-$TAG.txt"
    cp "$OPT/optimize.json" "$RES/optimize-resnet18-224-$TAG.json"
fi
NAME=$(basename "$OPT")
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done; wait || true; }
trap cleanup EXIT
PEERS=(--peer "fastapi=http://127.0.0.1:8101")
$PY benchmarks/serve_peers/fastapi_peer.py "$OPT" --name "$NAME" --port 8101 & PIDS+=($!)
if $PY -c 'import ray.serve' 2>/dev/null; then
    $PY benchmarks/serve_peers/ray_peer.py "$OPT" --name "$NAME" --port 8102 --max-batch-size 32 & PIDS+=($!)
    PEERS+=(--peer "ray=http://127.0.0.1:8102")
fi
for port in 8101 8102; do
    [ "$port" = 8102 ] && [ ${#PEERS[@]} -lt 4 ] && continue
    for _ in $(seq 120); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 1; done
done
$PY -m parvis bench serve "$OPT" --compare-batching --concurrency 1,8,32,64 --requests 600 "${PEERS[@]}" \
    --burst 10 --soak 10000 --json "$RES/bench-serve-resnet18-224-$TAG.json" | tee "$RES/bench-serve-resnet18-224-$TAG.txt"
