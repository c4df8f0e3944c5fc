"""The data a circuit page shows, from the `Circuit` alone (no model): nodes placed in graph columns,
edges as parallel arrays, a summary of the metadata, the faithfulness-vs-size curve and a reading
guide that says what the page's numbers mean for this circuit.

Designed around the generic Node/Edge/Circuit (DESIGN.md), not one method:
  1. columns: one per hook site that holds nodes, in forward order: by layer (embeddings at -1,
     logits at n_layers), then by the circuit's own site list (`metadata["sites"]`, as pruning
     writes it) or, failing that, the TransformerLens order of hook names within a block;
  2. nodes: id, site, kind (any string: the page colours unknown kinds too), layer, index,
     position, score (None when the method gave none), a separate ablation effect only where the
     metadata holds one apart from the scores (`node_effects`; never the score a second time), and
     whether the node is an endpoint (embedding channel or answer logit: the circuit's inputs and
     outputs, not chosen by the method, not counted in its size, as `graph.compare_sizes`);
  3. edges: parallel arrays of source and destination node positions, weights and kind indices
     (compact, and what the page's canvas draws from);
  4. summary: the scalar metadata (task, method, losses, accuracies, sizes) as label/value rows,
     one count of nodes (`counts`) that every part of the page uses;
  5. the bisection trace (k, loss, accuracy) with the target loss and the chosen k, when present;
  6. the reading guide (`reading_guide`): node kinds present, what a score and each edge kind mean,
     units, the ablation baseline and the target (reached or not) from the metadata;
  7. `metadata["check"]` (score vs exact patching, from `sparsecircuits check`) when present;
  8. `metadata["dashboards"]` (`{site: href}`, written by `feature-circuit --dashboards` and
     `graph --dashboards`): a feature node's card links to `href#f=<index>`, its feature's dashboard.
     Only relative hrefs are kept (`relative_href`): data can never make a page link off-line or run
     a `javascript:` URL. `write_circuit_page` rebases them when the page is written elsewhere.
Model-derived extras (top contexts, histograms, attention, task predictions) are merged in by
`viz.activations` and `viz.task_panel`; links to the index and sibling pages by `viz.report`.
"""

from __future__ import annotations

import math
import re
from typing import Any

from sparsecircuits.graph import Circuit

VIEW_SCHEMA = "sparsecircuits-view-v2"
ENDPOINT_KINDS = ("embed", "logit")  # inputs and outputs of a circuit, not chosen by its method

# What a node of each kind is (the page's "how to read this" panel; unknown kinds get no line).
KIND_DESCRIPTIONS = {
    "resid_read": "a residual-stream channel as a block reads it (after the norm, before attention or MLP)",
    "q": "one channel of an attention head's query",
    "k": "one channel of an attention head's key",
    "v": "one channel of an attention head's value",
    "resid_write": "a residual-stream channel written by an attention or MLP output",
    "neuron": "one MLP neuron (after its activation function)",
    "head": "a whole attention head",
    "mlp": "a whole MLP layer",
    "feature": "a sparse-dictionary feature (SAE or transcoder latent)",
    "error": "a dictionary's error term (what its features fail to reconstruct)",
    "embed": "a channel of the token embedding (an input of the circuit)",
    "logit": "the logit of an answer token (an output of the circuit)",
}
# What an edge of each kind means (other kinds: the method's own attribution of dst to src).
EDGE_DESCRIPTIONS = {
    "weight": "a nonzero weight between two kept channels; the edge weight is that parameter",
    "residual": "the residual stream carrying a written channel to a later read of the same channel (weight 1)",
    "qk": "a key channel multiplied with the query channel of the same head and dimension (weight 1)",
    "attribution": "the source's attributed effect on the destination (the method's units)",
    "internal": "a connection inside one component (structural, weight 0)",
}
BASELINES = {
    "mean": "its mean activation over the pretraining corpus",
    "position-mean": "its mean activation at the same position over the task's prompts",
    "zero": "zero",
    "counterfactual": "its activation on the paired counterfactual prompt",
    "resample": "its activation on another prompt of the task",
}

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


def scores_are_effects(md: dict[str, Any]) -> bool:
    """Whether the circuit's scores are exact single-node ablation effects (pruning, exact patching)."""
    return str(md.get("node_effects", "")).startswith("single-node ablation")


def node_effects(circuit: Circuit) -> dict[str, float]:
    """Single-node ablation effects stored apart from the scores (`metadata["effects"]`), else none:
    where the scores themselves are ablation effects (`scores_are_effects`) the page shows them once,
    as the score, with that meaning."""
    md = circuit.metadata
    if isinstance(md.get("effects"), dict):
        return {str(k): float(v) for k, v in md["effects"].items()}
    return {}


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def target_status(md: dict[str, Any]) -> dict[str, Any]:
    """The circuit's task loss against its target: {loss, full, empty, target, asked, reached}.
    `asked` is the configured target; `target` the one used (pruning relaxes it to the full model's
    loss plus a slack when the full model cannot reach it); `reached` None when unknown."""
    losses = md.get("losses") if isinstance(md.get("losses"), dict) else {}
    hp = md.get("hyperparameters") if isinstance(md.get("hyperparameters"), dict) else {}
    asked = _num(hp.get("target_loss"))
    used = _num(md.get("target_loss_used"))
    reached = md.get("reached_target")
    return {"loss": _num(losses.get("circuit")), "full": _num(losses.get("full")), "empty": _num(losses.get("empty")),
            "target": used if used is not None else asked, "asked": asked,
            "reached": reached if isinstance(reached, bool) else None}


def reading_guide(circuit: Circuit) -> dict[str, Any]:
    """Step 6: the lines of the page's "how to read this" panel, from the circuit's metadata."""
    md = circuit.metadata
    kinds = sorted({n.kind for n in circuit.nodes})
    edge_kinds = sorted({e.kind for e in circuit.edges})
    if scores_are_effects(md):
        score = (f"score = {md['node_effects']}: the task metric with the whole circuit minus the metric with "
                 "this one node also ablated. Positive: the node helps the task; units: logits (the correct "
                 "answer's logit minus the incorrect one's).")
    elif isinstance(md.get("node_effects"), str) and not str(md["node_effects"]).startswith("not computed"):
        score = (f"score = {md['node_effects']}. By convention an estimate of metric(clean) − metric(node "
                 "ablated): positive helps the task.")
    elif circuit.scores:
        score = "score: the method's estimate of metric(clean) − metric(node ablated); positive helps the task."
    else:
        score = (f"no node scores ({md.get('node_effects', 'the method gave none')}); nodes are drawn at one "
                 "size. `sparsecircuits view --model CHECKPOINT --effect-nodes N` computes exact ablation effects.")
    hp = md.get("hyperparameters") if isinstance(md.get("hyperparameters"), dict) else {}
    base = str(hp.get("baseline", md.get("ablation", "")) or "")
    baseline = (f"ablated: every node outside the circuit is replaced by {BASELINES.get(base, repr(base))} "
                f"(baseline '{base}')") if base else None
    t = target_status(md)
    target = None
    if t["target"] is not None and t["loss"] is not None:
        relaxed = (f" (the configured {t['asked']:g} relaxed: the full model itself cannot reach it)"
                   if t["asked"] is not None and abs(t["target"] - t["asked"]) > 1e-12 else "")
        verdict = {True: "reached", False: "NOT reached", None: "reached: unknown"}[t["reached"]]
        target = (f"target: the smallest circuit whose task loss on held-out examples is at most {t['target']:.3g} "
                  f"nats{relaxed}; this circuit: {t['loss']:.3g} nats, {verdict}"
                  + (f" (full model {t['full']:.3g}, empty circuit {t['empty']:.3g})" if t["full"] is not None
                     and t["empty"] is not None else ""))
    loss = ("task loss: binary cross-entropy over the two answer tokens (nats; 0.69 = chance between them)"
            if t["loss"] is not None else None)
    return {"kinds": {k: KIND_DESCRIPTIONS.get(k, "") for k in kinds},
            "score": score,
            "edges": {k: EDGE_DESCRIPTIONS.get(k, "the method's attribution of the destination to the source")
                      for k in edge_kinds},
            "lines": [x for x in (loss, baseline, target) if x]}


_SUMMARY_KEYS = {"task": "task", "method": "method", "model": "model", "n_edges": "edges",
                 "reached_target": "reached target", "target_loss_used": "target loss used (nats)",
                 "answer_tokens": "answer tokens"}


def _summary(md: dict[str, Any], counts: dict[str, int]) -> list[list[Any]]:
    rows: list[list[Any]] = []
    for key, label in _SUMMARY_KEYS.items():
        if key == "n_edges":
            rows.append(["nodes", _count_text(counts)])
        if key in md:
            rows.append([label, md[key]])
    units = {"losses": "task loss (nats)", "accuracy": "accuracy", "logit_diff": "logit diff"}
    for key in ("losses", "accuracy", "logit_diff"):
        if isinstance(md.get(key), dict):
            for part, value in md[key].items():
                rows.append([f"{units[key]}: {part}", value])
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


def _count_text(counts: dict[str, int]) -> str:
    end = f" (+ {counts['endpoints']} embedding/logit endpoints)" if counts["endpoints"] else ""
    return f"{counts['nodes']}{end}"


def relative_href(href: Any) -> bool:
    """True for a string that is a relative link (no scheme such as `javascript:`, not `//host`, not
    absolute); the page applies the same rule again before it sets any link from data."""
    if not isinstance(href, str) or not href.strip():
        return False
    h = href.strip()
    return not re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*:", h) and not h.startswith(("/", "\\"))


def dashboard_hrefs(md: dict[str, Any]) -> dict[str, str]:
    """Step 8: `{site: href}` of the feature dashboards the metadata records, relative links only."""
    links = md.get("dashboards")
    if not isinstance(links, dict):
        return {}
    return {str(site): href for site, href in links.items() if relative_href(href)}


def page_data(circuit: Circuit, title: str | None = None) -> dict[str, Any]:
    """Everything the page needs that comes from the circuit itself (steps 1-7)."""
    md = circuit.metadata
    columns = graph_columns(circuit)
    col_of = {c["site"]: i for i, c in enumerate(columns)}
    pos_of = {n.id: i for i, n in enumerate(circuit.nodes)}
    effects = node_effects(circuit)
    nodes = [{"id": n.id, "site": n.site, "kind": n.kind, "layer": n.layer, "index": n.index, "position": n.position,
              "score": circuit.scores.get(n.id), "effect": effects.get(n.id), "col": col_of[n.site],
              "endpoint": n.kind in ENDPOINT_KINDS}
             for n in circuit.nodes]
    n_end = sum(n["endpoint"] for n in nodes)
    counts = {"nodes": len(nodes) - n_end, "endpoints": n_end, "edges": len(circuit.edges)}
    kinds = sorted({e.kind for e in circuit.edges})
    kind_of = {k: i for i, k in enumerate(kinds)}
    edges = {"src": [pos_of[e.src] for e in circuit.edges], "dst": [pos_of[e.dst] for e in circuit.edges],
             "w": [e.weight for e in circuit.edges], "kind": [kind_of[e.kind] for e in circuit.edges]}
    name = title or f"{md.get('task', 'circuit')}: {md.get('method', 'circuit')}"
    check = md.get("check")
    notes = []
    if isinstance(md.get("n_nodes"), int) and md["n_nodes"] != counts["nodes"]:
        notes.append(f"the method's metadata says n_nodes = {md['n_nodes']}; this page counts the {counts['nodes']} "
                     "nodes that are not embedding or logit endpoints")
    return finite({
        "schema": VIEW_SCHEMA,
        "title": name,
        "summary": _summary(md, counts),
        "counts": counts,
        "score_label": "single-node ablation effect" if scores_are_effects(md) else "score",
        "guide": reading_guide(circuit),
        "target": target_status(md),
        "check": check if isinstance(check, dict) else None,
        "links": [],
        "dashboards": dashboard_hrefs(md),
        "columns": columns,
        "nodes": nodes,
        "edges": edges,
        "edge_kinds": kinds,
        "bisection": bisection_curve(md),
        "vocab": {},
        "task": None,
        "notes": notes,
    })
