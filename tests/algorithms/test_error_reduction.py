"""ERQ's Aqer/Wqer, GPTQ and the Gram streaming they run on, on synthetic data with known answers."""

import pytest
import timm
import torch
from torch import nn

from ptqbench.models.units import model_units
from ptqbench.quant.dual_uniform import DualUniformQuantizer, outlier_columns
from ptqbench.quant.grid import Grid
from ptqbench.algorithms.error_reduction import (SOLVERS, gptq, inverse32_solve, proxy_matrix, refine_rounding,
                                                 ridge_correction, wqer)
from ptqbench.quant.modules import QuantLinear
from ptqbench.quant.ranges import RangeSearch
from ptqbench.algorithms.streaming import collect_grams, run_unit, split_chunks
from ptqbench.quant.uniform import UniformQuantizer
from ptqbench.models.structure import Unit


def _data(n=400, cin=24, cout=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(cin, cin, generator=g) / cin**0.5 + torch.eye(cin)
    x = torch.randn(n, cin, generator=g) @ mix + 0.3  # correlated inputs with a mean
    w = torch.randn(cout, cin, generator=g) / cin**0.5
    b = torch.randn(cout, generator=g) * 0.1
    return x.double(), w.double(), b.double()


def _grams(x, xq):
    a = torch.cat([xq, torch.ones(len(xq), 1, dtype=xq.dtype)], 1)
    f = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    return a, a.T @ a, a.T @ f


def _coarse(x, step=0.25):
    return torch.round(x / step) * step


def _ridge_problem():
    """Inputs X, their coarse quantization, Grams, [W, b] and the float output Y."""
    x, w, b = _data()
    a, G, C = _grams(x, _coarse(x))
    return x, a, G, C, torch.cat([w, b[:, None]], 1), x @ w.T + b


def test_ridge_closed_form_matches_least_squares_and_reduces_output_error():
    x, a, G, C, w_aug, y = _ridge_problem()
    lam = 3.0
    new = ridge_correction(G, C, w_aug, lam)
    # ridge as an ordinary least-squares problem on the stacked system [A; sqrt(lam) I]
    r = y - a @ w_aug.T
    a_st = torch.cat([a, lam**0.5 * torch.eye(a.shape[1], dtype=a.dtype)])
    r_st = torch.cat([r, torch.zeros(a.shape[1], r.shape[1], dtype=r.dtype)])
    beta = torch.linalg.lstsq(a_st, r_st).solution
    assert torch.allclose(new, w_aug + beta.T, atol=1e-9)
    err_plain = (a @ w_aug.T - y).pow(2).sum()
    err_ridge = (a @ new.T - y).pow(2).sum()
    err_ls = (a @ torch.linalg.lstsq(a, y).solution - y).pow(2).sum()  # the unregularized optimum
    assert err_ls <= err_ridge < err_plain


def test_the_released_float32_inverse_solve_is_the_same_ridge_to_float32_precision():
    x, a, G, C, w_aug, y = _ridge_problem()
    exact = ridge_correction(G, C, w_aug, 3.0)
    released = ridge_correction(G, C, w_aug, 3.0, SOLVERS["inverse32"])
    assert released.dtype == torch.float64 and not torch.equal(released, exact)
    assert torch.allclose(released, exact, atol=1e-4)
    m = torch.eye(3, dtype=torch.float64) * 2
    assert torch.equal(inverse32_solve(m, torch.ones(3, 1, dtype=torch.float64)), torch.full((3, 1), 0.5, dtype=torch.float64))


def test_ridge_zero_lambda_is_plain_least_squares_and_continuous():
    x, a, G, C, w_aug, y = _ridge_problem()
    exact = torch.linalg.lstsq(a, y).solution.T
    assert torch.allclose(ridge_correction(G, C, w_aug, 0.0), exact, atol=1e-8)
    assert torch.allclose(ridge_correction(G, C, w_aug, 1e-9), exact, atol=1e-6)
    # a dead input column (always 0) makes G singular: lambda = 0 still gives a finite answer
    x[:, 3] = 0
    a, G, C = _grams(x, _coarse(x))
    out = ridge_correction(G, C, w_aug, 0.0)
    assert torch.isfinite(out).all()


def _per_row_grid(w, bits):
    q = UniformQuantizer(bits, "weight", channel_axis=0, search=RangeSearch("minmax"))
    q.calibrate(w.float())
    s, z = q.elementwise_params(w.float())
    return q, Grid(s, z, q.qmin, q.qmax)


def test_rounding_refinement_never_increases_the_proxy():
    torch.manual_seed(0)
    rows, n = 32, 40
    frac = torch.rand(rows, n, dtype=torch.float64)
    d_floor, d_ceil = -frac * 0.1, (1 - frac) * 0.1
    use_ceil = frac >= 0.5  # round to nearest
    m = torch.randn(n, n, dtype=torch.float64)
    P = m @ m.T / n + 0.05 * torch.ones(n, n, dtype=torch.float64)
    start = torch.where(use_ceil, d_ceil, d_floor)
    out, flips = refine_rounding(d_floor, d_ceil, use_ceil, P, max_steps=100)
    end = torch.where(out, d_ceil, d_floor)
    before = torch.einsum("ri,ij,rj->r", start, P, start)
    after = torch.einsum("ri,ij,rj->r", end, P, end)
    assert flips > 0
    assert (after <= before + 1e-12).all()
    assert (after < before).any()


def test_wqer_ends_on_the_grid_and_beats_round_to_nearest():
    x, w, b = _data(n=600, cin=32, cout=12)
    q, grid = _per_row_grid(w, 3)
    xq = x  # FP input: the comparison isolates the weight error
    _, G, _ = _grams(x, xq)
    w_aug = torch.cat([w, b[:, None]], 1)
    new, stats = wqer(w_aug, G, len(x), grid, lam=1.0, refine=True, refine_steps=100)
    w_new = new[:, :-1].float()
    assert torch.equal(q(w_new), w_new)  # exactly on the quantizer's grid
    assert stats.rounds == 6  # 33 columns -> 16, 8, 4, 2, 1, 1 ... until only the bias is left
    y = x @ w.T + b
    err_rtn = (x @ q(w.float()).double().T + b - y).pow(2).mean()
    err_wqer = (x @ w_new.double().T + new[:, -1] - y).pow(2).mean()
    assert err_wqer < 0.7 * err_rtn


def test_proxy_matrix_is_mean_outer_plus_covariance():
    x, _, _ = _data(n=300, cin=10)
    _, G, _ = _grams(x, x)
    P = proxy_matrix(G, len(x), slice(2, 7))
    sub = x[:, 2:7]
    mu = sub.mean(0)
    assert torch.allclose(P, torch.outer(mu, mu) + torch.cov(sub.T), atol=1e-10)


def test_gptq_reduces_layer_output_error_versus_round_to_nearest():
    x, w, _ = _data(n=800, cin=64, cout=32)
    q, grid = _per_row_grid(w, 3)
    H = x.T @ x / len(x)
    rtn = q(w.float()).double()
    for act_order in (False, True):
        out, loss = gptq(w, H, grid, blocksize=16, act_order=act_order)
        assert torch.equal(q(out), out)  # on the grid
        err_gptq = (x @ (out.double() - w).T).pow(2).mean()
        err_rtn = (x @ (rtn - w).T).pow(2).mean()
        assert err_gptq < 0.8 * err_rtn, (act_order, err_gptq, err_rtn)
        assert loss > 0


def test_dual_uniform_gives_outlier_columns_their_own_scale():
    torch.manual_seed(0)
    w = torch.randn(80, 30) * 0.05
    w[:, [4, 17]] *= 25  # two outlier input channels
    mask = outlier_columns(w, n_columns=80 // 20)
    assert mask[4] and mask[17] and int(mask.sum()) <= 4
    dq = DualUniformQuantizer(4, "weight", divisor=20, search=RangeSearch("minmax"))
    dq.calibrate(w)
    single = UniformQuantizer(4, "weight", channel_axis=0, search=RangeSearch("minmax"))
    single.calibrate(w)
    normal = ~dq.column_mask
    err_dual = (dq(w) - w)[:, normal].pow(2).mean()
    err_single = (single(w) - w)[:, normal].pow(2).mean()
    assert err_dual < 0.1 * err_single
    assert torch.equal(dq(dq(w)), dq(w))


def test_dual_uniform_first_seen_tie_break_is_the_released_counter_order():
    """Released: per row, the outlier columns (sorted), counted with collections.Counter;
    most_common keeps first-insertion order among equal counts. Ties here are common: 24 rows
    give only a few outlier hits per column."""
    from collections import Counter

    torch.manual_seed(3)
    w = torch.randn(24, 40)
    n = 24 // 20 + 3
    pos_thr = torch.stack([torch.quantile(r[r > 0], 0.99) for r in w])
    neg_thr = torch.stack([torch.quantile(r[r < 0], 0.01) for r in w])
    outlier = (w > pos_thr[:, None]) | (w < neg_thr[:, None])
    counter = Counter()
    for row in outlier:
        counter.update(torch.nonzero(row)[:, 0].tolist())
    released = {c for c, _ in counter.most_common(n)}
    first_seen = outlier_columns(w, n, tie_break="first_seen")
    by_column = outlier_columns(w, n)
    assert set(torch.nonzero(first_seen)[:, 0].tolist()) == released
    assert not torch.equal(first_seen, by_column), "pick a seed whose tie order differs"


def test_streaming_passes_drop_each_input_chunk_as_its_output_is_made():
    """The unit passes of ERQ and GPTQ hold the calibration activations once: the outputs are
    written over the input list, so no input chunk outlives the pass."""
    import weakref

    lin = nn.Linear(12, 5)
    layer = QuantLinear(lin, None, None)
    unit = Unit("layer", layer, layer)
    for run in (lambda ch: run_unit(unit, ch), lambda ch: collect_grams(unit, ch, {"layer": layer})[1]):
        chunks = [torch.randn(2, 7, 12) for _ in range(3)]
        inputs = [weakref.ref(c) for c in chunks]
        outs = run(chunks)
        assert outs is chunks and all(o.shape == (2, 7, 5) for o in outs)
        assert all(r() is None for r in inputs), "an input chunk is still held after the pass"


def test_gram_streaming_is_chunk_independent_and_exact():
    torch.manual_seed(0)
    lin = nn.Linear(12, 5)
    iq = UniformQuantizer(4, "post_ln", search=RangeSearch("minmax"))
    layer = QuantLinear(lin, iq, None)
    x = torch.randn(10, 7, 12)
    iq.calibrate(x)
    unit = Unit("layer", layer, layer)
    stats = {}
    for size in (1, 3, 10):
        grams, outs = collect_grams(unit, split_chunks(x, size), {"layer": layer}, cross=True, dtype=torch.float64)
        stats[size] = grams["layer"]
        assert torch.allclose(torch.cat(outs), layer(x))
    xq = iq(x).reshape(-1, 12).double()
    _, G, C = _grams(x.reshape(-1, 12).double(), xq)
    for st in stats.values():
        assert st.rows == 70
        assert torch.allclose(st.G, G, atol=1e-9) and torch.allclose(st.C, C, atol=1e-9)


@pytest.mark.parametrize("arch", ["deit_tiny_patch16_224", "swin_tiny_patch4_window7_224"])
def test_units_reproduce_the_model(arch):
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        h = x
        for unit in model_units(model):
            h = unit.forward(h)
        assert torch.equal(h, model(x))


def _small_swin() -> nn.Module:
    """Swin with every structural feature (windows, shifts, PatchMerging without bias), small widths."""
    torch.manual_seed(0)
    return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, embed_dim=32,
                             depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8)).eval()


@pytest.mark.parametrize("method", ["erq", "gptq"])
def test_erq_and_gptq_run_on_swin_and_leave_weights_on_the_grid(method):
    from ptqbench.methods import Bits, build_method
    from ptqbench.models import make_quantizable
    from ptqbench.quant.modules import QuantConv2d

    m = build_method({"name": method}, Bits(4, 4))
    qm = make_quantizable(_small_swin(), m.plan())
    x = torch.randn(4, 3, 224, 224)
    stats = m.quantize(qm, x)
    layers = {n: l for n, l in qm.model.named_modules() if isinstance(l, (QuantLinear, QuantConv2d))}
    assert len(layers) == 25  # 5 blocks x 4 Linears, 3 PatchMerging reductions, patch conv, head
    for name, layer in layers.items():
        assert layer.weight_quantizer.calibrated, name
        assert torch.equal(layer.weight_quantizer(layer.weight), layer.weight), f"{name} is off its grid"
        assert layer._wq_cache is None, f"{name} holds a cached fake-quantized weight after calibration"
    with torch.no_grad():
        assert torch.isfinite(qm.model(x)).all()
    if method == "erq":
        assert stats["aqer_layers"] == 24 and stats["wqer_layers"] == 25  # Aqer skips the patch conv
        assert stats["dual_uniform_layers"] == 10 and stats["refine_flips"] > 0
        reductions = [l for n, l in layers.items() if n.endswith("downsample.reduction")]
        assert len(reductions) == 3 and all(l.bias is not None for l in reductions)
    else:
        assert stats["gptq_layers"] == 25
