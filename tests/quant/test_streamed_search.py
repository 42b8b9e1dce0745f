"""The range search over an input read in chunks gives the whole input's quantiles bit for bit and
its MSE pick, and streamed calibration uses it without holding a large quantizer input."""

import copy
import dataclasses

import pytest
import torch

from ptqbench.errors import CalibrationError
from ptqbench.methods import Bits, build_method
from ptqbench.models import make_quantizable
from ptqbench.quant import ranges
from ptqbench.quant.base import Quantizer
from ptqbench.quant.calibration import calibrate, calibrate_one_pass, quantizers
from ptqbench.quant.log_sqrt2 import LogSqrt2Quantizer
from ptqbench.quant.ranges import RangeSearch, candidate_ranges, pick_by_mse
from ptqbench.quant.streamed_search import (over_slices, streamed_candidates, streamed_order_statistics, streamed_pick_by_mse,
                                            streamed_quantiles, tails_fit)
from ptqbench.quant.uniform import UniformQuantizer
from tests.conftest import make_tiny_vit

SEARCHES = [RangeSearch("mse"), RangeSearch("percentile", (0.999,)), RangeSearch("minmax")]


def _row(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, n, generator=g) ** 3 + 0.2).float()  # heavy tails, like fc2 inputs


@pytest.mark.parametrize("numpy_path", [False, True], ids=["torch.quantile", "np.percentile"])
@pytest.mark.parametrize("search", SEARCHES, ids=[s.method for s in SEARCHES])
def test_streamed_candidates_are_the_whole_rows_bit_for_bit(monkeypatch, search, numpy_path):
    if numpy_path:  # above the limit the released codes call np.percentile; lowered to test it small
        monkeypatch.setattr(ranges, "TORCH_QUANTILE_LIMIT", 1000)
    x = _row(250_003)
    whole = candidate_ranges(x, search)
    streamed = streamed_candidates(over_slices(x, 9_999), x.numel(), search, two_sided=True)
    assert len(whole) == len(streamed)
    for (lo, hi), (slo, shi) in zip(whole, streamed):
        assert torch.equal(lo, slo) and torch.equal(hi, shi)


def test_streamed_mse_pick_is_the_whole_rows_pick():
    x = _row(200_000, seed=3)
    cands = candidate_ranges(x, RangeSearch("mse", (0.9, 0.999, 0.99999)))
    quantize = lambda v, lo, hi: torch.clamp(v, lo[:, None], hi[:, None]).mul(4).round().div(4)  # noqa: E731
    whole = pick_by_mse(x, cands, quantize)
    streamed = streamed_pick_by_mse(over_slices(x, 7_001), cands, quantize)
    assert all(torch.equal(a, b) for a, b in zip(whole, streamed))
    # ties keep the earlier candidate, as pick_by_mse's strict <
    same = [cands[1], cands[1]]
    assert streamed_pick_by_mse(over_slices(x, 7_001), same, quantize)[0] is not same[1][0]


@pytest.mark.parametrize("make", [lambda s: UniformQuantizer(4, "act", search=s),
                                  lambda s: LogSqrt2Quantizer(4, "post_softmax", search=s)],
                         ids=["uniform", "log_sqrt2"])
def test_an_input_above_max_samples_is_fitted_exactly_not_subsampled(make):
    """Above `max_samples` values the quantizer searches its whole input in slices: the result is
    the one a search without a subsample limit gives."""
    x = _row(60_000, seed=5).abs().reshape(30, 2000)
    small, unlimited = make(RangeSearch(max_samples=4_096)), make(RangeSearch(max_samples=1 << 30))
    assert small.streams(x.numel(), x) and not unlimited.streams(x.numel(), x)
    small.calibrate(x)
    unlimited.calibrate(x)
    for k, v in unlimited.state_dict().items():
        assert torch.equal(small.state_dict()[k], v), k


def test_tails_bound_what_streams():
    assert tails_fit(10**8, RangeSearch("mse"), True)
    assert not tails_fit(10**6, RangeSearch("percentile", (0.6,)), True)  # 40 % tails: joined instead
    # per channel the tails are a row's: 1000 channels of 10 values need 2 of 10 on each side
    example = torch.zeros(1, 10, 1000)
    per_channel = UniformQuantizer(4, "act", channel_axis=-1, search=RangeSearch(max_samples=10))
    assert per_channel.streams(10**8, example) and not per_channel.streams(10**4, example)


def _channels(n: int, c: int, seed: int = 0) -> torch.Tensor:
    """[n, c] activations, channels of very different spread (post-LayerNorm-like)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, c, generator=g) ** 3) * torch.logspace(-1, 1, c) + torch.linspace(-1, 1, c)


@pytest.mark.parametrize("search", SEARCHES, ids=[s.method for s in SEARCHES])
def test_streamed_candidates_and_pick_per_channel_are_the_whole_rows(search):
    x = _channels(20_011, 12)
    rows = lambda chunk: chunk.reshape(-1, 12).t()  # noqa: E731
    whole = candidate_ranges(rows(x), search)
    streamed = streamed_candidates(over_slices(x, 12 * 997, dim=0), x.numel(), search, True, rows=rows)
    for (lo, hi), (slo, shi) in zip(whole, streamed):
        assert torch.equal(lo, slo) and torch.equal(hi, shi)
    quantize = lambda v, lo, hi: torch.clamp(v, lo[:, None], hi[:, None]).mul(2).round().div(2)  # noqa: E731
    picked = streamed_pick_by_mse(over_slices(x, 12 * 997, dim=0), whole, quantize, rows=rows)
    assert all(torch.equal(a, b) for a, b in zip(pick_by_mse(rows(x), whole, quantize), picked))


@pytest.mark.parametrize("axis", [-1, 1], ids=["per_channel", "per_head"])
def test_a_per_channel_input_above_max_samples_is_fitted_exactly(axis):
    x = _channels(6_000, 8, seed=2).reshape(50, 120, 8) if axis == -1 else _channels(6_000, 8).reshape(10, 8, 600)
    small = UniformQuantizer(4, "act", channel_axis=axis, search=RangeSearch(max_samples=4_096))
    unlimited = UniformQuantizer(4, "act", channel_axis=axis, search=RangeSearch(max_samples=1 << 30))
    assert small.streams(x.numel(), x)
    small.calibrate(x)
    unlimited.calibrate(x)
    assert small.scale.shape == (8,)
    assert torch.equal(small.scale, unlimited.scale) and torch.equal(small.zero_point, unlimited.zero_point)


def test_a_streamed_chunk_with_nan_or_a_negative_probability_is_refused():
    bad = torch.rand(4000)
    bad[3999] = float("nan")
    q = UniformQuantizer(4, "act", search=RangeSearch(max_samples=100))
    with pytest.raises(CalibrationError, match="non-finite"):
        q.calibrate_streamed(over_slices(bad, 1000), bad.numel())
    neg = torch.rand(4000) - 0.001
    with pytest.raises(ValueError, match="non-negative"):
        LogSqrt2Quantizer(4, "post_softmax", search=RangeSearch(max_samples=100)).calibrate(neg)
    with pytest.raises(CalibrationError, match="4000 values per group, 5000 were expected"):
        q.calibrate_streamed(over_slices(torch.rand(4000), 1000), 5000)


def _with_max_samples(qm, n: int):
    for q in quantizers(qm.model).values():
        if isinstance(getattr(q, "search", None), RangeSearch):
            q.search = dataclasses.replace(q.search, max_samples=n)
    return qm


@pytest.mark.parametrize("method", ["repq", "minmax", "percentile"])
def test_streamed_calibration_streams_large_inputs_and_equals_one_pass(monkeypatch, method):
    """With a low `max_samples` the range-searched quantizers of a tiny ViT stream: their input is read
    chunk by chunk through the unit and never captured whole; the fit equals the one pass's."""
    torch.set_num_threads(1)
    model = make_tiny_vit()
    x = torch.randn(7, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    m = build_method({"name": method}, Bits(4, 4))
    one = _with_max_samples(make_quantizable(copy.deepcopy(model), m.plan()), 300)
    streamed = _with_max_samples(make_quantizable(copy.deepcopy(model), m.plan()), 300)
    calls = []
    original = Quantizer.calibrate_streamed
    monkeypatch.setattr(Quantizer, "calibrate_streamed",
                        lambda self, each, numel: (calls.append(self.qname), original(self, each, numel))[1])
    calibrate_one_pass(one.model, x)
    assert not calls  # the one pass holds every input whole and searches it in slices
    calibrate(streamed.model, x, units=streamed.units, chunk_size=3)
    assert len(calls) >= 4
    qa, qb = quantizers(one.model), quantizers(streamed.model)
    for name in qa:
        for k, v in qa[name].state_dict().items():
            assert torch.equal(qb[name].state_dict()[k], v), f"{name}.{k}"
    with torch.no_grad():
        assert torch.equal(one.model(x), streamed.model(x))


def test_radix_selection_gives_every_order_statistic_of_rows_read_in_pieces():
    """Any rank of rows that arrive in pieces (rows in any grouping, values in any order): the value
    a sort puts there, with ties, outliers, both signs, subnormals and infinities."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3001, generator=g) ** 3
    x[0, :40] = 0.25  # ties
    x[1, :3] = 1e30
    x[2, ::2] = -1.5
    x[3, :10] = torch.tensor([1e-40, -1e-40, float("inf"), float("-inf"), 0.0, 0.0, 7.0, -7.0, 1e-45, 3.4e38])
    x[4] = x[4].abs()
    ranks = [0, 1, 2, 39, 40, 1500, 2999, 3000]

    def each(fn):
        fn(torch.tensor([3, 1]), x[[3, 1], 1700:])
        fn(torch.tensor([0, 2, 4]), x[[0, 2, 4], :2100])
        fn(torch.tensor([1, 3]), x[[1, 3], :1700])
        fn(torch.tensor([4, 0, 2]), x[[4, 0, 2], 2100:])

    got = streamed_order_statistics(each, 5, ranks)
    srt = torch.sort(x, dim=1).values
    for r in ranks:
        assert torch.equal(got[r], srt[:, r]), r
    qs = [0.0, 0.1, 0.5, 0.9, 0.99999, 1.0]
    torch.testing.assert_close(streamed_quantiles(each, 5, 3001, qs), ranges.quantiles(x, qs), rtol=0, atol=0,
                               equal_nan=True)  # inf - inf in the row with both infinities


def test_radix_selection_refuses_a_rank_beyond_the_rows():
    with pytest.raises(CalibrationError, match="rank 10"):
        streamed_order_statistics(lambda fn: fn(torch.tensor([0]), torch.randn(1, 10)), 1, [10])
