"""A task on the component graph: baselines, the metric under edge masks, scores and circuits.

`prepare(model, data, ablation)` binds a model, a task's examples and an ablation (`ABLATIONS` in
`ablation.py`) into a `ComponentTask`: the graph, the baseline writer outputs and the clean metric.
The metric is the mean logit difference, logit(correct) - logit(incorrect) at each prompt's last
position (DESIGN.md; prompts of different lengths are right-padded and aligned on that position).
Every method returns `ComponentScores` with the DESIGN.md sign, metric(clean) - metric(ablated),
positive = helps; `to_circuit` turns them into a `graph.Circuit` that the viewer opens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from sparsecircuits.ablation import ABLATIONS, position_mean, resample_aligned
from sparsecircuits.component_circuits.component_graph import (
    ComponentGraph,
    build_graph,
    run_masked,
    writer_outputs,
)
from sparsecircuits.component_circuits.resume import MaskedRun, masked_run
from sparsecircuits.graph import Circuit, Edge, Node
from sparsecircuits.model.transformer import Transformer
from sparsecircuits.tasks.base import TaskData, last_logits


@dataclass
class ComponentTask:
    model: Transformer
    graph: ComponentGraph
    data: TaskData
    ablation: str
    base: Float[Tensor, "nb pb W d_model"]  # baseline writer outputs
    clean: Float[Tensor, "n pos W d_model"]  # writer outputs of the clean prompts
    full: float  # metric of the full model (all edges on)
    batch_masks: int = 16  # mask sets per batched forward
    ref: MaskedRun | None = None  # the clean run, which masked forwards resume from (`resume.py`)
    _empty: float | None = field(default=None, repr=False)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def empty(self) -> float:
        """Metric with every edge ablated; computed on first use (one masked forward)."""
        if self._empty is None:
            self._empty = float(metric(self, torch.zeros(len(self.graph.writers), len(self.graph.readers))))
        return self._empty


@dataclass
class ComponentScores:
    """What a discovery method returns. Scores use the DESIGN.md sign; entries of invalid edges are 0."""

    edges: Float[Tensor, "W R"]
    nodes: Float[Tensor, " W"]  # per writer (sum of its out-edge scores unless the method scores nodes)
    selected: Bool[Tensor, "W R"] | None = None  # edges a threshold method kept (None: rank by score)
    info: dict[str, Any] = field(default_factory=dict)


def _reference(data: TaskData) -> tuple[Tensor, Tensor]:
    """Prompts the mean baselines are taken over: the counterfactuals (Lan et al.), else the prompts."""
    return (data.cf_tokens if data.cf_tokens is not None else data.tokens), data.lengths


@torch.no_grad()
def baseline_outputs(model: Transformer, data: TaskData, ablation: str, seed: int = 0) -> Tensor:
    """Baseline writer outputs for an ablation, broadcastable to the task's examples. Heads' outputs
    are their shares under the baseline run's own state (post-norm scale, AbsTopK selection;
    `component_graph.py`), so a mean is the mean of those shares."""
    if ablation not in ABLATIONS:
        raise ValueError(f"ablation must be one of {ABLATIONS}, got {ablation!r}")
    dev = next(model.parameters()).device
    if ablation == "counterfactual":
        if data.cf_tokens is None:
            raise ValueError(f"task {data.name!r} has no counterfactual prompts for counterfactual ablation")
        return writer_outputs(model, data.cf_tokens.to(dev))
    ref, lengths = _reference(data)
    outs = writer_outputs(model, ref.to(dev))
    if ablation == "zero":
        return torch.zeros_like(outs[:1, :1])
    if ablation == "mean":
        real = (torch.arange(ref.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)).to(dev)
        return (outs[real].mean(0)).view(1, 1, *outs.shape[2:])
    if ablation == "position-mean":
        return position_mean(outs, lengths, data.lengths, data.tokens.shape[1])
    return resample_aligned(outs, lengths, data.lengths, torch.Generator().manual_seed(seed))


def metric_of_logits(logits: Float[Tensor, "cn pos vocab"], data: TaskData) -> Float[Tensor, " c"]:
    """Mean logit difference per mask set, from logits of c copies of the examples."""
    n = len(data)
    c = logits.shape[0] // n
    last = last_logits(logits, data.lengths.repeat(c))
    rows = torch.arange(c * n, device=logits.device)
    diff = last[rows, data.correct.repeat(c).to(logits.device)] - last[rows, data.incorrect.repeat(c).to(logits.device)]
    return diff.view(c, n).mean(1)


@torch.no_grad()
def metric(task: ComponentTask, masks: Float[Tensor, "*c W R"]) -> Float[Tensor, " c"]:
    """Mean logit difference under each of c edge masks (one mask: a 1-element tensor). One mask at a
    time, each resumed from the clean run at its first masked layer (`resume.py`); with
    `batch_masks` > 1, that many mask sets per dense masked forward (`run_masked`)."""
    masks = masks if masks.dim() == 3 else masks.unsqueeze(0)
    if task.batch_masks == 1 and task.ref is not None:
        return torch.tensor([masked_run(task.model, task.graph, task.data, task.base, m, task.ref)[0] for m in masks])
    out = []
    tokens = task.data.tokens.to(task.device)
    for i in range(0, masks.shape[0], task.batch_masks):
        chunk = masks[i: i + task.batch_masks].to(task.device)
        out.append(metric_of_logits(run_masked(task.model, task.graph, tokens, chunk, task.base), task.data))
    return torch.cat(out).cpu()


def prepare(model: Transformer, data: TaskData, ablation: str = "counterfactual", seed: int = 0,
            batch_masks: int = 0) -> ComponentTask:
    """Bind a model, a task and an ablation (see the module docstring): two plain forwards, the
    baseline's and the clean one (kept as the run masked forwards resume from; the metric with every
    edge off, `empty`, is computed when first read). `batch_masks` mask sets share a forward pass;
    0 = 1 on CPU, where stacking mask sets is slower per set (measured 1.6-3.4x at 16), and 16 on an
    accelerator."""
    if batch_masks == 0:
        batch_masks = 1 if next(model.parameters()).device.type == "cpu" else 16
    graph = build_graph(model)
    base = baseline_outputs(model, data, ablation, seed)
    on = torch.ones(len(graph.writers), len(graph.readers))
    full, ref = masked_run(model, graph, data, base, on, None, keep=True)
    assert ref is not None
    return ComponentTask(model, graph, data, ablation, base, ref.outs, full, batch_masks, ref)


def single_edge_masks(graph: ComponentGraph, edges: Int[Tensor, "k 2"], base: Tensor | None = None) -> Tensor:
    """[k, W, R] masks, each `base` (default all ones) with one (writer, reader) edge off."""
    W, R = len(graph.writers), len(graph.readers)
    m = (torch.ones(W, R) if base is None else base.float()).expand(len(edges), W, R).clone()
    m[torch.arange(len(edges)), edges[:, 0], edges[:, 1]] = 0.0
    return m


def to_circuit(task: ComponentTask, scores: ComponentScores, method: str, top_edges: int | None = None) -> Circuit:
    """A `Circuit` of the selected edges (threshold methods) or the `top_edges` highest-scoring ones
    (default: the edges with positive score), with their endpoint nodes, internal q/k/v -> head
    edges, node scores, and the task, method and metric values in the metadata."""
    g = task.graph
    if scores.selected is not None:
        keep = scores.selected & g.valid
    else:
        s = scores.edges.masked_fill(~g.valid, float("-inf"))
        k = int((s > 0).sum()) if top_edges is None else min(top_edges, g.n_edges)
        keep = torch.zeros_like(g.valid)
        if k:
            keep.view(-1)[s.view(-1).topk(k).indices] = True
    wi, ri = torch.nonzero(keep, as_tuple=True)
    nodes: dict[str, Node] = {}
    edges = []
    for w, r in zip(wi.tolist(), ri.tolist()):
        src, dst = g.writers[w], g.readers[r]
        nodes.setdefault(src.id, src)
        nodes.setdefault(dst.id, dst)
        edges.append(Edge(src.id, dst.id, float(scores.edges[w, r]), "residual"))
    for w, node in enumerate(g.writers):  # a head's inputs feed the head
        if node.kind == "head":
            for r in g.reader_of_writer(w):
                if g.readers[r].id in nodes:
                    nodes.setdefault(node.id, node)
                    edges.append(Edge(g.readers[r].id, node.id, 0.0, "internal"))
    node_scores = {g.writers[w].id: float(scores.nodes[w]) for w in range(len(g.writers)) if g.writers[w].id in nodes}
    md = {"method": method, "task": task.data.name, "ablation": task.ablation, "granularity": "component",
          "metric": "logit_diff", "full_metric": task.full, "empty_metric": task.empty,
          "n_edges": len(wi), "n_graph_edges": g.n_edges,
          "n_nodes": sum(1 for n in nodes.values() if n.kind in ("head", "mlp")), **scores.info}
    order = sorted(nodes.values(), key=lambda n: (n.layer, n.site, n.index))
    return Circuit(order, edges, node_scores, md)


def circuit_edge_mask(task: ComponentTask, circuit: Circuit) -> Bool[Tensor, "W R"]:
    """The (writer, reader) edges of a component circuit, as a boolean matrix over this task's graph."""
    g = task.graph
    w_of = {n.id: i for i, n in enumerate(g.writers)}
    r_of = {n.id: i for i, n in enumerate(g.readers)}
    keep = torch.zeros_like(g.valid)
    for e in circuit.edges:
        if e.kind == "residual" and e.src in w_of and e.dst in r_of:
            keep[w_of[e.src], r_of[e.dst]] = True
    return keep & g.valid


__all__ = ["ComponentScores", "ComponentTask", "baseline_outputs", "circuit_edge_mask", "metric", "metric_of_logits",
           "prepare", "single_edge_masks", "to_circuit"]
