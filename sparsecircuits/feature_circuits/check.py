"""Checking a feature circuit's node scores (Marks et al. 2025) against exact patching
(`sparsecircuits check`).

A node of a feature circuit is a dictionary feature or error term at one site, at one position
(aggregation "position") or at every position (aggregation "sum"). Its exact effect is the mean over
the examples of `metric(clean) - metric(that node set to its patch value)`, with the dictionaries
spliced in (`dictionary_graph`, splice mode `set`: features downstream respond) and the circuit's
own patch values (`metadata["ablation"]`: counterfactual, zero or mean, `patch_values`). A summed
node is patched at every position at once: that is the intervention its score (a sum of per-position
estimates) stands for, so even `exact` scores of summed nodes differ from it by the interactions
between positions. Edges (gradient attributions with intermediate nodes held fixed) are not checked.
Sampling, statistics and storage are the core's (`sparsecircuits/check.py`).
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from sparsecircuits.check import CheckResult, items_of, run_check
from sparsecircuits.dictionaries.base import Dictionary
from sparsecircuits.feature_circuits.circuit import NodeKey, task_metric
from sparsecircuits.feature_circuits.dictionary_graph import (
    MetricFn,
    NodeValues,
    Rule,
    Site,
    make_sites,
    node_values,
    patch_values,
    set_nodes,
    site_hooks,
)
from sparsecircuits.graph import Circuit, Node
from sparsecircuits.model.transformer import Transformer
from sparsecircuits.tasks.base import TaskData


def node_key(node: Node) -> NodeKey:
    """(site, position or None, feature index or -1 for an error term / the embedding)."""
    return node.site, node.position, -1 if node.kind in ("error", "embed") else node.index


def circuit_sites(circuit: Circuit, model: Transformer, dictionaries: list[Dictionary]) -> list[Site]:
    """The sites of `dictionaries` in the model, which must be the circuit's (`metadata["sites"]`)."""
    sites = make_sites(model, dictionaries)
    listed = circuit.metadata.get("sites")
    want = sorted((str(s.get("hook")), s.get("dictionary")) for s in listed if isinstance(s, dict)) \
        if isinstance(listed, list) else []
    have = sorted((s.name, s.dictionary.cfg.name if s.dictionary is not None else None) for s in sites)
    if want != have:
        raise ValueError(f"the dictionaries do not splice the circuit's sites: the circuit has {want}, the "
                         f"dictionaries given make {have} (pass the --dicts the circuit was found with)")
    return sites


def _patch_rule(part: list[NodeKey], patch: NodeValues, batch: int) -> Rule:
    """A `set` rule for c = len(part) copies of a batch: copy c gets node part[c] at its patch value
    (at every position when its position is None)."""
    k = len(part)

    def rule(site: Site, f: Tensor, e: Tensor) -> tuple[Tensor, Tensor]:
        f4, e4 = f.clone().view(k, batch, *f.shape[1:]), e.clone().view(k, batch, *e.shape[1:])
        for c, (name, p, i) in enumerate(part):
            if name != site.name:
                continue
            pos = slice(None) if p is None else p
            if i >= 0:
                f4[c, :, pos, i] = patch.feats[name][:, pos, i]
            else:
                e4[c, :, pos] = patch.errors[name][:, pos]
        return f4.view_as(f), e4.view_as(e)

    return rule


@torch.no_grad()
def patched_effects(model: Transformer, sites: list[Site], tokens: Int[Tensor, "batch pos"], metric_fn: MetricFn,
                    patch: NodeValues, keys: list[NodeKey], chunk: int = 16) -> list[float]:
    """Mean over examples of metric(clean) - metric(node patched), one node per copy of the batch and
    `chunk` nodes per forward; a key with position None is patched at every position."""
    base = float(metric_fn(model(tokens)).mean())
    out: list[float] = []
    B = tokens.shape[0]
    for start in range(0, len(keys), chunk):
        part = keys[start:start + chunk]
        with model.hooks(site_hooks(sites, set_nodes(_patch_rule(part, patch, B)))):
            logits = model(tokens.repeat(len(part), 1))
        out += [base - float(metric_fn(x).mean()) for x in logits.view(len(part), B, *logits.shape[1:])]
    return out


def check_feature_circuit(model: Transformer, data: TaskData, circuit: Circuit, dictionaries: list[Dictionary],
                          n: int = 64, seed: int = 0, strata: int = 8, zero_tol: float = 0.01,
                          n_worst: int = 5) -> CheckResult:
    """Check `n` of a feature circuit's node scores (sampled by score) against exact patching on
    `data`, with the dictionaries it was found with spliced in."""
    scores = items_of(circuit, "nodes")
    sites = circuit_sites(circuit, model, dictionaries)
    md = circuit.metadata
    ablation = str(md.get("ablation", "counterfactual"))
    dev = next(model.parameters()).device
    tokens = data.tokens.to(dev)
    cf = None if data.cf_tokens is None else data.cf_tokens.to(dev)
    clean = node_values(model, sites, tokens)
    patch = patch_values(model, sites, clean, ablation, cf, data.lengths)
    key_of = {node.id: node_key(node) for node in circuit.nodes}
    metric_fn = task_metric(data)
    context: dict[str, Any] = {"granularity": "dictionary", "circuit_method": md.get("method"), "task": data.name,
                               "circuit_task": md.get("task"), "ablation": ablation, "n_examples": len(data),
                               "metric": "logit_diff", "aggregation": md.get("aggregation")}
    return run_check(scores, lambda ids: patched_effects(model, sites, tokens, metric_fn, patch,
                                                         [key_of[i] for i in ids]),
                     "nodes", n, seed, strata, zero_tol, n_worst, context)


__all__ = ["check_feature_circuit", "circuit_sites", "node_key", "patched_effects"]
