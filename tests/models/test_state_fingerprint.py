"""state_fingerprint identifies a network by its parameters and buffers, 0-dim ones included."""

import torch
from torch import nn

from ptqbench.models import state_fingerprint


def test_fingerprint_reads_0_dim_buffers():
    """BatchNorm's num_batches_tracked is a 0-dim int64 buffer (Cascade Mask R-CNN's heads have
    BatchNorm): it is hashed, not a crash, and a change to it changes the fingerprint."""
    bn = nn.BatchNorm1d(3)
    assert bn.num_batches_tracked.dim() == 0
    before = state_fingerprint(bn)
    bn.num_batches_tracked += 1
    assert state_fingerprint(bn) != before


def test_fingerprint_changes_with_any_weight():
    torch.manual_seed(0)
    lin = nn.Linear(4, 2)
    before = state_fingerprint(lin)
    with torch.no_grad():
        lin.weight[0, 0] += 1e-3
    assert state_fingerprint(lin) != before
