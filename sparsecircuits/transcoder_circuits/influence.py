"""Influence, pruning and scores of an attribution graph (Ameisen et al. 2025; circuit-tracer).

All pure tensor functions over an adjacency A[target, source]:

1. Normalise: Â = |A| with each row divided by its sum (a target's inputs share 1 between them).
2. Influence on the logits: w · (Â + Â² + …) = w · ((I − Â)^{-1} − I), w = the logit targets'
   probabilities. The graph is a DAG ordered by layer, so Â is nilpotent and the series ends after
   at most n_layers + 2 terms: it is summed exactly, without forming the inverse.
3. Node pruning: keep the most influential nodes until `node_threshold` of total influence
   (tokens and logits always kept); zero the other rows and columns.
4. Edge pruning: edge score = Â'[t, s] · (influence'[t] + w[t]) on the node-pruned graph; keep the
   highest until `edge_threshold` of total edge score; then repeatedly drop feature/error nodes
   left without outgoing edges and features without incoming ones.
5. Scores: replacement = token influence / (token + error influence) (how much of the input's
   end-to-end influence avoids error nodes); completeness = influence-weighted share of each node's
   normalised input that does not come from error nodes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float
from torch import Tensor


def normalize_rows(A: Float[Tensor, "n n"]) -> Float[Tensor, "n n"]:
    """Step 1: |A| divided by its row sums (zero rows stay zero)."""
    a = A.abs()
    return a / a.sum(1, keepdim=True).clamp(min=1e-30)


def influence(A_norm: Float[Tensor, "n n"], weights: Float[Tensor, " n"], max_iter: int = 10_000) -> Tensor:
    """Step 2: weights · (Â + Â² + …), summed until the terms vanish (Â is nilpotent on a DAG)."""
    term, total = weights @ A_norm, torch.zeros_like(weights)
    for _ in range(max_iter):
        if not bool(term.any()):
            return total
        total = total + term
        term = term @ A_norm
    raise RuntimeError(f"influence did not converge in {max_iter} steps: the graph has a cycle")


def cumulative_threshold(scores: Float[Tensor, " n"], fraction: float) -> Tensor:
    """The smallest score kept when keeping the highest scores until `fraction` of their sum."""
    s = scores.flatten().sort(descending=True).values
    if not s.numel():
        return scores.new_tensor(0.0)
    cum = s.cumsum(0) / s.sum().clamp(min=1e-30)
    i = int(torch.searchsorted(cum, cum.new_tensor([fraction])).item())
    return s[min(i, s.numel() - 1)]


@dataclass
class PrunedGraph:
    """What `prune` keeps, with the influence it keeps."""

    node_mask: Tensor  # [n] bool
    edge_mask: Tensor  # [n, n] bool, A[target, source] layout
    influence: Tensor  # [n] node influence on the logits (step 2, unpruned graph)
    cumulative: Tensor  # [n] cumulative influence fraction at each node's rank (circuit-tracer's "influence")
    node_fraction: float  # share of total node influence held by nodes kept in step 3
    edge_fraction: float  # share of total edge score held by edges kept in step 4 (before clean-up)


def prune(
    A: Float[Tensor, "n n"],
    logit_weights: Float[Tensor, " n"],
    n_features: int,
    n_fixed: int,
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
) -> PrunedGraph:
    """Steps 3-4. The last `n_fixed` nodes (tokens and logits) are always kept."""
    for name, v in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {v}")
    n = A.shape[0]
    inf = influence(normalize_rows(A), logit_weights)
    node_mask = inf >= cumulative_threshold(inf, node_threshold)
    node_fraction = float(inf[node_mask].sum() / inf.sum().clamp(min=1e-30))
    node_mask[n - n_fixed:] = True
    pruned = A * node_mask[:, None] * node_mask[None, :]
    An = normalize_rows(pruned)
    edge_scores = An * (influence(An, logit_weights) + logit_weights)[:, None]
    edge_mask = (edge_scores >= cumulative_threshold(edge_scores, edge_threshold)) & (edge_scores > 0)
    edge_fraction = float(edge_scores[edge_mask].sum() / edge_scores.sum().clamp(min=1e-30))
    inner = n - n_fixed
    while True:
        old = node_mask.clone()
        node_mask[:inner] &= edge_mask[:, :inner].any(0)  # features and errors need an outgoing edge
        node_mask[:n_features] &= edge_mask[:n_features].any(1)  # features need an incoming edge
        edge_mask &= node_mask[:, None] & node_mask[None, :]
        if torch.equal(old, node_mask):
            break
    order = inf.argsort(descending=True)
    cumulative = torch.empty_like(inf)
    cumulative[order] = inf[order].cumsum(0) / inf.sum().clamp(min=1e-30)
    return PrunedGraph(node_mask, edge_mask, inf, cumulative, node_fraction, edge_fraction)


@dataclass
class GraphScores:
    replacement: float  # step 5
    completeness: float


def graph_scores(A: Float[Tensor, "n n"], logit_weights: Float[Tensor, " n"], errors: Bool[Tensor, " n"],
                 tokens: Bool[Tensor, " n"]) -> GraphScores:
    """Step 5; `errors` and `tokens` mark the error and token nodes."""
    An = normalize_rows(A)
    inf = influence(An, logit_weights)
    tok, err = inf[tokens].sum(), inf[errors].sum()
    replacement = float(tok / (tok + err).clamp(min=1e-30))
    non_error = 1 - An[:, errors].sum(1)
    out = inf + logit_weights
    return GraphScores(replacement, float((non_error * out).sum() / out.sum().clamp(min=1e-30)))
