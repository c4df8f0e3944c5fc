"""The one model class and its config."""

from sparsecircuits.model.config import ModelConfig
from sparsecircuits.model.transformer import Transformer

__all__ = ["ModelConfig", "Transformer"]
