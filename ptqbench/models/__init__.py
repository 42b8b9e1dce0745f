"""Model zoo, weight loading, model families, and the adapter that makes their models quantizable."""

from ptqbench.models.adapter import QuantizedModel, make_quantizable
from ptqbench.models.families import family_of
from ptqbench.models.weights import create_model, state_fingerprint
from ptqbench.models.zoo import MODELS, ModelEntry, model_entry

__all__ = ["QuantizedModel", "make_quantizable", "family_of", "create_model", "state_fingerprint", "MODELS", "ModelEntry", "model_entry"]
