"""Released I&S-ViT vs ptqbench `method=ias` with both reconstruction stages off: the calibration,
reparameterization and weight-calibration pipeline, compared tensor by tensor.

Both sides start from the same weights and calibration tensor. The released side runs its
`test_quant.py` flow without the two `recon_model` calls (activation init on the first 64
calibration images with weight quantization off, the fractional-mean-zero-point fold of every
norm1 -> qkv and norm2 -> fc1 pair, weight init on the same images). The ptqbench side runs
`method=ias` with `stage_one=false stage_three=false`. Then both models see the same images
with forward hooks on every module of interest, and the script prints the first module whose
input or output differs (or that all are bit-identical), then the parameters block by block.

    python docs/anchors/ias/compare_untrained.py --src /tmp/ias_anchor.XXXX/IaS-ViT \
        --calib anchor_runs/calib_deit_tiny_n32_seed0.pt --bits 4 --images 8

`--src` is a checkout patched by run.sh (the released code with this anchor's patches); the
calibration file is the one run.sh exported (../common/export_calib.py).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[3]


def released_model(src: Path, calib: torch.Tensor, bits: int) -> torch.nn.Module:
    """The released pipeline up to (not including) its reconstruction, as test_quant.py runs it."""
    sys.path.insert(0, str(src))
    from quant import quant_model, set_quant_state
    from utils.build_model import build_model

    model = build_model("deit_tiny_patch16_224").eval()
    q = quant_model(model, input_quant_params={"n_bits": bits, "channel_wise": False},
                    weight_quant_params={"n_bits": bits, "channel_wise": True}).eval()
    with torch.no_grad():
        set_quant_state(q, True, False)
        q(calib[:64])
        for block in q.blocks:
            for norm, nxt in ((block.norm1, block.attn.qkv), (block.norm2, block.mlp.fc1)):
                aq = nxt.input_quantizer
                d, z = aq.delta.reshape(-1), aq.zero_point.reshape(-1)
                td, tz = d.mean(), z.mean()
                r = d / td
                b = (-z * d) / r - (-tz * td)
                norm.weight.data = norm.weight.data / r
                norm.bias.data = norm.bias.data / r - b
                nxt.weight.data = nxt.weight.data * r
                nxt.bias.data = nxt.bias.data + torch.mm(nxt.weight.data, b.reshape(-1, 1)).reshape(-1)
                aq.channel_wise = False
                aq.delta = torch.nn.Parameter(td).contiguous()
                aq.zero_point = torch.nn.Parameter(tz).contiguous()
                nxt.weight_quantizer.inited.fill_(0)
        set_quant_state(q, True, True)
        q(calib[:64])
    return q


def ptqbench_model(calib: torch.Tensor, bits: int, weights: Path) -> torch.nn.Module:
    sys.path.insert(0, str(REPO))
    import timm

    from ptqbench.methods import Bits, build_method
    from ptqbench.models import make_quantizable

    model = timm.create_model("deit_tiny_patch16_224", pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(weights))).eval()
    method = build_method({"name": "ias", "stage_one": False, "stage_three": False, "progress": False},
                          Bits(bits, bits))
    qm = make_quantizable(model, method.plan())
    method.quantize(qm, calib)
    return qm.model


# released module name -> ptqbench module name, inside every block
MATMULS = {"attn.matmul1": "attn.matmul_qk", "attn.matmul2": "attn.matmul_av"}
BLOCK_MODULES = ("norm1", "attn.qkv", "attn.matmul1", "attn.matmul2", "attn.proj", "norm2", "mlp.fc1",
                 "mlp.act", "mlp.fc2", "")
QUANTIZERS = {"attn.qkv.input_quantizer": "attn.qkv.input_quantizer",
              "attn.proj.input_quantizer": "attn.proj.input_quantizer",
              "attn.matmul1.quantizer_A": "attn.matmul_qk.a_quantizer",
              "attn.matmul1.quantizer_B": "attn.matmul_qk.b_quantizer",
              "attn.matmul2.quantizer_B": "attn.matmul_av.b_quantizer",
              "mlp.fc1.input_quantizer": "mlp.fc1.input_quantizer",
              "mlp.fc2.input_quantizer": "mlp.fc2.input_quantizer"}


def hooked_outputs(model: torch.nn.Module, names: dict[str, str], x: torch.Tensor) -> dict[str, tuple]:
    seen: dict[str, tuple] = {}
    mods = dict(model.named_modules())
    handles = []
    for key, name in names.items():
        def hook(mod, inp, out, key=key):
            seen[key] = (inp[0].detach().clone() if inp else None, out.detach().clone())
        handles.append(mods[name].register_forward_hook(hook))
    with torch.no_grad():
        seen["logits"] = (None, model(x))
    for h in handles:
        h.remove()
    return seen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", type=Path, required=True, help="the patched released checkout (run.sh)")
    ap.add_argument("--calib", type=Path, required=True, help="calibration file written by export_calib.py")
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--images", type=int, default=8, help="calibration images compared in the forward")
    data = Path(os.environ.get("PTQBENCH_DATA", REPO.parent / "shared" / "data"))
    ap.add_argument("--weights", type=Path, default=data / "weights" / "deit_tiny_patch16_224.safetensors")
    args = ap.parse_args()
    torch.set_num_threads(1)
    calib = torch.load(args.calib)["images"]
    rel = released_model(args.src, calib, args.bits)
    ours = ptqbench_model(calib, args.bits, args.weights)

    names_rel = {"patch_embed": "patch_embed"}
    names_ours = {"patch_embed": "patch_embed"}
    for i in range(len(rel.blocks)):
        for m in BLOCK_MODULES:
            key = f"blocks.{i}.{m}".rstrip(".")
            names_rel[key] = key
            names_ours[key] = f"blocks.{i}.{MATMULS.get(m, m)}".rstrip(".")
    names_rel["head"] = names_ours["head"] = "head"
    x = calib[:args.images]
    a, b = hooked_outputs(rel, names_rel, x), hooked_outputs(ours, names_ours, x)
    for key in [*names_rel, "logits"]:
        (ia, oa), (ib, ob) = a[key], b[key]
        if (ia is not None and not torch.equal(ia, ib)) or not torch.equal(oa, ob):
            print(f"first difference: {key} (input equal: {ia is None or torch.equal(ia, ib)}, "
                  f"max |output difference| {float((oa - ob).abs().max()):.3g})")
            break
    else:
        print(f"all {len(names_rel)} hooked module outputs and the logits are bit-identical "
              f"({args.images} images, W{args.bits}A{args.bits})")

    from ptqbench.quant.calibration import quantizers
    pq = quantizers(ours)
    rmods, pmods = dict(rel.named_modules()), dict(ours.named_modules())
    for i in range(len(rel.blocks)):
        p = f"blocks.{i}."
        equal = [torch.equal(rmods[p + r].delta.detach().reshape(-1), pq[p + o].scale.reshape(-1))
                 and torch.equal(rmods[p + r].zero_point.detach().reshape(-1), pq[p + o].zero_point.reshape(-1))
                 for r, o in QUANTIZERS.items()]
        rs, ps = rmods[p + "attn.matmul2.quantizer_A"], pq[p + "attn.matmul_av.a_quantizer"]
        equal.append(float(rs.delta.detach()) == float(ps.eta) and float(rs.maxv) == float(ps.hi)
                     and float(rs.minv) == float(ps.lo))
        for lin in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"):
            equal.append(torch.equal(rmods[p + lin].weight, pmods[p + lin].weight)
                         and torch.equal(rmods[p + lin].bias, pmods[p + lin].bias)
                         and torch.equal(rmods[p + lin].weight_quantizer.delta.detach().reshape(-1),
                                         pq[p + lin + ".weight_quantizer"].scale.reshape(-1)))
        for norm in ("norm1", "norm2"):
            equal.append(torch.equal(rmods[p + norm].weight, pmods[p + norm].weight)
                         and torch.equal(rmods[p + norm].bias, pmods[p + norm].bias))
        print(f"block {i}: {sum(equal)}/{len(equal)} bit-identical (7 activation quantizers, SULQ, "
              f"4 Linears with their weight quantizers, 2 LayerNorms)")


if __name__ == "__main__":
    main()
