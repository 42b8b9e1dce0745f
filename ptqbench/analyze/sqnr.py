"""Per-layer quantization error: the SQNR (dB) of every quantized layer's output against FP.

A "layer" is a module that owns quantizers as direct children (QuantLinear, QuantConv2d,
QuantMatMul, a LayerNorm with an input quantizer, a residual block ...). On a few calibration
images, per layer:

- `sqnr_db`: the layer's output in the quantized model against the same layer's output in the
  FP model (every quantizer off): the error accumulated up to and including this layer, which is
  what decides the accuracy;
- `local_sqnr_db`: the layer's output against the same layer run on the same (quantized-model)
  input with only its own quantizers off: the error this layer adds by itself.

Both come from one patched model: an FP pass records every layer's output, a quantized pass
compares with it and re-runs each layer with its own quantizers switched off. Sums are kept per
layer in float64, so the cost in memory is one chunk of layer outputs. SQNR = 10 log10(sum x^2 /
sum (x - x_q)^2); None when the two outputs are identical (infinite SQNR).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import torch
from torch import nn

from ptqbench.quant.base import Quantizer
from ptqbench.quant.calibration import quant_disabled, quantizers, switched


@dataclass
class LayerSQNR:
    index: int                 # forward order (first call) in the model
    layer: str                 # module name
    kind: str                  # module class
    role: str                  # roles of its activation quantizers ("weight" when it has only weights)
    quantizers: list[str]
    sqnr_db: Optional[float]
    local_sqnr_db: Optional[float]


@dataclass
class _Sums:
    signal: float = 0.0
    noise: float = 0.0
    local_signal: float = 0.0
    local_noise: float = 0.0


def sqnr_db(signal: float, noise: float) -> Optional[float]:
    """10 log10(signal / noise); None for noise 0 (identical tensors), -inf never (signal 0 with
    noise gives a very low, finite value)."""
    if noise <= 0.0:
        return None
    return 10.0 * math.log10(max(signal, 1e-30) / noise)


def quantized_layers(model: nn.Module) -> dict[str, tuple[nn.Module, list[Quantizer]]]:
    """Every module that owns quantizers as direct children (a quantizer nested in another
    quantizer belongs to the outer one's owner), with those quantizers, in module order."""
    named = dict(model.named_modules())
    out: dict[str, tuple[nn.Module, list[Quantizer]]] = {}
    for name, m in named.items():
        if not isinstance(m, Quantizer):
            continue
        owner = name.rpartition(".")[0]
        anc = owner
        while anc and not isinstance(named[anc], Quantizer):
            anc = anc.rpartition(".")[0]
        if anc and isinstance(named[anc], Quantizer):
            continue  # nested in another quantizer: counted with the outer one
        out.setdefault(owner, (named[owner], []))[1].append(m)
    return out


def _role(qs: list[Quantizer]) -> str:
    acts = [q.role for q in qs if q.role != "weight"]
    return "+".join(dict.fromkeys(acts)) if acts else "weight"


def _first_tensor(out: Any) -> Optional[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    return None


def _sq(x: torch.Tensor) -> float:
    return float(x.double().pow(2).sum())


@dataclass
class SQNRReport:
    layers: list[LayerSQNR]
    output_sqnr_db: Optional[float]
    images: int
    seconds: float = 0.0
    skipped: list[str] = field(default_factory=list)   # layers that never ran or have no tensor output

    def as_record(self) -> dict[str, Any]:
        vals = [ly.sqnr_db for ly in self.layers if ly.sqnr_db is not None]
        return {"images": self.images, "seconds": round(self.seconds, 3), "output_sqnr_db": self.output_sqnr_db,
                "mean_sqnr_db": sum(vals) / len(vals) if vals else None, "min_sqnr_db": min(vals) if vals else None,
                "layers": [asdict(ly) for ly in self.layers], "skipped": self.skipped}


@torch.no_grad()
def measure_layer_sqnr(model: nn.Module, images: torch.Tensor, chunk: int = 8,
                       reference: Optional[nn.Module] = None) -> SQNRReport:
    """SQNR of every quantized layer (with at least one enabled quantizer) on `images`, in
    chunks of `chunk` images; quantizer states are left as they were.

    `reference`: the FP model patched the same way (same module names), every quantizer off: the
    FP outputs come from it. None: from `model` with its quantizers off, which is the FP model
    only for methods that keep the FP weights (GPTQ and ERQ update them, AIQViT adds FP branches)."""
    if images.shape[0] == 0:
        raise ValueError("per-layer SQNR needs at least one image")
    start = time.perf_counter()
    layers = {n: (m, qs) for n, (m, qs) in quantized_layers(model).items() if any(q.enabled for q in qs)}
    sums = {n: _Sums() for n in layers}
    order: dict[str, int] = {}
    out_sums = _Sums()
    state = {"phase": "fp", "busy": False}
    seen: set[str] = set()  # layers compared in this chunk's quantized pass
    fp_out: dict[str, torch.Tensor] = {}
    raw_in: dict[str, tuple[tuple, dict]] = {}  # a layer's inputs before its own pre-hooks (a LayerNorm's input quantizer)

    def keep_input(name: str):
        def pre_hook(mod: nn.Module, args: tuple, kwargs: dict) -> None:
            if not state["busy"] and state["phase"] == "quant" and name not in raw_in:
                raw_in[name] = (args, kwargs)
        return pre_hook

    def make_hook(name: str, module: nn.Module, qs: list[Quantizer]):
        def hook(mod: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            if state["busy"]:
                return
            y = _first_tensor(output)
            if y is None:
                return
            order.setdefault(name, len(order))
            if state["phase"] == "fp":  # only without a reference model
                if name in fp_out:  # a module called twice per forward: compare its first call only
                    return
                fp_out[name] = y.detach().clone()
                return
            if name not in fp_out or fp_out[name].shape != y.shape or name in seen:
                return
            seen.add(name)
            ref = fp_out[name]
            s = sums[name]
            s.signal += _sq(ref)
            s.noise += _sq(y.float() - ref.float())
            state["busy"] = True
            try:
                a, kw = raw_in.get(name, (args, kwargs))
                with switched(qs, False):
                    own = _first_tensor(mod(*a, **kw))
            finally:
                state["busy"] = False
            if own is not None and own.shape == y.shape:
                s.local_signal += _sq(own)
                s.local_noise += _sq(y.float() - own.float())
        return hook

    def capture(name: str):
        def hook(mod: nn.Module, args: tuple, output: Any) -> None:
            y = _first_tensor(output)
            if y is not None and name not in fp_out:
                fp_out[name] = y.detach().clone()
        return hook

    handles = [m.register_forward_hook(make_hook(n, m, qs), with_kwargs=True) for n, (m, qs) in layers.items()]
    handles += [m.register_forward_pre_hook(keep_input(n), prepend=True, with_kwargs=True) for n, (m, _) in layers.items()]
    if reference is not None:
        ref_modules = dict(reference.named_modules())
        handles += [ref_modules[n].register_forward_hook(capture(n)) for n in layers if n in ref_modules]
        reference.eval()
    was_training = model.training
    model.eval()
    try:
        for i in range(0, images.shape[0], chunk):
            x = images[i:i + chunk]
            fp_out.clear()
            state.update(phase="fp")
            fp_model = model if reference is None else reference
            with quant_disabled(fp_model):
                ref = _first_tensor(fp_model(x))
            seen.clear()
            raw_in.clear()
            state.update(phase="quant")
            y = _first_tensor(model(x))
            if ref is not None and y is not None:
                out_sums.signal += _sq(ref)
                out_sums.noise += _sq(y.float() - ref.float())
    finally:
        for h in handles:
            h.remove()
        fp_out.clear()
        raw_in.clear()
        model.train(was_training)
    result, skipped = [], []
    for name in sorted(layers, key=lambda n: order.get(n, len(order))):
        s = sums[name]
        if name not in order or s.signal == 0.0 and s.noise == 0.0:
            skipped.append(name)
            continue
        m, qs = layers[name]
        result.append(LayerSQNR(order[name], name, type(m).__name__, _role(qs), [q.qname or "" for q in qs],
                                sqnr_db(s.signal, s.noise), sqnr_db(s.local_signal, s.local_noise)))
    for k, ly in enumerate(result):
        ly.index = k
    return SQNRReport(result, sqnr_db(out_sums.signal, out_sums.noise), int(images.shape[0]),
                      time.perf_counter() - start, skipped)


def layer_sqnr_record(model: nn.Module, calib: torch.Tensor, device: torch.device, images: int,
                      reference: Optional[nn.Module] = None) -> Optional[dict[str, Any]]:
    """The run record's `layer_sqnr`: per-layer SQNR on the first `images` calibration images
    (0: not measured, None); `reference` says which FP outputs it compares with."""
    if images <= 0:
        return None
    rec = measure_layer_sqnr(model, calib[:images].to(device), reference=reference).as_record()
    rec["reference"] = "fp_model" if reference is not None else "quantizers_off"
    return rec


def fp_twin(settings: Any, plan: Any, fingerprint: str, device: torch.device) -> Optional[nn.Module]:
    """The job's FP model built again (same weights; random weights from the same seed), patched
    with the same plan and every quantizer off: the FP reference for methods that change the
    weights. None, with a warning, when the weights do not come out the same (fingerprint)."""
    import logging

    from ptqbench.models import create_model, make_quantizable, model_entry, state_fingerprint

    m = settings.model  # a ptqbench.config.JobSettings
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.run.seed)
        model, _ = create_model(model_entry(m.name, m.arch, m.tag), m.checkpoint, m.weights_dir, m.pretrained,
                                m.allow_download)
    if state_fingerprint(model) != fingerprint:
        logging.getLogger("ptqbench").warning(
            "per-layer SQNR: the model built again has other weights than the job's; comparing with the quantized "
            "model's quantizers off instead (record: layer_sqnr.reference=quantizers_off)")
        return None
    twin = make_quantizable(model.to(device).eval(), plan).model
    for q in quantizers(twin).values():
        q.enabled = False
    return twin


def layer_sqnr_for_job(settings: Any, qm: Any, calib: torch.Tensor, device: torch.device, fingerprint: str,
                       images: int) -> Optional[dict[str, Any]]:
    """Per-layer SQNR of a job's quantized model `qm` against its FP model on `images`
    calibration images (0: None): what run.py puts in the record."""
    if images <= 0:
        return None
    return layer_sqnr_record(qm.model, calib, device, images, fp_twin(settings, qm.plan, fingerprint, device))
