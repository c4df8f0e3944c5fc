"""Ground truth: every component-graph method recovers a circuit planted by hand (`planted.py`)."""

from __future__ import annotations

import pytest
import torch
from planted import GROUND_TRUTH, planted_data, planted_model

from sparsecircuits.component_circuits.methods import METHODS, DiscoverConfig, discover
from sparsecircuits.component_circuits.patching import exact_edge
from sparsecircuits.component_circuits.prepare import prepare
from sparsecircuits.graph import Circuit


def auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    pos, neg = scores[labels], scores[~labels]
    return float(((pos[:, None] > neg[None, :]).float() + 0.5 * (pos[:, None] == neg[None, :]).float()).mean())


@pytest.fixture(scope="module")
def task():
    return prepare(planted_model(), planted_data(), "mean")


def truth(task) -> torch.Tensor:
    g = task.graph
    w = {n.id: i for i, n in enumerate(g.writers)}
    r = {n.id: i for i, n in enumerate(g.readers)}
    gt = torch.zeros_like(g.valid)
    for a, b in GROUND_TRUTH:
        gt[w[a], r[b]] = True
    return gt


def test_planted_circuit_is_what_the_model_uses(task):
    gt, v = truth(task), task.graph.valid
    effects = exact_edge(task).edges
    assert task.full > 3.0 and abs(task.empty) < 1e-4
    assert effects[gt].min() > 0.3 * task.full
    assert effects[v & ~gt].abs().max() < 0.01 * task.full


@pytest.mark.parametrize("method", [m for m, spec in METHODS.items() if spec.score is not None])
def test_every_method_recovers_the_planted_circuit(task, method):
    gt, v = truth(task), task.graph.valid
    scores = METHODS[method].score(task, DiscoverConfig(ablation="mean", ig_steps=4))
    if method == "exact-node":  # a node method: judged on nodes (heads and MLPs)
        node_gt = gt.any(1)
        node_gt[0] = False
        value = auroc(scores.nodes[1:], node_gt[1:])
    else:
        value = auroc(scores.edges[v], gt[v])
    assert value >= 0.95, (method, value)
    if scores.selected is not None and method != "exact-node":
        assert bool((scores.selected[gt]).all()) and int(scores.selected.sum()) == len(GROUND_TRUTH), method


def test_discover_writes_a_circuit_the_viewer_schema_loads(tmp_path):
    circuit = discover(planted_model(), planted_data(), "iterative", DiscoverConfig(ablation="mean"))
    path = tmp_path / "c.json"
    circuit.save(path)
    back = Circuit.load(path)
    assert {(e.src, e.dst) for e in back.edges if e.kind == "residual"} == set(GROUND_TRUTH)
    assert back.metadata["faithfulness"] > 0.8 and back.metadata["n_nodes"] == 3


def test_drop_dangling_removes_inputs_of_components_without_outputs(task):
    """Edges into a head none of whose outgoing edges is kept are dropped, up the graph; a head with a
    kept outgoing edge keeps its inputs."""
    from sparsecircuits.component_circuits.patching import drop_dangling

    g = task.graph
    gt = truth(task)
    assert torch.equal(drop_dangling(task, gt), gt)  # the planted circuit is connected to the logits
    # a head that writes nowhere in the circuit: feed one of its q/k/v readers from the embedding
    lonely = next(w for w in range(len(g.writers)) if g.writers[w].kind == "head" and not gt[w].any()
                  and any(g.valid[0, r] for r in g.reader_of_writer(w)))
    r_in = next(r for r in g.reader_of_writer(lonely) if g.valid[0, r])
    extra = gt.clone()
    extra[0, r_in] = True
    assert torch.equal(drop_dangling(task, extra), gt)
