#!/usr/bin/env bash
# RepQ-ViT anchor: the released zkkli/RepQ-ViT classification code, patched only to run here, on ptqbench's calibration draw.
# Usage: run.sh W A SEED      e.g. run.sh 4 4 0
# Env:   REPQ_REPO    git URL or local mirror of zkkli/RepQ-ViT (default https://github.com/zkkli/RepQ-ViT)
#        REPQ_COMMIT  released commit (default a160561b9233945e6680132f129d13041b787318)
#        OUT_DIR      where logs/results go (default /tmp/repq_anchor)
#        PTQBENCH_DATA  shared data (default: <repo>/../shared/data); REPQ_WEIGHTS_DIR (default $PTQBENCH_DATA/weights)
#        PYTHON       interpreter with torch/timm/ptqbench (default <repo>/.venv/bin/python)
#        THREADS      torch threads (default 1); CALIB_SIZE (default 32); MODEL (default deit_tiny)
set -euo pipefail
W=${1:?W bits}; A=${2:?A bits}; SEED=${3:?seed}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../../.." && pwd)
REPQ_REPO=${REPQ_REPO:-https://github.com/zkkli/RepQ-ViT}
REPQ_COMMIT=${REPQ_COMMIT:-a160561b9233945e6680132f129d13041b787318}
OUT_DIR=${OUT_DIR:-/tmp/repq_anchor}
PTQBENCH_DATA=${PTQBENCH_DATA:-$REPO/../shared/data}
export PTQBENCH_DATA
export REPQ_WEIGHTS_DIR=${REPQ_WEIGHTS_DIR:-$PTQBENCH_DATA/weights}
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
export THREADS=${THREADS:-1}
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
CALIB_SIZE=${CALIB_SIZE:-32}
MODEL=${MODEL:-deit_tiny}
TAG=${MODEL}_W${W}A${A}_s${SEED}_n${CALIB_SIZE}
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
WORK="$OUT_DIR/work_$TAG"
LOG="$OUT_DIR/$TAG.log"
rm -rf "$WORK"

# 1. fresh checkout of the released commit (only the ImageNet classification code; detection/ is
#    not needed), then the patches in order.
git clone -q --no-checkout "$REPQ_REPO" "$WORK"
git -C "$WORK" checkout -q "$REPQ_COMMIT" -- classification/test_quant.py classification/quant classification/utils \
  classification/README.md
for p in "$HERE"/patches/*.diff; do
  git -C "$WORK" apply --whitespace=nowarn "$p"
done
echo "checked out $REPQ_COMMIT from $REPQ_REPO, applied: $(cd "$HERE/patches" && ls *.diff | tr '\n' ' ')" | tee "$LOG"

# 2. ptqbench's calibration draw -> .pt (images/labels/ids/seed/size); --check: bit-identical to
#    the batch ptqbench's classification task builds
CALIB_PT="$OUT_DIR/calib_${MODEL}_n${CALIB_SIZE}_s${SEED}.pt"
EXPORTER="$REPO/docs/anchors/common/export_calib.py"
(cd "$REPO" && "$PYTHON" "$EXPORTER" --model "$MODEL" --size "$CALIB_SIZE" --seed "$SEED" --out "$CALIB_PT" --check) 2>&1 | tee -a "$LOG"

# 3. the released script
cd "$WORK/classification"
/usr/bin/time -v -o "$OUT_DIR/$TAG.time" "$PYTHON" test_quant.py --model "$MODEL" \
  --dataset "$PTQBENCH_DATA/imagenet-mini" --w_bits "$W" --a_bits "$A" --seed "$SEED" \
  --calib-batchsize "$CALIB_SIZE" --calib-pt "$CALIB_PT" --device cpu --num-workers 0 --print-freq 1000 >> "$LOG" 2>&1
grep -E 'Elapsed \(wall|Maximum resident' "$OUT_DIR/$TAG.time" | tee -a "$LOG"
grep '^ANCHOR_RESULT' "$LOG"
