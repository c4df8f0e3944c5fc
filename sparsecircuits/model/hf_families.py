"""Model families: how a Hugging Face `config.json` and state dict map onto our `Transformer`.

One registry, `FAMILIES`, keyed by the Hugging Face `model_type`. Each entry turns the HF config
into a `ModelConfig` and the HF tensors into our state dict (PyTorch `[out, in]` layout). Sources
for each mapping are the architecture papers and the reference configs / modelling code in
`transformers` (read, not copied):

* gpt2 — Radford et al. 2019. LayerNorm, learned positions, gelu_new, fused `c_attn`, `Conv1D`
  weights stored `[in, out]` (transposed here), tied unembedding.
* gpt_neox — Black et al. 2022; Pythia, Biderman et al. 2023. LayerNorm, partial rotary
  (`rotary_pct`), parallel attention + MLP, fused `query_key_value` laid out per head as
  `[head, (q, k, v), d_head]`, untied `embed_out`.
* llama — Touvron et al. 2023; Llama 3.1 (Grattafiori et al. 2024) for the `llama3` rotary scaling.
  RMSNorm, rotary (rotate-half), SwiGLU, grouped-query attention. **mistral** (Jiang et al. 2023)
  adds a sliding window on every layer; **qwen2** (Yang et al. 2024) has q/k/v biases (no output
  bias) and sliding windows on the layers from `max_window_layers` on when `use_sliding_window`.
* gemma2 — Gemma Team 2024. As Llama, plus: RMSNorm gain `1 + w` (stored here as our gain), a
  post-attention and post-MLP norm (our `ln1_post`/`ln2_post`; note HF's `post_attention_layernorm`
  is that post-norm and `pre_feedforward_layernorm` is our `ln2`), embedding times sqrt(d_model),
  attention logits scaled by `query_pre_attn_scalar^-0.5`, tanh soft-capping of attention and final
  logits, sliding-window attention on alternating layers (`layer_types`, else the even layers), and
  a gelu-tanh gated MLP.

All loaded models are plain dense models: no attention sink, no bigram table, no activation sparsity.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from sparsecircuits.model.config import ModelConfig
from sparsecircuits.model.hf_source import HFConfig, TensorSource

# Options every loaded model shares: the Gao et al. extras off.
DENSE = dict(attn_sink=False, bigram_table=False, act_sparsity=1.0, act_sparsity_sites=(), bias_unembed=False)
# HF activation names -> ours. gelu_fast and gelu_pytorch_tanh are the tanh approximation (as gelu_new).
_ACTS = {"gelu": "gelu", "gelu_new": "gelu_new", "gelu_fast": "gelu_new", "gelu_pytorch_tanh": "gelu_new", "relu": "relu"}


@dataclass(frozen=True)
class Family:
    """How to load one Hugging Face `model_type`."""

    model_type: str
    summary: str
    architectures: tuple[str, ...]  # accepted values of config.json's "architectures"
    prefix: str  # base-model prefix of tensor names, stripped when present
    ignore: tuple[str, ...]  # regexes of saved buffers that are not weights
    config: Callable[[HFConfig], ModelConfig]
    weights: Callable[[TensorSource, ModelConfig], dict[str, Tensor]]


def _act(hf: HFConfig, *keys: str) -> str:
    name = hf.get(*keys)
    if name not in _ACTS:
        raise hf.unsupported(f"activation {name!r} (supported: {sorted(_ACTS)})")
    return _ACTS[name]


def _rotary(hf: HFConfig, d_head: int, partial_default: float = 1.0) -> dict[str, Any]:
    rope = hf.rope()
    theta = rope.get("rope_theta", hf.get("rotary_emb_base", default=10000.0))
    partial = rope.get("partial_rotary_factor", hf.get("rotary_pct", default=partial_default))
    out: dict[str, Any] = dict(positions="rotary", rotary_base=float(theta), rotary_dim=int(d_head * partial))
    if rope["rope_type"] == "llama3":
        keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
        out["rotary_scaling"] = tuple(float(rope[k]) for k in keys)
    elif rope["rope_type"] != "default":
        raise hf.unsupported(f"rope_type {rope['rope_type']!r} (supported: default, llama3)")
    return out


def _norm(src: TensorSource, hf_name: str, ours: str, cfg: ModelConfig, state: dict, offset: float = 0.0) -> None:
    w = src.take(f"{hf_name}.weight", (cfg.d_model,))
    # Add Gemma's offset in float32, as HF does, not in the checkpoint's bfloat16.
    state[f"{ours}.w"] = w.float() + offset if offset else w
    if cfg.norm == "layer":
        state[f"{ours}.b"] = src.take(f"{hf_name}.bias", (cfg.d_model,))


def _unembed(src: TensorSource, names: str | tuple[str, ...], cfg: ModelConfig, state: dict) -> None:
    if cfg.tied_embeddings:
        src.skip(names)  # some checkpoints store the tied copy too
    else:
        state["W_U"] = src.take(names, (cfg.d_vocab, cfg.d_model))


# ---- gpt2 -----------------------------------------------------------------------------------


def gpt2_config(hf: HFConfig) -> ModelConfig:
    if hf.get("scale_attn_by_inverse_layer_idx", default=False):
        raise hf.unsupported("scale_attn_by_inverse_layer_idx=true")
    d, heads = hf.get("n_embd"), hf.get("n_head")
    return ModelConfig(
        d_model=d, n_layers=hf.get("n_layer"), n_heads=heads, d_head=d // heads,
        d_mlp=hf.get("n_inner", default=4 * d), d_vocab=hf.get("vocab_size"), n_ctx=hf.get("n_positions"),
        norm="layer", norm_eps=hf.get("layer_norm_epsilon", default=1e-5), positions="learned",
        act=_act(hf, "activation_function"), tied_embeddings=hf.get("tie_word_embeddings", default=True),
        attn_scale=0.0 if hf.get("scale_attn_weights", default=True) else 1.0, **DENSE,
    )


def gpt2_weights(src: TensorSource, cfg: ModelConfig) -> dict[str, Tensor]:
    d, m = cfg.d_model, cfg.d_mlp
    state = {"W_E": src.take("wte.weight", (cfg.d_vocab, d)), "W_pos": src.take("wpe.weight", (cfg.n_ctx, d))}
    for i in range(cfg.n_layers):
        h, b = f"h.{i}", f"blocks.{i}"
        _norm(src, f"{h}.ln_1", f"{b}.ln1", cfg, state)
        _norm(src, f"{h}.ln_2", f"{b}.ln2", cfg, state)
        # Conv1D stores [in, out]: transpose to [out, in].
        qkv = src.take(f"{h}.attn.c_attn.weight", (d, 3 * d)).T
        qkv_b = src.take(f"{h}.attn.c_attn.bias", (3 * d,))
        for j, name in enumerate("QKV"):
            state[f"{b}.attn.W_{name}"] = qkv[j * d : (j + 1) * d]
            state[f"{b}.attn.b_{name}"] = qkv_b[j * d : (j + 1) * d]
        state[f"{b}.attn.W_O"] = src.take(f"{h}.attn.c_proj.weight", (d, d)).T
        state[f"{b}.attn.b_O"] = src.take(f"{h}.attn.c_proj.bias", (d,))
        state[f"{b}.mlp.W_in"] = src.take(f"{h}.mlp.c_fc.weight", (d, m)).T
        state[f"{b}.mlp.b_in"] = src.take(f"{h}.mlp.c_fc.bias", (m,))
        state[f"{b}.mlp.W_out"] = src.take(f"{h}.mlp.c_proj.weight", (m, d)).T
        state[f"{b}.mlp.b_out"] = src.take(f"{h}.mlp.c_proj.bias", (d,))
    _norm(src, "ln_f", "ln_final", cfg, state)
    _unembed(src, "lm_head.weight", cfg, state)
    return state


# ---- gpt_neox --------------------------------------------------------------------------------


def neox_config(hf: HFConfig) -> ModelConfig:
    d, heads = hf.get("hidden_size"), hf.get("num_attention_heads")
    bias = hf.get("attention_bias", default=True)
    return ModelConfig(
        d_model=d, n_layers=hf.get("num_hidden_layers"), n_heads=heads, d_head=d // heads,
        d_mlp=hf.get("intermediate_size"), d_vocab=hf.get("vocab_size"), n_ctx=hf.get("max_position_embeddings"),
        norm="layer", norm_eps=hf.get("layer_norm_eps", default=1e-5), act=_act(hf, "hidden_act"),
        bias_qkv=bias, bias_attn_out=bias, tied_embeddings=hf.get("tie_word_embeddings", default=False),
        parallel_attn_mlp=hf.get("use_parallel_residual", default=True),
        **_rotary(hf, d // heads, partial_default=0.25), **DENSE,
    )


def neox_weights(src: TensorSource, cfg: ModelConfig) -> dict[str, Tensor]:
    d, m, H, dh = cfg.d_model, cfg.d_mlp, cfg.n_heads, cfg.d_head
    state = {"W_E": src.take("embed_in.weight", (cfg.d_vocab, d))}
    for i in range(cfg.n_layers):
        h, b = f"layers.{i}", f"blocks.{i}"
        _norm(src, f"{h}.input_layernorm", f"{b}.ln1", cfg, state)
        _norm(src, f"{h}.post_attention_layernorm", f"{b}.ln2", cfg, state)
        # Fused rows are ordered [head, (q, k, v), d_head].
        qkv = src.take(f"{h}.attention.query_key_value.weight", (3 * d, d)).view(H, 3, dh, d)
        for j, name in enumerate("QKV"):
            state[f"{b}.attn.W_{name}"] = qkv[:, j].reshape(H * dh, d)
        if cfg.bias_qkv:
            qkv_b = src.take(f"{h}.attention.query_key_value.bias", (3 * d,)).view(H, 3, dh)
            for j, name in enumerate("QKV"):
                state[f"{b}.attn.b_{name}"] = qkv_b[:, j].reshape(H * dh)
        state[f"{b}.attn.W_O"] = src.take(f"{h}.attention.dense.weight", (d, d))
        if cfg.bias_attn_out:
            state[f"{b}.attn.b_O"] = src.take(f"{h}.attention.dense.bias", (d,))
        state[f"{b}.mlp.W_in"] = src.take(f"{h}.mlp.dense_h_to_4h.weight", (m, d))
        state[f"{b}.mlp.b_in"] = src.take(f"{h}.mlp.dense_h_to_4h.bias", (m,))
        state[f"{b}.mlp.W_out"] = src.take(f"{h}.mlp.dense_4h_to_h.weight", (d, m))
        state[f"{b}.mlp.b_out"] = src.take(f"{h}.mlp.dense_4h_to_h.bias", (d,))
    _norm(src, "final_layer_norm", "ln_final", cfg, state)
    # Saved checkpoints call it embed_out; transformers >= 5 names it lm_head in memory.
    _unembed(src, ("embed_out.weight", "lm_head.weight"), cfg, state)
    return state


# ---- llama, mistral, qwen2, gemma2 -----------------------------------------------------------


def _sliding(hf: HFConfig, default_layers: list[int]) -> dict[str, Any]:
    """Sliding-window layers from `layer_types` (transformers >= 4.53) or the family's default."""
    window = hf.get("sliding_window", default=0)
    types = hf.get("layer_types", default=None)
    layers = [i for i, t in enumerate(types) if t == "sliding_attention"] if types else default_layers
    return dict(sliding_window=window, sliding_window_layers=tuple(layers)) if window and layers else {}


def _llama_like(hf: HFConfig, **overrides: Any) -> ModelConfig:
    d, heads = hf.get("hidden_size"), hf.get("num_attention_heads")
    d_head = hf.get("head_dim", default=d // heads)
    n_layers = hf.get("num_hidden_layers")
    if hf.get("mlp_bias", default=False):
        raise hf.unsupported("mlp_bias=true (our gated MLP has no gate bias)")
    if "act" not in overrides and hf.get("hidden_act", default="silu") != "silu":
        raise hf.unsupported(f"hidden_act {hf.get('hidden_act')!r} (supported: silu)")
    bias = hf.get("attention_bias", default=False)
    values = dict(
        d_model=d, n_layers=n_layers, n_heads=heads, d_head=d_head, n_kv_heads=hf.get("num_key_value_heads", default=heads),
        d_mlp=hf.get("intermediate_size"), d_vocab=hf.get("vocab_size"), n_ctx=hf.get("max_position_embeddings"),
        norm="rms", norm_eps=hf.get("rms_norm_eps", default=1e-6), act="swiglu", bias_qkv=bias, bias_attn_out=bias,
        bias_mlp=False, tied_embeddings=hf.get("tie_word_embeddings", default=False), **_rotary(hf, d_head), **DENSE,
    )
    return ModelConfig(**{**values, **overrides})


def llama_config(hf: HFConfig) -> ModelConfig:
    return _llama_like(hf)


def mistral_config(hf: HFConfig) -> ModelConfig:
    n = hf.get("num_hidden_layers")
    return _llama_like(hf, **_sliding(hf, list(range(n))))


def qwen2_config(hf: HFConfig) -> ModelConfig:
    n = hf.get("num_hidden_layers")
    first = hf.get("max_window_layers", default=n)
    sliding = _sliding(hf, list(range(first, n))) if hf.get("use_sliding_window", default=False) else {}
    return _llama_like(hf, bias_qkv=True, bias_attn_out=False, **sliding)


def gemma2_config(hf: HFConfig) -> ModelConfig:
    act = hf.get("hidden_activation", "hidden_act", default="gelu_pytorch_tanh")
    if _ACTS.get(act) != "gelu_new":
        raise hf.unsupported(f"hidden_activation {act!r} (supported: gelu_pytorch_tanh)")
    n, d = hf.get("num_hidden_layers"), hf.get("hidden_size")
    return _llama_like(
        hf, act="geglu", post_norms=True, embed_scale=math.sqrt(d),
        attn_scale=float(hf.get("query_pre_attn_scalar")) ** -0.5,
        attn_softcap=float(hf.get("attn_logit_softcapping", default=0.0)),
        logit_softcap=float(hf.get("final_logit_softcapping", default=0.0)),
        tied_embeddings=hf.get("tie_word_embeddings", default=True),
        **_sliding(hf, list(range(0, n, 2))),
    )


def llama_weights(src: TensorSource, cfg: ModelConfig) -> dict[str, Tensor]:
    d, m, dq, dkv = cfg.d_model, cfg.d_mlp, cfg.n_heads * cfg.d_head, cfg.kv_heads * cfg.d_head
    gemma = cfg.post_norms
    offset = 1.0 if gemma else 0.0  # Gemma's RMSNorm multiplies by (1 + w)
    state = {"W_E": src.take("embed_tokens.weight", (cfg.d_vocab, d))}
    for i in range(cfg.n_layers):
        h, b = f"layers.{i}", f"blocks.{i}"
        _norm(src, f"{h}.input_layernorm", f"{b}.ln1", cfg, state, offset)
        if gemma:
            _norm(src, f"{h}.post_attention_layernorm", f"{b}.ln1_post", cfg, state, offset)
            _norm(src, f"{h}.pre_feedforward_layernorm", f"{b}.ln2", cfg, state, offset)
            _norm(src, f"{h}.post_feedforward_layernorm", f"{b}.ln2_post", cfg, state, offset)
        else:
            _norm(src, f"{h}.post_attention_layernorm", f"{b}.ln2", cfg, state)
        for name, proj, rows in (("Q", "q_proj", dq), ("K", "k_proj", dkv), ("V", "v_proj", dkv)):
            state[f"{b}.attn.W_{name}"] = src.take(f"{h}.self_attn.{proj}.weight", (rows, d))
            if cfg.bias_qkv:
                state[f"{b}.attn.b_{name}"] = src.take(f"{h}.self_attn.{proj}.bias", (rows,))
        state[f"{b}.attn.W_O"] = src.take(f"{h}.self_attn.o_proj.weight", (d, dq))
        if cfg.bias_attn_out:
            state[f"{b}.attn.b_O"] = src.take(f"{h}.self_attn.o_proj.bias", (d,))
        state[f"{b}.mlp.W_gate"] = src.take(f"{h}.mlp.gate_proj.weight", (m, d))
        state[f"{b}.mlp.W_in"] = src.take(f"{h}.mlp.up_proj.weight", (m, d))
        state[f"{b}.mlp.W_out"] = src.take(f"{h}.mlp.down_proj.weight", (d, m))
    _norm(src, "norm", "ln_final", cfg, state, offset)
    _unembed(src, "lm_head.weight", cfg, state)
    return state


_ROTARY_BUFFERS = (r"layers\.\d+\.self_attn\.rotary_emb\.inv_freq",)


def _llama_family(model_type: str, summary: str, arch: str, config: Callable[[HFConfig], ModelConfig]) -> Family:
    return Family(model_type, summary, (arch,), "model.", _ROTARY_BUFFERS, config, llama_weights)


FAMILIES: dict[str, Family] = {
    f.model_type: f
    for f in (
        Family("gpt2", "GPT-2 (LayerNorm, learned positions, tied embeddings)", ("GPT2LMHeadModel", "GPT2Model"),
               "transformer.", (r"h\.\d+\.attn\.(bias|masked_bias)",), gpt2_config, gpt2_weights),
        Family("gpt_neox", "GPT-NeoX / Pythia (partial rotary, parallel attention + MLP)", ("GPTNeoXForCausalLM",),
               "gpt_neox.", (r"layers\.\d+\.attention\.(bias|masked_bias|rotary_emb\.inv_freq)",),
               neox_config, neox_weights),
        _llama_family("llama", "Llama 1-3 (RMSNorm, rotary incl. llama3 scaling, SwiGLU, GQA)", "LlamaForCausalLM",
                      llama_config),
        _llama_family("mistral", "Mistral (Llama + sliding-window attention)", "MistralForCausalLM", mistral_config),
        _llama_family("qwen2", "Qwen2 / Qwen2.5 (Llama + q/k/v biases)", "Qwen2ForCausalLM", qwen2_config),
        _llama_family("gemma2", "Gemma 2 (soft-capping, post-norms, alternating sliding window, GeGLU)",
                      "Gemma2ForCausalLM", gemma2_config),
    )
}


def supported() -> str:
    """One line naming the supported model types (for error messages and help)."""
    return ", ".join(f"{f.model_type} ({f.summary})" for f in FAMILIES.values())


def to_float(state: dict[str, Tensor], dtype: torch.dtype) -> dict[str, Tensor]:
    """Copy every tensor to `dtype`, contiguous: slices of fused matrices get their own storage."""
    return {k: v.to(dtype).clone(memory_format=torch.contiguous_format) for k, v in state.items()}
