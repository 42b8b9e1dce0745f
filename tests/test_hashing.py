"""Hashes are part of the on-disk format (cache keys, fingerprints, tracker ids): each expected
digest below was produced by the helper it replaced, so a change here orphans stored results."""

import hashlib
from pathlib import Path

import torch

from ptqbench.hashing import (
    content_key, file_sha256, json_key, sha_of, short_hash, state_dict_fingerprint, tensors_key,
)


def _model() -> torch.nn.Module:
    m = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    with torch.no_grad():
        m[0].weight.copy_(torch.arange(6.0).reshape(2, 3) / 7)
        m[0].bias.copy_(torch.tensor([0.5, -1.0]))
    m[1].num_batches_tracked.fill_(3)
    return m


def test_keys_of_plain_values_are_unchanged():
    assert content_key("calib", "/x", 8, 0, {"b": 1, "a": [1, 2]}, None, 1.5) == "fc6cf353ddf7ba8a"
    assert json_key({"b": 1, "a": [1, 2], "p": Path("/x")}) == "ba46a5666a444aea"
    assert json_key({"a": [1, 2], "b": 1, "p": Path("/x")}) == "ba46a5666a444aea"  # dict order is irrelevant
    assert sha_of(["a/1.jpg", "b/2.jpg"]) == "60dbb44f7388c40e"
    assert short_hash(["a"], [("x", "1")]) == "690eef74b0" and short_hash("g", n=8) == "cd0aa985"


def test_tensor_fingerprints_are_unchanged():
    m = _model()
    assert state_dict_fingerprint(m.state_dict()) == "34e8b79233b2811e7cbee0717eb74a05d8ef8191603f40c7d1f6ef2fd6c546d5"
    half = torch.nn.Linear(2, 2).half()
    with torch.no_grad():
        half.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        half.bias.zero_()
    assert state_dict_fingerprint(half.state_dict()) == "adad18ae3d1bca955dff6d454f896939bffd33fc2aed13f26cfada6896bcf2ec"
    assert tensors_key([*m.named_parameters(), *m.named_buffers()]) == "9a6eff07c10eec9a"


def test_file_sha256_reads_in_chunks(tmp_path):
    f = tmp_path / "payload"
    f.write_bytes(b"hello" * (1 << 21))  # 10 MiB: several 4 MiB chunks
    assert file_sha256(f) == hashlib.sha256(f.read_bytes()).hexdigest()
    (tmp_path / "small").write_bytes(b"hello")
    assert file_sha256(tmp_path / "small") == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"


def test_model_level_keys_use_the_same_recipes():
    from ptqbench.cache import module_state_key
    from ptqbench.models import state_fingerprint

    m = _model()
    assert state_fingerprint(m) == state_dict_fingerprint(m.state_dict())
    assert module_state_key(m) == "9a6eff07c10eec9a"  # no quantizers: every tensor counts
