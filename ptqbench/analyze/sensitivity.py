"""Sensitivity analysis of a quantized model: which layers (or roles) lose the accuracy.

For each unit (a quantized layer, or every quantizer of one role) two evaluations:
- `only`: this unit quantized, everything else FP: the damage the unit does by itself;
- `all_but`: everything quantized except this unit: what keeping the unit in FP would win back.
Each gives top-1 on the evaluation images and the SQNR (dB) of the model's logits against the FP
logits. Quantizers keep the parameters the method fitted (with every other quantizer active), so
the numbers say where the method's own quantization loses accuracy, as AIMET's QuantAnalyzer does
per layer. The evaluation images are held in memory and reused by every evaluation.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

from ptqbench.errors import ConfigError
from ptqbench.progress import progress
from ptqbench.quant.base import Quantizer
from ptqbench.quant.calibration import quantizers
from ptqbench.analyze.sqnr import quantized_layers, sqnr_db

GRANULARITIES = ("layer", "role")
MODES = ("only", "all_but")


def analysis_units(model: nn.Module, granularity: str) -> dict[str, list[Quantizer]]:
    """The units of the analysis, each with its (enabled) quantizers, in model order: quantized
    layers (`layer`) or quantizer roles (`role`: weight, post_ln, q, k, post_softmax, ...)."""
    if granularity not in GRANULARITIES:
        raise ConfigError(f"analyze.granularity={granularity!r}; choose one of {', '.join(GRANULARITIES)}")
    if granularity == "layer":
        units = {name: [q for q in qs if q.enabled] for name, (_, qs) in quantized_layers(model).items()}
    else:
        units = {}
        for q in quantizers(model).values():
            if q.enabled:
                units.setdefault(q.role, []).append(q)
    units = {k: v for k, v in units.items() if v}
    if not units:
        raise ConfigError("the model has no enabled quantizer: quantize it with a method other than fp first")
    return units


@torch.no_grad()
def logits_of(model: nn.Module, batches: Sequence[torch.Tensor]) -> torch.Tensor:
    """The model's logits over the batches, concatenated (float32, on the CPU)."""
    return torch.cat([model(b).float().cpu() for b in batches])


def top1(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return 100.0 * float((logits.argmax(1) == labels).float().mean())


def logits_sqnr(ref: torch.Tensor, x: torch.Tensor) -> Optional[float]:
    ref64, x64 = ref.double(), x.double()
    return sqnr_db(float(ref64.pow(2).sum()), float((x64 - ref64).pow(2).sum()))


def sensitivity_table(model: nn.Module, batches: Sequence[torch.Tensor], labels: torch.Tensor,
                      units: dict[str, list[Quantizer]], modes: Sequence[str] = MODES,
                      layer_sqnr: Optional[dict[str, dict[str, Any]]] = None,
                      run: Callable[[nn.Module, Sequence[torch.Tensor]], torch.Tensor] = logits_of) -> Any:
    """One row per unit (`unit`, `quantizers`, per mode `<mode>_top1`, `<mode>_drop`,
    `<mode>_sqnr_db`; with `layer_sqnr` {layer: record entry} also `layer_sqnr_db` and
    `local_sqnr_db`), as a DataFrame whose `attrs` hold `fp_top1`, `quant_top1`, `quant_sqnr_db`
    and `images`. Quantizer states are restored afterwards."""
    import pandas as pd

    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise ConfigError(f"analyze.modes={list(modes)}; choose among {', '.join(MODES)}")
    every = [q for q in quantizers(model).values()]
    saved = [q.enabled for q in every]
    active = [q for q in every if q.enabled]

    def set_state(on: set[int]) -> None:
        for q in active:
            q.enabled = id(q) in on

    was_training = model.training
    model.eval()
    try:
        quant_logits = run(model, batches)
        set_state(set())
        fp_logits = run(model, batches)
        fp1, q1 = top1(fp_logits, labels), top1(quant_logits, labels)
        rows = []
        all_ids = {id(q) for q in active}
        for name, qs in progress(list(units.items()), desc="sensitivity", unit="unit"):
            ids = {id(q) for q in qs}
            row: dict[str, Any] = {"unit": name, "quantizers": len(qs)}
            for mode in modes:
                set_state(ids if mode == "only" else all_ids - ids)
                lg = run(model, batches)
                acc = top1(lg, labels)
                row.update({f"{mode}_top1": acc, f"{mode}_drop": fp1 - acc, f"{mode}_sqnr_db": logits_sqnr(fp_logits, lg)})
            if layer_sqnr is not None:
                ly = layer_sqnr.get(name) or {}
                row.update(layer_sqnr_db=ly.get("sqnr_db"), local_sqnr_db=ly.get("local_sqnr_db"))
            rows.append(row)
    finally:
        for q, e in zip(every, saved):
            q.enabled = e
        model.train(was_training)
    frame = pd.DataFrame(rows)
    frame.attrs.update(fp_top1=fp1, quant_top1=q1, quant_sqnr_db=logits_sqnr(fp_logits, quant_logits),
                       images=int(labels.numel()))
    return frame


def table_markdown(frame: Any, header: str) -> str:
    """The table as Markdown under a one-paragraph header (numbers with 2 decimals, `--` for an
    infinite SQNR)."""
    cols = list(frame.columns)
    lines = [header, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in frame.iterrows():
        cells = []
        for c in cols:
            v = r[c]
            if isinstance(v, float):
                cells.append("--" if v != v else f"{v:.2f}")
            else:
                cells.append("--" if v is None else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
