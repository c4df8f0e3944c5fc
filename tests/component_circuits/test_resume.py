"""The fast paths against the dense masked forward (`component_graph.run_masked`), on every model
variant: masked forwards resumed from a cached run (`resume.py`: exact patching, ACDC, path
patching, node masks) give the dense metric, and EAP / EAP-IG from reader-input gradients
(`eap.py`) give the dense mask gradient, to float tolerance."""

from __future__ import annotations

import pytest
import torch
from test_component_graph import CONFIGS, fake_task
from test_nonlinear_writers import VARIANTS

from conftest import tiny_model
from sparsecircuits.component_circuits import eap as attribution
from sparsecircuits.component_circuits import patching
from sparsecircuits.component_circuits.component_graph import node_mask, run_masked
from sparsecircuits.component_circuits.prepare import metric_of_logits, prepare
from sparsecircuits.component_circuits.resume import masked_run

ALL = {**{f"nonlinear-{k}": v for k, v in VARIANTS.items()}, **{k: dict(act_sparsity=1.0, **v) for k, v in CONFIGS.items()}}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tasks():
    cache = {}

    def get(name: str):
        if name not in cache:
            cache[name] = prepare(tiny_model(init_std=0.1, **ALL[name]), fake_task(), "counterfactual", batch_masks=1)
        return cache[name]

    return get


def dense(task, mask: torch.Tensor) -> float:
    with torch.no_grad():
        logits = run_masked(task.model, task.graph, task.data.tokens, mask, task.base)
    return float(metric_of_logits(logits, task.data)[0])


def masks_of(task, seed: int = 0) -> list[torch.Tensor]:
    """Single edges into every kind of reader, a few random edges, many, node masks, all off."""
    g, gen = task.graph, torch.Generator().manual_seed(seed)
    edges = torch.nonzero(g.valid)
    out = []
    for kind in ("q", "k", "v", "mlp", "logit"):  # one edge into a reader of each kind, early and late
        rows = [i for i, (w, r) in enumerate(edges.tolist()) if g.readers[r].kind == kind]
        for i in (rows[0], rows[-1]):
            m = torch.ones(g.valid.shape)
            m[edges[i, 0], edges[i, 1]] = 0.0
            out.append(m)
    for p in (0.05, 0.5):
        out.append((torch.rand(g.valid.shape, generator=gen) > p).float())
    keep = torch.rand(len(g.writers), generator=gen) > 0.4
    out += [node_mask(g, keep), torch.zeros(g.valid.shape)]
    return out


@pytest.mark.parametrize("name", list(ALL))
def test_resumed_masked_forwards_equal_the_dense_ones(name, tasks):
    task = tasks(name)
    assert abs(task.full - dense(task, torch.ones(task.graph.valid.shape))) < 1e-5
    for m in masks_of(task):
        fast, _ = masked_run(task.model, task.graph, task.data, task.base, m, task.ref)
        assert abs(fast - dense(task, m)) < 1e-5 * max(1.0, abs(fast)), name


@pytest.mark.parametrize("name", list(ALL))
def test_a_kept_run_is_a_reference_for_later_masks(name, tasks):
    """ACDC's chain: each accepted mask's run becomes the reference of the next candidate."""
    task = tasks(name)
    g, gen = task.graph, torch.Generator().manual_seed(1)
    mask = g.valid.float()  # invalid entries 0, as ACDC starts
    _, ref = masked_run(task.model, g, task.data, task.base, mask, task.ref, keep=True)
    edges = torch.nonzero(g.valid)
    for i in torch.randperm(len(edges), generator=gen)[:6].tolist():
        mask = mask.clone()
        mask[edges[i, 0], edges[i, 1]] = 0.0
        value, ref = masked_run(task.model, g, task.data, task.base, mask, ref, keep=True)
        assert ref is not None and abs(value - dense(task, mask)) < 1e-5 * max(1.0, abs(value)), name


def dense_grad(task, mask: torch.Tensor, delta: torch.Tensor | None = None, shift: torch.Tensor | None = None):
    m = mask.clone().requires_grad_(True)

    def interpolate(x, hook):
        return x + shift[:, : x.shape[1]]

    with torch.enable_grad():
        if delta is None:
            logits = run_masked(task.model, task.graph, task.data.tokens, m, base=task.base, frozen=True)
        else:
            logits = run_masked(task.model, task.graph, task.data.tokens, m, delta=delta, embed_fn=interpolate, frozen=True)
        (grad,) = torch.autograd.grad(metric_of_logits(logits, task.data).sum(), m)
    return grad * task.graph.valid


@pytest.mark.parametrize("name", list(ALL))
def test_eap_and_eap_ig_equal_the_dense_mask_gradient(name, tasks):
    task = tasks(name)
    ones = torch.ones(task.graph.valid.shape)

    def close(a, b):
        return torch.allclose(a, b, atol=1e-5 * max(1.0, float(b.abs().max())), rtol=1e-4)

    assert close(attribution.eap(task).edges, dense_grad(task, ones)), name
    steps = 2
    acts = sum(dense_grad(task, (k + 0.5) / steps * ones) for k in range(steps)) / steps
    assert close(attribution.eap_ig(task, steps, "activations").edges, acts), name
    delta = task.clean - task.base
    inputs = sum(dense_grad(task, ones, delta, (1 - (k + 0.5) / steps) * (task.base[..., 0, :] - task.clean[..., 0, :]))
                 for k in range(steps)) / steps
    assert close(attribution.eap_ig(task, steps, "inputs").edges, inputs), name


def test_exact_edges_from_a_node_circuit_equal_the_dense_ones(tasks):
    """Exact patching from a base mask other than all-on (Lan et al.'s edge step) resumes from that run."""
    task = tasks("nonlinear-both")
    g = task.graph
    base = node_mask(g, torch.rand(len(g.writers), generator=torch.Generator().manual_seed(2)) > 0.3)
    edges = torch.nonzero(g.valid)[::7]
    fast = patching.exact_edges(task, base, edges)
    ref = dense(task, base)
    for w, r in edges.tolist():
        m = base.clone()
        m[w, r] = 0.0
        assert abs(fast[w, r] - (ref - dense(task, m))) < 1e-5


@pytest.mark.parametrize("name", ["nonlinear-both", "learned-parallel"])
def test_patching_methods_equal_their_dense_runs(name, tasks):
    """ACDC, path patching, exact node / edge patching and iterative pruning resumed from cached runs
    (batch_masks=1) against the same methods on dense masked forwards (batch_masks=2)."""
    import dataclasses

    fast = tasks(name)
    slow = dataclasses.replace(fast, batch_masks=2)
    assert abs(fast.empty - slow.empty) < 1e-5
    for method in (lambda t: patching.acdc(t, 0.02), lambda t: patching.path_patching(t, 0.02),
                   patching.exact_edge, patching.exact_node, lambda t: patching.iterative_pruning(t, 0.8)):
        a, b = method(fast), method(slow)
        assert torch.allclose(a.edges, b.edges, atol=1e-5) and torch.allclose(a.nodes, b.nodes, atol=1e-5)
        assert (a.selected is None) == (b.selected is None)
        assert a.selected is None or torch.equal(a.selected, b.selected)
