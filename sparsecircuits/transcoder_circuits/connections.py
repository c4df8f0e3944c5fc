"""Dunefsky et al. (2024), "Transcoders find interpretable LLM feature circuits": the
input-invariant (weight-only) analyses of a transcoder feature f of layer L, in our model's geometry.

* `connections`: for every earlier layer m, the upstream features i by d_i · r_f (the decoder row
  of i against f's read vector r_f, below), and through attention by d_i · r_{f,a.h}: feature i is
  written at some position, read by head h of layer a (m < a ≤ L; a < L with parallel attention and
  MLP) through its OV circuit, and written where f reads. Top-k per upstream layer, with sign.
* `de_embeddings`: the vocabulary tokens that most directly drive f, s_E W_E[t] · r_f (the token's
  embedding read directly), and through each head's OV circuit, s_E W_E[t] · r_{f,a.h}; per head or
  for the heads whose best token drives f most.

The read vectors (what a write into the residual stream must be dotted with to give the change of
f's pre-activation; f's pre-activation is x · e_f + b_f, e_f = W_enc[:, f]):
  r_f = N2_Lᵀ(e_f), where N2_L is the linear part of block L's `ln2` if the transcoder reads
        `ln2.hook_normalized` (x -> C(x) ⊙ w / σ; C centres for LayerNorm), else the identity
        (`hook_resid_mid`, `hook_mlp_in`: the transcoder reads the residual stream itself);
  r_{f,a.h} = N1_aᵀ(W_V,hᵀ W_O,hᵀ Pᵀ(r_f)), with P the linear part of `ln1_post` in post-norm
        models (else the identity) and N1_a that of block a's `ln1`; a grouped-query head uses its
        key/value group's W_V.
Norms, as in Dunefsky et al., are per-token constants: their scale σ (the only input-dependent
part) is taken as 1. σ is a positive number per token and norm, so it changes no sign, nor any
ranking among the direct connections (one factor, ln2's at f's position) or among the paths through
the heads of one block (ln1's at the source, ln1_post's and ln2's at f's position); between blocks
those factors can differ, and a merged list compares them at σ = 1. The norm's bias is no connection.
Left out, because they depend on the input: the attention pattern (the OV paths are per unit of
attention from f's position to the source; QK is not explained), AbsTopK selections (activation
sparsity), the positional embedding and the bigram table. The embedding scale s_E is included.
`analysis.input_invariant` is the plain d_i · e_i′ (no norm), which the feature dashboards rank by.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from sparsecircuits.dictionaries.base import Dictionary
from sparsecircuits.model.transformer import Norm, Transformer
from sparsecircuits.transcoder_circuits.attribution_graph import _norm_T
from sparsecircuits.transcoder_circuits.replacement import INPUT_SITES, _site

FORMAT = "sparsecircuits-transcoder-analysis-v1"
SIGNS = ("abs", "positive", "negative")  # rank by |score|, by score, or by -score


@dataclass
class Link:
    """One ranked source of a feature: an upstream feature (`index` = feature id, `layer` its layer)
    or a token (`index` = token id, `layer` -1); `head` = (layer, head) for a path through a head."""

    layer: int
    index: int
    score: float
    head: tuple[int, int] | None = None

    def to_json(self, key: str = "feature", text: str | None = None) -> dict[str, Any]:
        """{layer, feature, [head_layer, head,] score} or, for a token, {token, [text,] score}."""
        out: dict[str, Any] = {key: self.index} if key == "token" else {"layer": self.layer, key: self.index}
        if text is not None:
            out["text"] = text
        if self.head is not None:
            out["head_layer"], out["head"] = self.head
        out["score"] = self.score
        return out


@dataclass
class Connections:
    """Upstream features of feature `feature` of layer `layer` (module docstring)."""

    layer: int
    feature: int
    direct: dict[int, list[Link]] = field(default_factory=dict)  # upstream layer -> top-k, best first
    ov: dict[int, list[Link]] = field(default_factory=dict)  # upstream layer -> top-k (head, feature)

    def to_json(self) -> dict[str, Any]:
        return {"layer": self.layer, "feature": self.feature,
                "direct": [x.to_json() for m in sorted(self.direct) for x in self.direct[m]],
                "ov": [x.to_json() for m in sorted(self.ov) for x in self.ov[m]]}


@dataclass
class HeadTokens:
    """The top tokens through one head's OV circuit; `score` is the head's best token's score."""

    layer: int
    head: int
    score: float
    tokens: list[Link]


@dataclass
class DeEmbedding:
    """Tokens that most directly drive feature `feature` of layer `layer` (module docstring)."""

    layer: int
    feature: int
    direct: list[Link]
    heads: list[HeadTokens]

    def to_json(self, token_str: Callable[[int], str] | None = None) -> dict[str, Any]:
        """The JSON entry of one feature (docs/transcoders.md); `token_str` adds each token's text."""
        def tokens(links: list[Link]) -> list[dict[str, Any]]:
            return [x.to_json("token", token_str(x.index) if token_str else None) for x in links]

        return {"layer": self.layer, "feature": self.feature, "direct": tokens(self.direct),
                "heads": [{"layer": h.layer, "head": h.head, "score": h.score, "tokens": tokens(h.tokens)}
                          for h in self.heads]}


def check_transcoder(model: Transformer, tc: Dictionary, layer: int, feature: int | None = None) -> None:
    """A transcoder of block `layer` from an `INPUT_SITES` hook to `hook_mlp_out` of d_model width,
    and `feature` one of its features; a ValueError naming the problem otherwise."""
    n = model.cfg.n_layers
    if not 0 <= layer < n:
        raise ValueError(f"layer {layer} is outside the model's layers 0..{n - 1}")
    site, out = _site(tc.cfg.hook, layer), _site(tc.cfg.out_hook, layer)
    if site not in INPUT_SITES or out != "hook_mlp_out":
        raise ValueError(f"the transcoder for layer {layer} maps {tc.cfg.hook!r} -> {tc.cfg.out_hook!r}; expected "
                         f"one of {[f'blocks.{layer}.{s}' for s in INPUT_SITES]} -> blocks.{layer}.hook_mlp_out")
    if tc.cfg.d_in != model.cfg.d_model or tc.cfg.d_out != model.cfg.d_model:
        raise ValueError(f"the transcoder for layer {layer} maps {tc.cfg.d_in} -> {tc.cfg.d_out}, but the model's "
                         f"d_model is {model.cfg.d_model}")
    if feature is not None and not 0 <= feature < tc.cfg.width:
        raise ValueError(f"feature {feature} is outside the layer-{layer} transcoder's features 0..{tc.cfg.width - 1}")


def _norm_lin_T(g: Tensor, norm: Norm) -> Tensor:
    """Transpose of a norm's linear part with its scale held at 1: g -> C(g ⊙ w) (C centres for LayerNorm)."""
    return _norm_T(g, norm, g.new_ones(()))


def read_vector(model: Transformer, tc: Dictionary, layer: int, feature: int) -> Float[Tensor, " d_model"]:
    """r_f: feature `feature`'s encoder column pulled back to the residual stream it reads (module docstring)."""
    e = tc.W_enc[:, feature]
    return _norm_lin_T(e, model.blocks[layer].ln2) if _site(tc.cfg.hook, layer) == "ln2.hook_normalized" else e


def head_reads(model: Transformer, layer: int, r: Float[Tensor, " d_model"]) -> Float[Tensor, "head d_model"]:
    """r_{·,a.h} for every head h of block `layer` (= a): a read r of the residual stream after the
    block's attention, pulled back through each head's OV circuit to the residual stream before it."""
    cfg, block = model.cfg, model.blocks[layer]
    H, KV, dh = cfg.n_heads, cfg.kv_heads, cfg.d_head
    w = _norm_lin_T(r, block.ln1_post) if cfg.post_norms else r
    g_z = (w @ block.attn.W_O).view(H, dh)  # [head, d_head]: W_O,hᵀ w
    W_V = block.attn.W_V.view(KV, dh, cfg.d_model)[torch.arange(H) // (H // KV)]  # [head, d_head, d_model]
    return _norm_lin_T(torch.einsum("hd,hdm->hm", g_z, W_V), block.ln1)


def head_layers(model: Transformer, layer: int, above: int = -1) -> list[int]:
    """Blocks whose attention lies between a write after block `above` and a read by MLP `layer`."""
    last = layer if not model.cfg.parallel_attn_mlp else layer - 1
    return list(range(above + 1, last + 1))


def _top(scores: Tensor, k: int, sign: str) -> tuple[list[float], list[int]]:
    key = {"abs": scores.abs(), "positive": scores, "negative": -scores}[sign]
    idx = key.topk(min(k, key.numel())).indices
    return scores[idx].tolist(), idx.tolist()


def _check_sign(sign: str, k: int) -> None:
    if sign not in SIGNS:
        raise ValueError(f"sign {sign!r} is not one of {SIGNS}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")


@torch.no_grad()
def connections(model: Transformer, transcoders: dict[int, Dictionary], layer: int, feature: int, k: int = 10,
                sign: str = "abs") -> Connections:
    """Top-k upstream features of every transcoder below `layer`, directly and through heads (module docstring)."""
    _check_sign(sign, k)
    if layer not in transcoders:
        raise ValueError(f"no transcoder for layer {layer} (layers: {sorted(transcoders)})")
    for m, tc in transcoders.items():
        check_transcoder(model, tc, m)
    check_transcoder(model, transcoders[layer], layer, feature)
    r = read_vector(model, transcoders[layer], layer, feature)
    reads = {a: head_reads(model, a, r) for a in head_layers(model, layer)}  # [head, d_model] per block
    out = Connections(layer, feature)
    for m in sorted(x for x in transcoders if x < layer):
        W_dec = transcoders[m].W_dec  # [width, d_model]
        vals, idx = _top(W_dec @ r, k, sign)
        out.direct[m] = [Link(m, i, v) for v, i in zip(vals, idx)]
        above = [a for a in reads if a > m]
        if not above:
            out.ov[m] = []
            continue
        s = torch.stack([W_dec @ reads[a].T for a in above])  # [block, width, head]
        vals, flat = _top(s.flatten(), k, sign)
        W, H = s.shape[1], s.shape[2]
        out.ov[m] = [Link(m, (f // H) % W, v, (above[f // (W * H)], f % H)) for v, f in zip(vals, flat)]
    return out


@torch.no_grad()
def de_embeddings(model: Transformer, transcoders: dict[int, Dictionary], layer: int, feature: int, k: int = 10,
                  heads: list[tuple[int, int]] | None = None, top_heads: int = 5, sign: str = "abs") -> DeEmbedding:
    """Top-k tokens directly and through the OV circuit of the heads named in `heads` (layer, head),
    or of the `top_heads` heads whose best token scores highest (module docstring)."""
    _check_sign(sign, k)
    if layer not in transcoders:
        raise ValueError(f"no transcoder for layer {layer} (layers: {sorted(transcoders)})")
    check_transcoder(model, transcoders[layer], layer, feature)
    allowed = head_layers(model, layer)
    for a, h in heads or []:
        if a not in allowed or not 0 <= h < model.cfg.n_heads:
            raise ValueError(f"head {a}.{h} does not lie before layer {layer}'s MLP (blocks {allowed}, heads "
                             f"0..{model.cfg.n_heads - 1})")
    E = model.W_E * model.cfg.embed_scale  # [vocab, d_model]
    r = read_vector(model, transcoders[layer], layer, feature)
    vals, idx = _top(E @ r, k, sign)
    direct = [Link(-1, i, v) for v, i in zip(vals, idx)]
    per_head: list[HeadTokens] = []
    for a in allowed:
        if heads is not None and all(x != a for x, _ in heads):
            continue
        s = E @ head_reads(model, a, r).T  # [vocab, head]
        for h in range(model.cfg.n_heads):
            if heads is None or (a, h) in heads:
                vals, idx = _top(s[:, h], k, sign)
                per_head.append(HeadTokens(a, h, vals[0], [Link(-1, i, v) for v, i in zip(vals, idx)]))
    if heads is None:
        key = {"abs": abs, "positive": lambda x: x, "negative": lambda x: -x}[sign]
        per_head = sorted(per_head, key=lambda t: -key(t.score))[:top_heads]
    return DeEmbedding(layer, feature, direct, per_head)


__all__ = ["FORMAT", "SIGNS", "Connections", "DeEmbedding", "HeadTokens", "Link", "check_transcoder", "connections",
           "de_embeddings", "head_layers", "head_reads", "read_vector"]
