"""The component graph on models whose heads write through a nonlinearity (AbsTopK on the attention
output, Gemma-2 post-norms, both), against plain-hook forwards written here, and EAP / EAP-IG
against exact edge patching at the level they reach on the dense variant of the same tiny model.

The references below never call the graph code: a head's share `S * (w / s) * C(z_h W_O[:, h])` is
computed here from `attn.hook_z`, `W_O`, `ln1_post.hook_scale` and `hook_attn_out_keep`
(`component_circuits/component_graph.py`, "Nonlinear writers")."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from test_component_graph import check_ones_mask, corr, fake_task

from conftest import tiny_model
from sparsecircuits.component_circuits import eap as attribution
from sparsecircuits.component_circuits import patching
from sparsecircuits.component_circuits.component_graph import (
    build_graph,
    node_mask,
    run_masked,
    writer_outputs,
)
from sparsecircuits.component_circuits.methods import METHODS, DiscoverConfig, discover
from sparsecircuits.component_circuits.prepare import ComponentTask, prepare
from sparsecircuits.tasks.base import TaskData, last_logits

VARIANTS = {
    "dense": dict(act_sparsity=1.0),  # the control
    "abstopk": dict(act_sparsity=0.5),  # AbsTopK at all eight sites, half the channels kept
    "post-norms": dict(act_sparsity=1.0, post_norms=True, attn_softcap=5.0, logit_softcap=10.0),  # Gemma 2
    "both": dict(act_sparsity=0.5, post_norms=True),
    "layernorm-both": dict(act_sparsity=0.5, post_norms=True, norm="layer"),  # centring and a norm bias
    "gqa-parallel-both": dict(act_sparsity=0.5, post_norms=True, n_kv_heads=2, positions="rotary", parallel_attn_mlp=True),
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tensors this small gain nothing from threads, and on a busy machine two threads made this
    module ten times slower (7 min against 37 s, their spin-waits competing for the cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def model_for(name: str):
    return tiny_model(init_std=0.1, **VARIANTS[name])


# --- the references: plain hooks, shares computed here ---------------------------------------------

def state_names(model) -> list[str]:
    cfg, names = model.cfg, ["hook_embed"]
    for L in range(cfg.n_layers):
        names.append(f"blocks.{L}.attn.hook_z")
        if cfg.post_norms:
            names.append(f"blocks.{L}.ln1_post.hook_scale")
        if cfg.sparse_at("attn_out"):
            names.append(f"blocks.{L}.hook_attn_out_keep")
        names += [f"blocks.{L}.hook_attn_out", f"blocks.{L}.hook_mlp_out"]
    return names


def shares(model, layer: int, acts: dict) -> list[torch.Tensor]:
    """Each head's part of `hook_attn_out`, head by head, from one run's activations `acts`."""
    cfg, block, p = model.cfg, model.blocks[layer], f"blocks.{layer}"
    dh, out = cfg.d_head, []
    for h in range(cfg.n_heads):
        o = acts[f"{p}.attn.hook_z"][:, :, h] @ block.attn.W_O[:, h * dh:(h + 1) * dh].T
        if cfg.post_norms:
            if cfg.norm == "layer":
                o = o - o.mean(-1, keepdim=True)
            o = o * block.ln1_post.w / acts[f"{p}.ln1_post.hook_scale"]
        if cfg.sparse_at("attn_out"):
            o = o * acts[f"{p}.hook_attn_out_keep"]
        out.append(o)
    return out


def bias_share(model, layer: int, acts: dict) -> torch.Tensor:
    """What `b_O` and the post-norm's bias add to `hook_attn_out` (not a writer)."""
    cfg, block, p = model.cfg, model.blocks[layer], f"blocks.{layer}"
    b = block.attn.b_O.expand_as(acts[f"{p}.hook_attn_out"])
    if cfg.post_norms:
        b = (b - b.mean(-1, keepdim=True) if cfg.norm == "layer" else b) * block.ln1_post.w / acts[f"{p}.ln1_post.hook_scale"]
        b = b + (block.ln1_post.b if block.ln1_post.b is not None else 0.0)
    return b * acts[f"{p}.hook_attn_out_keep"] if cfg.sparse_at("attn_out") else b


def writers(model, tokens) -> tuple[list[torch.Tensor], dict]:
    """Writer outputs in graph order (embedding, per layer heads then MLP) and the run's activations."""
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=state_names(model))
    acts = dict(cache.activations)
    outs = [acts["hook_embed"]]
    for L in range(model.cfg.n_layers):
        outs += shares(model, L, acts) + [acts[f"blocks.{L}.hook_mlp_out"]]
    return outs, acts


def logit_diff(logits, data: TaskData) -> float:
    last = last_logits(logits, data.lengths)
    rows = torch.arange(len(data))
    return float((last[rows, data.correct] - last[rows, data.incorrect]).mean())


def reader_hook(model, node) -> tuple[str, int | None]:
    """Where a reader reads: its hook and the head / KV-group index there (None: the whole input)."""
    if node.kind in ("q", "k", "v"):
        return f"blocks.{node.layer}.hook_{node.kind}_input", node.index
    if node.kind == "mlp":
        return f"blocks.{node.layer}.hook_mlp_in", None
    return f"blocks.{model.cfg.n_layers - 1}.hook_resid_post", None


def edge_effect_by_hand(model, data: TaskData, reader, delta: torch.Tensor, full: float) -> float:
    """metric(clean) - metric with `delta` (the writer's clean - baseline output) taken out of one
    reader's input only."""
    name, idx = reader_hook(model, reader)

    def fn(x, hook):
        x = x.clone()
        if idx is None:
            return x - delta
        x[:, :, idx] -= delta
        return x

    with torch.no_grad(), model.hooks([(name, fn)]):
        return full - logit_diff(model(data.tokens), data)


# --- shared per variant: the task and its exact edge effects -----------------------------------------

@dataclasses.dataclass
class Prepared:
    task: ComponentTask
    exact: torch.Tensor  # [W, R] exact edge effects (the graph code)


@pytest.fixture(scope="module")
def prepared():
    cache: dict[str, Prepared] = {}

    def get(name: str) -> Prepared:
        if name not in cache:
            task = prepare(model_for(name), fake_task(), "counterfactual")
            cache[name] = Prepared(task, patching.exact_edge(task).edges)
        return cache[name]

    return get


# --- the tests ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(VARIANTS))
def test_ones_mask_reproduces_the_clean_logits(name):
    check_ones_mask(model_for(name))


@pytest.mark.parametrize("name", list(VARIANTS))
def test_writers_are_the_heads_shares(name):
    """The graph's writer outputs are the shares computed by hand, and the shares plus the bias part
    add up to `hook_attn_out`: the decomposition is exact."""
    model, data = model_for(name), fake_task()
    by_hand, acts = writers(model, data.tokens)
    graph_outs = writer_outputs(model, data.tokens)
    assert torch.allclose(graph_outs, torch.stack(by_hand, 2), atol=1e-6)
    for L in range(model.cfg.n_layers):
        total = sum(shares(model, L, acts)) + bias_share(model, L, acts)
        assert torch.allclose(total, acts[f"blocks.{L}.hook_attn_out"], atol=1e-5), L


@pytest.mark.parametrize("name", list(VARIANTS))
def test_node_ablation_equals_patching_the_share_by_hand(name):
    """All edges out of a writer off == that writer's output replaced by its counterfactual one in a
    forward with plain hooks: a head's share in `hook_attn_out` is swapped for its counterfactual
    share, the live share being computed in that same forward from its own scale and selection."""
    model, data = model_for(name), fake_task()
    cfg, g = model.cfg, build_graph(model)
    base_graph = writer_outputs(model, data.cf_tokens)
    base, _ = writers(model, data.cf_tokens)
    for w, node in enumerate(g.writers):
        keep = torch.ones(len(g.writers), dtype=torch.bool)
        keep[w] = False
        if node.kind == "head":
            L, h, live = node.layer, node.index, {}

            def record(x, hook, live=live):
                live[hook.name] = x

            def swap(x, hook, L=L, h=h, live=live, w=w):
                return x - shares(model, L, live)[h] + base[w]

            p = f"blocks.{L}"
            hooks = [(n, record) for n in state_names(model) if n.startswith(f"{p}.") and n != f"{p}.hook_attn_out"]
            hooks.append((f"{p}.hook_attn_out", swap))
        else:  # the embedding or an MLP: its whole hook output is the writer
            hooks = [(node.site, lambda x, hook, w=w: base[w])]
        with torch.no_grad():
            masked = run_masked(model, g, data.tokens, node_mask(g, keep), base_graph)
            with model.hooks(hooks):
                direct = model(data.tokens)
        assert (masked - direct).abs().max() < 1e-4, (node.id, cfg.post_norms, cfg.act_sparsity)


@pytest.mark.parametrize("name", ["dense", "abstopk", "post-norms", "both"])  # LayerNorm's share: tests above
def test_every_exact_edge_effect_equals_patching_one_reader_by_hand(name, prepared):
    p = prepared(name)
    model, data, g = p.task.model, p.task.data, p.task.graph
    clean, _ = writers(model, data.tokens)
    base, _ = writers(model, data.cf_tokens)
    with torch.no_grad():
        full = logit_diff(model(data.tokens), data)
    assert abs(full - p.task.full) < 1e-5
    errs = [abs(edge_effect_by_hand(model, data, g.readers[r], clean[w] - base[w], full) - float(p.exact[w, r]))
            for w, r in torch.nonzero(g.valid).tolist()]
    assert max(errs) < 1e-4, max(errs)


def held_selection_exact(task: ComponentTask) -> torch.Tensor:
    """Exact edge effects with every AbsTopK selection held at the clean run's (each `*_keep` hook
    replaced by it, so AbsTopK is the linear map x -> S * x): the state gradients see."""
    model, data = task.model, task.data
    names = [n for n in model.hook_points if n.endswith("keep")]
    with torch.no_grad():
        _, cache = model.run_with_cache(data.tokens, names_filter=names)

    def hold(x, hook):
        s = cache[hook.name]
        if x.dim() == 4:  # ln1's selection on the per-head input copies
            s = s.unsqueeze(2).expand(-1, -1, x.shape[2], -1)
        return s.repeat(x.shape[0] // s.shape[0], *([1] * (s.dim() - 1)))

    with model.hooks([(n, hold) for n in names]):
        return patching.exact_edges(task)


MARGIN = 0.2  # correlation may fall this far below the dense variant's


@pytest.mark.parametrize("name", ["post-norms", "abstopk", "both"])
def test_eap_and_ig_correlate_with_exact_patching_as_on_the_dense_model(name, prepared):
    """EAP and EAP-IG (inputs, 8 steps) against exact edge patching, Pearson over the valid edges,
    within MARGIN of the dense variant's correlation. Gradients hold the nonlinear state constant:
    a post-norm's scale moves smoothly, so its scores are checked against live exact effects; an
    AbsTopK selection flips, and no gradient sees a flip, so with AbsTopK the exact effects are
    taken with the clean run's selections held (measured against live exact effects the correlation
    falls to about 0.3-0.4 here, dense 0.85-0.97: selection flips dominate a random model's edges)."""
    dense = prepared("dense")
    v = dense.task.graph.valid
    ref_eap = corr(attribution.eap(dense.task).edges[v], dense.exact[v])
    ref_ig = corr(attribution.eap_ig(dense.task, 8).edges[v], dense.exact[v])
    p = prepared(name)
    eap, ig = attribution.eap(p.task).edges[v], attribution.eap_ig(p.task, 8).edges[v]
    live = (corr(eap, p.exact[v]), corr(ig, p.exact[v]))
    exact = held_selection_exact(p.task)[v] if p.task.model.cfg.act_sparsity < 1 else p.exact[v]
    c_eap, c_ig = corr(eap, exact), corr(ig, exact)
    assert c_eap > ref_eap - MARGIN and c_ig > ref_ig - MARGIN, dict(dense=(ref_eap, ref_ig), nonlinear=(c_eap, c_ig),
                                                                     live=live)


# --- the shipped sparse model (AbsTopK at every site, attn_out included) -------------------------------

@pytest.fixture(scope="module")
def shipped():
    from sparsecircuits.data.tokenizer import load_tokenizer
    from sparsecircuits.evaluate import filter_solved
    from sparsecircuits.model.checkpoint import load_checkpoint
    from sparsecircuits.tasks.base import load_task
    from sparsecircuits.weight_sparse.quickstart import ASSETS

    ck = load_checkpoint(ASSETS / "sparse")
    assert ck.model.cfg.sparse_at("attn_out")
    data = load_task("bracket_type", load_tokenizer(ck.tokenizer_path), ck.model.cfg.n_ctx, 8)
    return ck.model, filter_solved(ck.model, data).subset(slice(0, 2))  # it solves bracket_type (92%)


def first_block(model):
    """The model cut after its first block (its own weights): a graph of 43 edges, so that the
    methods costing a forward per edge run in a second."""
    from sparsecircuits.model import Transformer

    cut = Transformer(dataclasses.replace(model.cfg, n_layers=1))
    cut.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("blocks.") or
                         k.startswith("blocks.0.")})
    return cut.eval()


def test_discover_runs_every_method_on_the_shipped_sparse_model(shipped):
    model, data = shipped
    component = [m.name for m in METHODS.values() if m.granularity == "component"]
    assert set(METHODS) - set(component) == {"prune"}  # channels, not this graph (`sparsecircuits prune`)
    cut = first_block(model)
    for method in component:  # on the first block: exact, ACDC, ... cost a forward per edge
        md = discover(cut, data, method, DiscoverConfig(ig_steps=2)).metadata
        assert md["n_graph_edges"] == 43 and md["n_edges"] > 0, method
        assert torch.isfinite(torch.tensor([md["full_metric"], md["empty_metric"], md["circuit_metric"]])).all()


def test_discover_compare_and_heads_commands_on_the_shipped_sparse_model(tmp_path, capsys):
    """The whole model (1,519 edges) from the command line: EAP-IG and EAP circuits on two tasks it
    solves, their cross-task faithfulness matrix, head roles."""
    from sparsecircuits.cli import main
    from sparsecircuits.graph import Circuit
    from sparsecircuits.weight_sparse.quickstart import ASSETS

    model, paths = str(ASSETS / "sparse"), []
    for task, method in (("bracket_type", "eap-ig"), ("block_colon", "eap")):
        paths.append(tmp_path / f"{task}.json")
        assert main(["discover", "--model", model, "--task", task, "--method", method, "--ig-steps", "2",
                     "--n-examples", "4", "--no-curve", "--bootstrap", "0", "--top-edges", "40",
                     "--out", str(paths[-1])]) == 0
        md = Circuit.load(paths[-1]).metadata
        assert md["n_graph_edges"] == 1519 and md["n_edges"] == 40 and md["full_metric"] > 0, md
    assert main(["compare-circuits", *map(str, paths), "--model", model, "--n-examples", "4"]) == 0
    assert main(["heads", "--model", model, "--task", "bracket_type", "--n-examples", "4"]) == 0
    out = capsys.readouterr().out
    assert "faithfulness of circuit (row) on task (column)" in out and "logit lens" in out
