"""ptqbench: benchmark post-training quantization of vision transformers."""

__version__ = "0.1.0"

from ptqbench.paths import register_config_resolvers
from ptqbench.triton_gate import keep_triton_out_without_gpu

keep_triton_out_without_gpu()  # before timm or torchvision can import torch._dynamo
register_config_resolvers()  # before any config is composed: conf/config.yaml's help uses it


def command() -> None:
    """The `ptqbench` console command: runs `ptqbench/__main__.py` as `python -m ptqbench` does
    (its first lines turn glibc's per-thread cache off; Hydra finds conf/ only for a __main__)."""
    import runpy

    runpy.run_module("ptqbench", run_name="__main__", alter_sys=True)
