"""Where the reconstruction's memory is at one training step: the process's RSS beside a ledger of
every live tensor `gc` finds (storages counted once, by owner: the model's parameters and buffers,
the optimizer's state, the unit's inputs and targets, the rest), what the step's autograd graph
saves, and glibc's heap. Runs a grid-recon method (min-max calibration, no grid search: the
reconstruction alone) on the first UNITS units of MODEL with IMAGES images, batch 8, at the given
heap reuse limit; the ledger is taken after the forward of step STEP of the last unit (before
its loss and backward). The peak RSS it prints is the highest RSS seen at the steps' losses.

    python scripts/recon_memory_ledger.py vit_base 128 3 [--method brecq] [--iters 6] [--step 4] [--reuse-mib 2] [--spill off]
"""

from __future__ import annotations

import argparse
import collections
import gc
import sys

import torch
from rss_by_function import _heap_mb, _rss_mb  # scripts/: run as `python scripts/recon_memory_ledger.py`
from saved_tensors_per_step import saved_storages


def saved_by_graph(root: torch.Tensor, by_node: collections.Counter) -> dict[int, int]:
    """Storages the autograd graph of `root` saves (data_ptr -> bytes); `by_node` gets the bytes by
    (node, attribute, shape), each storage counted at its first node."""
    found = saved_storages(root)
    for nbytes, key in found.values():
        by_node[key] += nbytes
    return {ptr: nbytes for ptr, (nbytes, _) in found.items()}


def _storage(t: torch.Tensor) -> tuple[int, int]:
    s = t.untyped_storage()
    return s.data_ptr(), s.nbytes()


def ledger(model: torch.nn.Module, opt_state: list[torch.Tensor], data: dict[str, torch.Tensor],
           graph: dict[int, int]) -> None:
    gc.collect()
    owner: dict[int, str] = {}
    for name, t in data.items():
        if isinstance(t, torch.Tensor):  # not None, not a RowStore (recon_spill: the rows are in a file)
            owner.setdefault(_storage(t)[0], f"data: {name}")
    for t in opt_state:
        owner.setdefault(_storage(t)[0], "optimizer state")
    for n, p in model.named_parameters():
        owner.setdefault(_storage(p)[0], "model parameters")
    for n, b in model.named_buffers():
        owner.setdefault(_storage(b)[0], "model buffers" if "quantizer" not in n else "quantizer buffers")
    for m in model.modules():
        cache = getattr(m, "_wq_cache", None)
        if isinstance(cache, torch.Tensor):
            owner.setdefault(_storage(cache)[0], "cached fake-quantized weights")
    by, seen, big = collections.Counter(), {}, []
    objects = gc.get_objects()

    def held_by(obj: object) -> list[str]:
        out = []
        for r in gc.get_referrers(obj):
            if r is objects or r is big:
                continue
            if isinstance(r, dict):
                keys = [k for k, v in r.items() if v is obj][:2]
                out.append(f"dict{keys}")
            elif type(r).__name__ == "cell":  # a variable of a running function or of a closure
                frame, names = sys._getframe(), []
                while frame is not None:
                    names += [f"{frame.f_code.co_name}.{k}" for k, v in frame.f_locals.items() if v is obj]
                    frame = frame.f_back
                out.append("variable " + ",".join(names[:3]))
            else:
                out.append(type(r).__name__)
        return out[:4]

    for obj in objects:
        if isinstance(obj, torch.Tensor) and not obj.is_meta and obj.device.type == "cpu":
            ptr, n = _storage(obj)
            if ptr in seen:
                continue
            seen[ptr] = n
            key = owner.get(ptr, "graph-saved (also gc)" if ptr in graph else "other gc tensors")
            by[key] += n
            if key == "other gc tensors" and n > 1 << 20:
                big.append((n, tuple(obj.shape), obj.dtype, obj.requires_grad, type(obj.grad_fn).__name__,
                            held_by(obj)))
    graph_only = sum(n for p, n in graph.items() if p not in seen)
    print(f"RSS {_rss_mb():.0f} MB; {_heap_mb()}")
    for key, n in by.most_common():
        print(f"  {n / 2**20:8.1f} MB  {key}")
    print(f"  {graph_only / 2**20:8.1f} MB  saved by the step's autograd graph only")
    print(f"  {sum(by.values()) / 2**20 + graph_only / 2**20:8.1f} MB  in all")
    for n, *rest in sorted(big, key=lambda b: -b[0])[:12]:
        print(f"      other: {n / 2**20:6.1f} MB", *rest)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("images", type=int)
    ap.add_argument("units", type=int)
    ap.add_argument("--method", default="brecq")
    ap.add_argument("--iters", type=int, default=6)
    ap.add_argument("--step", type=int, default=4)
    ap.add_argument("--reuse-mib", type=int, default=32)
    ap.add_argument("--spill", choices=["on", "off"], default="on", help="recon_spill (on: the default)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    import ptqbench.algorithms.reconstruction as rc
    from ptqbench.bench.cells import calibration_images, load_model
    from ptqbench.heap import large_blocks_unmapped, set_reuse_limit
    from ptqbench.methods import Bits, build_method
    from ptqbench.methods.steps import Calibrate, unit_input
    from ptqbench.models import make_quantizable

    set_reuse_limit(args.reuse_mib)
    from ptqbench.algorithms.row_store import set_spill
    set_spill(args.spill == "on")
    torch.manual_seed(0)
    net, weights = load_model(args.model)
    calib, _ = calibration_images(net, args.images)
    method = build_method({"name": args.method, "iters": args.iters, "batch_size": 8, "progress": False}, Bits(4, 4))
    qm = make_quantizable(net, method.plan())
    print(f"{args.model} ({weights}) {args.method}, {args.images} images, {args.units} units, "
          f"{args.iters} steps, reuse limit {args.reuse_mib} MiB, recon_spill {args.spill}")
    with torch.no_grad(), large_blocks_unmapped():
        Calibrate()(qm, calib)
        x = unit_input(qm, calib)
    print(f"before the reconstruction: RSS {_rss_mb():.0f} MB")
    units, state, peak = qm.units[: args.units], {"unit": 0, "step": 0}, [0.0]
    real_loop, real_loss = rc._train_loop, rc._unit_loss

    def loop(unit, st, x_q, x_fp, target, cfg, opt, *a, **k):
        state["unit"] += 1
        state["step"] = 0
        state["data"] = {"x_q": x_q, "x_fp": x_fp, "target": target, "calib": calib, "unit_input": x}
        state["opt"] = opt
        return real_loop(unit, st, x_q, x_fp, target, cfg, opt, *a, **k)

    def loss(out, target, cfg, head, w=None):
        state["step"] += 1
        peak[0] = max(peak[0], _rss_mb())
        if state["unit"] == args.units and state["step"] == args.step:
            opt_state = [v for s in state["opt"].state.values() for v in s.values() if isinstance(v, torch.Tensor)]
            print(f"unit {units[-1].name}, step {args.step}, after the forward:")
            by_node = collections.Counter()
            ledger(qm.model, opt_state, state["data"], saved_by_graph(out, by_node))
            print("  the graph's saved storages by node:")
            for key, n in by_node.most_common(25):
                print(f"    {n / 2**20:7.2f} MB  {key}")
        return real_loss(out, target, cfg, head, w)

    rc._train_loop, rc._unit_loss = loop, loss
    from ptqbench.heap import large_blocks_reused
    with large_blocks_reused():
        rc.reconstruct(qm.model, units, x, method.config.engine_config())
    print(f"peak RSS seen at the steps {peak[0]:.0f} MB; after: {_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
