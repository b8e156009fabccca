#!/usr/bin/env bash
# Video benchmarks of the video issue, on this machine, written to benchmarks/results/.
#   1. the shapes detector (configs/detection.yaml with the explicit recipe these results were measured
#      with: 5 epochs, AdamW 3e-3, warmup 0.3 epochs) if runs/detection has none
#   2. 4 synthetic clips of 150 frames at 320x240 with ground-truth tracks (parvis data synth --task video)
#   3. parvis video on the 4 clips (aggregate fps, MOTA against the ground truth)
#   4. parvis bench video: streams 1, 2, 4 x batch 1 and the stream count, vs model-only, the
#      CPU-sharing ceiling and a sequential peer loop (supervision's ByteTrack: pip install ".[peers]")
# Usage: make demo (for data/shapes) && bash benchmarks/run_video.sh   (about 8 minutes with training)
source "$(dirname "$0")/common.sh"
DATA=${DATA:-data/shapes}
MODEL=${MODEL:-runs/detection/best.pt}
if [ ! -f "$MODEL" ]; then
    $PY -m parvis train --config configs/detection.yaml --data "$DATA" --out runs/detection --quiet \
        epochs=5 lr=0.003 warmup_epochs=0.3
fi
$PY -m parvis eval "$MODEL" --data "$DATA" --json "$RES/eval-detection-$TAG.json" | tee "$RES/eval-detection-$TAG.txt"
rm -rf "$WORK/video"
$PY -m parvis data synth --task video --out "$WORK/video" --n 4 --frames 150 --size 320x240
$PY -m parvis video "$WORK"/video/clips/*.mp4 --model "$MODEL" --out "$WORK/video-out" --batch 4 \
    | tee "$RES/video-4streams-$TAG.txt"
cp "$WORK/video-out/summary.json" "$RES/video-4streams-summary-$TAG.json"
$PY -m parvis bench video "$MODEL" --streams 1,2,4 --clips "$WORK/video" \
    --json "$RES/bench-video-centernet_small-$TAG.json" | tee "$RES/bench-video-centernet_small-$TAG.txt"
