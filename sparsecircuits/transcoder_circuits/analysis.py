"""Dunefsky et al. (2024), "Transcoders find interpretable LLM feature circuits": weight-based and
path-based analyses of transcoder features. Norms are treated as constants (their frozen scales);
the path search also holds AbsTopK selections (activation sparsity) fixed, as `replacement.py` does,
and reads attention outputs through post-norms.

* `input_invariant`: the plain input-independent part of feature i → feature i′ attribution,
  d_i · e_i′ (decoder row of an earlier transcoder · encoder column of a later one; no norm, no
  AbsTopK), top-k over i′; the feature dashboards rank by it. `connections.py` has the same with
  the norms' linear parts between them, ranked over upstream features, through attention heads'
  OV circuits too, and the de-embeddings.
* `greedy_paths`: from a root (a feature's encoder column at its input, or an unembedding
  difference at ln_final), repeatedly split the root's value into its direct contributors in the
  frozen model — active lower-layer features z_j (d_j · v), (head, source position) pairs
  P[h,p,s] (u_h · ln1(x)_s), the token embedding — extend every frontier path by its `branches`
  largest contributors, and keep the `branches` best paths globally (|attribution|), for `steps`
  steps. A feature child carries the vector (d_j · v) e_j (the feature is linear where active), a
  head child the vector P[h,p,s] · ln1ᵀ(W_V,hᵀ W_O,hᵀ v) at the source position (with the frozen
  selections S ⊙ · after ln1, on v and on the attention output, and ln1_postᵀ, where the model has them). Paths merge into a
  tree in which every expanded node also gets transcoder-error, bias and pruning-error children, so
  a node's children sum exactly to its value (tested).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NamedTuple

import torch
from torch import Tensor

from sparsecircuits.dictionaries.base import Dictionary
from sparsecircuits.graph import Circuit, Edge, Node
from sparsecircuits.model.transformer import Norm, Transformer
from sparsecircuits.transcoder_circuits.attribution_graph import _norm_T, logit_directions
from sparsecircuits.transcoder_circuits.replacement import FrozenState


class TopK(NamedTuple):
    values: Tensor  # [k]
    indices: Tensor  # [k] feature or token ids


def input_invariant(upstream: Dictionary, downstream: Dictionary, feature: int, k: int = 10) -> TopK:
    """Top-k downstream features by d_feature · e_i′ (module docstring)."""
    scores = upstream.W_dec[feature] @ downstream.W_enc
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
        const += float(e @ _ln2_bias(model, st, layer, pos))
        e = _feature_vector(model, tc, st, layer, pos, f, 1.0)
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

    def to_json(self) -> dict[str, Any]:
        """{root, paths}: the paths, largest |attribution| first, each a list of nodes from the root's
        direct contributor down to the path's end, {kind, layer, pos, index, value} (index: feature,
        head or token id; value: the node's contribution to the node before it)."""
        r = self.root
        root = {"label": r.label if r else "", "layer": r.layer if r else None, "pos": r.pos if r else None,
                "value": self.root_value}
        paths = [{"attribution": p.attribution,
                  "nodes": [{"kind": n.kind, "layer": n.layer, "pos": n.pos, "index": n.index, "value": n.value}
                            for n in (self.nodes[i] for i in p.nodes[1:])]}
                 for p in sorted(self.paths, key=lambda p: -abs(p.attribution))]
        return {"root": root, "paths": paths}

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


def _ln2_bias(model: Transformer, st: FrozenState, m: int, pos: int) -> Tensor:
    """What ln2's bias adds to its output at `pos` (after ln2's frozen AbsTopK selection, if any)."""
    ln2 = model.blocks[m].ln2
    if ln2.b is None:
        return ln2.w.new_zeros(ln2.w.shape)
    keep = st.keep(f"blocks.{m}.ln2.hook_keep")
    return ln2.b if keep is None else ln2.b * keep[pos]


def _feature_vector(model: Transformer, tc: Dictionary, st: FrozenState, m: int, pos: int, f: int, dv: float) -> Tensor:
    """The residual-stream read of dv × feature f's pre-activation at (m, pos): through ln2's frozen
    selection and scale when the transcoder reads `ln2.hook_normalized`."""
    vec = tc.W_enc[:, f] * dv
    if st.sites[m] == "ln2.hook_normalized":
        keep = st.keep(f"blocks.{m}.ln2.hook_keep")
        vec = vec if keep is None else vec * keep[pos]
        vec = _norm_T(vec, model.blocks[m].ln2, st.scales[f"blocks.{m}.ln2.hook_scale"][pos])
    return vec


def _attn_out_read(model: Transformer, st: FrozenState, a: int, pos: int, v: Tensor) -> tuple[Tensor, float]:
    """v · hook_attn_out[pos] of block `a` as w · (W_O z + b_O) + const: through the frozen AbsTopK
    selection on the attention output and the frozen post-norm ln1_post, when the model has them."""
    block, const = model.blocks[a], 0.0
    keep = st.keep(f"blocks.{a}.hook_attn_out_keep")
    w = v if keep is None else v * keep[pos]
    if model.cfg.post_norms:
        const = float(w @ block.ln1_post.b) if block.ln1_post.b is not None else 0.0
        w = _norm_T(w, block.ln1_post, st.scales[f"blocks.{a}.ln1_post.hook_scale"][pos])
    return w, const


def _head_vector(g_v: Tensor, W_V: Tensor, keep: Tensor | None, ln1: Norm, scale: Tensor) -> Tensor:
    """A (head, source) child's residual read: the value-space read g_v [d_head] back through W_V of
    the head's key/value group [d_head, d_model], ln1's frozen selection `keep` and scale."""
    u = g_v @ W_V
    return _norm_T(u if keep is None else u * keep, ln1, scale)


def _head_contributors(model: Transformer, st: FrozenState, v: Tensor, a: int, pos: int) -> tuple[list[_Cand], float]:
    """Per (head of layer `a`, source position) contributions to v · resid[pos], and their bias.

    g_v[h, s] = P[h, pos, s] · S_v[s] ⊙ (W_O,hᵀ w) is the read of v in head h's value space at source
    s (w: `_attn_out_read`); the contribution is g_v · W_V (ln1(x_s) − S_ln1 ⊙ b_ln1), the bias
    g_v · (W_V (S_ln1 ⊙ b_ln1) + b_V) plus w · b_O. S_* are the frozen AbsTopK selections (1 if off)."""
    cfg, block = model.cfg, model.blocks[a]
    attn, H, KV, dh, d = block.attn, cfg.n_heads, cfg.kv_heads, cfg.d_head, cfg.d_model
    S, kv_of = pos + 1, torch.arange(H) // (H // KV)
    w, bias = _attn_out_read(model, st, a, pos, v)
    if attn.b_O is not None:
        bias += float(attn.b_O @ w)
    g_z = (w @ attn.W_O).view(H, dh)  # [head, d_head]
    g_v = st.patterns[a][:, pos, :S, None] * g_z[:, None, :]  # [head, src, d_head]
    keep_v = st.keep(f"blocks.{a}.attn.hook_v_keep")
    if keep_v is not None:
        g_v = g_v * keep_v[:S].view(S, KV, dh)[:, kv_of].transpose(0, 1)
    keep_ln = st.keep(f"blocks.{a}.ln1.hook_keep")
    ln_b = block.ln1.b if block.ln1.b is not None else v.new_zeros(d)
    ln_b = ln_b.expand(S, d) if keep_ln is None else ln_b * keep_ln[:S]  # [src, d_model]
    W_V = attn.W_V.view(KV, dh, d)

    def per_head(x: Tensor) -> Tensor:  # [src, d_model] -> [head, src, d_head], through W_V of each head's group
        return (x @ attn.W_V.T).view(S, KV, dh)[:, kv_of].transpose(0, 1)

    read = per_head(st.attn_in[a][:S] - ln_b)
    b_read = per_head(ln_b)
    if attn.b_V is not None:
        b_read = b_read + attn.b_V.view(KV, dh)[kv_of, None, :]
    bias += float((g_v * b_read).sum())
    contrib = (g_v * read).sum(-1)  # [head, src]
    scales = st.scales[f"blocks.{a}.ln1.hook_scale"]
    cands = []
    for (h, s), val in zip(torch.cartesian_prod(torch.arange(H), torch.arange(S)).tolist(), contrib.flatten().tolist()):
        keep = keep_ln[s] if keep_ln is not None else None
        make = partial(_head_vector, g_v[h, s], W_V[kv_of[h]], keep, block.ln1, scales[s])
        cands.append(_Cand("head", a, s, h, val, make, "attn"))
    return cands, bias


def _contributors(model: Transformer, tcs: dict[int, Dictionary], st: FrozenState, v: Tensor, layer: int, sub: str,
                  pos: int) -> tuple[list[_Cand], list[_Cand], float]:
    """Direct contributors to v · resid at a read point: (extendable/leaf candidates, error nodes, bias)."""
    cfg = model.cfg
    n_attn = layer + 1 if (sub == "mlp" and not cfg.parallel_attn_mlp and layer < cfg.n_layers) else layer
    cands, errors, bias = [], [], 0.0
    for m in range(layer):  # MLPs (transcoders) upstream of the read point; their output is hook_mlp_out itself
        tc, z = tcs[m], st.acts[m][pos]
        active = torch.nonzero(z).squeeze(1)
        dv = tc.W_dec[active] @ v
        ln2_b = _ln2_bias(model, st, m, pos) if st.sites[m] == "ln2.hook_normalized" else None
        for f, d, val in zip(active.tolist(), dv.tolist(), (z[active] * dv).tolist()):
            const = d * (float(tc.b_enc[f]) + (float(tc.W_enc[:, f] @ ln2_b) if ln2_b is not None else 0.0))
            cands.append(_Cand("feature", m, pos, f, val, partial(_feature_vector, model, tc, st, m, pos, f, d), "mlp", const))
        err = float(st.errors[m][pos] @ v)
        if tc.W_skip is not None:  # the skip path is linear: reported with the error
            err += float((st.inputs[m][pos] @ tc.W_skip.T) @ v)
        errors.append(_Cand("error", m, pos, -1, err))
        bias += float(tc.b_dec @ v)
    for a in range(n_attn):  # attention heads upstream, per source position
        heads, b = _head_contributors(model, st, v, a, pos)
        cands += heads
        bias += b
    cands.append(_Cand("embed", -1, pos, int(st.tokens[pos]), float(st.embed[pos] @ v)))
    if model.cfg.positions == "learned":
        bias += float(model.W_pos[pos] @ v)
    return cands, errors, bias


@torch.no_grad()
def greedy_paths(model: Transformer, transcoders: dict[int, Dictionary], st: FrozenState, root: Root,
                 steps: int = 3, branches: int = 15) -> PathSearchResult:
    """Greedy path search (module docstring)."""
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
