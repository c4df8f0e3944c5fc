"""The model: the one hooked `Transformer` and its `ModelConfig` (re-exported here), hook points
(`hooks`), activation caching (`cache`), the weight and activation sparsity of Gao et al. 2025
(`sparsity`), checkpoint folders (`checkpoint`), Hugging Face loading (`load`, `hf_families`,
`hf_source`) and logit-preserving weight processing (`process`)."""

from typing import TYPE_CHECKING

from sparsecircuits.lazy import lazy_exports

if TYPE_CHECKING:
    from sparsecircuits.model.config import ModelConfig
    from sparsecircuits.model.transformer import Transformer

# Imported on first use: `sparsecircuits.model.config` loads without torch (the CLI's start-up).
__getattr__, __dir__ = lazy_exports(__name__, {"config": ("ModelConfig",), "transformer": ("Transformer",)})
__all__ = ["ModelConfig", "Transformer"]
