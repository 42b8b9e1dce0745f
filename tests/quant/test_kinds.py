"""The quantizer-kind registry: specs build through it, options are typed and checked, and a kind
defined in one place (here: this test file) is usable by QuantizerSpec, QuantMatMul and
reconstruction without touching ptqbench."""

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from ptqbench.errors import ConfigError
from ptqbench.quant import QuantizerSpec, QuantMatMul
from ptqbench.quant.base import Quantizer
from ptqbench.quant.dynamic_focus import DynamicFocusQuantizer
from ptqbench.quant.kinds import kind_entry, quantizer_kinds, register_kind
from ptqbench.quant.tan import TanOptions, TanQuantizer
from ptqbench.quant.twin_uniform import TwinUniformQuantizer


@dataclass(frozen=True)
class ScaledSignOptions:
    gain: float = 1.0


@register_kind("test_scaled_sign", options=ScaledSignOptions)
class ScaledSignQuantizer(Quantizer):
    """A toy kind: sign(x) * learned step; records the matmul operand it is shown."""

    kind = "test_scaled_sign"

    def __init__(self, bits: int, role: str, gain: float = 1.0) -> None:
        super().__init__(bits, role)
        if gain <= 0:
            raise ValueError(f"gain must be > 0, got {gain}")
        self.gain = gain
        self.step = nn.Parameter(torch.ones(()), requires_grad=False)
        self.seen: list[bool] = []

    def _fit(self, x: torch.Tensor) -> None:
        self.step.data = x.abs().mean().reshape(()) * self.gain

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sign(x) * self.step

    def see_matmul_operand(self, other: torch.Tensor, left: bool) -> None:
        self.seen.append(left)

    def start_training(self, group: str) -> list[nn.Parameter]:
        if group != "scale":
            return []
        self.step.requires_grad_(True)
        return [self.step]

    def stop_training(self) -> None:
        self.step.requires_grad_(False)


def test_every_builtin_kind_is_registered_and_builds():
    kinds = quantizer_kinds()
    for name in ("uniform", "log_sqrt2", "log2", "v2sf", "o2sf", "twin_softmax", "twin_gelu", "ptf", "tan",
                 "dynamic_focus", "dual_uniform"):
        assert name in kinds
        q = QuantizerSpec(4, kind=name).build("post_softmax", -1)
        assert isinstance(q, kind_entry(name).cls)


def test_options_are_typed_hashable_and_reach_the_constructor():
    a = QuantizerSpec(4, kind="tan", options=(("thetas", [1.0, 2.0]),))
    b = QuantizerSpec(4, kind="tan", options={"thetas": (1.0, 2.0)})
    c = QuantizerSpec(4, kind="tan", options=TanOptions(thetas=(1.0, 2.0)))
    assert a == b == c and len({a, b, c}) == 1
    assert a.options == TanOptions(thetas=(1.0, 2.0))
    q = a.build("post_softmax", -1)
    assert isinstance(q, TanQuantizer) and q.thetas == (1.0, 2.0)
    twin = QuantizerSpec(4, kind="twin_gelu", options={"m_max": 5}).build("post_gelu", -1)
    assert isinstance(twin, TwinUniformQuantizer) and twin.mode == "gelu" and twin.m_max == 5


def test_bad_specs_are_config_errors_naming_the_fix():
    with pytest.raises(ConfigError, match=r"no option\(s\) \['theta'\]; valid options: \['thetas', 'metric', 'max_samples'\]"):
        QuantizerSpec(4, kind="tan", options={"theta": 1.0})
    with pytest.raises(ConfigError, match="unknown quantizer kind 'tann'; choose one of .*'tan'"):
        QuantizerSpec(4, kind="tann")
    with pytest.raises(ConfigError, match=r"thetas must lie in \(0, pi\)"):
        QuantizerSpec(4, kind="tan", options={"thetas": (4.0,)})
    with pytest.raises(ConfigError, match="no symmetric/per_channel layout"):
        QuantizerSpec(4, kind="log2", per_channel=True)
    with pytest.raises(ConfigError, match="valid options: none"):
        QuantizerSpec(4, kind="log2", options={"k": 3})


def test_a_kind_registered_outside_ptqbench_builds_and_sees_matmul_operands():
    spec = QuantizerSpec(4, kind="test_scaled_sign", options={"gain": 2.0})
    q = spec.build("post_softmax", -1)
    assert isinstance(q, ScaledSignQuantizer) and q.gain == 2.0
    with pytest.raises(ConfigError, match="gain must be > 0"):
        QuantizerSpec(4, kind="test_scaled_sign", options={"gain": 0.0})
    a_q, b_q = spec.build("post_softmax", -1), spec.build("v", -1)
    mm = QuantMatMul(a_q, b_q)
    for m in (a_q, b_q):
        m.calibrate(torch.ones(2, 2))
    mm(torch.randn(2, 3), torch.randn(3, 2))
    assert a_q.seen == [True] and b_q.seen == [False]


def test_dfq_keeps_the_right_operand_only_while_it_calibrates():
    q = DynamicFocusQuantizer(4, "post_softmax")
    v = torch.randn(2, 3)
    q.see_matmul_operand(v, left=True)
    assert q.operand is None  # not calibrating
    q.auto_calibrate = True
    q.see_matmul_operand(v, left=False)
    assert q.operand is None  # the left operand is not its partner
    q.see_matmul_operand(v, left=True)
    assert torch.equal(q.operand, v)
