#!/usr/bin/env bash
# GPU readiness in one command: every `cuda`-marked test and a short run of each GPU path parvis has, on
# the first visible GPU, in a few minutes. Writes benchmarks/results/gpu-check-<tag>.{md,json} (one row per
# step: status, seconds, the last line it printed) and exits non-zero when any step failed.
# Without a CUDA GPU it says so and exits 0 (nothing to check).
#   bash benchmarks/gpu_check.sh            (STEP_TIMEOUT=300 per step by default)
source "$(dirname "$0")/common.sh"
if ! $PY -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_check: no CUDA GPU visible to torch (torch.cuda.is_available() is False): nothing to check; skipped"
    exit 0
fi
STEP_TIMEOUT=${STEP_TIMEOUT:-300}
GPU_TAG="$($PY -c 'import torch; print(torch.cuda.get_device_name(0).replace(" ", "_"))')-pt${TORCH}"
LOG="$WORK/steps.jsonl"
: > "$LOG"
P="$PY -m parvis"

step() {  # step NAME COMMAND...: run with a time limit, record status, seconds and the last output line
    local name=$1
    shift
    local start=$SECONDS status=ok
    echo "== $name: $*"
    if declare -F "$1" > /dev/null; then  # a shell function bounds its own waits
        if ! "$@" > "$WORK/$name.out" 2>&1; then status=FAILED; fi
    elif ! timeout "$STEP_TIMEOUT" "$@" > "$WORK/$name.out" 2>&1; then
        status=FAILED
    fi
    tail -n 3 "$WORK/$name.out"
    $PY - "$name" "$status" "$((SECONDS - start))" "$WORK/$name.out" "$*" >> "$LOG" <<'EOF'
import json, sys
name, status, seconds, out, cmd = sys.argv[1:]
lines = [l for l in open(out, errors="replace").read().splitlines() if l.strip()]
print(json.dumps({"step": name, "status": status, "seconds": int(seconds), "command": cmd, "last": lines[-1][:200] if lines else ""}))
EOF
}

# Small data for the paths below.
$P data synth --out "$WORK/shapes" --n 400 --size 128 > /dev/null
$P data synth --task video --out "$WORK/video" --n 2 --frames 60 > /dev/null
$P train --task classification --model convnet_small --data "$WORK/shapes" --epochs 1 --size 64 --device cuda \
    --out "$WORK/cls" --quiet > /dev/null

step cuda_tests $PY -m pytest -q -m cuda
step doctor $P doctor
step train_precisions $P bench train resnet18 --size 128 --batch 32 --steps 5 --rounds 1 --device cuda \
    --data "$WORK/shapes" --json "$WORK/bench-train.json"
step train_fp16_gradscaler $P train --task classification --model resnet18 --data "$WORK/shapes" --epochs 1 \
    --size 64 --device cuda --precision fp16 --out "$WORK/fp16" --quiet
# NCCL DDP needs a GPU per rank (NCCL refuses two ranks on one GPU); a world of one forms no process group,
# so with one GPU this step checks only that a torchrun-launched run trains on it.
GPUS=$($PY -c "import torch; print(torch.cuda.device_count())")
if [ "$GPUS" -ge 2 ]; then
    step ddp_nccl_2_gpus $P train --task classification --model convnet_small --data "$WORK/shapes" --epochs 1 \
        --size 64 --device cuda --nproc 2 --out "$WORK/ddp" --quiet
else
    step torchrun_one_process_no_ddp $PY -m torch.distributed.run --standalone --nproc-per-node 1 -m parvis train \
        --task classification --model convnet_small --data "$WORK/shapes" --epochs 1 --size 64 --device cuda \
        --out "$WORK/ddp" --quiet
fi
step runtimes $P bench runtime "$WORK/cls/best.pt" --device cuda --rounds 1 --json "$WORK/bench-runtime.json"
step optimize $P optimize "$WORK/cls/best.pt" --data "$WORK/shapes" --device cuda --rounds 1 --calib 32 \
    --out "$WORK/optimize"
step predict_gpu $P predict "$WORK/cls/best.pt" "$WORK/shapes/classification/val" --device cuda \
    --out "$WORK/predict" --no-overlays
serve_gpu() {  # parvis serve on the GPU: ready, one image answered (HTTP 200), stopped
    $P serve "$WORK/cls/best.pt" --device cuda --port 8765 > "$WORK/serve.log" 2>&1 &
    local pid=$! ok=1 image
    image=$(ls "$WORK"/shapes/images/val/*.jpg | head -1)
    for _ in $(seq 120); do curl -sf localhost:8765/readyz > /dev/null && ok=0 && break; sleep 1; done
    if [ $ok = 0 ]; then
        curl -sf -X POST --data-binary "@$image" -H "Content-Type: image/jpeg" localhost:8765/v1/models/best/predict
        ok=$?
    fi
    kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
    return $ok
}
step serve_gpu serve_gpu
step video_gpu $P video "$WORK"/video/*.mp4 --model "$WORK/cls/best.pt" --device cuda --no-video --out "$WORK/video-out"
partition_mps() {  # bench partition needs MIG instances or an MPS daemon: start one for the step if neither
    local started=1 code
    if [ ! -e "${CUDA_MPS_PIPE_DIRECTORY:-/tmp/nvidia-mps}/control" ] && command -v nvidia-cuda-mps-control > /dev/null; then
        nvidia-cuda-mps-control -d && started=0 && sleep 1
    fi
    timeout "$STEP_TIMEOUT" $P bench partition resnet18 --size 128 --device cuda --jobs 2 --seconds 3 \
        --json "$WORK/partition.json"
    code=$?
    if [ $started = 0 ]; then echo quit | nvidia-cuda-mps-control; fi
    return $code
}
step partition_mps partition_mps
step ray_fractional_gpus $P predict "$WORK/cls/best.pt" "$WORK/shapes/classification/val" --engine ray \
    --actors 2 --device cuda --out "$WORK/ray"

$PY - "$LOG" "$RES/gpu-check-$GPU_TAG" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
json.dump({"benchmark": "gpu-check", "steps": rows}, open(sys.argv[2] + ".json", "w"), indent=2)
md = ["| step | status | s | last line |", "|---|---|---|---|"]
md += [f"| {r['step']} | {r['status']} | {r['seconds']} | {r['last'].replace('|', '/')} |" for r in rows]
open(sys.argv[2] + ".md", "w").write("\n".join(md) + "\n")
print("\n".join(md))
failed = [r["step"] for r in rows if r["status"] != "ok"]
print(f"gpu_check: {len(rows) - len(failed)}/{len(rows)} steps ok" + (f"; failed: {', '.join(failed)}" if failed else ""))
sys.exit(1 if failed else 0)
EOF
