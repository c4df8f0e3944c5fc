"""Dunefsky et al. (2024), "Transcoders find interpretable LLM feature circuits": weight-based and
path-based analyses of transcoder features. Norms are treated as constants (their frozen scales).

* `input_invariant`: the input-independent part of feature i → feature i′ attribution, d_i · e_i′
  (decoder row of an earlier transcoder · encoder column of a later one), top-k over i′.
* `ov_connections`: the same through one attention head's OV circuit, d_i W_V,hᵀ W_O,hᵀ · e_i′,
  top-k over (head, i′) (the pattern, i.e. QK, is not explained).
* `de_embed`: W_E · e_i, the vocabulary tokens that most directly activate an early feature.
* `greedy_paths`: from a root (a feature's encoder column at its input, or an unembedding
  difference at ln_final), repeatedly split the root's value into its direct contributors in the
  frozen model — active lower-layer features z_j (d_j · v), (head, source position) pairs
  P[h,p,s] (u_h · ln1(x)_s), the token embedding — extend every frontier path by its `branches`
  largest contributors, and keep the `branches` best paths globally (|attribution|), for `steps`
  steps. A feature child carries the vector (d_j · v) e_j (the feature is linear where active), a
  head child the vector P[h,p,s] · ln1ᵀ(W_V,hᵀ W_O,hᵀ v) at the source position. Paths merge into a
  tree in which every expanded node also gets transcoder-error, bias and pruning-error children, so
  a node's children sum exactly to its value (tested).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor

from sparsecircuits.dictionaries.base import Dictionary
from sparsecircuits.graph import Circuit, Edge, Node
from sparsecircuits.model.transformer import Norm, Transformer
from sparsecircuits.transcoder_circuits.attribution_graph import _norm_T, logit_directions
from sparsecircuits.transcoder_circuits.replacement import FrozenState


class TopK(NamedTuple):
    values: Tensor  # [k]
    indices: Tensor  # [k] feature or token ids


class HeadTopK(NamedTuple):
    values: Tensor  # [k]
    heads: Tensor  # [k]
    indices: Tensor  # [k] downstream feature ids


def input_invariant(upstream: Dictionary, downstream: Dictionary, feature: int, k: int = 10) -> TopK:
    """Top-k downstream features by d_feature · e_i′ (module docstring)."""
    scores = upstream.W_dec[feature] @ downstream.W_enc
    return TopK(*scores.topk(min(k, scores.numel())))


def _ov(model: Transformer, layer: int) -> Float[Tensor, "head d_model d_model"]:
    """Per-head OV maps x -> x W_V,hᵀ W_O,hᵀ (row-vector convention)."""
    cfg, attn = model.cfg, model.blocks[layer].attn
    W_V = attn.W_V.view(cfg.kv_heads, cfg.d_head, cfg.d_model)
    W_V = W_V.repeat_interleave(cfg.n_heads // cfg.kv_heads, dim=0)  # head h uses kv head h // group
    W_O = attn.W_O.view(cfg.d_model, cfg.n_heads, cfg.d_head).permute(1, 2, 0)  # [head, d_head, d_model]
    return W_V.transpose(1, 2) @ W_O


def ov_connections(model: Transformer, upstream: Dictionary, feature: int, layer: int, downstream: Dictionary,
                   k: int = 10) -> HeadTopK:
    """Top-k (head of `layer`, downstream feature) pairs by d_feature W_OV,h · e_i′."""
    with torch.no_grad():
        scores = (upstream.W_dec[feature] @ _ov(model, layer)) @ downstream.W_enc  # [head, width]
    vals, flat = scores.flatten().topk(min(k, scores.numel()))
    return HeadTopK(vals, flat // scores.shape[1], flat % scores.shape[1])


def de_embed(model: Transformer, transcoder: Dictionary, feature: int, k: int = 10) -> TopK:
    """Top-k vocabulary tokens by W_E · e_feature."""
    with torch.no_grad():
        scores = model.W_E @ transcoder.W_enc[:, feature]
    return TopK(*scores.topk(min(k, scores.numel())))


# --- greedy path search -----------------------------------------------------------------------------

@dataclass
class Root:
    """A linear read v · resid + const of the residual at (layer, sub, pos); see `feature_root`."""

    vector: Tensor  # [d_model]
    layer: int  # read point: before block `layer`'s attention ("attn") or MLP ("mlp"); n_layers = final
    sub: str
    pos: int
    const: float  # bias of the read itself (b_enc, norm bias, unembedding bias)
    value: float  # the read's value on the prompt (independently computed)
    label: str


@torch.no_grad()
def feature_root(model: Transformer, st: FrozenState, transcoders: dict[int, Dictionary], layer: int, pos: int,
                 feature: int | None = None) -> Root:
    """A transcoder feature's pre-activation as a root; `feature` None = the most active one there."""
    tc = transcoders[layer]
    pre = tc.pre_acts(st.inputs[layer][pos])
    f = int(pre.argmax()) if feature is None else feature
    e, const = tc.W_enc[:, f], float(tc.b_enc[f])
    if st.sites[layer] == "ln2.hook_normalized":
        ln2 = model.blocks[layer].ln2
        const += float(e @ ln2.b) if ln2.b is not None else 0.0
        e = _norm_T(e, ln2, st.scales[f"blocks.{layer}.ln2.hook_scale"][pos])
    return Root(e, layer, "mlp", pos, const, float(pre[f]), f"L{layer} feature {f} @ {pos}")


@torch.no_grad()
def logit_root(model: Transformer, st: FrozenState, correct: int, incorrect: int) -> Root:
    """The difference of two demeaned logits at the last position (an unembedding difference)."""
    d = logit_directions(model, torch.tensor([correct, incorrect]))
    v = d[0] - d[1]
    const = float(model.b_U[correct] - model.b_U[incorrect]) if model.b_U is not None else 0.0
    lnf = model.ln_final
    const += float(v @ lnf.b) if lnf.b is not None else 0.0
    vec = _norm_T(v, lnf, st.scales["ln_final.hook_scale"][-1])
    value = float(st.final_normed[-1] @ v) + (float(model.b_U[correct] - model.b_U[incorrect]) if model.b_U is not None else 0.0)
    return Root(vec, model.cfg.n_layers, "attn", st.tokens.numel() - 1, const, value, f"logit {correct} - {incorrect}")


@dataclass
class PathNode:
    id: str  # tree path, "root/f:1:3:7/h:0:2:1"
    kind: str  # root | feature | head | embed | error | bias | pruning_error
    layer: int
    pos: int
    index: int  # feature, head, token id; -1 for error, bias, pruning error
    value: float  # contribution to its parent
    source_pos: int | None = None  # heads: the attended position (= pos)


@dataclass
class PathEdge:
    src: str
    dst: str
    weight: float


@dataclass
class Path:
    nodes: list[str]  # root first
    attribution: float


@dataclass
class PathSearchResult:
    root_value: float
    nodes: dict[str, PathNode]
    edges: list[PathEdge]
    paths: list[Path]
    n_layers: int = 0
    root: Root | None = field(default=None, repr=False)

    def to_circuit(self) -> Circuit:
        """Merged into our `Circuit`: tree nodes with the same identity become one node, weights of
        parallel edges add; bias and pruning error are "error"-kind nodes at sites "bias"/"pruning_error"."""
        ident: dict[str, Node] = {}
        for n in self.nodes.values():
            if n.kind == "root":
                node = Node("root", 0, "logit" if self.root and self.root.layer == self.n_layers else "feature",
                            self.root.layer if self.root else 0, n.pos)
            elif n.kind == "feature":
                node = Node(f"blocks.{n.layer}.hook_mlp_out", n.index, "feature", n.layer, n.pos)
            elif n.kind == "head":
                node = Node(f"blocks.{n.layer}.hook_attn_out", n.index, "head", n.layer, n.pos)
            elif n.kind == "embed":
                node = Node("hook_embed", n.index, "embed", -1, n.pos)
            elif n.kind == "error":
                node = Node(f"blocks.{n.layer}.hook_mlp_out", -1, "error", n.layer, n.pos)
            else:
                node = Node(n.kind, -1, "error", n.layer, n.pos)
            ident[n.id] = node
        nodes = list({nd.id: nd for nd in ident.values()}.values())
        weights: dict[tuple[str, str], float] = {}
        for e in self.edges:
            key = (ident[e.src].id, ident[e.dst].id)
            weights[key] = weights.get(key, 0.0) + e.weight
        edges = [Edge(s, d, w, "attribution") for (s, d), w in weights.items()]
        return Circuit(nodes, edges, {}, {"method": "transcoder-paths", "root_value": self.root_value,
                                          "root": self.root.label if self.root else ""})


@dataclass
class _Cand:
    kind: str
    layer: int
    pos: int
    index: int
    value: float
    make: Callable[[], Tensor] | None = None  # the child's read vector, built only for kept children
    sub: str = "mlp"
    const: float = 0.0


def _feature_vector(model: Transformer, tc: Dictionary, st: FrozenState, m: int, pos: int, f: int, dv: float) -> Tensor:
    vec = tc.W_enc[:, f] * dv
    if st.sites[m] == "ln2.hook_normalized":
        vec = _norm_T(vec, model.blocks[m].ln2, st.scales[f"blocks.{m}.ln2.hook_scale"][pos])
    return vec


def _head_vector(p: Tensor, u: Tensor, ln1: Norm, scale: Tensor) -> Tensor:
    return p * _norm_T(u, ln1, scale)


def _contributors(model: Transformer, tcs: dict[int, Dictionary], st: FrozenState, v: Tensor, layer: int, sub: str,
                  pos: int) -> tuple[list[_Cand], list[_Cand], float]:
    """Direct contributors to v · resid at a read point: (extendable/leaf candidates, error nodes, bias)."""
    cfg = model.cfg
    n_attn = layer + 1 if (sub == "mlp" and not cfg.parallel_attn_mlp and layer < cfg.n_layers) else layer
    cands, errors, bias = [], [], 0.0
    for m in range(layer):  # MLPs (transcoders) upstream of the read point
        tc, z = tcs[m], st.acts[m][pos]
        active = torch.nonzero(z).squeeze(1)
        dv = tc.W_dec[active] @ v
        ln2_b = model.blocks[m].ln2.b if st.sites[m] == "ln2.hook_normalized" else None
        for f, d, val in zip(active.tolist(), dv.tolist(), (z[active] * dv).tolist()):
            const = d * (float(tc.b_enc[f]) + (float(tc.W_enc[:, f] @ ln2_b) if ln2_b is not None else 0.0))
            cands.append(_Cand("feature", m, pos, f, val, partial(_feature_vector, model, tc, st, m, pos, f, d), "mlp", const))
        err = float(st.errors[m][pos] @ v)
        if tc.W_skip is not None:  # the skip path is linear: reported with the error
            err += float((st.inputs[m][pos] @ tc.W_skip.T) @ v)
        errors.append(_Cand("error", m, pos, -1, err))
        bias += float(tc.b_dec @ v)
    for a in range(n_attn):  # attention heads upstream, per source position
        block, H = model.blocks[a], cfg.n_heads
        u = _ov(model, a) @ v  # [head, d_model]: u_h = W_V,hᵀ W_O,hᵀ v
        P = st.patterns[a][:, pos, : pos + 1]  # [head, src]
        ln_b = block.ln1.b if block.ln1.b is not None else torch.zeros_like(v)
        contrib = P * (u @ (st.attn_in[a][: pos + 1] - ln_b).T)  # [head, src]
        if block.attn.b_V is not None:
            bv_h = block.attn.b_V.view(cfg.kv_heads, cfg.d_head).repeat_interleave(H // cfg.kv_heads, 0)
            W_O = block.attn.W_O.view(cfg.d_model, H, cfg.d_head).permute(1, 2, 0)
            bias += float((P.sum(1) * ((W_O @ v) * bv_h).sum(1)).sum())
        bias += float((P.sum(1) * (u @ ln_b)).sum())
        if block.attn.b_O is not None:
            bias += float(block.attn.b_O @ v)
        scales = st.scales[f"blocks.{a}.ln1.hook_scale"]
        for (h, s), val in zip(torch.cartesian_prod(torch.arange(H), torch.arange(pos + 1)).tolist(), contrib.flatten().tolist()):
            make = partial(_head_vector, P[h, s], u[h], block.ln1, scales[s])
            cands.append(_Cand("head", a, s, h, val, make, "attn"))
    cands.append(_Cand("embed", -1, pos, int(st.tokens[pos]), float(st.embed[pos] @ v)))
    if model.cfg.positions == "learned":
        bias += float(model.W_pos[pos] @ v)
    return cands, errors, bias


@torch.no_grad()
def greedy_paths(model: Transformer, transcoders: dict[int, Dictionary], st: FrozenState, root: Root,
                 steps: int = 3, branches: int = 15) -> PathSearchResult:
    """Greedy path search (module docstring)."""
    if model.cfg.post_norms:
        raise ValueError("greedy path search does not support post-norms (ln1_post/ln2_post)")
    if steps < 1 or branches < 1:
        raise ValueError(f"steps and branches must be >= 1, got {steps}, {branches}")
    nodes = {"root": PathNode("root", "root", root.layer, root.pos, -1, root.value)}
    edges: list[PathEdge] = []
    paths: list[Path] = []
    # frontier: (node id, vector, layer, sub, pos, const)
    frontier = [("root", root.vector, root.layer, root.sub, root.pos, root.const)]
    expanded: dict[str, tuple[list[_Cand], list[_Cand], float, float]] = {}
    for _ in range(steps):
        options = []
        for nid, v, layer, sub, pos, const in frontier:
            cands, errs, bias = _contributors(model, transcoders, st, v, layer, sub, pos)
            expanded[nid] = (cands, errs, bias, const)
            top = sorted(cands, key=lambda c: -abs(c.value))[:branches]
            options += [(nid, c) for c in top]
        options = sorted(options, key=lambda o: -abs(o[1].value))[:branches]
        frontier = []
        for parent, c in options:
            tag = {"feature": "f", "head": "h", "embed": "e"}[c.kind]
            cid = f"{parent}/{tag}:{c.layer}:{c.pos}:{c.index}"
            nodes[cid] = PathNode(cid, c.kind, c.layer, c.pos, c.index, c.value, c.pos if c.kind == "head" else None)
            edges.append(PathEdge(cid, parent, c.value))
            parts = cid.split("/")
            paths.append(Path(["/".join(parts[: i + 1]) for i in range(len(parts))], c.value))
            if c.make is not None:
                frontier.append((cid, c.make(), c.layer, c.sub, c.pos, c.const))
        if not frontier:
            break
    for nid, (cands, errs, bias, const) in expanded.items():
        kept = sum(nodes[e.src].value for e in edges if e.dst == nid)
        pos, layer = nodes[nid].pos, nodes[nid].layer
        for e in errs:
            eid = f"{nid}/err:{e.layer}:{e.pos}"
            nodes[eid] = PathNode(eid, "error", e.layer, e.pos, -1, e.value)
            edges.append(PathEdge(eid, nid, e.value))
        for kind, val in (("bias", bias + const), ("pruning_error", sum(c.value for c in cands) - kept)):
            xid = f"{nid}/{kind}"
            nodes[xid] = PathNode(xid, kind, layer, pos, -1, val)
            edges.append(PathEdge(xid, nid, val))
    return PathSearchResult(root.value, nodes, edges, paths, model.cfg.n_layers, root)
