"""Figures of the per-layer quantization error: SQNR by layer (one panel per model and W/A, one
line per method) and a sensitivity analysis (accuracy and output SQNR per layer or role, with one
unit quantized and with all but one). Each method keeps the look the report gives it
(`ptqbench.report.names.method_style`: colour, marker, dashes), so the figures read in grayscale."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

from ptqbench.report.names import method_label, method_style, model_label


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _short(layer: str) -> str:
    """`blocks.3.attn.qkv` -> `3.attn.qkv`, `layers.1.blocks.0.mlp.fc1` -> `1.0.mlp.fc1`."""
    parts = [p for p in layer.split(".") if p not in ("blocks", "layers", "stages")]
    return ".".join(parts)


def _save(fig: Any, path: Path) -> list[Path]:
    path.parent.mkdir(parents=True, exist_ok=True)
    out = [Path(f"{path}.png"), Path(f"{path}.pdf")]
    fig.savefig(out[0], dpi=150)
    fig.savefig(out[1])
    _plt().close(fig)
    return out


def layer_sqnr_series(records: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], dict[str, list]]:
    """(model, bits) -> method -> [(index, layer, mean SQNR over the runs)], from job records
    with `layer_sqnr` (runs of one setting with several seeds are averaged per layer)."""
    acc: dict[tuple[str, str], dict[str, dict[str, list]]] = {}
    for r in records:
        layers = (r.get("layer_sqnr") or {}).get("layers") or []
        if r.get("status") != "ok" or not layers:
            continue
        c = r.get("config") or {}
        key = ((c.get("model") or {}).get("name", "?"), (r.get("bits") or {}).get("name", "?"))
        per_layer = acc.setdefault(key, {}).setdefault((c.get("method") or {}).get("name", "?"), {})
        for ly in layers:
            if ly.get("sqnr_db") is not None:
                per_layer.setdefault(ly["layer"], [ly["index"], []])[1].append(float(ly["sqnr_db"]))
    return {key: {m: sorted((i, name, sum(v) / len(v)) for name, (i, v) in layers.items())
                  for m, layers in methods.items()} for key, methods in acc.items()}


def plot_layer_sqnr(records: Iterable[Mapping[str, Any]], path: Path) -> Optional[list[Path]]:
    """SQNR (dB) of each quantized layer's output against FP, by layer in forward order; one panel
    per (model, W/A), one line per method. PNG and PDF at `path`.png/.pdf; None without data."""
    series = layer_sqnr_series(records)
    if not series:
        return None
    plt = _plt()
    keys = sorted(series)
    ncols = min(2, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(7.5 * ncols, 3.6 * nrows + 0.6), squeeze=False, layout="constrained")
    for ax in axes.flat[len(keys):]:
        ax.set_visible(False)
    for ax, key in zip(axes.flat, keys):
        ticks: dict[int, str] = {}
        for method, pts in sorted(series[key].items()):
            colour, marker, dash = method_style(method)
            ax.plot([p[0] for p in pts], [p[2] for p in pts], color=colour, marker=marker, ls=dash, ms=3.5, lw=1.2,
                    label=method_label(method))
            ticks.update({p[0]: _short(p[1]) for p in pts})
        step = max(1, math.ceil(len(ticks) / 40))
        idx = sorted(ticks)[::step]
        ax.set_xticks(idx, [ticks[i] for i in idx], rotation=90, fontsize=6)
        model, bits = key
        ax.set_title(f"{model_label(model)} {bits.upper()}")
        ax.set_ylabel("SQNR vs FP (dB)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, frameon=False)
    fig.suptitle("Per-layer output SQNR against the FP model (calibration images)", fontsize=10)
    return _save(fig, path)


def plot_sensitivity(frame: Any, path: Path, title: str) -> list[Path]:
    """Accuracy (top) and output SQNR (bottom) per unit: 'only this unit quantized' and 'all
    quantized but this unit', with the FP and fully quantized accuracy as reference lines.
    `frame` is `ptqbench.analyze.sensitivity`'s table (a `unit` column, then per mode
    `<mode>_top1` and `<mode>_sqnr_db`); `frame.attrs` holds `fp_top1` and `quant_top1`."""
    plt = _plt()
    n = len(frame)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(6.0, 0.22 * n + 2.5), 6.4), sharex=True, layout="constrained")
    x = list(range(n))
    styles = {"only": ("#0072B2", "o", "-", "only this quantized"), "all_but": ("#D55E00", "s", "--", "all but this quantized")}
    for mode, (colour, marker, dash, label) in styles.items():
        if f"{mode}_top1" in frame:
            top.plot(x, frame[f"{mode}_top1"], color=colour, marker=marker, ls=dash, ms=4, label=label)
            bottom.plot(x, frame[f"{mode}_sqnr_db"], color=colour, marker=marker, ls=dash, ms=4, label=label)
    if "layer_sqnr_db" in frame and frame["layer_sqnr_db"].notna().any():
        bottom.plot(x, frame["layer_sqnr_db"], color="0.3", marker="^", ls=":", ms=4, label="layer output, all quantized")
    top.axhline(frame.attrs["fp_top1"], color="0.4", ls="--", lw=1, label="Full Prec.")
    top.axhline(frame.attrs["quant_top1"], color="0.1", ls=":", lw=1, label="all quantized")
    top.set_ylabel("top-1 (%)")
    bottom.set_ylabel("SQNR vs FP (dB)")
    bottom.set_xticks(x, [_short(u) for u in frame["unit"]], rotation=90, fontsize=7)
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, frameon=False)
    top.set_title(title, fontsize=10)
    return _save(fig, path)
