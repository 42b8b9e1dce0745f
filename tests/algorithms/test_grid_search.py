"""The AdaLog / APHQ-ViT family's grid-search calibration: its grids are the released ones and each
search picks what a brute-force loop over the candidates picks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tests.conftest import make_tiny_swin, make_tiny_vit

from ptqbench.algorithms import grid_search as gs
from ptqbench.algorithms.grid_search import GridSearchConfig
from ptqbench.algorithms.layer_chunks import HeldChunks, Operand
from ptqbench.algorithms.streaming import layer_call
from ptqbench.errors import ConfigError
from ptqbench.methods import Bits, build_method
from ptqbench.methods.steps import Calibrate, GridSearch, walk_steps
from ptqbench.models import make_quantizable
from ptqbench.quant.calibration import quant_disabled
from ptqbench.quant.modules import QuantLinear, QuantMatMul
from ptqbench.quant.uniform import UniformQuantizer

CFG = GridSearchConfig(candidates=32, rounds=1, image_chunk=3, budget_mb=1)


@pytest.mark.parametrize("bits, num_zp", [(4, 16), (3, 8)])
def test_weight_grid_is_the_released_zero_point_by_width_grid(bits, num_zp):
    torch.manual_seed(0)
    w = torch.randn(5, 40)
    s, z = gs.weight_grid(w, bits, 128)
    assert s.shape == z.shape == (128, 5, 1)
    num_scale = 128 // num_zp
    assert z[:, 0, 0].tolist() == [float(v) for v in range(2 ** (bits - 1) - num_zp // 2, 2 ** (bits - 1) + num_zp // 2)
                                   for _ in range(num_scale)]
    widest = (w.amax(1) - w.amin(1)) / (2**bits - 1)
    narrowest = (torch.quantile(w, 0.9, dim=1) - torch.quantile(w, 1 - torch.tensor(0.9), dim=1)) / (2**bits - 1)
    torch.testing.assert_close(s[num_scale - 1, :, 0], widest)
    torch.testing.assert_close(s[0, :, 0], narrowest)


def test_act_grid_repeats_the_last_pair_and_clamps_tiny_scales():
    x = torch.zeros(2, 3, 4)
    x[0, 0, 0] = 1e-3
    s, z = gs.act_grid(x, 4, 128, per_channel=False)
    assert s.shape == z.shape == (1, 129)
    assert float(s.min()) == pytest.approx(gs.MIN_ACT_SCALE)
    assert s[0, -1] == s[0, -2] and z[0, -1] == z[0, -2]
    s, z = gs.act_grid(torch.randn(2, 3, 4), 4, 128, per_channel=True)
    assert s.shape == (4, 129)


def test_quantile_of_a_row_too_large_is_the_mean_over_equal_parts(monkeypatch):
    monkeypatch.setattr(gs, "TORCH_QUANTILE_LIMIT", 8)
    x = torch.randn(1, 24)
    q = torch.tensor([0.1, 0.9])
    parts = torch.quantile(x.reshape(1, 4, 6), q, dim=-1).mean(-1)  # 24 / 2 = 12 > 8, 24 / 4 = 6
    torch.testing.assert_close(gs.quantile_means(x, 1, gs.per_tensor_rows, [q])[0], parts)


def _torch_quantile_grids(x, a, bits, limit):
    """act_grid's and matmul_bounds' quantiles as torch.quantile gives them on the whole tensor."""
    pct = torch.tensor([0.9, 1.0])

    def qmean(rows, q):
        parts = 1
        while rows.shape[1] % parts or rows.shape[1] // parts > limit:
            parts *= 2
        return torch.quantile(rows.reshape(rows.shape[0], parts, -1), q, dim=-1).mean(-1)

    flat = x.reshape(1, -1)
    per_tensor = (qmean(flat, pct).T, qmean(flat, 1 - pct).T)
    x2 = x.reshape(-1, x.shape[-1])
    per_channel = (torch.quantile(x2, pct, dim=0).T, torch.quantile(x2, 1 - pct, dim=0).T)
    mm = torch.tensor([0.99, 0.99999])
    heads = a.transpose(0, 1).reshape(a.shape[1], -1)
    return per_tensor, per_channel, (qmean(heads, mm), qmean(heads, 1 - mm))


def _in_chunks(x, size):
    return Operand(x.shape, lambda: x.split(size)) if size else x


@pytest.mark.parametrize("limit, chunk", [(1 << 24, None), (1000, None), (1 << 24, 3), (1000, 3)])
def test_grids_take_torch_quantile_bit_for_bit_without_sorting_the_whole_tensor(monkeypatch, limit, chunk):
    """act_grid and matmul_bounds select their quantiles by radix selection over the operand's
    image chunks, and must give exactly torch.quantile's values on the whole tensor, also where a
    row is split into parts (`limit`: the released 2^24 split, forced small here; with chunks of 3
    images the parts' boundaries fall inside chunks)."""
    monkeypatch.setattr(gs, "TORCH_QUANTILE_LIMIT", limit)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 50, 24, generator=g) * torch.rand(24, generator=g) * 3
    x[0, 0, :3] = 40.0  # outliers and exact ties
    x[1, :, 5] = 0.25
    a = torch.softmax(torch.randn(4, 3, 50, 50, generator=g) * 4, dim=-1)
    (up_t, lo_t), (up_c, lo_c), (up_m, lo_m) = _torch_quantile_grids(x, a, 4, limit)
    for per_channel, up, lo in ((False, up_t, lo_t), (True, up_c, lo_c)):
        s, z = gs.act_grid(_in_chunks(x, chunk), 4, 32, per_channel=per_channel)
        d_min, d_max = up[:, 0:1] - lo[:, 0:1], up[:, 1:] - lo[:, 1:]
        ref = ((d_min + torch.linspace(0, 1, steps=2)[None, :] * (d_max - d_min)).repeat(1, 16) / 15).clamp(min=gs.MIN_ACT_SCALE)
        assert torch.equal(s[:, :-1], ref)
    upper, lower = gs.matmul_bounds(_in_chunks(a, chunk), 32)
    steps = torch.linspace(0, 1, steps=33)[:, None, None, None, None]
    assert torch.equal(upper, up_m[0].view(1, 1, -1, 1, 1) + steps * (up_m[1] - up_m[0]).view(1, 1, -1, 1, 1))
    assert torch.equal(lower, lo_m[1].view(1, 1, -1, 1, 1) + steps * (lo_m[0] - lo_m[1]).view(1, 1, -1, 1, 1))


def _brute_linear(layer: QuantLinear, x, out, s, z, weight: bool):
    """Score of each candidate by output MSE, one candidate at a time."""
    scores = []
    for p in range(s.shape[0] if weight else s.shape[1]):
        if weight:
            w = gs.qdq(layer.weight.detach(), s[p], z[p], layer.weight_quantizer.qmax)
            o = F.linear(layer.input_quantizer(x), w, layer.bias)
            scores.append((o - out).pow(2).mean(1).sum(0))  # per row
        else:
            xs = gs.qdq(x, s[0, p], z[0, p], layer.input_quantizer.qmax)
            o = F.linear(xs, layer.quantized_weight(), layer.bias)
            scores.append((o - out).pow(2).mean((1, 2)).sum(0))
    return torch.stack(scores).argmin(0)


def _tiny(name="qdrop", swin=False):
    model = make_tiny_swin() if swin else make_tiny_vit()
    m = build_method({"name": name, "iters": 0, "grid_candidates": 32, "grid_rounds": 1}, Bits(4, 4))
    return make_quantizable(model, m.plan()), m


def test_linear_searches_pick_what_brute_force_picks():
    qm, _ = _tiny()
    torch.manual_seed(1)
    x = torch.randn(6, 5, 32)
    layer = qm.model.get_submodule("blocks.0.attn.proj")
    out = F.linear(x, layer.weight, layer.bias).detach()
    sr = gs._Searcher(CFG)
    ws, wz = gs.weight_grid(layer.weight.detach(), 4, 64)
    a_s, a_z = gs.act_grid(x, 4, 64, per_channel=False)
    layer.input_quantizer.set_params(a_s[0, 3], a_z[0, 3], None)
    layer.weight_quantizer.set_params(ws[5, :, 0], wz[5, :, 0], 0)
    chunks = HeldChunks((x,), out, CFG.image_chunk)
    assert torch.equal(sr.linear_weight(layer, chunks, ws, wz), _brute_linear(layer, x, out, ws, wz, weight=True))
    assert torch.equal(sr.linear_input(layer, chunks, a_s, a_z), _brute_linear(layer, x, out, a_s, a_z, weight=False).reshape(1))


def test_matmul_search_is_per_head_and_matches_brute_force():
    torch.manual_seed(2)
    a, b = torch.randn(4, 2, 5, 3), torch.randn(4, 2, 3, 5)
    a[:, 1] *= 10  # the heads need different scales
    out = a @ b
    s, z = gs.pairs_from_bounds(*gs.matmul_bounds(a, 32), 4)
    other = UniformQuantizer(4, "k", channel_axis=1)
    other.calibrate(b)
    got = gs._Searcher(CFG).matmul_operand(HeldChunks((a, b), out, CFG.image_chunk), s, z, 15, True, other)
    brute = torch.stack([((gs.qdq(a, s[p, 0], z[p, 0], 15) @ other(b)) - out).pow(2).mean((2, 3)).sum(0)
                         for p in range(s.shape[0])]).argmin(0)
    assert got.shape == (2,) and torch.equal(got, brute)
    s_, _ = gs.pairs_from_bounds(*gs.matmul_bounds(a, 32), 4)
    assert s_[0, 0, 1] > 5 * s_[0, 0, 0]


@pytest.mark.parametrize("swin", [False, pytest.param(True, marks=pytest.mark.slow)])  # Swin: 10 s
def test_search_reparameterizes_exactly_and_leaves_integer_zero_points(swin):
    qm, m = _tiny(swin=swin)
    torch.manual_seed(3)
    calib = torch.randn(4, 3, 32, 32)
    with torch.no_grad(), quant_disabled(qm.model):
        fp = qm.model(calib)
    stats = m.quantize(qm, calib)
    assert stats["reparameterized_pairs"] == len(qm.reparam_pairs) > 0
    with torch.no_grad(), quant_disabled(qm.model):
        torch.testing.assert_close(qm.model(calib), fp, rtol=1e-4, atol=1e-4)  # the fold is exact in FP
    for mod in qm.model.modules():
        for q in (getattr(mod, "input_quantizer", None), getattr(mod, "a_quantizer", None), getattr(mod, "b_quantizer", None)):
            if isinstance(q, UniformQuantizer):
                assert q.calibrated and torch.equal(q.zero_point, q.zero_point.round())
                assert not (q.per_channel and q.role == "post_ln")
        if isinstance(mod, QuantMatMul):  # one scale per head
            assert mod.a_quantizer.channel_axis == 1 and mod.a_quantizer.scale.numel() == mod.a_quantizer.scale.shape[0] > 0
    with torch.no_grad():
        assert torch.isfinite(qm.model(calib)).all()


def _fp_call_now(qm, calib, layer):
    """`layer`'s first-call inputs and output in one FP pass of every unit, as the model is now."""
    got = []
    handle = layer.register_forward_hook(lambda mod, args, out: got.append((tuple(a.clone() for a in args), out.clone())))
    with torch.no_grad(), quant_disabled(qm.model):
        y = calib
        for unit in qm.units:
            y = unit.forward(y)
    handle.remove()
    return got[0]


def _joined(chunks):
    parts = list(chunks)
    ins = tuple(torch.cat([p[0][i] for p in parts]) for i in range(len(parts[0][0])))
    return ins, torch.cat([p[1] for p in parts])


def test_each_layer_is_searched_on_its_fp_tensors_after_the_searches_and_folds_before_it(monkeypatch):
    """The search reads one layer's tensors a chunk of images at a time (a unit pass on the chunk
    that stops at the layer): they must be what an FP pass of the chunk gives at that moment,
    after every earlier fold."""
    qm, m = _tiny()
    torch.manual_seed(5)
    calib = torch.randn(4, 3, 32, 32)
    Calibrate()(qm, calib)
    checked, inside = [], []
    chunk = 3  # two chunks: 3 images and 1
    where = {"search_linear": 0, "search_post_ln": 1, "search_conv": 0, "search_matmul": 0}
    for name, at in where.items():
        real = getattr(gs, name)

        def spy(layer, *args, _real=real, _at=at, _name=name):
            if inside:  # search_post_ln's own per-tensor search, on its transformed input
                return _real(layer, *args)
            ins, out = _joined(_fp_call_now(qm, c, layer) for c in calib.split(chunk))
            given, given_out = _joined(args[_at])
            assert len(given) == len(ins) and all(torch.equal(a, b) for a, b in zip(given, ins)), (_name, layer)
            assert torch.equal(given_out, out), (_name, layer)
            assert args[_at].shape(0) == ins[0].shape
            checked.append(layer)
            if _name == "search_post_ln":
                inside.append(layer)
            try:
                return _real(layer, *args)
            finally:
                inside.clear()

        monkeypatch.setattr(gs, name, spy)
    stats = GridSearch(GridSearchConfig(32, 1, image_chunk=2, recompute_images=chunk))(qm, calib)
    assert stats["reparameterized_pairs"] > 0
    assert len(checked) == stats["searched_linears"] + stats["searched_matmuls"] + stats["searched_convs"]


class _HeldAtOnce(HeldChunks):
    """What LayerChunks recomputes on every pass, captured chunk by chunk when it is built and held."""

    def __init__(self, unit_fn, layer, x, size, model):
        with quant_disabled(model):
            ins, out = _joined(layer_call(unit_fn, layer, c) for c in x.split(size))
        super().__init__(ins, out, size)


@pytest.mark.parametrize("swin", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_recomputing_each_layer_per_chunk_searches_what_holding_its_tensors_searches(monkeypatch, swin):
    """LayerChunks recomputes a layer's tensors on every pass, a post-LN layer's after its fold with
    the pair's parameters as they were, in chunks of 3 images while the scores are summed over 2
    (groups across chunks): the quantizers must be the ones a search on tensors captured once,
    before the fold, in chunks of 2, leaves (bit for bit; each image's FP tensors do not depend
    on its batch)."""
    states = []
    for held in (False, True):
        qm, m = _tiny(swin=swin)
        torch.manual_seed(6)
        calib = torch.randn(5, 3, 32, 32)
        Calibrate()(qm, calib)
        with monkeypatch.context() as mp:
            if held:
                mp.setattr(gs, "LayerChunks", _HeldAtOnce)
            cfg = GridSearchConfig(32, 1, image_chunk=2, recompute_images=2 if held else 3)
            stats = GridSearch(cfg)(qm, calib)
        assert stats["reparameterized_pairs"] > 0
        states.append({k: v.clone() for k, v in qm.model.state_dict().items()})
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0]), \
        [k for k in states[0] if not torch.equal(states[0][k], states[1][k])]


@pytest.mark.slow  # 9 s
def test_search_result_does_not_depend_on_the_chunking():
    results = []
    for chunk, budget in ((1, 1), (4, 64)):
        qm, m = _tiny()
        torch.manual_seed(4)
        calib = torch.randn(5, 3, 32, 32)
        cfg = GridSearchConfig(32, 1, image_chunk=chunk, budget_mb=budget)  # scores agree up to float summation order
        Calibrate()(qm, calib)
        GridSearch(cfg)(qm, calib)
        results.append({n: q.scale.clone() for n, q in qm.model.named_modules() if isinstance(q, UniformQuantizer)})
    assert results[0].keys() == results[1].keys()
    for n in results[0]:
        torch.testing.assert_close(results[0][n], results[1][n], msg=n)


@pytest.mark.parametrize("name", ["qdrop", "brecq", "aphq", "fimaq"])
def test_the_image_chunk_is_a_method_key_and_zero_is_refused(name):
    m = build_method({"name": name, "iters": 0, "search_image_chunk": 8}, Bits(4, 4))
    searches = [s for s in walk_steps(m.steps()) if isinstance(s, GridSearch)]
    assert len(searches) == 1 and searches[0].cfg.image_chunk == 8
    with pytest.raises(ConfigError, match="image_chunk"):
        build_method({"name": name, "search_image_chunk": 0}, Bits(4, 4))


def test_the_grid_shape_moves_each_grid_where_its_keys_say():
    torch.manual_seed(5)
    w = torch.randn(3, 50)
    shape = gs.GridShape(zero_points=4, narrow_quantile=0.8, conv_percentiles=(0.9, 0.999), conv_spacing=1.0,
                         matmul_quantiles=(0.95, 0.999))
    s, z = gs.weight_grid(w, 4, 32, shape)
    assert sorted(set(z[:, 0, 0].tolist())) == [6.0, 7.0, 8.0, 9.0]  # 4 zero points centred on 8
    narrowest = (torch.quantile(w, 0.8, dim=1) - torch.quantile(w, 1 - torch.tensor(0.8), dim=1)) / 15
    torch.testing.assert_close(s[0, :, 0], narrowest)
    torch.testing.assert_close(s[7, :, 0], (w.amax(1) - w.amin(1)) / 15)  # 32 / 4 = 8 scales per zero point
    up, lo = gs.conv_bounds(w, 32, shape)
    torch.testing.assert_close(up[0, :, 0], torch.quantile(w, 0.9, dim=1))
    torch.testing.assert_close(up[16, :, 0], torch.quantile(w, torch.tensor(0.9 + 0.099 * 16 / 31), dim=1))  # linear
    a = torch.randn(2, 2, 6, 4)
    upper, lower = gs.matmul_bounds(a, 32, shape)
    heads = a.transpose(0, 1).reshape(2, -1)
    torch.testing.assert_close(upper[0].flatten(), torch.quantile(heads, 0.95, dim=1))
    torch.testing.assert_close(lower[0].flatten(), torch.quantile(heads, 1 - torch.tensor(0.999), dim=1))
    assert not torch.equal(gs.weight_grid(w, 4, 32)[0], s)  # the default shape is another grid


@pytest.mark.parametrize("name", ["qdrop", "brecq", "aphq", "fimaq"])
def test_the_grid_shape_is_method_keys_and_a_bad_one_is_refused(name):
    m = build_method({"name": name, "iters": 0, "grid_zero_points": 8, "grid_narrow_quantile": 0.8,
                      "grid_conv_percentiles": [0.95, 0.999], "grid_conv_spacing": 1.0,
                      "grid_matmul_quantiles": [0.98, 0.9999]}, Bits(4, 4))
    (search,) = [s for s in walk_steps(m.steps()) if isinstance(s, GridSearch)]
    assert search.cfg.shape == gs.GridShape(8, 0.8, (0.95, 0.999), 1.0, (0.98, 0.9999))
    assert build_method({"name": name}, Bits(4, 4)).config.search_config().shape == gs.GridShape()  # the release's
    for bad, match in (({"grid_zero_points": 3}, "zero_points"), ({"grid_conv_percentiles": [0.999, 0.99]}, "conv_percentiles"),
                       ({"grid_zero_points": 16, "grid_candidates": 16}, "candidates"),
                       ({"grid_narrow_quantile": 1.0}, "narrow_quantile")):
        with pytest.raises(ConfigError, match=match):
            build_method({"name": name, **bad}, Bits(4, 4))


@pytest.mark.parametrize("per_row", [2**18, 2**14])
@pytest.mark.parametrize("piece", [3, 4])
@pytest.mark.parametrize("image_dim", [0, 1])
def test_group_sums_equal_the_sum_of_each_groups_concatenated_errors(piece, image_dim, per_row):
    """Pieces of 3 images summed in groups of 4 (a group spans pieces; the last is short, and with
    the smaller `per_row` its candidate slices differ) give, bit for bit, the sum over each group's
    errors as one tensor, as the release sums a batch; the rows along `image_dim`."""
    torch.manual_seed(0)
    x = torch.randn(11, 5, 7)

    def err(rows: torch.Tensor, sl: slice) -> torch.Tensor:
        return rows[..., sl].pow(2).mul(1.37).movedim(0, image_dim)

    def errors(ins: tuple[torch.Tensor, ...], _out: torch.Tensor):
        return lambda sl: err(ins[0], sl)

    cfg = GridSearchConfig(candidates=32, rounds=1, image_chunk=4, budget_mb=1)
    searcher = gs._Searcher(cfg)
    got = list(searcher.group_sums(HeldChunks((x,), x, piece), 7, per_row, errors, image_dim))
    want = [(sl, err(x[g:g + rows], sl).contiguous().sum(image_dim)) for g, rows in ((0, 4), (4, 4), (8, 3))
            for sl in gs._slices(7, rows * per_row, searcher.budget)]
    assert [sl for sl, _ in got] == [sl for sl, _ in want]
    assert len({sl.stop - sl.start for sl, _ in want}) == (1 if per_row == 2**18 else 4)  # 4, 3; 5, 2
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(got, want))
