"""ptqbench: benchmark post-training quantization of vision transformers."""

__version__ = "0.1.0"

from ptqbench.paths import register_config_resolvers
from ptqbench.triton_gate import keep_triton_out_without_gpu

keep_triton_out_without_gpu()  # before timm or torchvision can import torch._dynamo
register_config_resolvers()  # before any config is composed: conf/config.yaml's help uses it
