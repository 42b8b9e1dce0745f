#!/usr/bin/env bash
# APHQ-ViT anchor: the released GoatWu/APHQ-ViT code at COMMIT, patched only to run here
# (patches/*.diff, applied in name order), run on ptqbench's calibration draw. Its configs also
# carry the only released ViT ports of QDrop and BRECQ. See README.md.
#
#   docs/anchors/aphq/run.sh CONFIG W A SEED [ITERS=100] [BATCH=8]
#
#   CONFIG  qdrop_baseline | brecq_qinp | brecq_baseline | best   (configs/<W>bit/<CONFIG>.py;
#           `best` is APHQ-ViT itself and adds --reconstruct-mlp)
#   W A     bit widths; the released configs exist for 4bit and 3bit (and 2bit: best, qdrop_baseline)
#           and set a_bit = qhead_a_bit = w_bit, so A must equal W
#   SEED    seed of ptqbench's calibration draw (export_calib.py --seed); the released --seed
#           (global torch/numpy RNG: reconstruction batches and QDrop masks) is $APHQ_SEED
#   ITERS BATCH  reconstruction iterations and batch size per unit (block and MLP stages;
#           released: 20000 and 32)
#
# Environment:
#   APHQ_REPO      where to clone the released code from (default https://github.com/GoatWu/APHQ-ViT;
#                  a local mirror path works, e.g. /work/.mirror/GoatWu+APHQ-ViT/repo)
#   PTQBENCH_DATA  shared data (imagenet-mini/, weights/); default <repo>/../shared/data
#   OUT_DIR        where logs and the calibration file go (default ./anchor_runs)
#   MODEL          default deit_tiny;  CALIB_SIZE default 32 (calib_size = optim_size = CALIB_SIZE)
#   APHQ_SEED      the released --seed (default 3407, the released default and the paper's)
#   THREADS        torch threads (default 1; OMP/MKL threads follow it)
#   NUM_WORKERS    validation loader workers (default 2)
#   APHQ_CALIB_MEM CPU budget in bytes that sets the chunking of the calibration search (patch 03;
#                  default here 402653184 = 384 MiB: the smallest that keeps parallel_eq_n >= 1 for
#                  DeiT-T's fc1/fc2 at 32 images (4 x 16 x (32*197*192 + 32*197*768) bytes), and on this
#                  CPU about 3x faster than 2 GiB, with equal results on the modules compared. Larger
#                  models or more images need more, else the released code divides by zero)
#   CALIB_ONLY     1 stops after calibration and its evaluation (no reconstruction)
#   DUMP_CALIB     a path: save the calibrated model, quantizer scales/zero points and the logits
#                  of the first 64 val images there (patch 08)
#   LOAD_CALIB     a calibrated checkpoint (<checkout>/checkpoint/quant_result/<time>/<model>_w<W>_a<A>_
#                  calibsize_<N>_mse.pth, written by every run that calibrates): the released
#                  --load-calibrate-checkpoint instead of --calibrate (qdrop/brecq share calibration;
#                  the global RNG stream then differs from a run that calibrates)
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
  qdrop_baseline|brecq_qinp|brecq_baseline) MLP_FLAG=() ;;
  best) MLP_FLAG=(--reconstruct-mlp) ;;
  *) echo "CONFIG must be qdrop_baseline, brecq_qinp, brecq_baseline or best" >&2; exit 2 ;;
esac
if [ "$W" != "$A" ]; then
  echo "the released configs set a_bit = qhead_a_bit = w_bit; W=$W A=$A is not a released setting" >&2
  exit 2
fi

COMMIT=84c9fde5fbdf9fc85561ab7c0898b75c8e5ec381
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$HERE/../common/checkout.sh"
REPO_ROOT=$(cd "$HERE/../../.." && pwd)
APHQ_REPO=${APHQ_REPO:-https://github.com/GoatWu/APHQ-ViT}
export PTQBENCH_DATA=${PTQBENCH_DATA:-$REPO_ROOT/../shared/data}
OUT_DIR=${OUT_DIR:-./anchor_runs}
MODEL=${MODEL:-deit_tiny}
CALIB_SIZE=${CALIB_SIZE:-32}
APHQ_SEED=${APHQ_SEED:-3407}
NUM_WORKERS=${NUM_WORKERS:-2}
export APHQ_CALIB_MEM=${APHQ_CALIB_MEM:-402653184}         # patch 03 (P3)
export THREADS=${THREADS:-1}
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
export APHQ_ITERS=$ITERS APHQ_BATCH=$BATCH                # patch 06 (P7)
export APHQ_CALIB_ONLY=${CALIB_ONLY:-0}                   # patch 08
if [ -n "${DUMP_CALIB:-}" ]; then export APHQ_DUMP_CALIB=$DUMP_CALIB; else unset APHQ_DUMP_CALIB; fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1            # P1 loads a local file; never reach the hub
PYTHON=${PYTHON:-python}

mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
TAG=aphq_${CONFIG}_${MODEL}_w${W}a${A}_seed${SEED}_it${ITERS}_b${BATCH}_n${CALIB_SIZE}
[ "$APHQ_CALIB_ONLY" = 1 ] && TAG=aphq_${CONFIG}_${MODEL}_w${W}a${A}_seed${SEED}_n${CALIB_SIZE}_calibonly
if [ -n "${LOAD_CALIB:-}" ]; then
  CALIB_FLAGS=(--load-calibrate-checkpoint "$(cd "$(dirname "$LOAD_CALIB")" && pwd)/$(basename "$LOAD_CALIB")")
  TAG=${TAG}_loadcalib
else
  CALIB_FLAGS=(--calibrate)
fi
# a released --seed other than the default gets its own log (several draws share one OUT_DIR)
[ "$APHQ_SEED" != 3407 ] && TAG=${TAG}_rseed$APHQ_SEED
LOG=$OUT_DIR/$TAG.log
CALIB=$OUT_DIR/calib_${MODEL}_n${CALIB_SIZE}_seed${SEED}.pt

if [ -n "${SRC_DIR:-}" ]; then
  if [ -e "$SRC_DIR" ]; then echo "SRC_DIR $SRC_DIR exists; remove it or choose another" >&2; exit 2; fi
  SRC=$SRC_DIR
else
  SRC=$(mktemp -d "${TMPDIR:-/tmp}/aphq_anchor.XXXXXX")/APHQ-ViT
fi
cleanup() { if [ "${KEEP_SRC:-0}" != 1 ]; then rm -rf "$SRC"; fi; }
trap cleanup EXIT

patched_checkout "$APHQ_REPO" "$COMMIT" "$SRC" "$HERE/patches"
[ -f "$SRC/configs/${W}bit/$CONFIG.py" ] || { echo "no released config configs/${W}bit/$CONFIG.py" >&2; exit 2; }

export_calib_once "$PYTHON" "$REPO_ROOT" "$MODEL" "$CALIB_SIZE" "$SEED" "$CALIB"

{
  echo "# $TAG  $(date -u +%Y-%m-%dT%H:%M:%SZ)  host $(hostname)  load $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "# released $APHQ_REPO @ $COMMIT + $(cd "$HERE/patches" && ls *.diff | tr '\n' ' ')"
  echo "# APHQ_ITERS=$APHQ_ITERS APHQ_BATCH=$APHQ_BATCH APHQ_CALIB_ONLY=$APHQ_CALIB_ONLY APHQ_DUMP_CALIB=${APHQ_DUMP_CALIB:-} APHQ_CALIB_MEM=$APHQ_CALIB_MEM THREADS=$THREADS seed=$APHQ_SEED LOAD_CALIB=${LOAD_CALIB:-}"
} > "$LOG"
cd "$SRC"
set +e
/usr/bin/time -v "$PYTHON" test_quant.py --model "$MODEL" --config "configs/${W}bit/$CONFIG.py" \
  --dataset "$PTQBENCH_DATA/imagenet-mini" --w_bit "$W" --a_bit "$A" \
  --calib-file "$CALIB" --calib-size "$CALIB_SIZE" --optim-size "$CALIB_SIZE" \
  "${CALIB_FLAGS[@]}" --optimize "${MLP_FLAG[@]}" --seed "$APHQ_SEED" \
  --device cpu --num-workers "$NUM_WORKERS" >> "$LOG" 2>&1
rc=$?
set -e
grep -E "ANCHOR_RESULT|Elapsed \(wall clock\)|Maximum resident set size" "$LOG" | sed 's/^[[:space:]]*//' || true
top1=$(grep -o "ANCHOR_RESULT.*" "$LOG" | tail -1 | grep -o " top1=[0-9.]*" | cut -d= -f2 || true)
echo "log: $LOG (exit $rc)"
echo "RESULT aphq/$CONFIG $MODEL W${W}A${A} calib_seed=$SEED iters=$ITERS batch=$BATCH calib_only=$APHQ_CALIB_ONLY${LOAD_CALIB:+ load_calib=$LOAD_CALIB}: top1=${top1:-none}"
exit $rc
