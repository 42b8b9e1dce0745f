"""Peak RSS and seconds of one twin-uniform GELU fit, or of its Hessian-search candidates, on a
ViT-B-sized post-GELU input (32 images: 19.4M values, above the 2^24-value subsample limit), in
this process. Run it once per code tree, each in a fresh process:

    python scripts/twin_fit_cost.py fit       # TwinUniformQuantizer.calibrate
    python scripts/twin_fit_cost.py cand      # TwinUniformQuantizer.search_candidates (8 alphas)
"""
import resource
import sys
import time

import torch

from ptqbench.quant.ranges import RangeSearch
from ptqbench.quant.twin_uniform import TwinUniformQuantizer


def main() -> None:
    what = sys.argv[1] if len(sys.argv) > 1 else "fit"
    if what not in ("fit", "cand"):
        raise SystemExit("usage: python scripts/twin_fit_cost.py fit|cand")
    torch.set_num_threads(1)
    x = torch.nn.functional.gelu(torch.randn(32, 197, 3072, generator=torch.Generator().manual_seed(0)))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    q = TwinUniformQuantizer(4, "post_gelu", mode="gelu", search=RangeSearch())
    t = time.perf_counter()
    if what == "fit":
        q.calibrate(x)
    else:
        q.search_candidates(x, torch.linspace(0.5, 1.0, 8))
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{what}: {seconds:.2f} s, peak RSS {peak:.0f} MB, {peak - base:.0f} MB above the process with the input; "
          f"pos_scale {float(q.pos_scale):.9g}")


if __name__ == "__main__":
    main()
