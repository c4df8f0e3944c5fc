"""Patching methods on the component graph: exact node and edge patching, path patching, ACDC, and
Lan et al.'s iterative node pruning followed by edge pruning.

All of them set entries of the edge mask to 0 and measure the metric (`prepare.metric`); scores
use the DESIGN.md sign, metric(before) - metric(after the removal), positive = the removed part helped.
  exact edge   every edge alone (one masked forward per edge, batched);
  exact node   every writer alone: all its outgoing edges off = its output replaced by the baseline;
  path         path patching (Wang et al. 2023, "Interpretability in the wild"; Goldowsky-Dill et al.
               2023): in our graph, patching a sender's direct path into a receiver's input with all
               else clean is exactly masking the edge. Steps: receivers = {logits}; (1) path-patch each
               upstream sender into all current receivers at once; (2) keep the senders whose effect is
               >= `threshold` x |full metric|, and their single edges into the receivers above the same
               threshold; (3) the kept components' inputs become the receivers; repeat until none is new;
  ACDC         Conmy et al. (2023), "Towards automated circuit discovery": readers in reverse
               topological order (logits first); for each incoming edge (latest writer first) remove it
               for good if the metric changes by less than `threshold` (in logit-difference units);
               readers whose component has no remaining outgoing edge are skipped;
  iterative    Lan, Torr & Barez (2024), "Towards interpretable sequence continuation": (1) from the
               last layer down (the MLP, then heads from the last), ablate each head and MLP and drop it
               for good if the remaining circuit keeps >= `keep` (0.8) of the full metric; (2) inside
               the node circuit, path-patch each edge alone and keep those whose removal drops the
               metric below `keep` x full; then drop the edges into components left with no kept
               outgoing edge (`drop_dangling`), so every component of the circuit reaches the logits.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sparsecircuits.component_circuits.component_graph import edges_into_nodes, node_mask
from sparsecircuits.component_circuits.prepare import (
    ComponentScores,
    ComponentTask,
    metric,
    single_edge_masks,
)
from sparsecircuits.component_circuits.resume import masked_run


def exact_edges(task: ComponentTask, base_mask: Tensor | None = None, edges: Tensor | None = None) -> Tensor:
    """[W, R] effects of removing each edge alone from `base_mask` (default all on), for `edges`
    ([k, 2] writer/reader pairs; default every valid edge). Other entries are 0. One forward per
    edge, resumed at the edge's reader from the run of `base_mask` (`resume.py`), or `batch_masks`
    edges per dense forward."""
    g = task.graph
    edges = torch.nonzero(g.valid) if edges is None else edges
    out = torch.zeros(g.valid.shape)
    if not len(edges):
        return out
    if task.batch_masks == 1 and task.ref is not None:
        mask = torch.ones(g.valid.shape) if base_mask is None else base_mask.detach().float().cpu().clone()
        ref = task.ref if base_mask is None else masked_run(task.model, g, task.data, task.base, mask, task.ref, keep=True)[1]
        assert ref is not None
        for w, r in edges.tolist():
            was, mask[w, r] = float(mask[w, r]), 0.0
            out[w, r] = ref.value - masked_run(task.model, g, task.data, task.base, mask, ref)[0]
            mask[w, r] = was
        return out
    ref_value = task.full if base_mask is None else float(metric(task, base_mask))
    for i in range(0, len(edges), task.batch_masks):  # masks built per chunk: [k, W, R] at once is GBs
        chunk = edges[i: i + task.batch_masks]
        out[chunk[:, 0], chunk[:, 1]] = ref_value - metric(task, single_edge_masks(g, chunk, base_mask))
    return out


def exact_edge(task: ComponentTask) -> ComponentScores:
    edges = exact_edges(task)
    return ComponentScores(edges, edges.sum(1))


def exact_node(task: ComponentTask, threshold: float = 0.01) -> ComponentScores:
    """Writer scores from ablating each writer; the circuit = writers >= threshold x |full| and the
    edges between them. An edge's score (for ranking) is the smaller of its two endpoints' scores
    (the logits count as +inf)."""
    g = task.graph
    W = len(g.writers)
    keeps = ~torch.eye(W, dtype=torch.bool)
    masks = torch.stack([node_mask(g, k) for k in keeps])
    nodes = task.full - metric(task, masks)
    keep = nodes >= threshold * abs(task.full)
    keep[0] = True  # the embedding is the source of every path
    reader_score = torch.full((len(g.readers),), float("inf"))
    for w in range(1, W):
        for r in g.reader_of_writer(w):
            reader_score[r] = nodes[w]
    edges = torch.minimum(nodes.unsqueeze(1), reader_score.unsqueeze(0)) * g.valid
    return ComponentScores(edges, nodes, edges_into_nodes(g, keep), {"node_threshold": threshold})


def path_patching(task: ComponentTask, threshold: float = 0.02) -> ComponentScores:
    g = task.graph
    W, R = g.valid.shape
    cut = threshold * abs(task.full)
    edges, nodes = torch.zeros(W, R), torch.zeros(W)
    selected = torch.zeros(W, R, dtype=torch.bool)
    frontier, seen = [g.logit_reader], {g.logit_reader}
    while frontier:
        f = torch.tensor(frontier)
        senders = torch.nonzero(g.valid[:, f].any(1)).flatten()
        masks = torch.ones(len(senders), W, R)
        for i, u in enumerate(senders.tolist()):
            masks[i, u, f] = 0.0
        effect = task.full - metric(task, masks)
        nodes[senders] = torch.maximum(nodes[senders], effect)
        kept = senders[effect >= cut]
        pairs = torch.tensor([(u, r) for u in kept.tolist() for r in frontier if g.valid[u, r]], dtype=torch.long)
        frontier = []
        if len(pairs):
            single = exact_edges(task, None, pairs)
            edges += single
            selected |= (single >= cut) & (single != 0)
            for u in torch.unique(pairs[:, 0][single[pairs[:, 0], pairs[:, 1]] >= cut]).tolist():
                new = [r for r in g.reader_of_writer(u) if r not in seen]
                seen.update(new)
                frontier += new
    return ComponentScores(edges, nodes, selected, {"path_threshold": threshold})


def _reverse_readers(task: ComponentTask) -> list[int]:
    g = task.graph
    return [g.logit_reader] + list(range(g.logit_reader - 1, -1, -1))


def _component_writer(task: ComponentTask, r: int) -> int:
    node = task.graph.readers[r]
    if node.kind == "mlp":
        return task.graph.mlp_writer(node.layer)
    return -1  # q/k/v: resolved per head by `_reader_live`


def _reader_live(task: ComponentTask, r: int, mask: Tensor) -> bool:
    """Whether a reader's component still has an outgoing edge on (logits: always)."""
    g = task.graph
    if r == g.logit_reader:
        return True
    w = _component_writer(task, r)
    writers = [w] if w >= 0 else [u for u in range(len(g.writers)) if r in g.reader_of_writer(u)]
    return any(bool((mask[u] * g.valid[u]).any()) for u in writers)


def acdc(task: ComponentTask, threshold: float = 0.05) -> ComponentScores:
    g = task.graph
    mask = g.valid.float().clone()
    current = task.full
    edges = torch.zeros(g.valid.shape)
    resume = task.batch_masks == 1 and task.ref is not None  # each candidate resumes from the current circuit's run
    run = masked_run(task.model, g, task.data, task.base, mask, task.ref, keep=True)[1] if resume else None
    for r in _reverse_readers(task):
        if not _reader_live(task, r, mask):
            mask[:, r] = 0.0
            continue
        for u in reversed(torch.nonzero(g.valid[:, r]).flatten().tolist()):
            mask[u, r] = 0.0
            if run is not None:
                new, candidate = masked_run(task.model, g, task.data, task.base, mask, run, keep=True)
            else:
                new, candidate = float(metric(task, mask)), None
            edges[u, r] = current - new
            if abs(current - new) < threshold:
                current, run = new, candidate
            else:
                mask[u, r] = 1.0
    selected = mask.bool() & g.valid
    return ComponentScores(edges, edges.sum(1), selected, {"acdc_threshold": threshold, "circuit_metric": current})


def iterative_pruning(task: ComponentTask, keep: float = 0.8) -> ComponentScores:
    g = task.graph
    W = len(g.writers)
    on = torch.ones(W, dtype=torch.bool)
    target = keep * task.full
    current = task.full
    nodes = torch.zeros(W)
    for layer in range(g.n_layers - 1, -1, -1):
        for w in [g.mlp_writer(layer)] + [g.head_writer(layer, h) for h in range(g.n_heads - 1, -1, -1)]:
            on[w] = False
            new = float(metric(task, node_mask(g, on)))
            nodes[w] = current - new
            if new >= target:
                current = new
            else:
                on[w] = True
    inside = edges_into_nodes(g, on)
    base = node_mask(g, on)
    edges = exact_edges(task, base, torch.nonzero(inside))
    after = current - edges  # metric with each edge removed from the node circuit
    important = inside & (after < target)
    selected = drop_dangling(task, important)
    return ComponentScores(edges, nodes, selected,
                           {"keep_fraction": keep, "node_circuit_metric": current, "n_circuit_nodes": int(on[1:].sum()),
                            "n_dangling_edges_dropped": int(important.sum() - selected.sum())})


def drop_dangling(task: ComponentTask, selected: Tensor) -> Tensor:
    """`selected` without the edges into components that have no selected outgoing edge (a head whose
    input edges matter but none of whose output edges passed the threshold alone), repeated up the
    graph: every component left has a path to the logits. Readers are visited from the logits back,
    so a component's outgoing edges are final when its inputs are checked."""
    kept = selected.clone()
    for r in _reverse_readers(task):
        if not _reader_live(task, r, kept.float()):
            kept[:, r] = False
    return kept


__all__ = ["acdc", "drop_dangling", "exact_edge", "exact_edges", "exact_node", "iterative_pruning", "path_patching"]
