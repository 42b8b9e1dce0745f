"""DopQ-ViT's readings (issue 18): its default pipeline is I&S-ViT's with TanQ and MOSF in place of
SULQ and the mean scale; TanQ can pick theta by the error of A @ V; MOSF can be the median."""

from __future__ import annotations

import pytest
import torch

from ptqbench.algorithms.reparam import mosf_scale
from ptqbench.methods import Bits, build_method
from ptqbench.methods.steps import MOSF, Reconstruct, Reparameterize, WithFPTeacher, walk_steps
from ptqbench.quant.calibration import calibrate
from ptqbench.quant.modules import QuantMatMul
from ptqbench.quant.tan import TanQuantizer, tan_fake_quant


def test_tanq_output_metric_picks_the_theta_with_the_least_error_of_a_times_v():
    torch.manual_seed(0)
    attn = torch.softmax(torch.randn(2, 3, 9, 9) * 3, dim=-1)
    v = torch.randn(2, 3, 9, 4)
    v[..., 0] *= 50  # an outlier channel of V weighs some attention entries much more
    thetas = (0.5, 1.5, 2.5, 3.0)
    mm = QuantMatMul(TanQuantizer(3, "post_softmax", thetas=thetas, metric="output"), None)

    class AttnTimesV(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mm = mm

        def forward(self, a):
            return self.mm(a, v)

    calibrate(AttnTimesV(), attn)
    q = mm.a_quantizer
    errs = [float((tan_fake_quant(attn, t, 3) @ v - attn @ v).pow(2).mean()) for t in thetas]
    assert q.theta == thetas[errs.index(min(errs))] and q.operand is None
    attn_only = TanQuantizer(3, "post_softmax", thetas=thetas)
    attn_only.calibrate(attn)
    errs = [float((tan_fake_quant(attn, t, 3) - attn).pow(2).mean()) for t in thetas]
    assert attn_only.theta == thetas[errs.index(min(errs))]
    with pytest.raises(ValueError, match="metric"):
        TanQuantizer(3, "post_softmax", metric="kl")


def test_mosf_median_and_inlier_mean():
    s = torch.tensor([1.0, 1.1, 0.9, 1.2, 40.0])
    assert float(mosf_scale(statistic="median")(s)) == pytest.approx(1.1)
    assert float(mosf_scale(statistic="inlier_mean")(s)) == pytest.approx(1.05)
    with pytest.raises(ValueError, match="statistic"):
        mosf_scale(statistic="mode")


def test_dopq_runs_i_and_s_vit_three_stages_with_its_own_quantizer_and_scale():
    m = build_method({"name": "dopq"}, Bits(4, 4))
    steps = list(walk_steps(m.steps()))
    assert isinstance(steps[0], WithFPTeacher)
    rep = next(s for s in steps if isinstance(s, Reparameterize))
    assert rep.rule == MOSF(statistic="median") and rep.round_zero_point is False
    assert sum(isinstance(s, Reconstruct) for s in steps) == 2
    assert m.plan().for_role("post_softmax").kind == "tan"
    assert m.plan().for_role("post_softmax").options.metric == "output"
    no_train = list(walk_steps(build_method({"name": "dopq", "reconstruct": False}, Bits(4, 4)).steps()))
    assert not any(isinstance(s, (Reconstruct, WithFPTeacher)) for s in no_train)
    engine = list(walk_steps(build_method({"name": "dopq", "pipeline": "engine"}, Bits(4, 4)).steps()))
    assert [type(s).__name__ for s in engine] == ["Calibrate", "Reparameterize", "Calibrate", "Reconstruct"]
    assert engine[-1].cfg.learn == ("act_scale", "weight_rounding") and engine[-1].cfg.loss_reduction == "sum_dim1"
    with pytest.raises(Exception, match="pipeline"):
        build_method({"name": "dopq", "pipeline": "both"}, Bits(4, 4))
