"""sha256 of a quantized model's whole state and its logits on 8 images, to compare two checkouts
(or two settings) bit for bit: DeiT-T (the shared weights and train-pool images when present),
32 calibration images, W4A4, the bench's bounded method settings with 5 steps per unit (the grid
search of the grid-recon methods on 8 images), 1 thread.

    PYTHONPATH=<checkout> python scripts/hash_quantized_state.py brecq [--spill off] [--option dfq_below=zero ...]

Run it from a folder outside the checkout being compared, or PYTHONPATH is not the tree imported.
"""

from __future__ import annotations

import argparse
import hashlib

import torch
import yaml


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("method")
    ap.add_argument("--spill", choices=["on", "off"], help="recon_spill (left unset: the checkout's default)")
    ap.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="a method setting over the bench's, its value read as YAML (dfq_below=zero, search_images=32), repeatable")
    args = ap.parse_args()
    torch.set_num_threads(1)
    import ptqbench
    from ptqbench.bench import cells
    from ptqbench.bench.__main__ import method_options

    if args.spill is not None:
        from ptqbench.algorithms.row_store import set_spill
        set_spill(args.spill == "on")
    net, _ = cells.load_model("deit_tiny")
    images, source = cells.calibration_images(net, 32)
    opts = method_options(args.method, 5)
    if "grid_rounds" in opts:
        opts["search_images"] = 8  # the grid search is not what is compared; 8 images keep it short
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep:
            ap.error(f"--option {item!r}: write KEY=VALUE")
        opts[key] = yaml.safe_load(value)
    qm, meter, _ = cells._quantized(net, args.method, "w4a4", images, opts)
    h = hashlib.sha256()
    for k, t in sorted(qm.model.state_dict().items()):
        if torch.is_tensor(t):
            h.update(k.encode())
            h.update(t.detach().contiguous().cpu().numpy().tobytes())
    with torch.no_grad():
        h.update(qm.model(images[:8]).numpy().tobytes())
    print(args.method, *args.option, f"spill={args.spill or 'default'}", source, ptqbench.__file__.rsplit("/ptqbench/", 1)[0],
          h.hexdigest()[:16], f"{meter.seconds:.1f}s", flush=True)


if __name__ == "__main__":
    main()
