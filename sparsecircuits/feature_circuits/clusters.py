"""The unsupervised many-circuits pipeline: cluster contexts the model predicts well and find one
feature circuit per cluster (Marks et al. 2025, "Sparse feature circuits", arXiv 2403.19647,
section 5).

Steps:
  1. `collect_contexts`: run the model over corpus windows; keep the positions t whose next token it
     predicts with loss < `max_loss` nats, dropping induction repeats (the bigram (x_t, x_{t+1])
     already occurred earlier in the window, so copying explains the prediction); each kept position
     becomes a context: the `context` tokens ending at t, with x_{t+1} as its target, kept only if
     the model's loss given that context alone is below `max_loss` too (the circuits see only it);
  2. `context_features`: each context's dictionary-feature activations at its last position, every
     site's block L2-normalised, concatenated and normalised again (cosine geometry);
  3. `kmeans`: k-means++ seeding and Lloyd iterations (pure torch), an emptied cluster restarting at
     the point farthest from its centre;
  4. `cluster_circuits`: one feature circuit per cluster (members nearest the centre, at most
     `per_cluster`), metric = log p(target) at the last position, zero ablation and integrated
     gradients as in `circuit.find_feature_circuit`, but computed in batch: contexts of
     several whole clusters share each forward/backward pass (per-example effects are independent, so
     the result equals one cluster at a time), then each cluster's slice is aggregated per position
     (contexts are right-aligned), thresholded and, optionally, given edges.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from sparsecircuits.feature_circuits.circuit import (
    LOGITS,
    EdgeScores,
    FeatureCircuitConfig,
    NodeKey,
    aggregate,
    build_circuit,
    edge_effects,
    select_nodes,
)
from sparsecircuits.feature_circuits.config import ClusterConfig  # torch-free, for the CLI
from sparsecircuits.feature_circuits.dictionary_graph import (
    NodeEffects,
    NodeValues,
    Site,
    node_effects,
    node_values,
    patch_values,
)
from sparsecircuits.graph import Circuit
from sparsecircuits.model.transformer import Transformer

Progress = Callable[[str, int, int], None]


@dataclass
class Contexts:
    tokens: Tensor  # [n, context]
    target: Tensor  # [n] the next token after each context
    loss: Tensor  # [n] the model's loss on it (nats)
    window: Tensor  # [n] source window
    pos: Tensor  # [n] position of the last context token in its window


@dataclass
class KMeans:
    centers: Tensor  # [k, d]
    labels: Tensor  # [n]
    inertia: float  # sum of squared distances to the assigned centres


@dataclass
class ClusterCircuit:
    cluster: int
    members: list[int]  # context indices used for the circuit
    circuit: Circuit
    kept: list[NodeKey]


def induction_repeats(tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos_minus_1"]:
    """True at t (predicting x_{t+1}) when the bigram (x_t, x_{t+1}) occurred at some s < t."""
    codes = tokens[:, :-1].long() * (int(tokens.max()) + 1) + tokens[:, 1:].long()  # [B, T-1]
    same = codes[:, :, None] == codes[:, None, :]  # [B, t, s]
    earlier = torch.ones(codes.shape[1], codes.shape[1], dtype=torch.bool, device=tokens.device).tril(-1)
    return (same & earlier).any(-1)


@torch.no_grad()
def collect_contexts(model: Transformer, windows: list[Tensor], cfg: ClusterConfig) -> Contexts:
    """Step 1 of the module docstring."""
    device = next(model.parameters()).device
    C = cfg.context
    parts: list[tuple[Tensor, ...]] = []
    n_seen = 0
    for w in windows:
        w = w.to(device)
        logp = model(w).float().log_softmax(-1)[:, :-1]  # [B, T-1, V]
        loss = -logp.gather(-1, w[:, 1:, None]).squeeze(-1)  # [B, T-1]
        keep = (loss < cfg.max_loss) & ~induction_repeats(w)
        keep[:, : C - 1] = False
        b, t = torch.nonzero(keep, as_tuple=True)
        idx = t[:, None] + torch.arange(-C + 1, 1, device=device)  # [m, C]
        parts.append((w[b[:, None], idx].cpu(), w[b, t + 1].cpu(), loss[b, t].cpu(), (b + n_seen).cpu(), t.cpu()))
        n_seen += w.shape[0]
    cat = [torch.cat([p[i] for p in parts]) for i in range(5)] if parts else []
    if cat:  # the circuits see only the C-token context: its own loss must pass too, and is the one kept
        cat[2] = context_loss(model, cat[0], cat[1], cfg.batch)
        ok = cat[2] < cfg.max_loss
        cat = [x[ok] for x in cat]
    if not cat or len(cat[1]) == 0:
        raise ValueError(f"no position has loss < {cfg.max_loss} nats (outside induction repeats) with its "
                         f"{C}-token context; raise max_loss or context")
    g = torch.Generator().manual_seed(cfg.seed)
    sel = torch.randperm(len(cat[1]), generator=g)[: cfg.max_contexts].sort().values
    return Contexts(*(x[sel] for x in cat))


@torch.no_grad()
def context_loss(model: Transformer, tokens: Int[Tensor, "n pos"], target: Int[Tensor, " n"], batch: int = 64
                 ) -> Float[Tensor, " n"]:
    """The model's loss (nats) on each context's target given the context alone."""
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(tokens), batch):
        logp = model(tokens[i:i + batch].to(device), at=torch.full((len(tokens[i:i + batch]),), tokens.shape[1] - 1,
                                                                      device=device))[:, 0].float().log_softmax(-1)
        out.append(-logp.gather(-1, target[i:i + batch, None].to(device)).squeeze(-1).cpu())
    return torch.cat(out) if out else torch.zeros(0)


@torch.no_grad()
def context_features(model: Transformer, sites: list[Site], tokens: Int[Tensor, "n pos"],
                     batch: int = 64) -> Float[Tensor, "n d"]:
    """Step 2 of the module docstring."""
    device = next(model.parameters()).device
    rows = []
    for start in range(0, tokens.shape[0], batch):
        vals = node_values(model, sites, tokens[start:start + batch].to(device))
        blocks = [torch.nn.functional.normalize(vals.feats[s.name][:, -1].float(), dim=-1)
                  for s in sites if s.kind == "dictionary"]
        if not blocks:
            raise ValueError("context features need at least one dictionary site")
        rows.append(torch.nn.functional.normalize(torch.cat(blocks, -1), dim=-1).cpu())
    return torch.cat(rows)


def kmeans(x: Float[Tensor, "n d"], k: int, iters: int = 50, seed: int = 0) -> KMeans:
    """Step 3 of the module docstring (k-means++ seeding: each new centre drawn with probability
    proportional to the squared distance to the nearest chosen one)."""
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k-means needs 1 <= k <= n points, got k={k}, n={n}")
    x = x.double()
    g = torch.Generator().manual_seed(seed)
    centers = x[torch.randint(n, (1,), generator=g)]
    d2 = torch.cdist(x, centers).pow(2).min(1).values
    for _ in range(1, k):
        p = d2 / d2.sum() if d2.sum() > 0 else torch.full_like(d2, 1 / n)
        new = x[torch.multinomial(p, 1, generator=g)]
        centers = torch.cat([centers, new])
        d2 = torch.minimum(d2, torch.cdist(x, new).pow(2).squeeze(1))
    labels = torch.zeros(n, dtype=torch.long)
    for _ in range(iters):
        dist = torch.cdist(x, centers).pow(2)
        new_labels = dist.argmin(1)
        counts = torch.bincount(new_labels, minlength=k)
        own = dist.gather(1, new_labels[:, None]).squeeze(1)
        for c in torch.nonzero(counts == 0).flatten().tolist():  # restart an empty cluster
            far = int(torch.where(counts[new_labels] > 1, own, -1.0).argmax())  # never empty another
            counts[new_labels[far]] -= 1
            new_labels[far], counts[c] = c, 1
        sums = torch.zeros_like(centers).index_add_(0, new_labels, x)
        centers = sums / torch.bincount(new_labels, minlength=k).clamp_min(1)[:, None].to(x)
        if torch.equal(new_labels, labels):
            break
        labels = new_labels
    inertia = float(torch.cdist(x, centers).pow(2).gather(1, labels[:, None]).sum())
    return KMeans(centers.float(), labels, inertia)


def cluster_members(x: Float[Tensor, "n d"], km: KMeans, per_cluster: int, min_size: int) -> dict[int, list[int]]:
    """Each cluster with >= min_size contexts -> its up to `per_cluster` contexts nearest the centre."""
    out = {}
    dist = (x - km.centers[km.labels].to(x)).norm(dim=-1)
    for c in range(km.centers.shape[0]):
        idx = torch.nonzero(km.labels == c).flatten()
        if len(idx) >= min_size:
            out[c] = idx[dist[idx].argsort()][:per_cluster].tolist()
    return out


def next_token_metric(target: Int[Tensor, " batch"]):  # noqa: ANN201
    """log p(target) at the last position."""
    def metric(logits: Float[Tensor, "batch pos vocab"]) -> Float[Tensor, " batch"]:
        return logits[:, -1].log_softmax(-1).gather(-1, target.to(logits.device)[:, None]).squeeze(-1)

    return metric


def _take(v: NodeValues, idx: Tensor) -> NodeValues:
    return NodeValues({k: t[idx] for k, t in v.feats.items()}, {k: t[idx] for k, t in v.errors.items()})


def _chunks(members: dict[int, list[int]], batch: int) -> list[list[int]]:
    """Cluster ids grouped so that each group's contexts fill at most `batch` (or one big cluster)."""
    groups, cur, size = [], [], 0
    for c, m in members.items():
        if cur and size + len(m) > batch:
            groups.append(cur)
            cur, size = [], 0
        cur.append(c)
        size += len(m)
    return groups + ([cur] if cur else [])


def _one_circuit(model: Transformer, sites: list[Site], tokens: Tensor, target: Tensor, clean: NodeValues,
                 patch: NodeValues, eff: NodeEffects, cfg: FeatureCircuitConfig, md: dict) -> tuple[Circuit, list[NodeKey]]:
    """Steps 3-6 of `find_feature_circuit` on one cluster's slice of the batched effects."""
    scores = aggregate(eff, cfg.aggregation != "sum")
    kept = select_nodes(scores, cfg.node_threshold)
    edges = EdgeScores([], [], torch.zeros(0))
    if cfg.edges and kept and eff.grads is not None:
        edges = edge_effects(model, sites, tokens, next_token_metric(target), clean, patch, eff.grads,
                             kept + [LOGITS], kept, scores.per_position)
    meta = {"method": cfg.method, "ablation": cfg.ablation, "node_threshold": cfg.node_threshold,
            "edge_threshold": cfg.edge_threshold, "full_metric": float(eff.metric.mean()),
            "metric": "log p(next token)", **md}
    return build_circuit(model, sites, scores, kept, edges, cfg.edge_threshold, meta), kept


def cluster_circuits(model: Transformer, sites: list[Site], ctx: Contexts, members: dict[int, list[int]],
                     cfg: FeatureCircuitConfig, batch: int = 64, progress: Progress | None = None) -> list[ClusterCircuit]:
    """Step 4 of the module docstring."""
    if cfg.ablation != "zero":  # counterfactual: none exist; mean: would depend on how clusters are batched
        raise ValueError(f"cluster circuits use zero ablation, got ablation {cfg.ablation!r}")
    device = next(model.parameters()).device
    out, done = [], 0
    for group in _chunks(members, batch):
        idx = [i for c in group for i in members[c]]
        tok, tgt = ctx.tokens[idx].to(device), ctx.target[idx]
        clean = node_values(model, sites, tok)
        patch = patch_values(model, sites, clean, cfg.ablation)
        eff = node_effects(model, sites, tok, next_token_metric(tgt), patch, cfg.method, cfg.ig_steps, clean)
        start = 0
        for c in group:
            sl = torch.arange(start, start + len(members[c]), device=device)
            start += len(members[c])
            part = NodeEffects({k: v[sl] for k, v in eff.feats.items()}, {k: v[sl] for k, v in eff.errors.items()},
                               eff.metric[sl], eff.method, None if eff.grads is None else _take(eff.grads, sl))
            circuit, kept = _one_circuit(model, sites, tok[sl], tgt[sl.cpu()], _take(clean, sl), _take(patch, sl),
                                         part, cfg, {"cluster": c, "n_examples": len(sl)})
            out.append(ClusterCircuit(c, members[c], circuit, kept))
        done += len(group)
        if progress:
            progress("cluster circuits", done, len(members))
    return out


__all__ = ["ClusterCircuit", "ClusterConfig", "Contexts", "KMeans", "cluster_circuits", "cluster_members",
           "collect_contexts", "context_features", "induction_repeats", "kmeans", "next_token_metric"]
