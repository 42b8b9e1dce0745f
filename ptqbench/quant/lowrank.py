"""Low-rank compensation of weight-quantization error (AIQViT).

A Linear's quantized weight Q(W) gets a learnable side branch B A (B: [Cout, R], A: [R, Cin]) so
that the layer computes Q(x) (Q(W) + B A)^T. B starts at zero (the branch is a no-op at the start,
as in LoRA) and A small random, from a seeded generator.

Rank choice ("architecture-informed"): with several candidate ranks r_1 < ... < r_K, the branch
is a softmax-relaxed mixture over them (DARTS-style): sum_k p_k B[:, :r_k] A[:r_k] =
B diag(m) A with m_j = sum_{k: r_k > j} p_k, p = softmax(arch). The architecture logits train
with the branch, plus a cost term on the expected parameter count; `commit()` then keeps the
most probable rank, folds the mask into B and drops the rest. A rank of 0 removes the branch.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn


class LowRankBranch(nn.Module):
    """x -> (x A^T) diag(m) B^T, the compensation term of one Linear.

    Args:
        in_features, out_features: the Linear's shape.
        ranks: candidate ranks (one entry = fixed rank; several = relaxed search over them).
        generator: seeds A's initialization (determinism).
    """

    def __init__(self, in_features: int, out_features: int, ranks: Sequence[int],
                 generator: Optional[torch.Generator] = None, device: Optional[torch.device] = None) -> None:
        super().__init__()
        ranks = sorted({int(r) for r in ranks})
        if not ranks or ranks[0] < 0:
            raise ValueError(f"low-rank candidate ranks must be >= 0, got {list(ranks)}")
        self.in_features, self.out_features = in_features, out_features
        self.ranks = tuple(ranks)
        r = max(max(ranks), 1)
        a = torch.randn(r, in_features, generator=generator) / math.sqrt(in_features)
        self.A = nn.Parameter(a.to(device))
        self.B = nn.Parameter(torch.zeros(out_features, r, device=device))
        self.arch = nn.Parameter(torch.zeros(len(ranks), device=device)) if len(ranks) > 1 else None

    @property
    def searching(self) -> bool:
        return self.arch is not None

    def probs(self) -> torch.Tensor:
        return torch.softmax(self.arch, 0) if self.arch is not None else torch.ones(1, device=self.A.device)

    def mask(self) -> torch.Tensor:
        """m_j = P(rank > j): the weight of rank component j in the relaxed mixture."""
        r = self.A.shape[0]
        ranks = torch.tensor(self.ranks if self.searching else (r,), device=self.A.device)
        return (self.probs()[:, None] * (torch.arange(r, device=self.A.device)[None, :] < ranks[:, None])).sum(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.searching:  # committed (or a single rank): the mask is all ones
            return (x @ self.A.T) @ self.B.T
        return ((x @ self.A.T) * self.mask()) @ self.B.T

    def expected_params(self) -> torch.Tensor:
        """Expected extra parameters under the relaxation (the search's cost term)."""
        ranks = torch.tensor(self.ranks, dtype=torch.float32, device=self.A.device)
        return (self.probs() * ranks).sum() * (self.in_features + self.out_features)

    @torch.no_grad()
    def commit(self) -> int:
        """End the search: keep the most probable rank, fold the mask into B; returns that rank."""
        if self.searching:
            rank = self.ranks[int(torch.argmax(self.arch))]
            m = self.mask()
            self.B = nn.Parameter((self.B * m)[:, :rank].clone())
            self.A = nn.Parameter(self.A[:rank].clone())
            self.arch = None
        return self.rank

    @property
    def rank(self) -> int:
        return self.A.shape[0]

    @torch.no_grad()
    def delta(self) -> torch.Tensor:
        """B diag(m) A, the [Cout, Cin] weight correction (for merging into the weight)."""
        return (self.B * self.mask()) @ self.A

    def num_params(self) -> int:
        return int(self.A.numel() + self.B.numel()) if self.rank else 0
