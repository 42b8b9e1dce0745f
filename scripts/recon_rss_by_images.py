"""Peak RSS of a reconstruction against the number of calibration images, with its per-image
activations in memory and spilled to temporary files (`recon_spill`). Each cell runs in a fresh
process: a grid-recon method's min-max calibration (no grid search), then `reconstruct` on the
first UNITS units, 1 thread, batch 8; the peak is the process's high-water mark from the start of
the reconstruction (restarted by `ptqbench.profiling.restart_high_water`), where the highest RSS sample (every 5 ms)
was taken, with glibc's heap then, and the reconstruction's seconds. The cells run in the order
given, spill on and off alternating per image count.

    python scripts/recon_rss_by_images.py vit_base 32,128,512 --units 3 [--method brecq] [--iters 30]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time

from rss_by_function import _heap_mb, _innermost_ptqbench_frame, _rss_mb  # scripts/: run as a script

from ptqbench.profiling import proc_status_mb, restart_high_water


def cell(model: str, images: int, units: int, method_name: str, iters: int, spill: bool) -> dict:
    import torch

    torch.set_num_threads(1)
    import ptqbench.algorithms.reconstruction as rc
    from ptqbench.algorithms.row_store import set_spill
    from ptqbench.bench.cells import calibration_images, load_model
    from ptqbench.heap import large_blocks_reused, large_blocks_unmapped
    from ptqbench.methods import Bits, build_method
    from ptqbench.methods.steps import Calibrate, unit_input
    from ptqbench.models import make_quantizable

    torch.manual_seed(0)
    net, weights = load_model(model)
    calib, _ = calibration_images(net, images)
    method = build_method({"name": method_name, "iters": iters, "batch_size": 8, "progress": False}, Bits(4, 4))
    qm = make_quantizable(net, method.plan())
    with torch.no_grad(), large_blocks_unmapped():
        Calibrate()(qm, calib)
        x = unit_input(qm, calib)
    set_spill(spill)
    before = proc_status_mb("VmRSS")
    if not restart_high_water():  # VmHWM from here on is the reconstruction's peak
        raise SystemExit("this script needs Linux's /proc/self/clear_refs to restart the high-water mark")
    main_id, done, top = threading.get_ident(), threading.Event(), [0.0, "", ""]

    def sample() -> None:
        while not done.is_set():
            rss = _rss_mb()
            if rss > top[0]:
                top[:] = [rss, _innermost_ptqbench_frame(main_id) or "", _heap_mb()]
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    with large_blocks_reused():
        stats = rc.reconstruct(qm.model, qm.units[:units], x, method.config.engine_config())
    done.set()
    sampler.join()
    return {"peak_at": top[1], "heap_at_peak": top[2],"model": model, "weights": weights, "images": images, "spill": spill, "rss_before_mb": round(before),
            "recon_peak_mb": round(proc_status_mb("VmHWM")), "recon_s": round(time.perf_counter() - t0, 1),
            "loss_end": stats["recon_loss_end"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("images", help="comma-separated image counts, e.g. 32,128,512")
    ap.add_argument("--units", type=int, default=3)
    ap.add_argument("--method", default="brecq")
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--cell", choices=["on", "off"], help=argparse.SUPPRESS)  # one cell, in this process
    args = ap.parse_args()
    if args.cell:
        print(json.dumps(cell(args.model, int(args.images), args.units, args.method, args.iters, args.cell == "on")))
        return
    print(f"| {args.model} {args.method}, {args.units} units, {args.iters} steps, batch 8 | spill | RSS before MB "
          f"| reconstruction peak MB | peak - before | seconds | summed loss after | highest sample at | glibc heap then (MB) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n in args.images.split(","):
        for mode in ("on", "off"):
            out = subprocess.run([sys.executable, __file__, args.model, n, "--units", str(args.units), "--method",
                                  args.method, "--iters", str(args.iters), "--cell", mode],
                                 capture_output=True, text=True)
            if out.returncode:
                print(f"| {n} images | {mode} | failed: {out.stderr.strip().splitlines()[-1]} |||||||")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"| {n} images ({r['weights']}) | {mode} | {r['rss_before_mb']} | {r['recon_peak_mb']} | "
                  f"{r['recon_peak_mb'] - r['rss_before_mb']} | {r['recon_s']} | {r['loss_end']} | `{r['peak_at']}` | "
                  f"{r['heap_at_peak'].replace('heap ', '')} |", flush=True)


if __name__ == "__main__":
    from ptqbench.heap import rerun_without_tcache

    rerun_without_tcache()  # memory as a job measures it (glibc's per-thread cache off)
    main()
