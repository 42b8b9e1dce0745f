"""The scale reparameterization stays an identity on the function when Swin pads its windows.

timm's Swin block (like mmdet's ShiftWindowMSA, tests/test_detection.py) zero-pads the norm1 output
to a multiple of the window before qkv when a feature map is not a multiple of it. A tiny random
timm Swin at 72 x 72 pads both stages (18 -> 21, 9 -> 14 tokens a side); at 56 x 56 nothing pads.
Every method that reparameterizes (repq, erq, gptq, dopq, aiq) is checked right after its own
reparameterization call: with every quantizer off the model must be the FP model. repq changes
nothing else, so it is also checked after its whole quantize().
"""

from __future__ import annotations

import copy

import pytest
import torch
from timm.models.swin_transformer import SwinTransformer

from ptqbench.methods import Bits, build_method
from ptqbench.models import make_quantizable
from ptqbench.quant.calibration import quant_disabled
from ptqbench.algorithms.reparam import reparameterize_all

PADDED, UNPADDED = 72, 56
TOL = 1e-5  # relative error of float rounding; the released padding gives ~1e-1 (see the last test)
REPARAM_MODULES = dict.fromkeys(["repq", "erq", "gptq", "dopq", "aiq"], "ptqbench.methods.steps")  # the Reparameterize step


class _Reparameterized(Exception):
    """Stops a method right after its reparameterization (what follows changes weights on purpose)."""


def _swin(img: int) -> SwinTransformer:
    torch.manual_seed(0)
    return SwinTransformer(img_size=img, patch_size=4, window_size=7, embed_dim=24, depths=(2, 2), num_heads=(2, 4),
                           num_classes=10).eval()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _error_after_reparam(name: str, img: int, monkeypatch: pytest.MonkeyPatch, **options) -> float:
    """Relative error, quantizers off, of the model right after `name`'s reparameterization."""
    import importlib

    fp = _swin(img)
    model = copy.deepcopy(fp)
    torch.manual_seed(1)
    calib, x = torch.randn(4, 3, img, img), torch.randn(2, 3, img, img)
    method = build_method({"name": name, **options}, Bits(8, 8))
    qm = make_quantizable(model, method.plan())
    assert any(p.pad_site is not None for p in qm.reparam_pairs)
    module = importlib.import_module(REPARAM_MODULES[name])
    real = reparameterize_all
    seen: dict[str, float] = {}

    def check(*args, **kwargs):
        real(*args, **kwargs)
        with torch.no_grad(), quant_disabled(model):
            seen["err"] = _rel(model(x), fp(x))
        raise _Reparameterized

    monkeypatch.setattr(module, "reparameterize_all", check)
    with torch.no_grad(), pytest.raises(_Reparameterized):
        method.quantize(qm, calib)
    return seen["err"]


@pytest.mark.parametrize("name", ["repq", "erq", "gptq", "dopq", "aiq"])
def test_reparameterization_is_exact_with_and_without_window_padding(name, monkeypatch):
    # dopq's I&S-ViT pipeline trains the FP weights before its reparameterization: without that stage
    options = {"reconstruct": False} if name == "dopq" else {}
    for img in (PADDED, UNPADDED):
        err = _error_after_reparam(name, img, monkeypatch, **options)
        assert err < TOL, (name, img, err)


def test_repq_with_quantizers_off_is_the_fp_model_at_a_padded_resolution():
    fp = _swin(PADDED)
    model = copy.deepcopy(fp)
    torch.manual_seed(1)
    calib, x = torch.randn(4, 3, PADDED, PADDED), torch.randn(2, 3, PADDED, PADDED)
    method = build_method({"name": "repq"}, Bits(4, 4))
    qm = make_quantizable(model, method.plan())
    with torch.no_grad():
        method.quantize(qm, calib)
        with quant_disabled(model):
            assert _rel(model(x), fp(x)) < TOL
        assert _rel(model(x), fp(x)) > 10 * TOL  # the quantizers are on again and act


def test_released_padding_is_not_exact(monkeypatch):
    """`exact_padding=false` (the released RepQ-ViT detection code) pads with zeros after the fold:
    exact where nothing pads, wrong where the windows are padded."""
    assert _error_after_reparam("repq", UNPADDED, monkeypatch, exact_padding=False) < TOL
    assert _error_after_reparam("repq", PADDED, monkeypatch, exact_padding=False) > 1e-2
