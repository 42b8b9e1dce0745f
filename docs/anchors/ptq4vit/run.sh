#!/usr/bin/env bash
# PTQ4ViT anchor: the released hahnyuan/PTQ4ViT code at COMMIT, patched only to run here
# (patches/*.diff, applied in name order), run on ptqbench's calibration draw. See README.md.
#
#   docs/anchors/ptq4vit/run.sh W A SEED
#
#   W A    weight / activation bits. The released entry example/test_all.py sets, through its
#          cfg_modifier, w_bit = W for every Conv2d / Linear (patch embedding and head included) and
#          a_bit = A for every Linear input and both operands of both attention matmuls (the patch
#          embedding's input stays FP: configs/PTQ4ViT.py builds it with a_bit=32)
#   SEED   seed of ptqbench's calibration draw (export_calib.py --seed). The released code draws no
#          random numbers once the calibration images are given (the search is deterministic)
#
# Environment:
#   PTQ4VIT_REPO   where to clone the released code from (default https://github.com/hahnyuan/PTQ4ViT;
#                  a local mirror path works, e.g. /work/.mirror/hahnyuan+PTQ4ViT/repo)
#   PTQBENCH_DATA  shared data (imagenet-mini/, weights/); default <repo>/../shared/data
#   OUT_DIR        where logs and the calibration file go (default ./anchor_runs)
#   MODEL          ptqbench model name, default deit_tiny (mapped to the timm name below)
#   CALIB_SIZE     calibration images (default 32, the released test_all.py default)
#   THREADS        torch threads (default 1; OMP/MKL threads follow it)
#   NUM_WORKERS    validation loader workers (default 2; released 16)
#   EQ_N           candidates per scale search (patch P7; unset = released 100). Smoke runs only
#   SEARCH_ROUND   alternating search rounds (patch P7; unset = released 3). Smoke runs only
#   EVAL_BATCHES   evaluate the first N batches of 32 only (runner patch; unset = all 1300 images).
#                  Smoke runs only: the val folder is sorted by synset, so a prefix is a few classes
#   PTQ4VIT_CALIB_MEM  byte budget that sets how many candidates are scored at once (patch P3b;
#                  unset = the released 3 GiB for Linear/matmul and 15 GiB for the conv). It only
#                  changes the chunking, and with it the peak memory
#   SRC_DIR        where to put the patched checkout (default a new mktemp dir; must not exist)
#   KEEP_SRC       1 keeps the patched checkout (its path is printed)
#   PYTHON         the interpreter (default: python of the active environment)
set -euo pipefail

if [ $# -lt 3 ]; then
  echo "usage: $0 W A SEED" >&2
  exit 2
fi
W=$1; A=$2; SEED=$3

COMMIT=b42c790c2811e7835d435a9f9a6c64a079a7483a
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$HERE/../common/checkout.sh"
REPO_ROOT=$(cd "$HERE/../../.." && pwd)
PTQ4VIT_REPO=${PTQ4VIT_REPO:-https://github.com/hahnyuan/PTQ4ViT}
export PTQBENCH_DATA=${PTQBENCH_DATA:-$REPO_ROOT/../shared/data}
OUT_DIR=${OUT_DIR:-./anchor_runs}
MODEL=${MODEL:-deit_tiny}
CALIB_SIZE=${CALIB_SIZE:-32}
NUM_WORKERS=${NUM_WORKERS:-2}
export THREADS=${THREADS:-1}
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1            # P1 loads a local file; never reach the hub
export PTQ4VIT_DEVICE=cpu                                  # P3
export PTQ4VIT_DATASET=$PTQBENCH_DATA/imagenet-mini        # P6
export PTQ4VIT_NUM_WORKERS=$NUM_WORKERS                    # P6
export PTQ4VIT_CALIB_SEED=$SEED                            # runner (result line only)
unset PTQ4VIT_WEIGHTS PTQ4VIT_EQ_N PTQ4VIT_SEARCH_ROUND PTQ4VIT_EVAL_BATCHES
[ -n "${EQ_N:-}" ] && export PTQ4VIT_EQ_N=$EQ_N                       # P7
[ -n "${SEARCH_ROUND:-}" ] && export PTQ4VIT_SEARCH_ROUND=$SEARCH_ROUND # P7
[ -n "${EVAL_BATCHES:-}" ] && export PTQ4VIT_EVAL_BATCHES=$EVAL_BATCHES # runner
PYTHON=${PYTHON:-python}

case "$MODEL" in
  deit_tiny|deit_small|deit_base) TIMM_NAME=${MODEL}_patch16_224 ;;
  vit_small|vit_base) TIMM_NAME=${MODEL}_patch16_224 ;;
  *) echo "MODEL=$MODEL: no timm name known here (deit_tiny, deit_small, deit_base, vit_small, vit_base)" >&2; exit 2 ;;
esac

mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
TAG=ptq4vit_${MODEL}_w${W}a${A}_seed${SEED}_n${CALIB_SIZE}
[ -n "${EQ_N:-}" ] && TAG=${TAG}_eqn$EQ_N
[ -n "${SEARCH_ROUND:-}" ] && TAG=${TAG}_r$SEARCH_ROUND
[ -n "${EVAL_BATCHES:-}" ] && TAG=${TAG}_eval$EVAL_BATCHES
LOG=$OUT_DIR/$TAG.log
CALIB=$OUT_DIR/calib_${MODEL}_n${CALIB_SIZE}_seed${SEED}.pt
export PTQ4VIT_CALIB_FILE=$CALIB                           # P5

if [ -n "${SRC_DIR:-}" ]; then
  if [ -e "$SRC_DIR" ]; then echo "SRC_DIR $SRC_DIR exists; remove it or choose another" >&2; exit 2; fi
  SRC=$SRC_DIR
else
  TMP_PARENT=$(mktemp -d "${TMPDIR:-/tmp}/ptq4vit_anchor.XXXXXX")
  SRC=$TMP_PARENT/PTQ4ViT
fi
cleanup() { if [ "${KEEP_SRC:-0}" != 1 ]; then rm -rf "$SRC"; [ -n "${TMP_PARENT:-}" ] && rmdir "$TMP_PARENT" 2>/dev/null; fi; return 0; }
trap cleanup EXIT

patched_checkout "$PTQ4VIT_REPO" "$COMMIT" "$SRC" "$HERE/patches"

export_calib_once "$PYTHON" "$REPO_ROOT" "$MODEL" "$CALIB_SIZE" "$SEED" "$CALIB"

{
  echo "# $TAG  $(date -u +%Y-%m-%dT%H:%M:%SZ)  host $(hostname)  load $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "# released $PTQ4VIT_REPO @ $COMMIT + $(cd "$HERE/patches" && ls *.diff | tr '\n' ' ')"
  echo "# THREADS=$THREADS NUM_WORKERS=$NUM_WORKERS EQ_N=${EQ_N:-} SEARCH_ROUND=${SEARCH_ROUND:-} EVAL_BATCHES=${EVAL_BATCHES:-} PTQ4VIT_CALIB_MEM=${PTQ4VIT_CALIB_MEM:-} calib=$CALIB"
} > "$LOG"
cd "$SRC"
set +e
/usr/bin/time -v "$PYTHON" example/test_all.py --model "$TIMM_NAME" --w_bit "$W" --a_bit "$A" \
  --calib-size "$CALIB_SIZE" --config PTQ4ViT >> "$LOG" 2>&1
rc=$?
set -e
grep -E "^anchor check|^ANCHOR_RESULT|Elapsed \(wall clock\)|Maximum resident set size" "$LOG" | sed 's/^[[:space:]]*//' || true
top1=$(grep -o "ANCHOR_RESULT.*" "$LOG" | tail -1 | grep -o " *top1=[0-9.]*" | head -1 | cut -d= -f2 || true)
echo "log: $LOG (exit $rc)"
echo "RESULT ptq4vit $MODEL W${W}A${A} calib_seed=$SEED n=$CALIB_SIZE eq_n=${EQ_N:-100} rounds=${SEARCH_ROUND:-3}: top1=${top1:-none}"
exit $rc
