"""Model zoo, weight loading, and the adapter that makes timm models quantizable."""

from ptqbench.models.adapter import QuantizedModel, make_quantizable
from ptqbench.models.weights import create_model, state_fingerprint
from ptqbench.models.zoo import MODELS, ModelEntry, model_entry

__all__ = ["QuantizedModel", "make_quantizable", "create_model", "state_fingerprint", "MODELS", "ModelEntry", "model_entry"]
