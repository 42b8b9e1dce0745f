"""GPTQ (Frantar et al., ICLR 2023) as the baseline of ERQ's tables.

Weights: the reference algorithm on every Linear and the patch-embedding conv: H = E[x x^T] of
the layer's (quantized) calibration inputs, damping `percdamp` * mean(diag H), columns in blocks
of `blocksize`, error propagated through the Cholesky factor of H^-1, optional act-order, with a
per-channel asymmetric quantizer fitted on the weights first (min-max, as the reference;
`weight_search` changes it). Units (embedding, blocks, head) are processed in order, each fed the
outputs of the already-quantized units, and H is accumulated while streaming the calibration
batch (no stored activations beyond one unit's input).

Activations: ERQ's tables report GPTQ at W3A4 above RepQ-ViT (DeiT-T 42.25 vs 29.34), which we read
as GPTQ run on RepQ-ViT's activation quantizers (an inference from the numbers, not measured
here with the plain protocol), so the default activation side is RepQ-ViT's
(per-channel post-LN reparameterized, log-sqrt2 post-softmax; `reparam` / `log_sqrt2` turn them
off for the plain per-tensor protocol). They are calibrated in one pass with FP weights, before
GPTQ. The patch-embedding input stays FP, as in ERQ's code (`patch_input_bits`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from ptqbench.methods.base import Method, Step, register_method
from ptqbench.methods.configs import ReparamConfig, reparam_activations
from ptqbench.methods.steps import Calibrate, GPTQSolve, Timed, WeightsFP, optional
from ptqbench.quant.spec import QuantPlan


@dataclass(frozen=True)
class GPTQConfig(ReparamConfig):
    """Attributes (besides RepQ-ViT's activation knobs):
    blocksize: columns per lazy-update block (reference: 128).
    percdamp: damping as a fraction of mean(diag H) (reference: 0.01).
    act_order: quantize columns by decreasing diag(H) (reference option, off by default).
    chunk_size: calibration images per streamed chunk (memory only).
    """

    patch_input_bits: Optional[int] = None
    weight_search: str = "minmax"
    blocksize: int = 128
    percdamp: float = 0.01
    act_order: bool = False
    chunk_size: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.blocksize < 1 or self.chunk_size < 1:
            raise ValueError("blocksize and chunk_size must be >= 1")
        if self.percdamp < 0:
            raise ValueError(f"percdamp must be >= 0, got {self.percdamp}")


@register_method("gptq", display="GPTQ", cite="frantar2023gptq")
class GPTQ(Method):
    """GPTQ weights on RepQ-ViT activations; see the module docstring."""

    Config = GPTQConfig
    blockwise = True

    def protocol_plan(self) -> QuantPlan:
        return self.config.plan(self.weight_spec(), reparam_activations(self, self.config))

    def steps(self) -> Sequence[Step]:
        c = self.config
        activation_side = WeightsFP((
            Calibrate(desc="calibrate activations"),
            *optional(c.reparam, c.reparameterize()),
        ))
        return (Timed("error_reduction_s", (activation_side, GPTQSolve(c.blocksize, c.percdamp, c.act_order, c.chunk_size))),)
