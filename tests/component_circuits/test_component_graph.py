"""The component graph's edge masks against direct interventions, and EAP / EAP-IG against exact edge
patching, on tiny random models (GQA, rotary, parallel attention + MLP)."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_model
from sparsecircuits.ablation import position_mean, resample_aligned
from sparsecircuits.component_circuits import eap as attribution
from sparsecircuits.component_circuits import patching
from sparsecircuits.component_circuits.component_graph import (
    build_graph,
    node_mask,
    ones_mask,
    run_masked,
    writer_outputs,
)
from sparsecircuits.component_circuits.prepare import prepare
from sparsecircuits.tasks.base import Example, TaskData, last_logits

CONFIGS = {
    "gqa-rotary": dict(n_kv_heads=2, positions="rotary"),
    "learned-parallel": dict(positions="learned", parallel_attn_mlp=True, attn_sink=False),
    "layernorm-mha": dict(norm="layer", bigram_table=False),
}


def fake_task(n: int = 6, width: int = 8, vocab: int = 97, seed: int = 0) -> TaskData:
    g = torch.Generator().manual_seed(seed)
    toks = torch.randint(0, vocab, (n, width), generator=g)
    cf = torch.randint(0, vocab, (n, width), generator=g)
    lengths = torch.randint(width // 2, width + 1, (n,), generator=g)
    correct = torch.randint(0, vocab, (n,), generator=g)
    return TaskData("fake", [Example("p", "c", "i")] * n, toks, lengths, correct, (correct + 1) % vocab, cf, ("c", "i"), 0)


def model_for(name: str, init_std: float = 0.1):
    return tiny_model(act_sparsity=1.0, init_std=init_std, **CONFIGS[name])


def corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


def check_ones_mask(model) -> None:
    """Masks of ones reproduce the clean logits, also under EAP's state-freezing hooks (`frozen`)."""
    data = fake_task()
    g = build_graph(model)
    base = writer_outputs(model, data.cf_tokens)
    with torch.no_grad():
        clean = model(data.tokens)
        masked = run_masked(model, g, data.tokens, ones_mask(g), base)
        frozen = run_masked(model, g, data.tokens, ones_mask(g), base, frozen=True)
    assert torch.allclose(clean, masked, atol=1e-5)  # per-head projections: float rounding only
    assert torch.equal(frozen, masked)  # detaching changes no forward value


@pytest.mark.parametrize("name", list(CONFIGS))
def test_ones_mask_reproduces_clean_logits(name):
    check_ones_mask(model_for(name))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_writer_outputs_sum_to_the_residual(name):
    model, data = model_for(name), fake_task()
    outs = writer_outputs(model, data.tokens)
    L = model.cfg.n_layers - 1
    _, cache = model.run_with_cache(data.tokens, names_filter=[f"blocks.{L}.hook_resid_post"])
    biases = sum(b.attn.b_O for b in model.blocks)
    assert torch.allclose(outs.sum(2) + biases, cache[f"blocks.{L}.hook_resid_post"], atol=1e-5)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_masking_all_edges_into_a_reader_ablates_its_input(name):
    """Counterfactual baseline: every edge into head h's q (or a KV group's v, the MLP, the logits) off
    == that input replaced by the counterfactual run's residual."""
    model, data = model_for(name), fake_task()
    g, cfg = build_graph(model), model.cfg
    base = writer_outputs(model, data.cf_tokens)
    layer = 1
    resid_hook = "blocks.1.hook_resid_pre"
    _, cf_cache = model.run_with_cache(data.cf_tokens, names_filter=[resid_hook, "blocks.1.hook_mlp_in",
                                                                      "blocks.1.hook_resid_post"])
    rs = g.reader_start(layer)
    cases = [(rs + 1, "blocks.1.hook_q_input", 1, cf_cache[resid_hook]),
             (rs + cfg.n_heads + cfg.kv_heads + 1, "blocks.1.hook_v_input", 1, cf_cache[resid_hook]),
             (g.mlp_reader(layer), "blocks.1.hook_mlp_in", None, cf_cache["blocks.1.hook_mlp_in"]),
             (g.logit_reader, "blocks.1.hook_resid_post", None, cf_cache["blocks.1.hook_resid_post"])]
    for r, hook, idx, cf_resid in cases:
        mask = ones_mask(g)
        mask[:, r] = 0.0

        def patch(x, h, idx=idx, cf_resid=cf_resid):
            x = x.clone()
            if idx is None:
                return cf_resid
            x[:, :, idx] = cf_resid
            return x

        with torch.no_grad():
            masked = run_masked(model, g, data.tokens, mask, base)
            with model.hooks([(hook, patch)]):
                direct = model(data.tokens)
        assert torch.allclose(masked, direct, atol=1e-4), hook


def test_node_mask_equals_patching_the_head():
    model, data = model_for("gqa-rotary"), fake_task()
    g = build_graph(model)
    base = writer_outputs(model, data.cf_tokens)
    _, cf = model.run_with_cache(data.cf_tokens, names_filter=["blocks.0.attn.hook_z"])
    keep = torch.ones(len(g.writers), dtype=torch.bool)
    keep[g.head_writer(0, 2)] = False

    def patch(z, h):
        z = z.clone()
        z[:, :, 2] = cf["blocks.0.attn.hook_z"][:, :, 2]
        return z

    with torch.no_grad():
        masked = run_masked(model, g, data.tokens, node_mask(g, keep), base)
        with model.hooks([("blocks.0.attn.hook_z", patch)]):
            direct = model(data.tokens)
    assert torch.allclose(masked, direct, atol=1e-5)


def test_batched_masks_match_one_at_a_time():
    model, data = model_for("gqa-rotary"), fake_task()
    assert prepare(model, data, "counterfactual").batch_masks == 1  # the default on CPU, where batching is slower
    task = prepare(model, data, "counterfactual", batch_masks=4)
    edges = torch.nonzero(task.graph.valid)[::7]
    batched = patching.exact_edges(task, None, edges)
    for w, r in edges.tolist():
        mask = ones_mask(task.graph)
        mask[w, r] = 0
        with torch.no_grad():
            logits = run_masked(model, task.graph, data.tokens, mask, task.base)
        last = last_logits(logits, data.lengths)
        value = (last[torch.arange(len(data)), data.correct] - last[torch.arange(len(data)), data.incorrect]).mean()
        assert abs(float(task.full - value) - float(batched[w, r])) < 1e-5


@pytest.mark.parametrize("ablation", ["mean", "position-mean", "zero", "resample", "counterfactual"])
def test_ablations_prepare(ablation):
    task = prepare(model_for("learned-parallel"), fake_task(), ablation)
    assert torch.isfinite(torch.tensor([task.full, task.empty])).all()


def test_position_mean_aligns_on_the_last_position():
    acts = torch.arange(12.0).view(3, 4, 1)
    lengths = torch.tensor([4, 2, 3])
    pm = position_mean(acts, lengths)[..., 0]
    assert pm[0, 3] == pm[1, 1] == pm[2, 2] == (3 + 5 + 10) / 3  # the last positions
    assert pm[0, 0] == 0 and pm[1, 2] == 0  # only prompt 0 reaches 3 back; padding
    rs = resample_aligned(acts, lengths, lengths, torch.Generator().manual_seed(0))[..., 0]
    assert rs[1, 1] in (3.0, 5.0, 10.0)


def test_eap_and_ig_against_exact_edge_patching():
    """Correlations with exact patching; per-edge IG converges to exact; IG over all masks is complete;
    a writer's EAP node score (gradient at its output) is the sum of its out-edge scores."""
    model, data = model_for("gqa-rotary"), fake_task()
    task = prepare(model, data, "counterfactual")
    v = task.graph.valid
    exact = patching.exact_edge(task).edges[v]
    eap = attribution.eap(task).edges
    ig = attribution.eap_ig(task, 8, "inputs").edges
    c_eap, c_ig = corr(eap[v], exact), corr(ig[v], exact)
    assert c_eap > 0.85 and c_ig >= c_eap - 0.01, (c_eap, c_ig)
    errs = [float((attribution.edge_ig(task, torch.nonzero(v), s) - exact).abs().max()) for s in (1, 4, 16)]
    assert errs[0] > errs[1] > errs[2] and errs[2] < 1e-3, errs
    gaps = [abs(float(attribution.eap_ig(task, s, "activations").edges.sum()) - (task.full - task.empty))
            for s in (1, 16)]
    assert gaps[1] < gaps[0] and gaps[1] < 0.02 * abs(task.full - task.empty) + 1e-3, gaps
    # node sums: grad of the metric at hook_mlp_out[0] . (clean - baseline) == sum of MLP0's out-edges
    act = {}

    def keep(x, h):
        x.retain_grad()
        act["x"] = x

    with torch.enable_grad(), model.hooks([("blocks.0.hook_mlp_out", keep)]):
        out = last_logits(model(data.tokens), data.lengths)
        rows = torch.arange(len(data))
        (out[rows, data.correct] - out[rows, data.incorrect]).mean().backward()
    w = task.graph.mlp_writer(0)
    node = float((act["x"].grad * (task.clean[:, :, w] - task.base[:, :, w])).sum())
    assert abs(node - float(eap[w].sum())) < 1e-5 * max(1.0, abs(node))
