"""Peak RSS of the grid-search calibration (qdrop, brecq, aphq, fimaq) on the first units of a
model, and a hash of every quantizer it leaves, to compare two trees' memory and results.

The bench's cost cell runs the whole method (a ViT-B brecq cell at 128 images is more than an
hour on one CPU thread); this runs the method's min-max calibration and then only the grid search
on `UNITS` units (the patch embedding and the first blocks), with the bench's bounded grid
(one round of 32 candidates), sampling RSS every 5 ms.

    python scripts/grid_search_rss.py vit_base 128 3 [--method brecq] [--candidates 32] [--rounds 1]
"""

from __future__ import annotations

import argparse
import hashlib

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("images", type=int)
    ap.add_argument("units", type=int)
    ap.add_argument("--method", default="brecq")
    ap.add_argument("--bits", default="w4a4")
    ap.add_argument("--candidates", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from ptqbench.algorithms.grid_search import search_model
    from ptqbench.bench.cells import calibration_images, load_model
    from ptqbench.heap import large_blocks_reused, large_blocks_unmapped
    from ptqbench.methods import Bits, build_method
    from ptqbench.methods.steps import Calibrate, unit_input
    from ptqbench.models import make_quantizable
    from ptqbench.profiling import PhaseMeter

    torch.manual_seed(0)  # random weights (a model without local ones) are the same in every run and tree
    net, weights = load_model(args.model)
    calib, source = calibration_images(net, args.images)
    w, a = (int(v) for v in args.bits[1:].split("a"))
    method = build_method({"name": args.method, "iters": 0, "grid_rounds": args.rounds,
                           "grid_candidates": args.candidates}, Bits(w, a))
    if not hasattr(getattr(method, "config", None), "search_config"):
        raise SystemExit(f"--method {args.method} has no grid search (give qdrop, brecq, aphq or fimaq)")
    cfg = method.config.search_config()
    qm = make_quantizable(net, method.plan())
    with torch.no_grad(), large_blocks_unmapped():
        Calibrate()(qm, calib)
        x = unit_input(qm, calib)
        with PhaseMeter(interval=0.005) as meter, large_blocks_reused():
            search_model(qm.model, qm.units[: args.units], x, cfg, qm.reparam_pairs, True)
    h = hashlib.sha256()
    for name, t in sorted(qm.model.state_dict().items()):
        if "quantizer" in name and torch.is_tensor(t):
            h.update(name.encode())
            h.update(t.detach().contiguous().cpu().numpy().tobytes())
    print(f"{args.model} ({weights}) {args.method} {args.bits}, {args.images} images ({source}), "
          f"grid search on {args.units} units, {args.rounds} round(s) of {args.candidates} candidates, 1 thread")
    print(f"RSS before the search {meter.start_rss_mb:.0f} MB, peak during it {meter.peak_rss_mb:.0f} MB "
          f"(+{meter.peak_rss_mb - meter.start_rss_mb:.0f}), {meter.seconds:.1f} s, quantizer state sha256 {h.hexdigest()[:16]}")


if __name__ == "__main__":
    from ptqbench.heap import rerun_without_tcache

    rerun_without_tcache()  # memory as a job measures it (glibc's per-thread cache off)
    main()
