#!/usr/bin/env bash
# DopQ-ViT / AIQViT / RepQ-ViT on DeiT-Tiny (shared imagenet-mini: 32 calibration images from
# train, all 1300 val images) at W3A3, W4A4, W6A6, and the W4A4 ablations (docs/results.md).
#
# CPU-feasible reconstruction setting (the papers' is calib.size=1024, 1000/200 iterations,
# batch 64): 32 images, 30 Adam steps per unit, batch 8, AdaRound and LSQ learning rates x10 so
# that the parameters can move in 30 steps. Override RECON to change it, e.g.
#   RECON="calib.size=1024" benchmarks/recon_deit_tiny.sh       # the papers' setting (GPU)
# Records go to $RESULTS/runs (default results/); finished runs are skipped on relaunch.
set -euo pipefail
RESULTS=${RESULTS:-results}
RECON=${RECON:-"calib.size=32 method.iters=30 method.batch_size=8 method.lr_rounding=1e-2 method.lr_act_scale=4e-4"}
run() { echo "== $*"; /usr/bin/time -f "wall %e s" python -m ptqbench logger=none results_dir="$RESULTS" "$@"; }

for bits in w4a4 w3a3 w6a6; do
  run method=dopq bits=$bits $RECON
  run method=aiq bits=$bits $RECON
  run method=repq bits=$bits calib.size=32
done
# W4A4 ablations: DopQ-ViT's PTQ stage (no reconstruction) with each component off, then the
# AIQViT components one at a time.
run method=dopq bits=w4a4 method.reconstruct=false calib.size=32
run method=dopq bits=w4a4 method.reconstruct=false method.tanq=false calib.size=32
run method=dopq bits=w4a4 method.reconstruct=false method.mosf=false calib.size=32
run method=aiq bits=w4a4 method.lowrank=false $RECON
run method=aiq bits=w4a4 method.dfq=false $RECON      # low-rank on log-sqrt2
run method=aiq bits=w4a4 method.curriculum=false $RECON
run method=aiq bits=w4a4 method.rank_search=fixed $RECON
run method=aiq bits=w4a4 method.lr_dfq=0 $RECON      # DFQ bounds from the initialization only
run method=aiq bits=w4a4 method.dfq_below=clamp method.dfq_init=mse method.lr_dfq=1e-3 \
    "method.dfq_percentiles=[0.99,0.999,0.9999,1.0]" "method.dfq_max_fractions=[]" $RECON   # first DFQ reading
run method=dopq bits=w4a4 method.tanq=false $RECON
run method=dopq bits=w4a4 method.mosf=false $RECON
