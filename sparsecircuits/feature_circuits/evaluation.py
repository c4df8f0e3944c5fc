"""Faithfulness and completeness of feature (and neuron) circuits (Marks et al. 2025, section 3).

A circuit C is a set of nodes (`circuit.NodeKey`) of the spliced sites. It is evaluated by
mean ablation of everything outside it: at every site, features outside C are set to their mean and
the error term (when outside C) to its mean, the features being recomputed from the (already
ablated) upstream activations (splice mode `set`, `dictionary_graph.py`). Sites of the first
`untouched_layers` layers (the embedding counts as layer -1) are left alone (the paper leaves the first
third of the layers untouched).
  faithfulness  (m(C) − m(∅)) / (m(M) − m(∅)), m = the mean metric, M the model, ∅ the empty circuit;
  completeness  the faithfulness of M∖C (everything but C kept); ideal 0.
`faithfulness_curve` ranks nodes by |score| and evaluates the top-k circuits for several k: the
faithfulness-vs-size curve the paper compares for features and for neurons (`neuron_sites`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from sparsecircuits.evaluate import faithfulness
from sparsecircuits.feature_circuits.circuit import NodeKey, NodeScores
from sparsecircuits.feature_circuits.dictionary_graph import MetricFn, NodeValues, Site, set_nodes, site_hooks
from sparsecircuits.model.transformer import Transformer

Masks = dict[str, tuple[Tensor, Tensor]]  # site -> (features kept [P, width], error kept [P]); P = pos or 1


@dataclass
class CircuitEval:
    full: float  # m(M)
    empty: float  # m(∅)
    circuit: float  # m(C)
    complement: float  # m(M∖C)
    faithfulness: float
    completeness: float


@dataclass
class Curve:
    sizes: list[int]  # nodes in the circuit
    faithfulness: list[float]
    completeness: list[float]
    full: float
    empty: float


def node_masks(sites: list[Site], keys: Iterable[NodeKey], n_pos: int, per_position: bool) -> Masks:
    """Keep-masks (1 = in the circuit) of a set of nodes; [n_pos, ·] per position, else [1, ·]."""
    P = n_pos if per_position else 1
    masks = {s.name: (torch.zeros(P, s.width), torch.zeros(P)) for s in sites}
    for name, p, i in keys:
        if name not in masks:
            continue
        f, e = masks[name]
        rows = slice(None) if p is None else slice(p, p + 1)
        if i >= 0:
            f[rows, i] = 1.0
        else:
            e[rows] = 1.0
    return masks


def ablated_metric(model: Transformer, sites: list[Site], tokens: Int[Tensor, "batch pos"], metric_fn: MetricFn,
                   keep: Masks | None, means: NodeValues, untouched_layers: int = 0) -> Float[Tensor, " batch"]:
    """The metric with every node outside `keep` mean-ablated (None: the clean model)."""
    if keep is None:
        with torch.no_grad():
            return metric_fn(model(tokens))
    active = [s for s in sites if s.layer >= untouched_layers] if untouched_layers > 0 else sites

    def rule(site: Site, f: Tensor, e: Tensor) -> tuple[Tensor, Tensor]:
        kf, ke = keep[site.name]
        kf, ke = kf.to(f)[: f.shape[1]], ke.to(e)[: e.shape[1]].unsqueeze(-1)
        mf, me = means.feats[site.name].to(f), means.errors[site.name].to(e)
        return kf * f + (1 - kf) * mf, ke * e + (1 - ke) * me

    with torch.no_grad(), model.hooks(site_hooks(active, set_nodes(rule))):
        return metric_fn(model(tokens))


def evaluate_circuit(model: Transformer, sites: list[Site], tokens: Int[Tensor, "batch pos"], metric_fn: MetricFn,
                     keys: Iterable[NodeKey], means: NodeValues, per_position: bool,
                     untouched_layers: int = 0) -> CircuitEval:
    """Faithfulness and completeness of one circuit (module docstring)."""
    n_pos = tokens.shape[1]
    inside = node_masks(sites, keys, n_pos, per_position)
    nothing = node_masks(sites, [], n_pos, per_position)
    outside = {k: (1 - f, 1 - e) for k, (f, e) in inside.items()}

    def m(keep: Masks | None) -> float:
        return float(ablated_metric(model, sites, tokens, metric_fn, keep, means, untouched_layers).mean())

    full, empty, circ, comp = m(None), m(nothing), m(inside), m(outside)
    return CircuitEval(full, empty, circ, comp, faithfulness(circ, full, empty), faithfulness(comp, full, empty))


def ranked_nodes(scores: NodeScores, sites: list[Site], untouched_layers: int = 0) -> list[NodeKey]:
    """All nodes of the ablated sites, by decreasing |score|."""
    layer = {s.name: s.layer for s in sites}
    keys, vals = [], []
    for name, f in scores.feats.items():
        if untouched_layers > 0 and layer[name] < untouched_layers:
            continue
        P = f.shape[0]
        for p in range(P):
            pos = p if scores.per_position else None
            keys += [(name, pos, i) for i in range(f.shape[1])] + [(name, pos, -1)]
            vals += f[p].abs().tolist() + [float(scores.errors[name][p].abs())]
    order = sorted(range(len(keys)), key=lambda j: -vals[j])
    return [keys[j] for j in order]


def faithfulness_curve(model: Transformer, sites: list[Site], tokens: Int[Tensor, "batch pos"], metric_fn: MetricFn,
                       scores: NodeScores, means: NodeValues, sizes: list[int],
                       untouched_layers: int = 0) -> Curve:
    """Faithfulness and completeness of the top-k nodes by |score| for each k in `sizes`."""
    ranked = ranked_nodes(scores, sites, untouched_layers)
    faith, comp = [], []
    full = empty = 0.0
    for k in sizes:
        ev = evaluate_circuit(model, sites, tokens, metric_fn, ranked[:k], means, scores.per_position,
                              untouched_layers)
        faith.append(ev.faithfulness)
        comp.append(ev.completeness)
        full, empty = ev.full, ev.empty
    return Curve(list(sizes), faith, comp, full, empty)


__all__ = ["CircuitEval", "Curve", "Masks", "ablated_metric", "evaluate_circuit", "faithfulness_curve", "node_masks",
           "ranked_nodes"]
