"""Streamed calibration (unit by unit, chunk by chunk) fits every quantizer exactly as the one pass
over the whole calibration batch does."""

import copy

import pytest
import torch

from ptqbench.errors import CalibrationError
from ptqbench.methods import Bits, build_method
from ptqbench.models import make_quantizable
from ptqbench.quant.calibration import calibrate, calibrate_one_pass, calibrate_streamed, quantizers
from tests.conftest import make_tiny_swin, make_tiny_vit

# every quantizer kind a method's plan installs: uniform (minmax / percentile / MSE, per tensor and
# per channel), log-sqrt2, twin uniform, two-scale, TanQ / DFQ, PTF, and the fully quantized roles
PLANS = [("minmax", {}), ("percentile", {}), ("repq", {}), ("ptq4vit", {}), ("tsptq", {"full": True}),
         ("dopq", {}), ("aiq", {}), ("repq", {"full": True})]


def _images(n: int = 7, size: int = 32) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def _patched(model, method: str, full: bool = False):
    m = build_method({"name": method}, Bits(4, 4), {"full": True} if full else None)
    return make_quantizable(copy.deepcopy(model), m.plan())


def _assert_same_fit(a, b) -> None:
    qa, qb = quantizers(a.model), quantizers(b.model)
    assert qa.keys() == qb.keys()
    for name in qa:
        assert qa[name].calibrated == qb[name].calibrated, name
        sa, sb = qa[name].state_dict(), qb[name].state_dict()
        assert sa.keys() == sb.keys(), name
        for k in sa:
            assert torch.equal(sa[k], sb[k]), f"{name}.{k}: {sa[k]} != {sb[k]}"
        assert qa[name].describe() == qb[name].describe(), name


@pytest.mark.parametrize("method,opts", PLANS, ids=[f"{m}{'-full' if o else ''}" for m, o in PLANS])
def test_streamed_calibration_equals_one_pass_on_tiny_vit(method, opts):
    torch.set_num_threads(1)
    model, x = make_tiny_vit(), _images()
    one, streamed = _patched(model, method, **opts), _patched(model, method, **opts)
    n_one = calibrate_one_pass(one.model, x)
    n_streamed = calibrate(streamed.model, x, units=streamed.units, chunk_size=3)  # uneven last chunk
    assert n_one == n_streamed == len(quantizers(one.model)) > 0
    _assert_same_fit(one, streamed)
    with torch.no_grad():
        assert torch.equal(one.model(x), streamed.model(x))


def test_streamed_calibration_holds_no_unit_s_quantized_weights_after_it():
    """Each unit's cached fake-quantized weights are freed once the pass leaves it; the next
    inference forward refills them with the same values."""
    from ptqbench.quant.modules import QuantLinear

    torch.set_num_threads(1)
    model, x = make_tiny_vit(), _images()
    qm = _patched(model, "repq")
    calibrate(qm.model, x, units=qm.units, chunk_size=3)
    layers = [m for m in qm.model.modules() if isinstance(m, QuantLinear)]
    assert layers and all(m._wq_cache is None for m in layers)
    with torch.no_grad():
        before = qm.model(x)
        assert all(m._wq_cache is not None for m in layers if m.weight_quantizer is not None)
        assert torch.equal(before, qm.model(x))


def test_streamed_calibration_equals_one_pass_on_tiny_swin():
    torch.set_num_threads(1)
    model, x = make_tiny_swin(), _images(5)
    one, streamed = _patched(model, "repq", False), _patched(model, "repq", False)
    calibrate_one_pass(one.model, x)
    calibrate_streamed(streamed.model, streamed.units, x, chunk_size=2)
    _assert_same_fit(one, streamed)


def test_streamed_calibration_fits_only_pending_quantizers_and_keeps_switches():
    model, x = make_tiny_vit(), _images(4)
    qm = _patched(model, "minmax", False)
    qs = list(quantizers(qm.model).values())
    qs[0].enabled = False
    assert calibrate(qm.model, x, units=qm.units, chunk_size=2) == len(qs) - 1
    assert not qs[0].calibrated and not qs[0].enabled
    assert all(q.calibrated and not q.auto_calibrate for q in qs[1:])
    assert all(not q._forward_pre_hooks and "see_matmul_operand" not in vars(q) for q in qs)
    assert calibrate(qm.model, x, units=qm.units) == 0  # nothing pending: no pass


def test_streamed_calibration_refuses_non_tensor_input_and_bad_chunk_size():
    qm = _patched(make_tiny_vit(), "minmax", False)
    with pytest.raises(CalibrationError, match="one tensor"):
        calibrate_streamed(qm.model, qm.units, [_images(2)])
    with pytest.raises(ValueError, match="chunk size"):
        calibrate_streamed(qm.model, qm.units, _images(2), chunk_size=0)


def test_streamed_calibration_refuses_non_finite_activations_like_one_pass():
    qm = _patched(make_tiny_vit(), "minmax", False)
    x = _images(4)
    x[3, 0, 0, 0] = float("nan")  # only in the last chunk
    with pytest.raises(CalibrationError, match="non-finite"):
        calibrate(qm.model, x, units=qm.units, chunk_size=2)


def test_quantiles_sorted_in_row_slices_equal_one_sort(monkeypatch):
    from ptqbench.quant import ranges

    x = torch.randn(7, 1000, generator=torch.Generator().manual_seed(2))
    qs = [0.001, 0.01, 0.5, 0.99, 0.999]
    whole = ranges.quantiles(x, qs)
    monkeypatch.setattr(ranges, "_SORT_SLICE_ELEMENTS", 3000)  # 3 rows per sort: slices of 3, 3, 1
    assert torch.equal(ranges.quantiles(x, qs), whole)
    assert torch.allclose(whole, torch.quantile(x, torch.tensor(qs), dim=1))
