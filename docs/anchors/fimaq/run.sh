#!/usr/bin/env bash
# FIMA-Q anchor: the released ShiheWang/FIMA-Q code at COMMIT, patched only to run here
# (patches/*.diff, applied in name order), run on ptqbench's calibration draw. See README.md.
#
#   docs/anchors/fimaq/run.sh CONFIG W A SEED [ITERS=100] [BATCH=8]
#
#   CONFIG  best | brecq   (configs/<W>bit/<CONFIG>.py; `best` is FIMA-Q itself and is run as the
#           paper command, with --optim-metric fisher_dplr; `brecq` exists for 3bit only)
#   W A     bit widths; the released configs exist for 3bit, 4bit and 6bit (best) and 3bit (brecq)
#           and set a_bit = qhead_a_bit = w_bit, so A must equal W
#   SEED    seed of ptqbench's calibration draw (export_calib.py --seed); the released --seed
#           (global torch/numpy RNG: reconstruction batches and QDrop masks) is $FIMAQ_SEED
#   ITERS BATCH  block reconstruction iterations and batch size per unit (released: 20000 and 32).
#           The Fisher is refreshed every floor(ITERS/k) iterations (k = 5), so ITERS must be >= 5
#
# Environment:
#   FIMAQ_REPO     where to clone the released code from (default https://github.com/ShiheWang/FIMA-Q;
#                  a local mirror path works, e.g. /work/.mirror/ShiheWang+FIMA-Q/repo)
#   PTQBENCH_DATA  shared data (imagenet-mini/, weights/); default <repo>/../shared/data
#   OUT_DIR        where logs and the calibration file go (default ./anchor_runs)
#   MODEL          default deit_tiny;  CALIB_SIZE default 32 (--calib-size = --optim-size = CALIB_SIZE;
#                  the released --optim-size defaults to 1024 and always overrides the config)
#   FIMAQ_SEED     the released --seed (default 3407, the released default)
#   THREADS        torch threads (default 1; OMP/MKL threads follow it)
#   NUM_WORKERS    validation loader workers (default 2)
#   FIMAQ_CALIB_MEM CPU budget in bytes that sets the chunking of the calibration search (patch 03;
#                  default 402653184 = 384 MiB, as the APHQ anchor: the smallest that keeps
#                  parallel_eq_n >= 1 for DeiT-T's fc1/fc2 at 32 images. Larger models or more
#                  images need more, else the released code divides by zero)
#   CALIB_ONLY     1 stops after calibration and its evaluation (no reconstruction; patch 08)
#   LOAD_CALIB     a calibrated checkpoint (<checkout>/checkpoints/quant_result/<time>/<model>_w<W>_a<A>_
#                  calibsize_<N>_mse.pth, written by every run that calibrates): the released
#                  --load-calibrate-checkpoint instead of --calibrate (the global RNG stream then
#                  differs from a run that calibrates)
#   SRC_DIR        where to put the patched checkout (default a new mktemp dir; must not exist)
#   KEEP_SRC       1 keeps the patched checkout (its path is printed)
#   PYTHON         the interpreter (default: python of the active environment)
set -euo pipefail

if [ $# -lt 4 ]; then
  echo "usage: $0 CONFIG W A SEED [ITERS] [BATCH]" >&2
  exit 2
fi
CONFIG=$1; W=$2; A=$3; SEED=$4; ITERS=${5:-100}; BATCH=${6:-8}
case "$CONFIG" in
  best) METRIC_FLAG=(--optim-metric fisher_dplr) ;;   # the paper / README command
  brecq) METRIC_FLAG=() ;;
  *) echo "CONFIG must be best or brecq" >&2; exit 2 ;;
esac
if [ "$W" != "$A" ]; then
  echo "the released configs set a_bit = qhead_a_bit = w_bit; W=$W A=$A is not a released setting" >&2
  exit 2
fi
if [ "$ITERS" -lt 5 ]; then
  echo "ITERS=$ITERS: the released loop refreshes the Fisher every floor(ITERS/k) iterations, k = 5; need ITERS >= 5" >&2
  exit 2
fi

COMMIT=64c4b00a368d7cbbea635cb26bc7f3ab56fb1b26
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$HERE/../common/checkout.sh"
REPO_ROOT=$(cd "$HERE/../../.." && pwd)
FIMAQ_REPO=${FIMAQ_REPO:-https://github.com/ShiheWang/FIMA-Q}
export PTQBENCH_DATA=${PTQBENCH_DATA:-$REPO_ROOT/../shared/data}
OUT_DIR=${OUT_DIR:-./anchor_runs}
MODEL=${MODEL:-deit_tiny}
CALIB_SIZE=${CALIB_SIZE:-32}
FIMAQ_SEED=${FIMAQ_SEED:-3407}
NUM_WORKERS=${NUM_WORKERS:-2}
export FIMAQ_CALIB_MEM=${FIMAQ_CALIB_MEM:-402653184}       # patch 03 (P3)
export THREADS=${THREADS:-1}
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
export FIMAQ_ITERS=$ITERS FIMAQ_BATCH=$BATCH              # patch 06 (P7)
export FIMAQ_CALIB_ONLY=${CALIB_ONLY:-0}                  # patch 08
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1            # P1 loads a local file; never reach the hub
unset FIMAQ_CALIB_FILE FIMAQ_WEIGHTS                      # run.sh passes --calib-file; P1 uses PTQBENCH_DATA
PYTHON=${PYTHON:-python}

mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
TAG=fimaq_${CONFIG}_${MODEL}_w${W}a${A}_seed${SEED}_it${ITERS}_b${BATCH}_n${CALIB_SIZE}
[ "$FIMAQ_CALIB_ONLY" = 1 ] && TAG=fimaq_${CONFIG}_${MODEL}_w${W}a${A}_seed${SEED}_n${CALIB_SIZE}_calibonly
if [ -n "${LOAD_CALIB:-}" ]; then
  CALIB_FLAGS=(--load-calibrate-checkpoint "$(cd "$(dirname "$LOAD_CALIB")" && pwd)/$(basename "$LOAD_CALIB")")
  TAG=${TAG}_loadcalib
else
  CALIB_FLAGS=(--calibrate)
fi
# a released --seed other than the default gets its own log (several draws share one OUT_DIR)
[ "$FIMAQ_SEED" != 3407 ] && TAG=${TAG}_rseed$FIMAQ_SEED
LOG=$OUT_DIR/$TAG.log
CALIB=$OUT_DIR/calib_${MODEL}_n${CALIB_SIZE}_seed${SEED}.pt

if [ -n "${SRC_DIR:-}" ]; then
  if [ -e "$SRC_DIR" ]; then echo "SRC_DIR $SRC_DIR exists; remove it or choose another" >&2; exit 2; fi
  SRC=$SRC_DIR
else
  TMP_PARENT=$(mktemp -d "${TMPDIR:-/tmp}/fimaq_anchor.XXXXXX")
  SRC=$TMP_PARENT/FIMA-Q
fi
cleanup() { if [ "${KEEP_SRC:-0}" != 1 ]; then rm -rf "$SRC"; [ -n "${TMP_PARENT:-}" ] && rmdir "$TMP_PARENT" 2>/dev/null; fi; return 0; }
trap cleanup EXIT

patched_checkout "$FIMAQ_REPO" "$COMMIT" "$SRC" "$HERE/patches"
[ -f "$SRC/configs/${W}bit/$CONFIG.py" ] || { echo "no released config configs/${W}bit/$CONFIG.py" >&2; exit 2; }

export_calib_once "$PYTHON" "$REPO_ROOT" "$MODEL" "$CALIB_SIZE" "$SEED" "$CALIB"

{
  echo "# $TAG  $(date -u +%Y-%m-%dT%H:%M:%SZ)  host $(hostname)  load $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "# released $FIMAQ_REPO @ $COMMIT + $(cd "$HERE/patches" && ls *.diff | tr '\n' ' ')"
  echo "# FIMAQ_ITERS=$FIMAQ_ITERS FIMAQ_BATCH=$FIMAQ_BATCH FIMAQ_CALIB_ONLY=$FIMAQ_CALIB_ONLY FIMAQ_CALIB_MEM=$FIMAQ_CALIB_MEM THREADS=$THREADS seed=$FIMAQ_SEED LOAD_CALIB=${LOAD_CALIB:-}"
} > "$LOG"
cd "$SRC"
set +e
/usr/bin/time -v "$PYTHON" test_quant.py --model "$MODEL" --config "configs/${W}bit/$CONFIG.py" \
  --dataset "$PTQBENCH_DATA/imagenet-mini" --w_bit "$W" --a_bit "$A" \
  --calib-file "$CALIB" --calib-size "$CALIB_SIZE" --optim-size "$CALIB_SIZE" \
  "${CALIB_FLAGS[@]}" --optimize "${METRIC_FLAG[@]}" --seed "$FIMAQ_SEED" \
  --device cpu --num-workers "$NUM_WORKERS" >> "$LOG" 2>&1
rc=$?
set -e
grep -E "ANCHOR_RESULT|Elapsed \(wall clock\)|Maximum resident set size" "$LOG" | sed 's/^[[:space:]]*//' || true
top1=$(grep -o "ANCHOR_RESULT.*" "$LOG" | tail -1 | grep -o " top1=[0-9.]*" | cut -d= -f2 || true)
echo "log: $LOG (exit $rc)"
echo "RESULT fimaq/$CONFIG $MODEL W${W}A${A} calib_seed=$SEED iters=$ITERS batch=$BATCH calib_only=$FIMAQ_CALIB_ONLY${LOAD_CALIB:+ load_calib=$LOAD_CALIB}: top1=${top1:-none}"
exit $rc
