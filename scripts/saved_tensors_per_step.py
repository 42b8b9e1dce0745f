"""What autograd saves for one block-reconstruction step: at the first step of unit UNIT (after its
forward, before the backward), the tensors held by the graph's nodes (`_saved_*`, storages counted
once), by node type and shape. Runs the bench cost cell of DeiT-T, 32 images, W4A4, 2 steps per
unit, batch 8, 1 thread.

Usage: python scripts/saved_tensors_per_step.py dopq 3 [KEY=VALUE ...]   (method settings, e.g. dfq_below=zero)
"""
import collections
import sys

import torch


def saved_storages(out: torch.Tensor) -> dict[int, tuple[int, tuple]]:
    """Every storage the autograd graph of `out` saves: data_ptr -> (bytes, (node, attribute,
    shape) of the first node found saving it). Built-in nodes keep theirs in `_saved_*`, autograd
    Functions in `saved_tensors`."""
    found, stack, visited = {}, [out.grad_fn], set()
    while stack:
        fn = stack.pop()
        if fn is None or fn in visited:
            continue
        visited.add(fn)
        for attr in dir(fn):
            if not (attr.startswith("_saved_") or attr == "saved_tensors"):
                continue
            try:
                v = getattr(fn, attr)
            except Exception:  # some saved values cannot be read back (freed or not tensors)
                continue
            for t in (v if isinstance(v, (tuple, list)) else (v,)):
                if isinstance(t, torch.Tensor):
                    ptr = t.untyped_storage().data_ptr()
                    if ptr not in found:
                        found[ptr] = (t.untyped_storage().nbytes(), (type(fn).__name__, attr, tuple(t.shape)))
        stack += [f for f, _ in fn.next_functions]
    return found


def saved_by_node(out: torch.Tensor) -> collections.Counter:
    """Bytes of the saved storages over 1000 elements' worth, by (node, attribute, shape)."""
    by = collections.Counter()
    for nbytes, key in saved_storages(out).values():
        if nbytes > 4000:
            by[key] += nbytes
    return by


def main() -> None:
    method, unit_index = sys.argv[1], int(sys.argv[2])
    extra = dict(item.split("=", 1) for item in sys.argv[3:])
    torch.set_num_threads(1)
    import ptqbench.algorithms.reconstruction as rc
    from ptqbench.bench import cells
    from ptqbench.bench.__main__ import method_options

    real, steps, done = rc._unit_loss, [0], []

    def probe(out, target, cfg, head, w=None):
        steps[0] += 1
        if not done and steps[0] > unit_index * 2:  # 2 steps per unit
            by = saved_by_node(out)
            print(f"saved for one step: {sum(by.values()) / 2**20:.1f} MB")
            for key, nbytes in by.most_common(20):
                print(f"{nbytes / 2**20:7.2f} MB  {key}")
            done.append(True)
        return real(out, target, cfg, head, w)

    rc._unit_loss = probe
    net, _ = cells.load_model("deit_tiny")
    images, _ = cells.calibration_images(net, 32)
    cells._quantized(net, method, "w4a4", images, {**method_options(method, 2), **extra})


if __name__ == "__main__":
    main()
