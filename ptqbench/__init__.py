"""ptqbench: benchmark post-training quantization of vision transformers."""

__version__ = "0.1.0"

from ptqbench.paths import register_config_resolvers

register_config_resolvers()  # before any config is composed: conf/config.yaml's help uses it
