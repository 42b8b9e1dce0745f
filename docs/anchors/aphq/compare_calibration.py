"""Released APHQ-ViT calibration (the QDrop/BRECQ port's first stage) vs ptqbench's grid search
(`method=qdrop method.iters=0`), quantizer by quantizer.

The released side is a dump written by the patched release (`DUMP_CALIB=path CALIB_ONLY=1
docs/anchors/aphq/run.sh qdrop_baseline W W SEED`, patch 08): every quantizer's scale and zero
point right after `wrap_reparamed_modules_in_net`, the calibrated state_dict, and the logits of
the first 64 validation images. The ptqbench side runs the grid search on the same calibration
tensor (the file run.sh exported) and the same weights, then both are compared:

- per quantizer: how many of its scales and zero points are bit-identical, and the largest
  relative scale difference;
- the LayerNorms after the reparameterization;
- the logits on the dump's validation images: largest difference and top-1 agreement.

    python docs/anchors/aphq/compare_calibration.py --dump /tmp/aphq_work/calib_w4.pt \
        --calib anchor_runs/calib_deit_tiny_n32_seed0.pt --bits 4 [--blocks 1]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[3]

# released module.quantizer -> ptqbench quantizer, inside every block
BLOCK_QUANTIZERS = {
    "attn.qkv.w_quantizer": "attn.qkv.weight_quantizer", "attn.qkv.a_quantizer": "attn.qkv.input_quantizer",
    "attn.proj.w_quantizer": "attn.proj.weight_quantizer", "attn.proj.a_quantizer": "attn.proj.input_quantizer",
    "attn.matmul1.A_quantizer": "attn.matmul_qk.a_quantizer", "attn.matmul1.B_quantizer": "attn.matmul_qk.b_quantizer",
    "attn.matmul2.A_quantizer": "attn.matmul_av.a_quantizer", "attn.matmul2.B_quantizer": "attn.matmul_av.b_quantizer",
    "mlp.fc1.w_quantizer": "mlp.fc1.weight_quantizer", "mlp.fc1.a_quantizer": "mlp.fc1.input_quantizer",
    "mlp.fc2.w_quantizer": "mlp.fc2.weight_quantizer", "mlp.fc2.a_quantizer": "mlp.fc2.input_quantizer",
}
OTHER_QUANTIZERS = {"patch_embed.proj.w_quantizer": "patch_embed.proj.weight_quantizer",
                    "head.w_quantizer": "head.weight_quantizer", "head.a_quantizer": "head.input_quantizer"}


def quantizer_map(blocks: int, head: bool = True) -> dict[str, str]:
    """Released quantizer name -> ptqbench's, for the patch embedding, the first `blocks` blocks
    and, with `head`, the head."""
    names = {r: o for r, o in OTHER_QUANTIZERS.items() if head or r.startswith("patch_embed")}
    for i in range(blocks):
        names.update({f"blocks.{i}.{r}": f"blocks.{i}.{o}" for r, o in BLOCK_QUANTIZERS.items()})
    return names


def ptqbench_calibrated(calib: torch.Tensor, bits: int, weights: Path, units: int) -> torch.nn.Module:
    sys.path.insert(0, str(REPO))
    import timm

    from ptqbench.methods import Bits, build_method
    from ptqbench.models import make_quantizable

    model = timm.create_model("deit_tiny_patch16_224", pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(weights))).eval()
    method = build_method({"name": "qdrop", "iters": 0, "search_images": None, "progress": False}, Bits(bits, bits))
    qm = make_quantizable(model, method.plan())
    if units < len(qm.units):  # the first `units` units only (a quick check; the rest keep min-max ranges)
        from ptqbench.algorithms.grid_search import search_model
        from ptqbench.methods.steps import Calibrate

        Calibrate()(qm, calib)
        c = method.config
        print(search_model(qm.model, qm.units[:units], calib, c.search_config(), qm.reparam_pairs, c.exact_padding))
    else:
        print(method.quantize(qm, calib))
    return qm.model


def compare(rel: dict, ours: torch.nn.Module, blocks: int) -> None:
    from ptqbench.quant.calibration import quantizers

    pq = quantizers(ours)
    names = quantizer_map(blocks, head=blocks == len(ours.blocks))
    total_equal = total = 0
    for r, o in names.items():
        a, q = rel["quantizers"][r], pq[o]
        rs, rz = a["scale"].reshape(-1).float(), a["zero_point"].reshape(-1).float().round()
        ps, pz = q.scale.reshape(-1), q.zero_point.reshape(-1)
        same = (rs == ps) & (rz == pz)
        total_equal += int(same.sum())
        total += same.numel()
        rel_diff = float(((rs - ps).abs() / rs.abs().clamp(min=1e-12)).max())
        flag = "" if bool(same.all()) else "  <-"
        print(f"{r:34s} {int(same.sum()):4d}/{same.numel():4d} equal, max rel scale diff {rel_diff:.2e}{flag}")
    print(f"quantizer parameters bit-identical: {total_equal}/{total}")
    sd = rel["state_dict"]
    for i in range(blocks):
        for norm in ("norm1", "norm2"):
            w, b = sd[f"blocks.{i}.{norm}.weight"], sd[f"blocks.{i}.{norm}.bias"]
            m = ours.get_submodule(f"blocks.{i}.{norm}")
            same = torch.equal(w, m.weight) and torch.equal(b, m.bias)
            print(f"blocks.{i}.{norm} after the fold: {'bit-identical' if same else 'differs'}, max |diff| weight "
                  f"{float((w - m.weight).abs().max()):.2e}, bias {float((b - m.bias).abs().max()):.2e}")
        for lin in ("attn.qkv", "mlp.fc1"):
            w, m = sd[f"blocks.{i}.{lin}.weight"], ours.get_submodule(f"blocks.{i}.{lin}")
            print(f"blocks.{i}.{lin} weight after the fold: {'bit-identical' if torch.equal(w, m.weight) else 'differs'}"
                  f", max |diff| {float((w - m.weight).abs().max()):.2e}")
    if blocks < len(ours.blocks):
        return
    with torch.no_grad():
        logits = ours(rel["val_images"])
    agree = float((logits.argmax(1) == rel["logits"].argmax(1)).float().mean())
    hits = [int((lg.argmax(1) == rel["val_labels"]).sum()) for lg in (rel["logits"], logits)]
    print(f"logits on {len(logits)} val images: max |diff| {float((logits - rel['logits']).abs().max()):.3g}, "
          f"top-1 agreement {agree:.3f}, correct released {hits[0]} / ptqbench {hits[1]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dump", type=Path, required=True, help="the released calibration dump (patch 08)")
    ap.add_argument("--calib", type=Path, required=True, help="calibration file written by export_calib.py")
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--blocks", type=int, default=None, help="search and compare only the patch embedding and "
                    "the first BLOCKS blocks (minutes instead of the whole model's 40)")
    data = Path(os.environ.get("PTQBENCH_DATA", REPO.parent / "shared" / "data"))
    ap.add_argument("--weights", type=Path, default=data / "weights" / "deit_tiny_patch16_224.safetensors")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rel = torch.load(args.dump, weights_only=False)
    calib = torch.load(args.calib)["images"]
    blocks = 12 if args.blocks is None else args.blocks
    compare(rel, ptqbench_calibrated(calib, args.bits, args.weights, 1 + blocks + (args.blocks is None)), blocks)


if __name__ == "__main__":
    main()
