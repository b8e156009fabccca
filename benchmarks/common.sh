# Sourced by the run_*.sh scripts: the interpreter, a scratch folder, and the tag that result file
# names carry (device, core count, torch version), so tables from different machines never mix.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PY:-.venv/bin/python}
WORK=${WORK:-$(mktemp -d)}
TORCH=$($PY -c 'import torch; print(torch.__version__.split("+")[0])')
TAG="cpu-$(nproc)core-pt${TORCH}"
RES=benchmarks/results
mkdir -p "$RES"
