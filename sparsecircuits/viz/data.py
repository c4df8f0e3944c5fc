"""The data a circuit page shows, from the `Circuit` alone (no model): nodes placed in graph columns,
edges as parallel arrays, a summary of the metadata and the faithfulness-vs-size curve.

Designed around the generic Node/Edge/Circuit (DESIGN.md), not one method:
  1. columns: one per hook site that holds nodes, in forward order: by layer (embeddings at -1,
     logits at n_layers), then by the circuit's own site list (`metadata["sites"]`, as pruning
     writes it) or, failing that, the TransformerLens order of hook names within a block;
  2. nodes: id, site, kind (any string: the page colours unknown kinds too), layer, index,
     position, score (None when the method gave none) and ablation effect (see `node_effects`);
  3. edges: parallel arrays of source and destination node positions, weights and kind indices
     (compact, and what the page's canvas draws from);
  4. summary: the scalar metadata (task, method, losses, accuracies, sizes) as label/value rows;
  5. the bisection trace (k, loss, accuracy) with the target loss and the chosen k, when present.
Model-derived extras (top contexts, histograms, attention, task predictions) are merged in by
`viz.activations` and `viz.task_panel`.
"""

from __future__ import annotations

import math
from typing import Any

from sparsecircuits.graph import Circuit

VIEW_SCHEMA = "sparsecircuits-view-v1"

# Order of hook sites within one block (TransformerLens names), for circuits without a site list.
_BLOCK_ORDER = ("hook_resid_pre", "ln1.hook_scale", "ln1.hook_normalized", "attn.hook_q", "attn.hook_k",
                "attn.hook_v", "attn.hook_rot_q", "attn.hook_rot_k", "attn.hook_attn_scores", "attn.hook_pattern",
                "attn.hook_z", "hook_attn_out", "hook_resid_mid", "ln2.hook_scale", "ln2.hook_normalized",
                "mlp.hook_pre", "mlp.hook_pre_linear", "mlp.hook_post", "hook_mlp_out", "hook_resid_post")
_SHORT = {"ln1.hook_normalized": "attn in", "attn.hook_q": "q", "attn.hook_k": "k", "attn.hook_v": "v",
          "hook_attn_out": "attn out", "ln2.hook_normalized": "mlp in", "mlp.hook_post": "neurons",
          "hook_mlp_out": "mlp out", "hook_embed": "embed", "logits": "logits"}


def finite(x: Any) -> Any:
    """`x` with every NaN/inf float replaced by None, recursively (JSON.parse rejects NaN)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [finite(v) for v in x]
    return x


def _site_key(site: str, layer: int, listed: dict[str, int]) -> tuple[int, int, int, str]:
    if site in listed:
        return (layer, 0, listed[site], site)
    suffix = site.split(".", 2)[2] if site.startswith("blocks.") and site.count(".") >= 2 else site
    rank = _BLOCK_ORDER.index(suffix) if suffix in _BLOCK_ORDER else len(_BLOCK_ORDER)
    return (layer, 1, rank, site)


def site_label(site: str) -> str:
    """Short column label: 'L0 q' for blocks.0.attn.hook_q, the hook name otherwise."""
    if site.startswith("blocks.") and site.count(".") >= 2:
        _, layer, rest = site.split(".", 2)
        return f"L{layer} {_SHORT.get(rest, rest)}"
    return _SHORT.get(site, site)


def graph_columns(circuit: Circuit) -> list[dict[str, Any]]:
    """Step 1 of the module docstring: one column per site holding nodes, in forward order."""
    sites = circuit.metadata.get("sites")
    listed = {}
    if isinstance(sites, list):
        listed = {s["hook"]: i for i, s in enumerate(sites) if isinstance(s, dict) and "hook" in s}
    layer_of: dict[str, int] = {}
    for n in circuit.nodes:
        layer_of.setdefault(n.site, n.layer)
    order = sorted(layer_of, key=lambda s: _site_key(s, layer_of[s], listed))
    return [{"site": s, "layer": layer_of[s], "label": site_label(s)} for s in order]


def node_effects(circuit: Circuit) -> dict[str, float]:
    """Single-node ablation effects: `metadata["effects"]` when a method stores them apart from its
    scores, else the scores themselves when the metadata says they are ablation effects (pruning)."""
    md = circuit.metadata
    if isinstance(md.get("effects"), dict):
        return {str(k): float(v) for k, v in md["effects"].items()}
    if str(md.get("node_effects", "")).startswith("single-node ablation"):
        return dict(circuit.scores)
    return {}


def _summary(md: dict[str, Any]) -> list[list[Any]]:
    rows: list[list[Any]] = []
    for key in ("task", "method", "model", "n_nodes", "n_edges", "reached_target", "answer_tokens", "node_effects"):
        if key in md:
            rows.append([key.replace("_", " "), md[key]])
    for key in ("losses", "accuracy", "logit_diff"):
        if isinstance(md.get(key), dict):
            for part, value in md[key].items():
                rows.append([f"{key.replace('_', ' ')}: {part}", value])
    hp = md.get("hyperparameters")
    if isinstance(hp, dict):
        rows.append(["hyperparameters", ", ".join(f"{k}={v}" for k, v in hp.items())])
    return rows


def bisection_curve(md: dict[str, Any]) -> dict[str, Any] | None:
    """Step 5: the bisection trace sorted by k, with the target loss and the chosen k (or None)."""
    trace = md.get("bisection")
    if not isinstance(trace, list) or not trace:
        return None
    points = sorted(({"k": p.get("k"), "loss": p.get("loss"), "accuracy": p.get("accuracy")}
                     for p in trace if isinstance(p, dict) and "k" in p), key=lambda p: p["k"])
    hp = md.get("hyperparameters") if isinstance(md.get("hyperparameters"), dict) else {}
    return {"points": points, "target": hp.get("target_loss"), "chosen": md.get("n_nodes")}


def page_data(circuit: Circuit, title: str | None = None) -> dict[str, Any]:
    """Everything the page needs that comes from the circuit itself (steps 1-5)."""
    md = circuit.metadata
    columns = graph_columns(circuit)
    col_of = {c["site"]: i for i, c in enumerate(columns)}
    pos_of = {n.id: i for i, n in enumerate(circuit.nodes)}
    effects = node_effects(circuit)
    nodes = [{"id": n.id, "site": n.site, "kind": n.kind, "layer": n.layer, "index": n.index, "position": n.position,
              "score": circuit.scores.get(n.id), "effect": effects.get(n.id), "col": col_of[n.site]}
             for n in circuit.nodes]
    kinds = sorted({e.kind for e in circuit.edges})
    kind_of = {k: i for i, k in enumerate(kinds)}
    edges = {"src": [pos_of[e.src] for e in circuit.edges], "dst": [pos_of[e.dst] for e in circuit.edges],
             "w": [e.weight for e in circuit.edges], "kind": [kind_of[e.kind] for e in circuit.edges]}
    name = title or f"{md.get('task', 'circuit')}: {md.get('method', 'circuit')}"
    return finite({
        "schema": VIEW_SCHEMA,
        "title": name,
        "summary": _summary(md),
        "score_note": md.get("node_effects") if isinstance(md.get("node_effects"), str) else None,
        "columns": columns,
        "nodes": nodes,
        "edges": edges,
        "edge_kinds": kinds,
        "bisection": bisection_curve(md),
        "vocab": {},
        "task": None,
        "notes": [],
    })
