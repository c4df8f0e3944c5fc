"""Weight processing for analysis that leaves the logits unchanged (as TransformerLens offers it).

* `fold_norms`: a norm's gain (and, for LayerNorm, bias) is folded into the linear layers that read
  the norm's output — `ln1` into W_Q/W_K/W_V, `ln2` into W_in/W_gate, `ln_final` into the
  unembedding — leaving gain-free norms. Because `(x̂ * w + b) @ Wᵀ = x̂ @ (W * w)ᵀ + W @ b`, the
  logits do not change; `ln*.hook_normalized` then holds the bare normalised residual x̂, so a
  direction read there is directly comparable across layers. A LayerNorm bias needs bias vectors in
  the reader, so they are switched on (zero-initialised) where the config had none; a tied
  unembedding is untied first. Post-norms (Gemma 2) write to the residual stream, not into a
  linear layer, and are left as they are.
* `center_writing_weights`: every LayerNorm subtracts the mean over d_model before anything reads
  the residual stream, so the mean of what each component writes there is invisible downstream.
  Subtracting it from W_E, W_pos, W_O, b_O, W_out and b_out (and untying a tied unembedding, which
  reads W_E) changes no logit but removes a shared offset from every residual direction. Only for
  LayerNorm models without post-norms.

Both refuse models with AbsTopK activation sparsity at the sites involved, because a top-k choice
is not invariant under these reparametrisations. Both return a new model; the input is untouched.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from sparsecircuits.model.config import ModelConfig
from sparsecircuits.model.load import build_model
from sparsecircuits.model.transformer import Transformer

__all__ = ["fold_norms", "center_writing_weights"]


def _untied(model: Transformer, **changes: object) -> tuple[ModelConfig, dict[str, Tensor]]:
    """Config with `changes` (untying embeddings), and a detached copy of the state dict to match."""
    cfg = dataclasses.replace(model.cfg, tied_embeddings=False, **changes)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if model.cfg.tied_embeddings:
        state["W_U"] = state["W_E"].clone()
    return cfg, state


def _refuse_sparsity(cfg: ModelConfig, sites: tuple[str, ...], what: str) -> None:
    bad = [s for s in sites if cfg.sparse_at(s)]
    if bad:
        raise ValueError(f"{what} would change the AbsTopK choice at {bad}; use a model without activation sparsity there")


def _fold_into(state: dict[str, Tensor], norm: str, readers: list[tuple[str, str | None]]) -> None:
    """Fold norm `norm` (keys `{norm}.w`, optional `{norm}.b`) into `(weight, bias)` readers `[out, in]`."""
    w, b = state[f"{norm}.w"], state.get(f"{norm}.b")
    for weight, bias in readers:
        if b is not None:
            assert bias is not None, weight  # callers switch the reader's bias on first
            state[bias] = state[bias] + state[weight] @ b
        state[weight] = state[weight] * w
    state[f"{norm}.w"] = torch.ones_like(w)
    if b is not None:
        state[f"{norm}.b"] = torch.zeros_like(b)


@torch.no_grad()
def fold_norms(model: Transformer) -> Transformer:
    """A copy of `model` with the pre-norm gains (and LayerNorm biases) folded into their readers."""
    cfg = model.cfg
    _refuse_sparsity(cfg, ("attn_in", "mlp_in"), "folding norms")
    layer = cfg.norm == "layer"
    if layer and cfg.act in ("swiglu", "geglu"):
        raise ValueError("folding a LayerNorm bias into a gated MLP needs a gate bias, which our MLP has not")
    new_cfg, state = _untied(
        model,
        bias_qkv=cfg.bias_qkv or layer, bias_mlp=cfg.bias_mlp or layer, bias_unembed=cfg.bias_unembed or layer,
    )
    for key, size in _new_biases(cfg, new_cfg):
        state[key] = torch.zeros(size, dtype=state["W_E"].dtype, device=state["W_E"].device)
    for i in range(cfg.n_layers):
        p = f"blocks.{i}"
        qkv = [(f"{p}.attn.W_{n}", f"{p}.attn.b_{n}" if new_cfg.bias_qkv else None) for n in "QKV"]
        _fold_into(state, f"{p}.ln1", qkv)
        mlp = [(f"{p}.mlp.W_in", f"{p}.mlp.b_in" if new_cfg.bias_mlp else None)]
        if f"{p}.mlp.W_gate" in state:
            mlp.append((f"{p}.mlp.W_gate", None))
        _fold_into(state, f"{p}.ln2", mlp)
    _fold_into(state, "ln_final", [("W_U", "b_U" if new_cfg.bias_unembed else None)])
    return build_model(new_cfg, state, model.W_E.device)


def _new_biases(old: ModelConfig, new: ModelConfig) -> list[tuple[str, int]]:
    """Bias vectors the new config has and the old one had not, with their sizes."""
    out: list[tuple[str, int]] = []
    for i in range(old.n_layers):
        p = f"blocks.{i}"
        if new.bias_qkv and not old.bias_qkv:
            out += [(f"{p}.attn.b_Q", old.n_heads * old.d_head)]
            out += [(f"{p}.attn.b_{n}", old.kv_heads * old.d_head) for n in "KV"]
        if new.bias_mlp and not old.bias_mlp:
            out += [(f"{p}.mlp.b_in", old.d_mlp), (f"{p}.mlp.b_out", old.d_model)]
    if new.bias_unembed and not old.bias_unembed:
        out.append(("b_U", old.d_vocab))
    return out


@torch.no_grad()
def center_writing_weights(model: Transformer) -> Transformer:
    """A copy of a LayerNorm `model` whose residual-stream writes have zero mean over d_model."""
    cfg = model.cfg
    if cfg.norm != "layer" or cfg.post_norms:
        raise ValueError("centring writing weights needs LayerNorm (norm='layer') and no post-norms: "
                         "only then does every reader remove the residual mean")
    _refuse_sparsity(cfg, ("attn_out", "mlp_out"), "centring writing weights")
    new_cfg, state = _untied(model)
    for key, value in state.items():
        leaf = key.rsplit(".", 1)[-1]
        if key in ("W_E", "W_pos"):  # [*, d_model]
            state[key] = value - value.mean(-1, keepdim=True)
        elif leaf in ("W_O", "W_out"):  # [d_model, *]
            state[key] = value - value.mean(0, keepdim=True)
        elif leaf in ("b_O", "b_out"):  # [d_model]
            state[key] = value - value.mean()
    return build_model(new_cfg, state, model.W_E.device)
