#!/usr/bin/env bash
# I&S-ViT anchor: the released zysxmu/IaS-ViT code at COMMIT, patched only to run here
# (patches/*.diff, applied in name order), run on ptqbench's calibration draw. See README.md.
#
#   docs/anchors/ias/run.sh W A SEED [ITERS=100] [BATCH=8]
#
# Environment:
#   IAS_REPO          where to clone the released code from (default https://github.com/zysxmu/IaS-ViT;
#                     a local mirror path works, e.g. /work/.mirror/zysxmu+IaS-ViT/repo)
#   PTQBENCH_DATA     shared data (imagenet-mini/, weights/); default <repo>/../shared/data
#   OUT_DIR           where logs and the calibration file go (default ./anchor_runs)
#   MODEL             default deit_tiny;  CALIB_SIZE default 32
#   THREADS           torch threads (default 1; OMP/MKL threads follow it)
#   SKIP_STAGE1_EVAL  1 skips the released stage-1 evaluation (default 1 here; 0 keeps it)
#   PYTHON            the interpreter (default: python of the active environment)
#   KEEP_SRC          1 keeps the patched checkout (its path is printed)
#   STREAM_SEED       the release's global --seed (batch order, random init; default 0): one draw of
#                     its random stream, as ptqbench's method.recon_seed is one draw of its own
set -euo pipefail

if [ $# -lt 3 ]; then
  echo "usage: $0 W A SEED [ITERS] [BATCH]" >&2
  exit 2
fi
W=$1; A=$2; SEED=$3; ITERS=${4:-100}; BATCH=${5:-8}

COMMIT=9300cea8db6292d9d3d6727321c7f1100360e191
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$HERE/../common/checkout.sh"
REPO_ROOT=$(cd "$HERE/../../.." && pwd)
IAS_REPO=${IAS_REPO:-https://github.com/zysxmu/IaS-ViT}
export PTQBENCH_DATA=${PTQBENCH_DATA:-$REPO_ROOT/../shared/data}
OUT_DIR=${OUT_DIR:-./anchor_runs}
MODEL=${MODEL:-deit_tiny}
CALIB_SIZE=${CALIB_SIZE:-32}
export THREADS=${THREADS:-1}
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
export SKIP_STAGE1_EVAL=${SKIP_STAGE1_EVAL:-1}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1   # P1 loads a local file; never reach the hub
PYTHON=${PYTHON:-python}

mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
STREAM_SEED=${STREAM_SEED:-0}
TAG=ias_${MODEL}_w${W}a${A}_seed${SEED}_it${ITERS}_b${BATCH}_n${CALIB_SIZE}
if [ "$STREAM_SEED" != 0 ]; then TAG=${TAG}_stream${STREAM_SEED}; fi
LOG=$OUT_DIR/$TAG.log
CALIB=$OUT_DIR/calib_${MODEL}_n${CALIB_SIZE}_seed${SEED}.pt

SRC=$(mktemp -d "${TMPDIR:-/tmp}/ias_anchor.XXXXXX")
cleanup() { if [ "${KEEP_SRC:-0}" != 1 ]; then rm -rf "$SRC"; fi; }
trap cleanup EXIT

patched_checkout "$IAS_REPO" "$COMMIT" "$SRC/IaS-ViT" "$HERE/patches"

export_calib_once "$PYTHON" "$REPO_ROOT" "$MODEL" "$CALIB_SIZE" "$SEED" "$CALIB"

{
  echo "# $TAG  $(date -u +%Y-%m-%dT%H:%M:%SZ)  host $(hostname)  load $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "# released $IAS_REPO @ $COMMIT + $(cd "$HERE/patches" && ls *.diff | tr '\n' ' ')"
} > "$LOG"
cd "$SRC/IaS-ViT"
set +e
/usr/bin/time -v "$PYTHON" test_quant.py --model "$MODEL" --dataset "$PTQBENCH_DATA/imagenet-mini" \
  --w_bits "$W" --a_bits "$A" --w_cw --iter "$ITERS" --batch "$BATCH" --calib-file "$CALIB" \
  --device cpu --num-workers 2 --seed "$STREAM_SEED" >> "$LOG" 2>&1
rc=$?
set -e
grep -E "^ANCHOR_RESULT|Elapsed \(wall clock\)|Maximum resident set size" "$LOG" || true
echo "log: $LOG (exit $rc)"
exit $rc
