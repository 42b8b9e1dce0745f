#!/usr/bin/env bash
# ERQ anchor: the released zysxmu/ERQ code, patched only to run here, on ptqbench's calibration draw.
# Usage: run.sh W A SEED [COE]      e.g. run.sh 4 4 0 10000
# Env:   ERQ_REPO    git URL or local mirror of zysxmu/ERQ (default https://github.com/zysxmu/ERQ)
#        ERQ_COMMIT  released commit (default 2f5b4cee111cef8a099e8c3086e34a36d42e86fd)
#        OUT_DIR     where logs/results go (default /tmp/erq_anchor)
#        PTQBENCH_DATA  shared data (default: <repo>/../shared/data); ERQ_WEIGHTS_DIR (default $PTQBENCH_DATA/weights)
#        PYTHON      interpreter with torch/timm/ptqbench (default <repo>/.venv/bin/python)
#        THREADS     torch threads (default 1); CALIB_SIZE (default 32); MODEL (default deit_tiny)
#        KEEP_FP=1   keep the fp_output/ pickles (about 0.9 GB for DeiT-T at 32 images)
set -euo pipefail
W=${1:?W bits}; A=${2:?A bits}; SEED=${3:?seed}; COE=${4:-10000}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../../.." && pwd)
ERQ_REPO=${ERQ_REPO:-https://github.com/zysxmu/ERQ}
ERQ_COMMIT=${ERQ_COMMIT:-2f5b4cee111cef8a099e8c3086e34a36d42e86fd}
OUT_DIR=${OUT_DIR:-/tmp/erq_anchor}
PTQBENCH_DATA=${PTQBENCH_DATA:-$REPO/../shared/data}
export PTQBENCH_DATA
export ERQ_WEIGHTS_DIR=${ERQ_WEIGHTS_DIR:-$PTQBENCH_DATA/weights}
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
export THREADS=${THREADS:-1}
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
CALIB_SIZE=${CALIB_SIZE:-32}
MODEL=${MODEL:-deit_tiny}
TAG=${MODEL}_W${W}A${A}_s${SEED}_coe${COE}_n${CALIB_SIZE}
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
WORK="$OUT_DIR/work_$TAG"
LOG="$OUT_DIR/$TAG.log"
rm -rf "$WORK"

# 1. fresh checkout of the released commit (only the files the ImageNet code needs; the zips are
#    the SR/detection code and are not needed), then the patches in order.
git clone -q --no-checkout "$ERQ_REPO" "$WORK"
git -C "$WORK" checkout -q "$ERQ_COMMIT" -- test_quant_expand.py quant utils README.md
for p in "$HERE"/patches/*.diff; do
  git -C "$WORK" apply --whitespace=nowarn "$p"
done
echo "checked out $ERQ_COMMIT from $ERQ_REPO, applied: $(cd "$HERE/patches" && ls *.diff | tr '\n' ' ')" | tee "$LOG"

# 2. ptqbench's calibration draw -> .pt (images/labels/ids/seed/size)
CALIB_PT="$OUT_DIR/calib_${MODEL}_n${CALIB_SIZE}_s${SEED}.pt"
EXPORTER="$REPO/docs/anchors/common/export_calib.py"   # bit-identical to the batch ptqbench calibrates on
(cd "$REPO" && "$PYTHON" "$EXPORTER" --model "$MODEL" --size "$CALIB_SIZE" --seed "$SEED" --out "$CALIB_PT") 2>&1 | tee -a "$LOG"

# 3. the released script (fp_output/ is written relative to the working directory)
cd "$WORK"
/usr/bin/time -v -o "$OUT_DIR/$TAG.time" "$PYTHON" test_quant_expand.py --model "$MODEL" \
  --dataset "$PTQBENCH_DATA/imagenet-mini" --w_bits "$W" --a_bits "$A" --coe "$COE" --seed "$SEED" \
  --calib-batchsize "$CALIB_SIZE" --calib-pt "$CALIB_PT" --device cpu --num-workers 0 --print-freq 1000 >> "$LOG" 2>&1
grep -E 'Elapsed \(wall|Maximum resident' "$OUT_DIR/$TAG.time" | tee -a "$LOG"
[ "${KEEP_FP:-0}" = 1 ] || rm -rf "$WORK/fp_output"
grep '^ANCHOR_RESULT' "$LOG"
