"""Checking a component circuit's scores (`discover`) against exact patching (`sparsecircuits check`).

The exact effect of an item is the DESIGN.md quantity its score estimates, measured from the full
model under the circuit's own ablation (`metadata["ablation"]`, `prepare.prepare`):
  edge  metric(all edges on) - metric(that one edge off): `patching.exact_edges`, as `exact` scores it;
  node  metric(all on) - metric(every outgoing edge of that writer off), i.e. its output replaced by
        the baseline everywhere: the intervention of `patching.exact_node`, for the sampled writers only.
Scores found in another context measure something else and are expected to differ: `iterative` edge
scores are effects inside the node circuit, `acdc` scores effects in the partly pruned graph, and
`exact-node` edge scores are the smaller of the two endpoints' node scores (a ranking, not an edge
effect). Sampling, statistics and storage are the core's (`sparsecircuits/check.py`).
"""

from __future__ import annotations

from typing import Any

import torch

from sparsecircuits.check import CheckResult, edge_id, items_of, run_check
from sparsecircuits.component_circuits.component_graph import node_mask
from sparsecircuits.component_circuits.patching import exact_edges
from sparsecircuits.component_circuits.prepare import ComponentTask, metric, prepare
from sparsecircuits.graph import Circuit
from sparsecircuits.model.transformer import Transformer
from sparsecircuits.tasks.base import TaskData


def edge_effects(task: ComponentTask, ids: list[str]) -> list[float]:
    """Exact effects of edges given as `src -> dst` ids (writer -> reader of this task's graph)."""
    g = task.graph
    pair = {edge_id(g.writers[w].id, g.readers[r].id): (w, r) for w, r in torch.nonzero(g.valid).tolist()}
    unknown = [i for i in ids if i not in pair]
    if unknown:
        raise ValueError(f"{len(unknown)} edges are not in this model's component graph, e.g. {unknown[0]!r}: "
                         "is --model the model the circuit was found in?")
    if not ids:
        return []
    edges = torch.tensor([pair[i] for i in ids], dtype=torch.long)
    effects = exact_edges(task, None, edges)
    return [float(effects[w, r]) for w, r in edges.tolist()]


def node_effects(task: ComponentTask, ids: list[str]) -> list[float]:
    """Exact effects of writers (embedding, heads, MLPs) given by node id: each ablated alone."""
    g = task.graph
    writer = {n.id: w for w, n in enumerate(g.writers)}
    unknown = [i for i in ids if i not in writer]
    if unknown:
        raise ValueError(f"{len(unknown)} nodes are not writers of this model's component graph, e.g. {unknown[0]!r}: "
                         "is --model the model the circuit was found in?")
    if not ids:
        return []
    keeps = torch.ones(len(ids), len(g.writers), dtype=torch.bool)
    keeps[torch.arange(len(ids)), torch.tensor([writer[i] for i in ids])] = False
    values = metric(task, torch.stack([node_mask(g, k) for k in keeps]))
    return (task.full - values).tolist()


def check_component_circuit(model: Transformer, data: TaskData, circuit: Circuit, items: str = "edges", n: int = 64,
                            seed: int = 0, strata: int = 8, zero_tol: float = 0.01, n_worst: int = 5,
                            ablation: str | None = None, batch_masks: int = 0) -> CheckResult:
    """Check `n` of a component circuit's edges or nodes (sampled by score) against exact patching on
    `data` under the circuit's ablation (or `ablation`). The circuit is not changed (`store_check`)."""
    scores = items_of(circuit, items)
    md = circuit.metadata
    abl = ablation or str(md.get("ablation", "counterfactual"))
    task = prepare(model, data, abl, 0, batch_masks)
    fn = edge_effects if items == "edges" else node_effects
    context: dict[str, Any] = {"granularity": "component", "circuit_method": md.get("method"), "task": data.name,
                               "circuit_task": md.get("task"), "ablation": abl, "n_examples": len(data),
                               "full_metric": task.full, "empty_metric": task.empty, "metric": "logit_diff"}
    return run_check(scores, lambda ids: fn(task, ids), items, n, seed, strata, zero_tol, n_worst, context)


__all__ = ["check_component_circuit", "edge_effects", "node_effects"]
