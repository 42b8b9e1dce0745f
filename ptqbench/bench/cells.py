"""One measurement each, run in a fresh process by `python -m ptqbench.bench`."""

from __future__ import annotations

import copy
import statistics
import time
from typing import Any

import torch


def load_model(name: str) -> tuple[torch.nn.Module, str]:
    """The model's local weights when found, else random ones (speed and memory do not depend on
    the values)."""
    from ptqbench.models import create_model, model_entry

    entry = model_entry(name)
    try:
        return create_model(entry, allow_download=False)[0], "pretrained"
    except Exception:
        return create_model(entry, pretrained=False)[0], "random"


def calibration_images(model: torch.nn.Module, size: int) -> tuple[torch.Tensor, str]:
    """Real imagenet-mini train images when the shared data is present, else random tensors."""
    from ptqbench.data import ImageNetFolder, calibration_batch
    from ptqbench.paths import data_root

    root = data_root() / "imagenet-mini"
    if (root / "train").is_dir():
        from timm.data import create_transform, resolve_data_config

        ds = ImageNetFolder(root, "train", create_transform(**resolve_data_config({}, model=model)))
        return calibration_batch(ds, size, 0)[0], "imagenet-mini train"
    return torch.randn(size, 3, 224, 224, generator=torch.Generator().manual_seed(0)), "random"


def _quantized(model: torch.nn.Module, method_name: str, bits: str, calib: torch.Tensor, options: dict[str, Any]):
    """The job pipeline's quantization step (`ptqbench.pipeline.quantize`) on `model`."""
    from ptqbench.methods import Bits, build_method
    from ptqbench.pipeline import quantize

    w, a = (int(v) for v in bits[1:].split("a"))
    method = build_method({"name": method_name, **options}, Bits(w, a))
    qm, _, meter = quantize(method, model, calib, calib.device, interval=0.02)
    return qm, meter, meter.start_rss_mb


def cost(model: str, method: str, bits: str, calib: int, device: str, options: dict[str, Any]) -> dict[str, Any]:
    """Seconds in `method.quantize` (calibration + the method's own work) and peak memory."""
    net, weights = load_model(model)
    images, source = calibration_images(net, calib)
    dev = torch.device(device)
    _, meter, before = _quantized(net.to(dev), method, bits, images.to(dev), options)
    return {"model": model, "method": method, "bits": bits, "calib": calib, "quantize_s": round(meter.seconds, 1),
            "peak_rss_mb": round(meter.peak_rss_mb), "method_extra_mb": round(meter.peak_rss_mb - before),
            "peak_cuda_mb": meter.peak_cuda_mb and round(meter.peak_cuda_mb), "weights": weights, "images": source}


def _forward_seconds(model: torch.nn.Module, x: torch.Tensor) -> float:
    return _forward_cost(model, x)[0]


def _minor_faults() -> int:
    """Minor page faults of this process so far (fresh pages the kernel zeroes on first touch: a
    forward that reuses its heap takes none; ptqbench.heap)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _forward_cost(model: torch.nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """Wall seconds and this process's CPU seconds (user + system, all threads) of one forward.
    On a shared machine the CPU time moves far less with other jobs' load than the wall time."""
    t0, c0 = time.perf_counter(), time.process_time()
    model(x)
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    return time.perf_counter() - t0, time.process_time() - c0


@torch.no_grad()
def _fold_logit_diff(q: torch.nn.Module, folding: list[Any], x: torch.Tensor) -> float:
    """Largest logit difference between `folding`'s layers folded and the same layers on two paths."""
    folded = q(x)
    for m in folding:
        m.fold_compensation = False
    try:
        branch = q(x)
    finally:
        for m in folding:
            m.fold_compensation = True
    return float((folded - branch).abs().max())


@torch.no_grad()  # as a job evaluates: no autograd graph, and the layers' inference paths (weight cache, folds)
def eval_overhead(model: str, method: str, bits: str, batch: int, repeats: int, device: str,
                  options: dict[str, Any] | None = None, compile: bool = False) -> dict[str, Any]:
    """Forward time of the FP model, the fake-quantized model, and the fake-quantized model with
    its quantizers switched off ("unfused": the same graph, whose attention cannot use timm's
    fused kernel because q @ k^T, the softmax and attn @ v must each be quantized) on the same
    batch in one process, measured in turn (FP, quantized, unfused, FP, ...) and reported as the
    best of `repeats`, so a load spike on a shared machine hits every side rather than biasing a
    ratio. `ratio` = quantized / FP; `cpu_ratio` the same in process CPU time (CPU only);
    `faults_per_forward` the minor page faults per timed forward, all sides together; `fq_ratio` = quantized / unfused, the cost of the fake
    quantization alone. With `compile` the quantized side is `eval.compile`'s torch.compile of the
    model (FP stays eager, the unfused side is left out: switching quantizers off would recompile);
    `compile_s` is its first forward, `compiled_equal` whether its logits equal the eager ones bit
    for bit. Where layers fold a compensation branch into their weight (AIQViT, `lowrank_eval:
    folded`), the same layers are also timed with the two-path branch: `branch_img_s`,
    `fold_ratio` = folded / branch time, `fold_max_abs_diff` between their logits, and
    `fold_fp_max_abs_diff` the same with the quantizers off (the fold's own rounding; with them on,
    a rounding difference can move an activation across a code boundary, and the next layers
    carry that on)."""
    from ptqbench.heap import every_block_reused
    from ptqbench.quant.calibration import quant_disabled

    net, weights = load_model(model)
    dev = torch.device(device)
    fp = copy.deepcopy(net).eval().to(dev)
    calib, _ = calibration_images(net, 32)
    qm, _, _ = _quantized(net.to(dev), method, bits, calib.to(dev), options or {})
    q = qm.model.eval()
    x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(0)).to(dev)

    def unfused() -> float:
        with quant_disabled(q):
            return _forward_seconds(q, x)

    folding = [m for m in q.modules() if hasattr(m, "folds") and m.folds()]

    def branch() -> float:
        for m in folding:
            m.fold_compensation = False
        try:
            return _forward_seconds(q, x)
        finally:
            for m in folding:
                m.fold_compensation = True

    extra: dict[str, Any] = {}
    if compile:
        from ptqbench.pipeline import eval_module

        eager_logits = q(x)
        t0 = time.perf_counter()
        q = eval_module(q, True)
        compiled_logits = q(x)
        extra = {"compile_s": round(time.perf_counter() - t0, 1), "compiled_equal": torch.equal(eager_logits, compiled_logits),
                 "compiled_max_abs_diff": float((eager_logits - compiled_logits).abs().max())}
    with every_block_reused():  # as a job evaluates (ptqbench.pipeline.evaluated)
        _forward_seconds(fp, x), _forward_seconds(q, x)  # warm-up (and the weight fake-quant cache)
        if not compile:
            unfused()
        if folding and not compile:
            extra["fold_max_abs_diff"] = _fold_logit_diff(q, folding, x)
            with quant_disabled(q):  # the fold alone: no activation code can flip
                extra["fold_fp_max_abs_diff"] = _fold_logit_diff(q, folding, x)
        faults0 = _minor_faults()
        t_fp, t_q, t_u, t_b, c_fp, c_q = [], [], [], [], [], []
        for _ in range(repeats):
            for times, cpus, m in ((t_fp, c_fp, fp), (t_q, c_q, q)):
                wall, cpu = _forward_cost(m, x)
                times.append(wall)
                cpus.append(cpu)
            if not compile:
                t_u.append(unfused())
            if folding and not compile:
                t_b.append(branch())
        faults = (_minor_faults() - faults0) / (repeats * (2 if compile else 3 + bool(t_b)))
    if t_b:
        extra.update(branch_img_s=round(batch / min(t_b), 1), fold_ratio=round(min(t_q) / min(t_b), 2))
    best_fp, best_q = min(t_fp), min(t_q)
    best_u = min(t_u) if t_u else None
    return {"model": model, "method": method, "bits": bits, "batch": batch, "weights": weights, "compile": compile,
            "fp_img_s": round(batch / best_fp, 1), "unfused_img_s": best_u and round(batch / best_u, 1),
            "q_img_s": round(batch / best_q, 1), "ratio": round(best_q / best_fp, 2),
            "ratio_median": round(statistics.median_high(t_q) / statistics.median_high(t_fp), 2),
            "fq_ratio": best_u and round(best_q / best_u, 2),
            "cpu_ratio": round(min(c_q) / min(c_fp), 2) if dev.type == "cpu" else None,
            "faults_per_forward": round(faults), **extra}


def _label_quantizers(model: torch.nn.Module) -> list[Any]:
    """Wrap every enabled quantizer's forward in a profiler range named `fq:<kind>:<role>`, so the
    profile says which quantizer kind the fake-quantization ops belong to; returns the hook handles."""
    from ptqbench.quant.base import Quantizer

    handles, stack = [], []
    for m in model.modules():
        if isinstance(m, Quantizer):
            label = f"fq:{m.kind}:{m.role}"

            def pre(mod, args, label=label):
                stack.append(torch.profiler.record_function(label).__enter__())

            def post(mod, args, out):
                stack.pop().__exit__(None, None, None)

            handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    return handles


@torch.no_grad()
def profile_eval(model: str, method: str, bits: str, batch: int, repeats: int, device: str,
                 options: dict[str, Any] | None = None, top: int = 12) -> dict[str, Any]:
    """Per-op CPU profile of `repeats` fake-quantized forwards (after one warm-up that fills the
    weight cache): the `top` ATen ops by self time, and the total time inside each quantizer kind
    (`fq:<kind>:<role>` ranges), each as a share of the profiled wall time. Shows where the
    quantized forward spends what the FP forward does not."""
    from torch.profiler import ProfilerActivity, profile

    from ptqbench.heap import every_block_reused

    net, weights = load_model(model)
    dev = torch.device(device)
    calib, _ = calibration_images(net, 32)
    qm, _, _ = _quantized(net.to(dev), method, bits, calib.to(dev), options or {})
    q = qm.model.eval()
    x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(0)).to(dev)
    handles = _label_quantizers(q)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    try:
        with every_block_reused():  # the heap a job evaluates under, as the eval part times it
            q(x)
            t0 = time.perf_counter()
            with profile(activities=activities) as prof:
                for _ in range(repeats):
                    q(x)
            wall_us = (time.perf_counter() - t0) * 1e6
    finally:
        for h in handles:
            h.remove()
    events = prof.key_averages()
    ops = sorted((e for e in events if not e.key.startswith("fq:")), key=lambda e: e.self_cpu_time_total, reverse=True)
    ranges = sorted((e for e in events if e.key.startswith("fq:")), key=lambda e: e.cpu_time_total, reverse=True)
    return {"model": model, "method": method, "bits": bits, "batch": batch, "weights": weights,
            "forward_ms": round(wall_us / repeats / 1e3, 1),
            "top_ops": [{"op": e.key, "calls_per_fwd": e.count // repeats, "self_ms_per_fwd": round(e.self_cpu_time_total / repeats / 1e3, 2),
                         "share": round(e.self_cpu_time_total / wall_us, 3)} for e in ops[:top]],
            "quantizers": [{"range": e.key, "calls_per_fwd": e.count // repeats, "ms_per_fwd": round(e.cpu_time_total / repeats / 1e3, 2),
                            "share": round(e.cpu_time_total / wall_us, 3)} for e in ranges]}
