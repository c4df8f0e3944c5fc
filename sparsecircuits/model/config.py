"""`ModelConfig`: every architectural choice of the one `Transformer`, validated, JSON-serialisable.

One config covers the weight-sparse models of Gao et al. (2025) (RMSNorm, no positions, attention
sinks, bigram table, AbsTopK activation sparsity) and the dense pretrained families loaded from
Hugging Face (GPT-2, GPT-NeoX/Pythia, Llama with grouped-query attention, Mistral, Qwen2, Gemma 2:
soft-capping, post-norms, sliding-window layers, embedding scale; see `model/hf_families.py`).
Behaviour lives in the model; this file only holds and checks the numbers. Every field added for a
pretrained family defaults to "off", so older config.json files load unchanged.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from sparsecircuits.config_utils import opt, require_at_least

NORMS = ("rms", "layer")
POSITIONS = ("none", "learned", "rotary")
# swiglu: silu(gate) * up (Llama); geglu: gelu_tanh(gate) * up (Gemma's gelu_pytorch_tanh gate).
ACTIVATIONS = ("gelu", "gelu_new", "relu", "swiglu", "geglu")
GATED_ACTIVATIONS = ("swiglu", "geglu")
# The eight AbsTopK sites of Gao et al., in forward order, and the hook each one feeds.
ACT_SPARSITY_SITES = ("attn_in", "q", "k", "v", "attn_out", "mlp_in", "mlp_neurons", "mlp_out")


@dataclass
class ModelConfig:
    d_model: int = opt(128, "residual stream width")
    n_layers: int = opt(2, "number of transformer blocks")
    n_heads: int = opt(8, "attention (query) heads per layer")
    d_head: int = opt(16, "width of one attention head")
    d_mlp: int = opt(512, "MLP hidden width (neurons per layer)")
    d_vocab: int = opt(2048, "vocabulary size")
    n_ctx: int = opt(128, "maximum context length in tokens")
    n_kv_heads: int = opt(0, "key/value heads for grouped-query attention; 0 = n_heads (plain multi-head)")
    norm: str = opt("rms", f"normalisation: {' | '.join(NORMS)}")
    norm_eps: float = opt(1e-5, "epsilon inside the normalisation")
    positions: str = opt("none", f"positional information: {' | '.join(POSITIONS)}")
    rotary_dim: int = opt(0, "dimensions of each head that rotary embedding rotates; 0 = d_head")
    rotary_base: float = opt(10000.0, "rotary embedding base frequency")
    act: str = opt("gelu", f"MLP activation: {' | '.join(ACTIVATIONS)}")
    bias_qkv: bool = opt(True, "biases on the q, k, v projections")
    bias_attn_out: bool = opt(True, "bias on the attention output projection")
    bias_mlp: bool = opt(True, "biases on the MLP projections")
    bias_unembed: bool = opt(False, "bias on the unembedding")
    tied_embeddings: bool = opt(False, "unembedding is the transposed embedding")
    parallel_attn_mlp: bool = opt(False, "attention and MLP read the same residual (GPT-NeoX style)")
    attn_sink: bool = opt(True, "per-head learnable logit on a dummy key with zero value (Gao et al.)")
    bigram_table: bool = opt(True, "dense vocab x vocab table whose current-token row is added to the logits")
    act_sparsity: float = opt(0.25, "fraction of entries AbsTopK keeps per token at the enabled sites; (0, 1]")
    act_sparsity_sites: tuple[str, ...] = opt(
        ACT_SPARSITY_SITES, f"sites with AbsTopK activation sparsity, from {', '.join(ACT_SPARSITY_SITES)}"
    )
    init_std: float = opt(0.02, "std of the normal initialisation of weight matrices")
    # Options of pretrained families (all off by default).
    rotary_scaling: tuple[float, ...] = opt(
        (), "Llama 3.1 rotary frequency scaling: factor, low_freq_factor, high_freq_factor, original n_ctx; empty = none"
    )
    attn_scale: float = opt(0.0, "multiplier of the attention logits; 0 = 1/sqrt(d_head) (Gemma 2: query_pre_attn_scalar^-0.5)")
    attn_softcap: float = opt(0.0, "soft-cap c of the attention logits, s -> c*tanh(s/c) (Gemma 2); 0 = off")
    logit_softcap: float = opt(0.0, "soft-cap c of the output logits, l -> c*tanh(l/c) (Gemma 2); 0 = off")
    sliding_window: int = opt(0, "in sliding_window_layers a query sees itself and the previous window-1 keys; 0 = off")
    sliding_window_layers: tuple[int, ...] = opt((), "layer indices that use the sliding window (Gemma 2: the even ones)")
    post_norms: bool = opt(False, "norm the attention and MLP outputs before the residual add (Gemma 2 ln1_post/ln2_post)")
    embed_scale: float = opt(1.0, "multiplier of the token embedding, applied before hook_embed (Gemma: sqrt(d_model))")

    def __post_init__(self) -> None:
        self.act_sparsity_sites = tuple(self.act_sparsity_sites)
        # CLI flags arrive as strings; JSON as lists.
        self.rotary_scaling = tuple(float(x) for x in self.rotary_scaling)
        self.sliding_window_layers = tuple(int(x) for x in self.sliding_window_layers)
        require_at_least(self, 1, "d_model", "n_layers", "n_heads", "d_head", "d_mlp", "d_vocab", "n_ctx")
        if self.n_kv_heads < 0 or (self.n_kv_heads and self.n_heads % self.n_kv_heads):
            raise ValueError(
                f"ModelConfig.n_kv_heads must be 0 or divide n_heads={self.n_heads}, got {self.n_kv_heads}"
            )
        for name, allowed in (("norm", NORMS), ("positions", POSITIONS), ("act", ACTIVATIONS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"ModelConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.rotary_dim < 0 or self.rotary_dim > self.d_head or self.rotary_dim % 2:
            raise ValueError(
                f"ModelConfig.rotary_dim must be an even number in [0, d_head={self.d_head}], got {self.rotary_dim}"
            )
        if not 0.0 < self.act_sparsity <= 1.0:
            raise ValueError(f"ModelConfig.act_sparsity must be in (0, 1], got {self.act_sparsity}")
        unknown = [s for s in self.act_sparsity_sites if s not in ACT_SPARSITY_SITES]
        if unknown:
            raise ValueError(f"ModelConfig.act_sparsity_sites: unknown {unknown}; allowed {ACT_SPARSITY_SITES}")
        if self.norm_eps <= 0 or self.init_std <= 0 or self.rotary_base <= 0:
            raise ValueError("ModelConfig.norm_eps, init_std and rotary_base must be > 0")
        self._check_family_options()

    def _check_family_options(self) -> None:
        for name in ("attn_scale", "attn_softcap", "logit_softcap", "sliding_window"):
            if getattr(self, name) < 0:
                raise ValueError(f"ModelConfig.{name} must be >= 0 (0 = off), got {getattr(self, name)}")
        if self.embed_scale <= 0:
            raise ValueError(f"ModelConfig.embed_scale must be > 0, got {self.embed_scale}")
        if self.rotary_scaling:
            if len(self.rotary_scaling) != 4 or self.positions != "rotary":
                raise ValueError(
                    "ModelConfig.rotary_scaling must be empty or 4 numbers (factor, low_freq_factor, "
                    f"high_freq_factor, original n_ctx) with positions='rotary', got {self.rotary_scaling}"
                )
            factor, low, high, original = self.rotary_scaling
            if factor <= 0 or not 0 < low < high or original <= 0:
                raise ValueError(
                    f"ModelConfig.rotary_scaling needs factor > 0, 0 < low_freq_factor < high_freq_factor and "
                    f"original n_ctx > 0, got {self.rotary_scaling}"
                )
        layers = self.sliding_window_layers
        if bool(self.sliding_window) != bool(layers) or any(not 0 <= i < self.n_layers for i in layers):
            raise ValueError(
                "ModelConfig.sliding_window and sliding_window_layers must be set together, with layers in "
                f"[0, n_layers={self.n_layers}); got {self.sliding_window} and {layers}"
            )

    @property
    def kv_heads(self) -> int:
        """Key/value heads actually used (n_kv_heads, or n_heads when it is 0)."""
        return self.n_kv_heads or self.n_heads

    def sparse_at(self, site: str) -> bool:
        """Whether AbsTopK is applied at an activation-sparsity site."""
        return site in self.act_sparsity_sites and self.act_sparsity < 1.0

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for name in ("act_sparsity_sites", "rotary_scaling", "sliding_window_layers"):
            d[name] = list(getattr(self, name))
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig fields {unknown}; known fields: {sorted(known)}")
        return cls(**d)
