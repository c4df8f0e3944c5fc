"""Attribution graphs out: pruning in the graph's node layout, our `Circuit`, and graph JSON in the
schema of circuit-tracer / Neuronpedia's attribution-graph frontend.

That schema (a data format; field names as circuit-tracer's `frontend/graph_models.py` defines them):
`metadata` (slug, scan, transcoder_list, prompt_tokens, prompt, node_threshold, schema_version),
`qParams` (pinnedIds, supernodes, linkType, clickedId, sg_pos), `nodes` (node_id, feature, layer,
ctx_idx, feature_type, token_prob, is_target_logit, run_idx, reverse_ctx_idx, jsNodeId, clerp,
influence, activation) and `links` (source, target, weight). Node ids: feature "{layer}_{feature}_{pos}",
error "{layer}_-1_{pos}", token "E_{token id}_{pos}", logit "{n_layers + 1}_{token id}_{pos}"; a
feature's `feature` is the Cantor pairing of (layer, feature index), so one number names it across
layers. `influence` is the node's cumulative influence fraction (as circuit-tracer writes it).
Error ids follow circuit-tracer's current main branch; its 0.5.0 release wrote "0_{layer}_{pos}" (and
jsNodeId "{layer}_{pos}-0"), which can alias a layer-0 feature's id, so we do not reproduce that.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from sparsecircuits.graph import Circuit, Edge, Node
from sparsecircuits.transcoder_circuits.attribution_graph import AttributionGraph
from sparsecircuits.transcoder_circuits.influence import GraphScores, PrunedGraph, graph_scores, prune

FEATURE_TYPES = {"feature": "cross layer transcoder", "error": "mlp reconstruction error",
                 "embed": "embedding", "logit": "logit"}


def logit_weights(graph: AttributionGraph) -> Tensor:
    """[n_nodes]: the logit targets' probabilities, zero elsewhere."""
    w = graph.adjacency.new_zeros(graph.n_nodes)
    w[graph.logit_start:] = graph.logit_probs.to(w.dtype)
    return w


def prune_graph(graph: AttributionGraph, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> PrunedGraph:
    """`influence.prune` with the graph's layout (tokens and logits always kept)."""
    n_fixed = graph.n_pos + int(graph.logit_tokens.numel())
    return prune(graph.adjacency, logit_weights(graph), graph.n_features, n_fixed, node_threshold, edge_threshold)


def scores(graph: AttributionGraph) -> GraphScores:
    """Replacement and completeness scores of the whole (unpruned) graph."""
    idx = torch.arange(graph.n_nodes)
    errors = (idx >= graph.error_start) & (idx < graph.token_start)
    tokens = (idx >= graph.token_start) & (idx < graph.logit_start)
    return graph_scores(graph.adjacency, logit_weights(graph), errors, tokens)


def _cantor(a: int, b: int) -> int:
    return (a + b) * (a + b + 1) // 2 + b


def node_record(graph: AttributionGraph, i: int) -> dict[str, Any]:
    """Schema fields of node i that depend only on the graph (ids, layer, position, kind)."""
    kind, T = graph.kind(i), graph.n_pos
    if kind == "feature":
        layer, pos, f = (int(x) for x in graph.features[i])
        return {"node_id": f"{layer}_{f}_{pos}", "feature": _cantor(layer, f), "layer": str(layer), "ctx_idx": pos,
                "jsNodeId": f"{layer}_{f}-0", "activation": float(graph.activations[i])}
    if kind == "error":
        layer, pos = divmod(i - graph.error_start, T)
        return {"node_id": f"{layer}_-1_{pos}", "feature": -1, "layer": str(layer), "ctx_idx": pos,
                "jsNodeId": f"{layer}_-1-{pos}"}
    if kind == "embed":
        pos = i - graph.token_start
        tok = int(graph.tokens[pos])
        return {"node_id": f"E_{tok}_{pos}", "feature": pos, "layer": "E", "ctx_idx": pos, "jsNodeId": f"E_{tok}-{pos}"}
    j, layer = i - graph.logit_start, str(graph.n_layers + 1)
    tok, pos = int(graph.logit_tokens[j]), T - 1
    return {"node_id": f"{layer}_{tok}_{pos}", "feature": tok, "layer": layer, "ctx_idx": pos, "jsNodeId": f"L_{tok}-{pos}",
            "token_prob": float(graph.logit_probs[j]), "is_target_logit": j == 0}


def to_neuronpedia(
    graph: AttributionGraph,
    pruned: PrunedGraph,
    prompt: str,
    token_strs: list[str],
    logit_strs: list[str],
    slug: str = "sparsecircuits-graph",
    scan: str = "sparsecircuits",
    node_threshold: float = 0.8,
    clerps: dict[int, str] | None = None,
) -> dict[str, Any]:
    """The pruned graph as circuit-tracer / Neuronpedia graph JSON (module docstring). `clerps` maps
    node indices to labels; logits get 'Output "tok" (p=…)' as circuit-tracer writes them."""
    clerps = clerps or {}
    kept = torch.nonzero(pruned.node_mask).squeeze(1).tolist()
    records = {}
    for i in kept:
        kind = graph.kind(i)
        r = {"node_id": "", "feature": 0, "layer": "", "ctx_idx": 0, "feature_type": FEATURE_TYPES[kind],
             "token_prob": 0.0, "is_target_logit": False, "run_idx": 0, "reverse_ctx_idx": 0, "jsNodeId": "",
             "clerp": clerps.get(i, ""), "influence": float(pruned.cumulative[i]), "activation": None}
        r.update(node_record(graph, i))
        if kind == "logit":
            j = i - graph.logit_start
            r["clerp"] = clerps.get(i, f'Output "{logit_strs[j]}" (p={float(graph.logit_probs[j]):.3f})')
            r["influence"] = None
        records[i] = r
    dst, src = torch.nonzero(pruned.edge_mask, as_tuple=True)
    weights = graph.adjacency[dst, src].tolist()
    links = [{"source": records[s]["node_id"], "target": records[t]["node_id"], "weight": w}
             for s, t, w in zip(src.tolist(), dst.tolist(), weights) if s in records and t in records]
    meta = {"slug": slug, "scan": scan, "transcoder_list": [], "prompt_tokens": list(token_strs), "prompt": prompt,
            "node_threshold": node_threshold, "schema_version": 1}
    qparams = {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""}
    return {"metadata": meta, "qParams": qparams, "nodes": list(records.values()), "links": links}


def to_circuit(graph: AttributionGraph, pruned: PrunedGraph, graph_scores: GraphScores,
               metadata: dict[str, Any] | None = None) -> Circuit:
    """The pruned graph as our `Circuit` (for `sparsecircuits view`): features and errors at their
    layer's `hook_mlp_out` (errors with index -1), embeddings at `hook_embed`, logits at "logits";
    edges of kind "attribution" weighted by the direct effect; node scores = influence on the logits."""
    nodes: dict[int, Node] = {}
    for i in torch.nonzero(pruned.node_mask).squeeze(1).tolist():
        r, kind = node_record(graph, i), graph.kind(i)
        pos = int(r["ctx_idx"])
        if kind in ("feature", "error"):
            layer = int(r["layer"])
            index = int(graph.features[i, 2]) if kind == "feature" else -1
            nodes[i] = Node(f"blocks.{layer}.hook_mlp_out", index, kind, layer, pos)
        elif kind == "embed":
            nodes[i] = Node("hook_embed", int(graph.tokens[pos]), "embed", -1, pos)
        else:
            nodes[i] = Node("logits", int(r["feature"]), "logit", graph.n_layers, pos)
    dst, src = torch.nonzero(pruned.edge_mask, as_tuple=True)
    edges = [Edge(nodes[s].id, nodes[t].id, float(graph.adjacency[t, s]), "attribution")
             for s, t in zip(src.tolist(), dst.tolist()) if s in nodes and t in nodes]
    n_feat = sum(1 for i in nodes if graph.kind(i) == "feature")
    md = {"method": "attribution-graph", "n_nodes": n_feat, "n_edges": len(edges),
          "replacement_score": graph_scores.replacement, "completeness_score": graph_scores.completeness,
          "node_influence_kept": pruned.node_fraction, "edge_influence_kept": pruned.edge_fraction,
          "node_effects": "influence on the logits (attribution graph)", **(metadata or {})}
    return Circuit(list(nodes.values()), edges, {nodes[i].id: float(pruned.influence[i]) for i in nodes}, md)
