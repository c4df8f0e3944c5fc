"""Sparse feature circuits: node scores, edges between feature / error nodes, thresholds, and the
`graph.Circuit` (Marks et al. 2025, "Sparse feature circuits", arXiv 2403.19647, section 2).

Steps of `find_feature_circuit(model, sites, tokens, metric_fn, cfg)`:
  1. node values on the clean prompts and their patch values (`dictionary_graph.patch_values`);
  2. node effects by exact patching, attribution patching or integrated gradients (`node_effects`);
  3. aggregation (`aggregate`): mean over examples, then per (position, feature) when all prompts have
     one length (templated data) or summed over positions otherwise;
  4. nodes with |score| > node_threshold;
  5. edges between kept nodes (`edge_effects`): for upstream u and downstream d,
        e(u → d) = ∇_d m · (∂d/∂u with gradients stopped at intermediate nodes) · (u − u_p),
     the paper's formula with the DESIGN.md sign (so the edges into d add up to d's score in the
     linear regime). The gradient is stopped by a `cut` forward: every site's output is rebuilt as
     x̂(f̃) + ε̃ from leaves f̃, ε̃ (equal to the clean values), so ∂d/∂f̃_u flows only along paths that
     pass through no other site. With sites at embed / attn_out / mlp_out / resid_post this gives the
     paper's families (attn→resid, mlp→resid, resid_{l−1}→attn, resid_{l−1}→mlp, resid_{l−1}→resid_l,
     resid_last→y), plus attn_l→mlp_l in sequential (non-parallel) blocks, where that path exists.
     A skip transcoder's x W_skipᵀ stays live in the cut forward (a pass-through path, not a node).
     ∇_d m is the total gradient from step 2 (IG: averaged over α). One backward per kept downstream node;
  6. edges with |weight| > edge_threshold, written with the nodes and scores as a `graph.Circuit`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from sparsecircuits.feature_circuits.config import FeatureCircuitConfig  # torch-free, for the CLI
from sparsecircuits.feature_circuits.dictionary_graph import (
    MetricFn,
    NodeEffects,
    NodeValues,
    Progress,
    Site,
    encode,
    node_effects,
    node_values,
    patch_values,
    reconstruct,
    site_hooks,
)
from sparsecircuits.graph import Circuit, Edge, Node
from sparsecircuits.model.transformer import Transformer

# A node: (site name, position or None when summed over positions, feature index or -1 for the error).
NodeKey = tuple[str, "int | None", int]
LOGITS: NodeKey = ("logits", None, 0)


@dataclass
class NodeScores:
    feats: dict[str, Tensor]  # site -> [P, width]; P = pos (per position) or 1 (summed over positions)
    errors: dict[str, Tensor]  # site -> [P]
    per_position: bool


@dataclass
class EdgeScores:
    src: list[NodeKey]
    dst: list[NodeKey]  # LOGITS for edges into the metric
    weight: Tensor  # [n_edges]


@dataclass
class FeatureCircuit:
    circuit: Circuit
    effects: NodeEffects  # per-example node effects
    scores: NodeScores  # aggregated
    edges: EdgeScores  # every computed edge (before the edge threshold)
    kept: list[NodeKey] = field(default_factory=list)


def aggregate(effects: NodeEffects, per_position: bool) -> NodeScores:
    """Mean over examples; per position, or summed over positions (kept as a size-1 dim)."""
    def agg(t: Tensor) -> Tensor:
        m = t.mean(0)
        return m if per_position else m.sum(0, keepdim=True)

    return NodeScores({k: agg(v) for k, v in effects.feats.items()}, {k: agg(v) for k, v in effects.errors.items()},
                      per_position)


def _pos(p: int, per_position: bool) -> int | None:
    return p if per_position else None


def select_nodes(scores: NodeScores, threshold: float) -> list[NodeKey]:
    """Nodes with |score| > threshold, in site order, then position, then index (errors last)."""
    keys: list[NodeKey] = []
    for name, f in scores.feats.items():
        for p, i in torch.nonzero(f.abs() > threshold).tolist():
            keys.append((name, _pos(p, scores.per_position), i))
        for p in torch.nonzero(scores.errors[name].abs() > threshold).flatten().tolist():
            keys.append((name, _pos(p, scores.per_position), -1))
    return keys


def score_of(scores: NodeScores, key: NodeKey) -> float:
    name, p, i = key
    row = 0 if p is None else p
    return float(scores.feats[name][row, i] if i >= 0 else scores.errors[name][row])


def _cut_forward(model: Transformer, sites: list[Site], tokens: Tensor, metric_fn: MetricFn, clean: NodeValues):  # noqa: ANN202
    """Splice mode `cut` (module docstring): (metric summed over examples, leaves, live values)."""
    leaves: dict[str, tuple[Tensor, Tensor]] = {}
    live: dict[str, tuple[Tensor, Tensor]] = {}

    def cut(site: Site, x: Tensor, y: Tensor) -> Tensor:
        f = clean.feats[site.name].detach().clone().requires_grad_(True)
        e = clean.errors[site.name].detach().clone().requires_grad_(True)
        leaves[site.name] = (f, e)
        live[site.name] = encode(site, x, y)
        return reconstruct(site, f, x) + e

    with model.hooks(site_hooks(sites, cut)):
        m = metric_fn(model(tokens)).sum()
    return m, leaves, live


def _downstream_scalar(key: NodeKey, m: Tensor, live: dict, grads: NodeValues) -> Tensor:
    name, p, i = key
    if key == LOGITS:
        return m
    f, e = live[name]
    t = grads.feats[name][..., i] * f[..., i] if i >= 0 else (grads.errors[name] * e).sum(-1)  # [batch, pos]
    return t.sum() if p is None else t[:, p].sum()


def edge_effects(model: Transformer, sites: list[Site], tokens: Int[Tensor, "batch pos"], metric_fn: MetricFn,
                 clean: NodeValues, patch: NodeValues, grads: NodeValues, downstream: list[NodeKey],
                 upstream: list[NodeKey], per_position: bool, progress: Progress | None = None) -> EdgeScores:
    """Edge weights e(u → d) for every u in `upstream` and d in `downstream` (LOGITS = the metric),
    averaged over examples (module docstring, step 5)."""
    order = [s.name for s in sites]
    by_site: dict[str, list[NodeKey]] = {}
    for u in upstream:
        by_site.setdefault(u[0], []).append(u)
    B = tokens.shape[0]
    src, dst, w = [], [], []
    with torch.enable_grad():
        m, leaves, live = _cut_forward(model, sites, tokens, metric_fn, clean)
        for n, d in enumerate(downstream):
            before = order if d == LOGITS else order[: order.index(d[0])]
            names = [s for s in before if s in by_site]
            if not names:
                continue
            inputs = [t for s in names for t in leaves[s]]
            scalar = _downstream_scalar(d, m, live, grads)
            gs = torch.autograd.grad(scalar, inputs, retain_graph=True, allow_unused=True) if scalar.requires_grad \
                else [None] * len(inputs)
            for j, s in enumerate(names):
                gf, ge = gs[2 * j], gs[2 * j + 1]
                cf = (gf * (clean.feats[s] - patch.feats[s])).sum(0) / B if gf is not None else None  # [pos, width]
                ce = (ge * (clean.errors[s] - patch.errors[s])).sum((0, 2)) / B if ge is not None else None  # [pos]
                for u in by_site[s]:
                    table = cf if u[2] >= 0 else ce
                    if table is None:  # no direct path from this site to d
                        continue
                    c = table[:, u[2]] if u[2] >= 0 else table
                    src.append(u)
                    dst.append(d)
                    w.append(c.sum() if u[1] is None else c[u[1]])
            if progress:
                progress("edges", n + 1, len(downstream))
    weight = torch.stack(w).detach() if w else torch.zeros(0)
    return EdgeScores(src, dst, weight)


def node_of(key: NodeKey, sites: dict[str, Site], n_layers: int) -> Node:
    """The graph.Node of a key: features "feature" (index = feature), errors "error" (index -1),
    neurons "neuron", the embedding "embed" (index 0), the metric "logit" at site "logits"."""
    name, p, i = key
    if key == LOGITS:
        return Node("logits", 0, "logit", n_layers)
    s = sites[name]
    if s.kind == "whole" and name == "hook_embed":
        return Node(name, 0, "embed", -1, p)
    if i < 0:
        return Node(name, -1, "error", s.layer, p)
    return Node(name, i, "neuron" if s.kind == "neurons" else "feature", s.layer, p)


def build_circuit(model: Transformer, sites: list[Site], scores: NodeScores, kept: list[NodeKey], edges: EdgeScores,
                  edge_threshold: float, metadata: dict[str, Any]) -> Circuit:
    """A `graph.Circuit` of the kept nodes (plus the metric node when an edge reaches it) and the
    edges above the threshold between them."""
    by_name = {s.name: s for s in sites}
    L = model.cfg.n_layers
    nodes = {k: node_of(k, by_name, L) for k in kept}
    out_edges = []
    for u, d, wt in zip(edges.src, edges.dst, edges.weight.tolist()):
        if abs(wt) > edge_threshold and u in nodes and (d in nodes or d == LOGITS):
            nodes.setdefault(d, node_of(d, by_name, L))
            out_edges.append(Edge(nodes[u].id, nodes[d].id, float(wt), "attribution"))
    node_scores = {nodes[k].id: score_of(scores, k) for k in kept}
    site_info = [{"hook": s.name, "kind": s.kind, "layer": s.layer, "width": s.width,
                  "dictionary": s.dictionary.cfg.name if s.dictionary is not None else None,
                  "in_hook": s.in_hook} for s in sites]
    md = {"granularity": "dictionary", "sites": site_info, "n_nodes": len(kept), "n_edges": len(out_edges),
          "n_feature_nodes": sum(1 for k in kept if k[2] >= 0), "n_error_nodes": sum(1 for k in kept if k[2] < 0),
          "aggregation": "position" if scores.per_position else "sum", **metadata}
    return Circuit(list(nodes.values()), out_edges, node_scores, md)


def find_feature_circuit(model: Transformer, sites: list[Site], tokens: Int[Tensor, "batch pos"], metric_fn: MetricFn,
                         cfg: FeatureCircuitConfig | None = None, cf_tokens: Int[Tensor, "batch pos"] | None = None,
                         lengths: Int[Tensor, " batch"] | None = None,
                         progress: Progress | None = None) -> FeatureCircuit:
    """Steps 1-6 of the module docstring for any per-example metric of the logits."""
    cfg = cfg or FeatureCircuitConfig()
    clean = node_values(model, sites, tokens)
    patch = patch_values(model, sites, clean, cfg.ablation, cf_tokens, lengths)
    effects = node_effects(model, sites, tokens, metric_fn, patch, cfg.method, cfg.ig_steps, clean, progress)
    same_length = lengths is None or bool((lengths == lengths[0]).all())
    per_position = cfg.aggregation == "position" or (cfg.aggregation == "auto" and same_length)
    scores = aggregate(effects, per_position)
    kept = select_nodes(scores, cfg.node_threshold)
    edges = EdgeScores([], [], torch.zeros(0))
    if cfg.edges and kept and effects.grads is not None:
        edges = edge_effects(model, sites, tokens, metric_fn, clean, patch, effects.grads, kept + [LOGITS], kept,
                             per_position, progress)
    full = float(effects.metric.mean())
    md = {"method": cfg.method, "ablation": cfg.ablation, "node_threshold": cfg.node_threshold,
          "edge_threshold": cfg.edge_threshold, "full_metric": full,
          **({"ig_steps": cfg.ig_steps} if cfg.method == "ig" else {}),
          "node_effects": ("single-node ablation (exact patching): metric(clean) - metric(node patched)"
                           if cfg.method == "exact" else f"{cfg.method} estimate of metric(clean) - metric(node patched)")}
    circuit = build_circuit(model, sites, scores, kept, edges, cfg.edge_threshold, md)
    return FeatureCircuit(circuit, effects, scores, edges, kept)


def task_metric(data: Any) -> MetricFn:
    """The task metric: logit(correct) − logit(incorrect) at each prompt's last position (a `TaskData`)."""
    from sparsecircuits.tasks.base import last_logits, logit_diff

    def metric(logits: Float[Tensor, "batch pos vocab"]) -> Float[Tensor, " batch"]:
        return logit_diff(last_logits(logits, data.lengths), data)

    return metric


__all__ = ["LOGITS", "EdgeScores", "FeatureCircuit", "FeatureCircuitConfig", "NodeKey", "NodeScores", "aggregate",
           "build_circuit", "edge_effects", "find_feature_circuit", "node_of", "score_of", "select_nodes",
           "task_metric"]
