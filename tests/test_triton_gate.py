"""`ptqbench.triton_gate`: triton stays out of a process without a GPU, and only then."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ptqbench import triton_gate

_PROBE = """
import json, sys
import ptqbench
torch_before_timm = "torch" in sys.modules
import timm, torch
from ptqbench.triton_gate import triton_state
xpu = getattr(torch, "xpu", None)
gpu = bool(torch.cuda.is_available() or (xpu is not None and xpu.is_available()))
print(json.dumps({"torch_before_timm": torch_before_timm, "gpu": gpu, "triton": triton_state()}))
"""


def test_a_fresh_process_imports_triton_only_with_a_gpu():
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True)
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["torch_before_timm"] is False  # `import ptqbench` alone (the CLI's --help) stays light
    if seen["gpu"]:
        assert seen["triton"] in ("loaded", "absent")
    else:
        assert seen["triton"] in ("blocked", "absent")  # absent: a torch build without triton


@pytest.mark.parametrize("gpu", [False, True])
def test_the_decision_is_made_once_as_dynamo_loads(monkeypatch, gpu):
    monkeypatch.setattr(triton_gate, "_gpu_for_triton", lambda: gpu)
    monkeypatch.delitem(sys.modules, "triton", raising=False)  # restored after the test
    finder = triton_gate._DecideBeforeDynamo()
    monkeypatch.setattr(sys, "meta_path", [finder, *sys.meta_path])

    assert finder.find_spec("torch.nn") is None  # other modules: no decision yet
    assert "triton" not in sys.modules and finder in sys.meta_path

    assert finder.find_spec("torch._dynamo") is None  # the import itself is left to the others
    assert finder not in sys.meta_path
    if gpu:
        assert "triton" not in sys.modules
    else:
        assert "triton" in sys.modules and sys.modules["triton"] is None


def test_an_answer_that_fails_leaves_triton_importable(monkeypatch):
    import torch

    def broken() -> bool:
        raise RuntimeError("driver query failed")

    monkeypatch.setattr(torch.cuda, "is_available", broken)
    assert triton_gate._gpu_for_triton() is True


_COMPILE = """
import ptqbench, timm, torch
layer = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.GELU()).eval()
x = torch.randn(4, 8)
with torch.no_grad():
    assert torch.allclose(torch.compile(layer)(x), layer(x), atol=1e-6)
print("compiled")
"""


@pytest.mark.slow  # inductor compiles C++: 20-60 s on 2 busy cores
def test_torch_compile_still_runs_in_a_process_the_gate_decided():
    out = subprocess.run([sys.executable, "-c", _COMPILE], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip().endswith("compiled"), out.stderr[-2000:]
