#!/usr/bin/env bash
# The foundation issue's measured targets, on this machine, written to benchmarks/results/.
#   1. parvis doctor's CPU matmul figures vs a plain torch.matmul loop run right after it
#   2. parvis data synth: 2,000 scenes at 128 px (wall time), then parvis data check on them
#   3. parvis bench data: 224 px crops from 256 px JPEGs, workers 0,1,2, vs torchvision ImageFolder+PIL
# Usage: make setup && bash benchmarks/run_foundation.sh   (about 3 minutes on 2 cores)
source "$(dirname "$0")/common.sh"

echo "== doctor vs plain matmul ($TAG)"
$PY benchmarks/doctor_vs_matmul.py --json "$RES/doctor-matmul-$TAG.json" | tee "$RES/doctor-matmul-$TAG.md"

echo "== synth 2000 @ 128 px"
start=$(date +%s.%N)
$PY -m parvis data synth --out "$WORK/shapes128" --n 2000 --size 128
end=$(date +%s.%N)
synth_s=$($PY -c "print(round($end - $start, 1))")
check_rc=0
$PY -m parvis data check "$WORK/shapes128" > "$WORK/check.txt" || check_rc=$?
echo "| scenes | size | wall s (incl. python start) | data check exit |" > "$RES/synth-$TAG.md"
echo "|---:|---:|---:|---:|" >> "$RES/synth-$TAG.md"
echo "| 2000 | 128 | $synth_s | $check_rc |" >> "$RES/synth-$TAG.md"
cat "$RES/synth-$TAG.md"

echo "== bench data: 224 px crops from 256 px JPEGs"
$PY -m parvis data synth --out "$WORK/shapes256" --n 2000 --size 256
$PY -m parvis bench data "$WORK/shapes256" --workers 0,1,2 --size 224 --batch-size 64 --max-images 1536 \
    --repeats 3 --json "$RES/bench-data-$TAG.json" | tee "$RES/bench-data-$TAG.txt"
rm -rf "$WORK"
