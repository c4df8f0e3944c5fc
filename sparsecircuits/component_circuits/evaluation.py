"""Evaluating component circuits: faithfulness at edge fractions with MIB's CPR and CMD, completeness,
cross-task faithfulness, and bootstrap stability.

  curve         keep the top `fraction` of edges by score (signed for CPR, |score| for CMD), run the
                model with every other edge ablated, faithfulness f = (m(C) - m(empty)) / (m(full) -
                m(empty)) (Marks et al. 2025; Mueller et al. 2025, MIB); CPR = area under f, CMD = area
                under |1 - f| (`evaluate.area_under`);
  completeness  faithfulness of the model without the circuit (all edges on except the circuit's);
                ideal 0 (Marks et al.);
  cross-task    circuit A's edges evaluated on task B (Lan et al. 2024's overlap analysis);
  stability     rerun a method on bootstrap resamples of the examples and report the mean pairwise
                Jaccard index of the circuits' edge sets (MIB reports 0.67 for EAP-IG on GPT-2 IOI).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from sparsecircuits.component_circuits.prepare import ComponentTask, circuit_edge_mask, metric, prepare
from sparsecircuits.evaluate import MIB_FRACTIONS, area_under, faithfulness
from sparsecircuits.graph import Circuit, edge_iou


@dataclass
class Curve:
    fractions: list[float]
    signed: list[float]  # faithfulness with edges ranked by signed score
    absolute: list[float]  # ranked by |score|
    cpr: float
    cmd: float


def _top_masks(task: ComponentTask, scores: Tensor, fractions: list[float]) -> Tensor:
    valid = task.graph.valid
    s = scores.masked_fill(~valid, float("-inf")).flatten()
    order = s.argsort(descending=True)
    masks = torch.zeros(len(fractions), valid.numel())
    for i, f in enumerate(fractions):
        masks[i, order[: int(math.ceil(f * task.graph.n_edges))]] = 1.0
    return masks.view(len(fractions), *valid.shape)


def faithfulness_curve(task: ComponentTask, scores: Tensor, fractions: tuple[float, ...] = MIB_FRACTIONS) -> Curve:
    fr = list(fractions)
    signed = metric(task, _top_masks(task, scores, fr)).tolist()
    absolute = metric(task, _top_masks(task, scores.abs(), fr)).tolist()
    fs = [faithfulness(v, task.full, task.empty) for v in signed]
    fa = [faithfulness(v, task.full, task.empty) for v in absolute]
    return Curve(fr, fs, fa, area_under(fr, fs), area_under(fr, [abs(1 - f) for f in fa]))


def circuit_faithfulness(task: ComponentTask, circuit: Circuit) -> float:
    """Faithfulness of a component circuit's edges on this task."""
    return faithfulness(float(metric(task, circuit_edge_mask(task, circuit).float())), task.full, task.empty)


def completeness(task: ComponentTask, circuit: Circuit) -> float:
    """Faithfulness of the model minus the circuit (ideal 0)."""
    keep = task.graph.valid & ~circuit_edge_mask(task, circuit)
    return faithfulness(float(metric(task, keep.float())), task.full, task.empty)


def cross_task_matrix(tasks: dict[str, ComponentTask], circuits: dict[str, Circuit]) -> dict[str, dict[str, float]]:
    """matrix[a][b] = faithfulness of circuit a on task b."""
    return {a: {b: circuit_faithfulness(tasks[b], ca) for b in tasks} for a, ca in circuits.items()}


def bootstrap_stability(task: ComponentTask, method: str, cfg: object, n_boot: int = 5, seed: int = 0) -> float:
    """Mean pairwise edge Jaccard of circuits found on bootstrap resamples of the task's examples."""
    from sparsecircuits.component_circuits.methods import discover

    g = torch.Generator().manual_seed(seed)
    n = len(task.data)
    circuits = []
    for _ in range(n_boot):
        idx = torch.randint(0, n, (n,), generator=g)
        circuits.append(discover(task.model, task.data.subset(idx), method, cfg))  # type: ignore[arg-type]
    pairs = list(itertools.combinations(circuits, 2))
    return sum(edge_iou(a, b) for a, b in pairs) / max(len(pairs), 1)


__all__ = ["Curve", "bootstrap_stability", "circuit_faithfulness", "completeness", "cross_task_matrix",
           "faithfulness_curve", "prepare"]
