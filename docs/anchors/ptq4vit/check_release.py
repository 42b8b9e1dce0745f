"""Checks on the patched PTQ4ViT release that need no calibration run (README.md, "Checks").

    python docs/anchors/ptq4vit/check_release.py --src <patched checkout> --calib <calib .pt> \
        [--model deit_tiny_patch16_224] [--bits 4 4] [--modules NAME ...]

<patched checkout>: run.sh with KEEP_SRC=1 (or SRC_DIR=...) prints its path; <calib .pt>: the file
docs/anchors/common/export_calib.py writes (run.sh leaves it in OUT_DIR). Reads the checkout, writes
nothing. Three parts:

1. Attention. Every timm `Attention` of the model `utils.models.get_net` builds runs the released
   `attention_forward` (q @ k^T and attn @ v through the `MatMul` modules), and in raw (FP) mode the
   logits equal timm 1.0.31's own forward (fused `scaled_dot_product_attention`) to float rounding,
   before and after `wrap_modules_in_net`. One forward with hooks: every wrapped module (conv,
   Linears, both matmuls of each block) runs once per forward, with the class and bits the released
   configs/PTQ4ViT.py + test_all.py's cfg_modifier give it.
2. Twin uniform on the softmax. The released `SoSPTQSLBatchingQuantMatMul.quant_input_A` against a
   plain two-region quantizer (x < split: round(x / (split/(L-1))) * split/(L-1); x >= split:
   round(x (L-1)) / (L-1)) on the block-0 attention map, for every split 2^-m the search tries.
3. Hessian weights. The gradients the released `HessianQuantCalibrator.batching_quant_calib`
   collects (its own code: `grad_hook` on each module, loss KL(log_softmax(pred), FP softmax)
   `batchmean`, sub-batches of 4, every other module in raw mode), recorded instead of running
   `calibration_step2`, against dL/dO of ptqbench's loss (cross entropy against the FP model's own
   top-1, summed; `ptqbench/algorithms/hessian_search.py`) on the same modules and images.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", required=True, help="patched checkout (run.sh with KEEP_SRC=1)")
    p.add_argument("--calib", required=True, help="calibration file (export_calib.py)")
    p.add_argument("--model", default="deit_tiny_patch16_224")
    p.add_argument("--bits", type=int, nargs=2, default=(4, 4), metavar=("W", "A"))
    p.add_argument("--time-grads", action="store_true",
                   help="also time the released gradient passes alone (all wrapped modules, no search)")
    p.add_argument("--modules", nargs="*", default=["patch_embed.proj", "blocks.0.attn.qkv", "blocks.0.attn.matmul1",
                                                    "blocks.0.attn.matmul2", "blocks.5.mlp.fc2", "head"])
    args = p.parse_args(argv)

    torch.set_num_threads(int(os.environ.get("THREADS", 1)))
    os.environ.setdefault("PTQ4VIT_DEVICE", "cpu")
    src = os.path.abspath(args.src)
    os.chdir(src)  # the release imports configs/ relative to the working directory
    sys.path[:0] = [os.path.join(src, "example"), src]
    import test_all  # noqa: E402  (patched example/test_all.py: P3 makes .cuda() a no-op on CPU)
    import timm
    from utils import net_wrap
    from utils.models import attention_forward, get_net
    from utils.quant_calib import HessianQuantCalibrator

    calib = torch.load(args.calib, map_location="cpu", weights_only=False)
    x = calib["images"]
    print(f"calibration: {x.shape[0]} images from {args.calib} (seed {calib.get('seed')})")

    def fresh_cfg():
        cfg = test_all.init_config("PTQ4ViT")
        return test_all.cfg_modifier(linear_ptq_setting=(1, 1, 1), metric="hessian", bit_setting=tuple(args.bits))(cfg)

    # -- 1. attention and wrapping ------------------------------------------------------------
    weights = os.path.join(os.environ.get("PTQBENCH_DATA", "/work/shared/data"), "weights", args.model + ".safetensors")
    ref = timm.create_model(args.model, pretrained=True, pretrained_cfg_overlay=dict(file=weights)).eval()
    net = get_net(args.model)
    attn = [m for m in net.modules() if isinstance(m, timm.models.vision_transformer.Attention)]
    n_rel = sum(getattr(m.forward, "__func__", None) is attention_forward for m in attn)
    print(f"1. released attention_forward on {n_rel}/{len(attn)} Attention modules "
          f"(timm's fused_attn flag on the reference: {ref.blocks[0].attn.fused_attn})")
    with torch.no_grad():
        l_ref = ref(x)
        l_rel = net(x)
        print(f"   logits, released unfused forward vs timm fused forward: max |diff| {float((l_rel - l_ref).abs().max()):.3g}"
              f" (max |logit| {float(l_ref.abs().max()):.3g}), top-1 equal on {int((l_rel.argmax(1) == l_ref.argmax(1)).sum())}/{len(x)}")
        wrapped = net_wrap.wrap_modules_in_net(net, fresh_cfg())
        calls = {n: 0 for n in wrapped}
        hs = [m.register_forward_hook(lambda m, i, o, n=n: calls.__setitem__(n, calls[n] + 1)) for n, m in wrapped.items()]
        l_wrap = net(x)
        for h in hs:
            h.remove()
    kinds = {}
    for n, m in wrapped.items():
        bits = (f"w{m.w_bit}a{m.a_bit}" if hasattr(m, "w_bit") else f"A{m.A_bit}B{m.B_bit}")
        kinds.setdefault(f"{type(m).__name__} {bits}", []).append(n)
    print(f"   wrapped, raw mode: logits max |diff| vs timm {float((l_wrap - l_ref).abs().max()):.3g}; "
          f"{sum(c == 1 for c in calls.values())}/{len(calls)} wrapped modules ran once in the forward")
    for k, names in kinds.items():
        print(f"   {len(names):3d} x {k}: {names[0]}{', ...' if len(names) > 1 else ''}")

    # -- 2. twin uniform on the softmax ------------------------------------------------------
    from quant_layers.matmul import SoSPTQSLBatchingQuantMatMul
    sos = net.blocks[0].attn.matmul2
    assert isinstance(sos, SoSPTQSLBatchingQuantMatMul)
    probs = []
    h = sos.register_forward_hook(lambda m, i, o: probs.append(i[0].detach()))
    with torch.no_grad():
        net(x[:2])
    h.remove()
    a = probs[0]
    L = sos.A_qmax  # released: 2^(A_bit-1) levels per region
    print(f"2. twin softmax, block 0 attention map {tuple(a.shape)}, A_bit {sos.A_bit}, levels per region {L}:")
    for m in range(20):
        split = torch.tensor(2.0 ** -m)
        sos.split, sos.A_interval = split, split / (L - 1)
        rel = sos.quant_input_A(a.clone())
        low = (a / (split / (L - 1))).round().clamp(0, L - 1) * (split / (L - 1))
        high = (a * (L - 1)).round().clamp(0, L - 1) / (L - 1)
        plain = torch.where(a < split, low, high)
        d = (rel - plain)
        above = a >= split
        print(f"   m={m:2d} split={float(split):.3g}: released - plain: max |diff| {float(d.abs().max()):.4g}, "
              f"mean over x >= split {float(d[above].mean()) if above.any() else float('nan'):.4g} "
              f"({float(above.float().mean()):.2%} of entries), over x < split {float(d[~above].mean()):.4g}")
        if m == 19:
            break

    # -- 3. Hessian weights --------------------------------------------------------------------
    net = get_net(args.model)
    wrapped = net_wrap.wrap_modules_in_net(net, fresh_cfg())
    sel = {n: wrapped[n] for n in args.modules}
    grads = {}
    for n, m in sel.items():
        def record(self=m, n=n):  # replaces calibration_step2: keep the collected gradient, skip the search
            grads[n] = self.raw_grad.clone()
        m.calibration_step2 = record
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, calib["labels"]), batch_size=len(x))
    HessianQuantCalibrator(net, sel, loader, sequential=False, batch_size=4).batching_quant_calib()
    for m in wrapped.values():
        m.mode = "raw"

    # the tensor the released (deprecated, non-full) backward hook hands over is dL/dO: the KL loss's
    # gradient at each module output through autograd, first sub-batch of 4
    outs = {}
    def keep(n):
        def hook(m, i, o):  # returns None: the output is left as it is
            o.retain_grad()
            outs[n] = o
        return hook
    with torch.no_grad():
        raw_pred_softmax = F.softmax(net(x), dim=-1)
    hs = [sel[n].register_forward_hook(keep(n)) for n in sel]
    net.zero_grad()
    pred = net(x[:4])
    F.kl_div(F.log_softmax(pred, dim=-1), raw_pred_softmax[:4], reduction="batchmean").backward()
    for h in hs:
        h.remove()
    same = [n for n in sel if torch.equal(outs[n].grad.reshape(-1), grads[n][:len(outs[n].grad)].reshape(-1))]
    print(f"3. grad_hook's grad_output[0] == autograd dL/dO of the KL loss (first sub-batch): {len(same)}/{len(sel)} modules bit-identical")

    # ptqbench's definition on the same (raw-mode) model: CE against the FP top-1, summed
    outs = {}
    hs = [sel[n].register_forward_hook(keep(n)) for n in sel]
    net.zero_grad()
    logits = net(x)
    F.cross_entropy(logits, logits.detach().argmax(-1), reduction="sum").backward()
    for h in hs:
        h.remove()
    with torch.no_grad():
        pred4 = torch.cat([F.softmax(net(x[i:i + 4]), -1) for i in range(0, len(x), 4)])
        print(f"3. Hessian weights ({len(x)} images): FP softmax of the sub-batches of 4 vs of the whole batch "
              f"(raw_pred): max |diff| {float((pred4 - F.softmax(net(x), -1)).abs().max()):.3g}")
        for n in sel:
            g_rel = grads[n].reshape(outs[n].shape).float()
            g_ce = outs[n].grad.float()
            corr = torch.corrcoef(torch.stack([g_rel.abs().flatten(), g_ce.abs().flatten()]))[0, 1]
            print(f"   {n:22s} released: max |g| {float(g_rel.abs().max()):.3g}, mean |g| {float(g_rel.abs().mean()):.3g}, "
                  f"exact zeros {float((g_rel == 0).float().mean()):.1%} | CE vs FP top-1: max |g| {float(g_ce.abs().max()):.3g}, "
                  f"mean |g| {float(g_ce.abs().mean()):.3g} | corr(|g_rel|, |g_ce|) {float(corr):.3f}")

    if args.time_grads:
        import time
        net = get_net(args.model)
        wrapped = net_wrap.wrap_modules_in_net(net, fresh_cfg())
        for m in wrapped.values():
            m.calibration_step2 = lambda: None  # no search: the gradient and activation passes alone
        t0 = time.time()
        HessianQuantCalibrator(net, wrapped, loader, sequential=False, batch_size=4).batching_quant_calib()
        print(f"4. released gradient passes alone ({len(wrapped)} modules, {len(x)} images, no search): "
              f"{time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
