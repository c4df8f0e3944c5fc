"""Checking a channel circuit's node scores (learned-mask pruning, Gao et al. 2025) against exact
single-node ablation (`sparsecircuits check`).

A pruned circuit scores each kept node by `metric(circuit) - metric(circuit without the node)`, the
mean logit difference with every node outside the circuit at its baseline (`prune.py` step 4). The
exact effect of a sampled node is that same intervention, measured on the check's examples with the
circuit's own sites (`metadata["sites"]`) and baseline (`metadata["hyperparameters"]["baseline"]`,
mean over pretraining data by default): `prune.node_effects` under `evaluate.MaskedTask`. Scores
computed on the pruning's held-out examples should therefore agree closely, not exactly, with
effects on other examples. Sampling, statistics and storage are the core's (`sparsecircuits/check.py`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from sparsecircuits.ablation import NodeSite, circuit_masks, prune_sites
from sparsecircuits.check import CheckResult, items_of, run_check
from sparsecircuits.evaluate import MaskedTask
from sparsecircuits.graph import Circuit
from sparsecircuits.model.transformer import Transformer
from sparsecircuits.tasks.base import TaskData
from sparsecircuits.weight_sparse.prune import node_effects


def circuit_node_sites(circuit: Circuit, model: Transformer) -> list[NodeSite]:
    """The mask sites a channel circuit was pruned at (`metadata["sites"]`; default `prune_sites`),
    checked against the model."""
    listed = circuit.metadata.get("sites")
    if not isinstance(listed, list) or not listed:
        return prune_sites(model)
    try:
        sites = [NodeSite(s["hook"], s["kind"], int(s["layer"]), tuple(int(d) for d in s["shape"])) for s in listed]
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"the circuit's metadata 'sites' are malformed ({e})") from None
    missing = [s.hook for s in sites if s.hook not in model.hook_points]
    if missing:
        raise ValueError(f"the circuit's sites are not in this model (e.g. {missing[0]!r}): is --model the model "
                         "the circuit was pruned in?")
    return sites


def baseline_of(circuit: Circuit) -> str:
    """The baseline the circuit was pruned with (mean / zero / counterfactual)."""
    hyper = circuit.metadata.get("hyperparameters")
    return str(hyper.get("baseline", "mean")) if isinstance(hyper, dict) else "mean"


def check_channel_circuit(model: Transformer, data: TaskData, circuit: Circuit, means: dict[str, Tensor] | None,
                          n: int = 64, seed: int = 0, strata: int = 8, zero_tol: float = 0.01,
                          n_worst: int = 5) -> CheckResult:
    """Check `n` of a pruned circuit's node scores (sampled by score) against exact single-node
    ablation from the circuit on `data`. `means` are the mean activations of a mean-baseline
    circuit (`ablation.checkpoint_means`). Effects come from `prune.node_effects`, which ablates every
    node of the circuit (batched), so the cost is that of the whole circuit, not of the sample."""
    scores = items_of(circuit, "nodes")
    if not scores:
        raise ValueError(f"the circuit holds no node scores to check ({circuit.metadata.get('node_effects', 'none')}; "
                         "prune scores circuits of up to --max-effect-nodes nodes)")
    sites = circuit_node_sites(circuit, model)
    known = {s.hook for s in sites}
    site_of = {node.id: node.site for node in circuit.nodes}
    outside = [k for k in scores if site_of.get(k) not in known]
    if outside:
        raise ValueError(f"{len(outside)} scored nodes are at no site of the circuit, e.g. {outside[0]!r}")
    baseline = baseline_of(circuit)
    task = MaskedTask(model, data, baseline, means, sites)
    flat_on = torch.cat([m.flatten() for m in circuit_masks(circuit, sites).values()])  # site order
    measured: dict[str, float] = {}

    def effects_of(ids: list[str]) -> list[float]:
        if not measured:
            measured.update(node_effects(task, flat_on))
        return [measured[i] for i in ids]

    md = circuit.metadata
    context: dict[str, Any] = {"granularity": "channel", "circuit_method": md.get("method"), "task": data.name,
                               "circuit_task": md.get("task"), "ablation": baseline, "n_examples": len(data),
                               "metric": "logit_diff", "reference": "the circuit (every other node ablated)"}
    return run_check(scores, effects_of, "nodes", n, seed, strata, zero_tol, n_worst, context)


__all__ = ["baseline_of", "check_channel_circuit", "circuit_node_sites"]
