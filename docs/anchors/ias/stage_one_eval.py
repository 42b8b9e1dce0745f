"""ptqbench's `method=ias` stopped after stage one and evaluated as the release's "Acc after Stage
One" is: activation quantizers calibrated, FP weights and biases trained through them, the weight
quantizers off. Set beside the released number (`SKIP_STAGE1_EVAL=0 run.sh W A SEED`), it tells
whether a gap between the two sides enters before or after the reparameterization.

    python docs/anchors/ias/stage_one_eval.py method=ias bits=w3a3 method.iters=100 method.batch_size=8 \
        calib.size=32 calib.seed=2 threads=1 data.workers=0 method.progress=false

The arguments are `python -m ptqbench` overrides; the steps are the method's own (its first
`WeightsFP` step, inside the `WithFPTeacher` the method wraps its stages in).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "docs" / "anchors" / "common"))
sys.path.insert(0, str(REPO))


def main(argv: list[str]) -> int:
    from recon_spread import open_job  # docs/anchors/common

    from ptqbench.methods.steps import WeightsFP, WithFPTeacher, run_steps
    from ptqbench.pipeline import quantize
    from ptqbench.quant.calibration import quantizers, switched

    settings, task, method, device, model, eval_data, calib = open_job(argv)
    steps = method.steps()
    if not (steps and isinstance(steps[0], WithFPTeacher) and isinstance(steps[0].steps[0], WeightsFP)):
        raise SystemExit(f"method={method.name}: expected WithFPTeacher(WeightsFP(...), ...) as I&S-ViT's steps")
    stage_one = WithFPTeacher((steps[0].steps[0],))

    class StageOne:  # the method with its steps cut after stage one
        plan = staticmethod(method.plan)

        @staticmethod
        def quantize(qm: Any, x: torch.Tensor) -> dict[str, Any]:
            return run_steps((stage_one,), qm, x)

    t0 = time.perf_counter()
    qm, _, _ = quantize(StageOne, model.module, calib.inputs, device, scope=task.scope(settings))
    print(f"stage one done in {time.perf_counter() - t0:.0f} s", flush=True)
    weights = [q for q in quantizers(qm.model).values() if q.role == "weight"]
    with switched(weights, False):
        res = task.evaluate(qm.model, eval_data, "eval after stage one")
    print(f"after stage one (weights FP): top-1 {res['top1']:.3f} top-5 {res['top5']:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
