"""Sparse feature circuits (Marks et al. 2025) on a tiny random float64 model with tiny random
dictionaries: exact splicing, attribution patching and integrated gradients against exact patching,
edges against the measured intervention, faithfulness, agreement tasks and the CLI."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from conftest import tiny_model, tokens
from sparsecircuits.dictionaries import DictConfig, make_dictionary, save_dictionary
from sparsecircuits.feature_circuits.circuit import LOGITS, edge_effects
from sparsecircuits.feature_circuits.dictionary_graph import (
    NodeValues,
    attribution_effects,
    exact_effects,
    gradient_splice,
    ig_effects,
    make_sites,
    mean_values,
    neuron_sites,
    node_values,
    set_nodes,
    site_hooks,
)
from sparsecircuits.feature_circuits.evaluation import evaluate_circuit, faithfulness_curve, ranked_nodes
from sparsecircuits.graph import Circuit

# (input hook, output hook or "" for an SAE): attention SAE, transcoder, residual SAEs, MLP-out SAE
PLACES = [("blocks.0.hook_attn_out", ""), ("blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out"),
          ("blocks.0.hook_resid_post", ""), ("blocks.1.hook_mlp_out", ""), ("blocks.1.hook_resid_post", "")]


def _dicts(d_model: int = 32, width: int = 16, dtype=torch.float64, seed: int = 0) -> list:
    torch.manual_seed(seed)
    out = []
    for hook, out_hook in PLACES:
        d = make_dictionary(DictConfig(arch="relu", hook=hook, out_hook=out_hook, d_in=d_model, width=width))
        with torch.no_grad():
            d.b_enc.add_(0.1)  # most features fire, so most nodes have an effect
        out.append(d.to(dtype))
    return out


@pytest.fixture(scope="module")
def setup():
    model = tiny_model(act_sparsity=1.0, init_std=0.3).double()
    sites = make_sites(model, _dicts())
    tok, cf = tokens(3, 6), tokens(3, 6, seed=7)

    def metric(logits):
        return logits[:, -1, 3] - logits[:, -1, 5]

    clean, cfv = node_values(model, sites, tok), node_values(model, sites, cf)
    return model, sites, tok, metric, clean, cfv


def _towards(clean: NodeValues, target: NodeValues, eps: float) -> NodeValues:
    return NodeValues({k: v + eps * (target.feats[k] - v) for k, v in clean.feats.items()},
                      {k: v + eps * (target.errors[k] - v) for k, v in clean.errors.items()})


def _flat(effects) -> torch.Tensor:
    return torch.cat([v.flatten() for v in effects.feats.values()] + [v.flatten() for v in effects.errors.values()])


def test_splicing_is_exact_for_logits_and_input_gradients(setup):
    model, _, tok, metric, _, _ = setup
    sites = make_sites(model, _dicts(), embed=False)
    clean = node_values(model, sites, tok)

    def run(hooks):
        z = torch.zeros(*tok.shape, 32, dtype=torch.float64, requires_grad=True)
        with model.hooks([("hook_embed", lambda x, hook: x + z)] + hooks):
            logits = model(tok)
        (grad,) = torch.autograd.grad(metric(logits).sum(), z)
        return logits.detach(), grad

    ref_logits, ref_grad = run([])
    sp_logits, sp_grad = run(site_hooks(sites, gradient_splice(clean, {})))
    set_logits, _ = run(site_hooks(sites, set_nodes(lambda s, f, e: (f, e))))
    assert torch.equal(sp_logits, ref_logits) and torch.equal(set_logits, ref_logits)
    torch.testing.assert_close(sp_grad, ref_grad, rtol=1e-12, atol=1e-12)
    # the reconstruction plus the error term is the activation (x̂(f) + ε = x)
    from sparsecircuits.feature_circuits.dictionary_graph import reconstruct
    _, cache = model.run_with_cache(tok)
    for s in sites:
        x = cache[s.in_hook]
        torch.testing.assert_close(reconstruct(s, clean.feats[s.name], x) + clean.errors[s.name], cache[s.name])


def test_attribution_matches_exact_patching_in_the_linear_regime(setup):
    model, sites, tok, metric, clean, cfv = setup
    patch = _towards(clean, cfv, 1e-5)  # tiny patch deltas: first-order terms dominate
    exact = _flat(exact_effects(model, sites, tok, metric, clean, patch))
    attrib = _flat(attribution_effects(model, sites, tok, metric, clean, patch))
    scale = exact.abs().max()
    assert scale > 0
    assert float((exact - attrib).abs().max() / scale) < 1e-3  # measured ~1e-5
    assert float(torch.corrcoef(torch.stack([exact, attrib]))[0, 1]) > 0.99999
    ig1 = _flat(ig_effects(model, sites, tok, metric, clean, patch, steps=1))  # alpha = 0 only: attribution
    torch.testing.assert_close(ig1, attrib, rtol=1e-9, atol=1e-15)


def test_integrated_gradients_converge_to_exact_patching(setup):
    model, sites, tok, metric, clean, cfv = setup
    attrib = attribution_effects(model, sites, tok, metric, clean, cfv)
    errors = {n: [] for n in (1, 4, 16, 64)}
    scales = []
    for s in sites[1:4]:  # one node per site, the one attribution ranks highest; only that node changes
        f = attrib.feats[s.name].abs().sum(0)
        p, i = divmod(int(f.argmax()), f.shape[1])
        one = NodeValues({s.name: clean.feats[s.name].clone()}, {s.name: clean.errors[s.name].clone()})
        one.feats[s.name][:, p, i] = cfv.feats[s.name][:, p, i]
        ex = exact_effects(model, [s], tok, metric, clean, one).feats[s.name][:, p, i]
        scales.append(float(ex.abs().max()))
        for n in errors:
            ig = ig_effects(model, [s], tok, metric, clean, one, steps=n).feats[s.name][:, p, i]
            errors[n].append(float((ig - ex).abs().max()))
    err = {n: max(v) for n, v in errors.items()}
    assert err[64] < err[16] < err[4] < err[1] * 1.01  # measured ~1/N decay
    assert err[64] < 0.05 * max(scales)
    # completeness of IG along one site's path: the site's scores add up to patching the whole site
    s = sites[2]
    full = ig_effects(model, [s], tok, metric, clean, cfv, steps=64)
    total = full.feats[s.name].sum((1, 2)) + full.errors[s.name].sum(1)
    with torch.no_grad(), model.hooks(site_hooks([s], set_nodes(lambda _, f, e: (cfv.feats[s.name], cfv.errors[s.name])))):
        patched = metric(model(tok))
    torch.testing.assert_close(total, full.metric - patched, rtol=0.05, atol=0.05 * float((full.metric - patched).abs().max()))


def _measured_edge(model, sites, tok, metric, clean, grads, u, d, delta):
    """−mean_b ∇_d m · (d(u patched by delta) − d), all sites but u's and d's frozen at clean values."""
    seen = {}

    def rule(site, f, e):
        if site.name == u[0]:
            f, e = f.clone(), e.clone()
            if u[2] >= 0:
                f[:, u[1], u[2]] += delta
            else:
                e[:, u[1]] += delta
            return f, e
        if d != LOGITS and site.name == d[0]:
            seen["f"], seen["e"] = f, e
            return f, e
        return clean.feats[site.name], clean.errors[site.name]

    with torch.no_grad(), model.hooks(site_hooks(sites, set_nodes(rule))):
        m = metric(model(tok))
    if d == LOGITS:
        return -float((m - metric(model(tok).detach())).mean())
    if d[2] >= 0:
        change = grads.feats[d[0]][:, d[1], d[2]] * (seen["f"][:, d[1], d[2]] - clean.feats[d[0]][:, d[1], d[2]])
    else:
        change = (grads.errors[d[0]][:, d[1]] * (seen["e"][:, d[1]] - clean.errors[d[0]][:, d[1]])).sum(-1)
    return -float(change.mean())


def test_edges_match_the_measured_intervention(setup):
    model, sites, tok, metric, clean, cfv = setup
    grads = attribution_effects(model, sites, tok, metric, clean, cfv).grads
    names = [s.name for s in sites]
    active = lambda name, p: int(clean.feats[name][:, p].sum(0).argmax())  # noqa: E731
    # (upstream, downstream): direct paths (attention crosses positions; MLPs and the residual do not),
    # error nodes, the metric, and a pair whose only paths pass through another site
    pairs = [
        (("blocks.0.hook_attn_out", 4, active("blocks.0.hook_attn_out", 4)), ("blocks.0.hook_mlp_out", 4, active("blocks.0.hook_mlp_out", 4))),
        (("blocks.0.hook_attn_out", 3, active("blocks.0.hook_attn_out", 3)), ("blocks.0.hook_resid_post", 3, -1)),
        (("hook_embed", 0, -1), ("blocks.0.hook_attn_out", 5, active("blocks.0.hook_attn_out", 5))),
        (("blocks.0.hook_resid_post", 2, -1), ("blocks.1.hook_mlp_out", 5, active("blocks.1.hook_mlp_out", 5))),
        (("blocks.1.hook_resid_post", 5, active("blocks.1.hook_resid_post", 5)), LOGITS),
        (("blocks.0.hook_attn_out", 3, active("blocks.0.hook_attn_out", 3)), ("blocks.1.hook_resid_post", 5, active("blocks.1.hook_resid_post", 5))),
    ]
    torch.manual_seed(3)
    for u, d in pairs:
        assert u[0] in names
        eps = 1e-6
        delta = eps if u[2] >= 0 else eps * torch.randn(clean.errors[u[0]].shape[-1], dtype=torch.float64)
        patch = NodeValues({k: v.clone() for k, v in clean.feats.items()}, {k: v.clone() for k, v in clean.errors.items()})
        if u[2] >= 0:
            patch.feats[u[0]][:, u[1], u[2]] += delta
        else:
            patch.errors[u[0]][:, u[1]] += delta
        e = edge_effects(model, sites, tok, metric, clean, patch, grads, [d], [u], per_position=True)
        got = float(e.weight[0]) if len(e.src) else 0.0
        want = _measured_edge(model, sites, tok, metric, clean, grads, u, d, delta)
        if d[0] == "blocks.1.hook_resid_post":  # every path from attn_out L0 passes resid_post L0: no edge
            assert got == 0.0 and abs(want) < 1e-15
        else:
            assert abs(want) > 1e-12, (u, d)
            assert abs(got - want) <= 1e-3 * abs(want), (u, d, got, want)


@pytest.mark.parametrize("kind", ["features", "neurons"])
def test_faithfulness_of_full_and_empty_circuits(setup, kind):
    model, sites, tok, metric, clean, cfv = setup
    if kind == "neurons":
        sites = neuron_sites(model, embed=True)
        clean = node_values(model, sites, tok)
    means = mean_values(clean)
    from sparsecircuits.feature_circuits.circuit import aggregate
    scores = aggregate(attribution_effects(model, sites, tok, metric, clean, node_values(model, sites, tokens(3, 6, seed=7))),
                       per_position=True)
    for untouched in (0, 1):
        every = ranked_nodes(scores, sites, untouched)
        full = evaluate_circuit(model, sites, tok, metric, every, means, True, untouched)
        empty = evaluate_circuit(model, sites, tok, metric, [], means, True, untouched)
        assert abs(full.faithfulness - 1) < 1e-12 and abs(full.completeness) < 1e-12
        assert abs(empty.faithfulness) < 1e-12 and abs(empty.completeness - 1) < 1e-12
        assert full.circuit == full.full and abs(full.full - empty.empty) > 1e-6
    every = ranked_nodes(scores, sites)
    curve = faithfulness_curve(model, sites, tok, metric, scores, means, [0, 5, len(every)], 0)
    assert abs(curve.faithfulness[0]) < 1e-12 and abs(curve.faithfulness[-1] - 1) < 1e-12
    # completeness sanity: a circuit and its complement; removing C from M is M∖C, so complement + circuit cover M
    half = every[: len(every) // 2]
    ev = evaluate_circuit(model, sites, tok, metric, half, means, True)
    rest = evaluate_circuit(model, sites, tok, metric, every[len(every) // 2:], means, True)
    assert abs(ev.completeness - rest.faithfulness) < 1e-12


def test_agreement_generators():
    from sparsecircuits.tasks.agreement import AUX, PEOPLE, RC_VERBS, VARIANTS
    from sparsecircuits.tasks.base import get_task

    nouns = {pair for pair in PEOPLE}
    verbs = set(AUX) | set(RC_VERBS)
    for name in VARIANTS:
        spec = get_task(name)
        assert spec.domain == "language"
        ex = spec.examples(200, seed=0)
        assert len(set(ex)) == 200 and ex == spec.examples(200, seed=0) and ex != spec.examples(200, seed=1)
        for e in ex[:50]:
            a, b = e.prompt.split(), e.counterfactual.split()
            diff = [(x, y) for x, y in zip(a, b) if x != y]
            assert len(a) == len(b) and len(diff) == 1
            assert diff[0] in nouns or diff[0][::-1] in nouns
            pair = (e.correct.strip(), e.incorrect.strip())
            assert pair in verbs or pair[::-1] in verbs
            singular = diff[0] in nouns  # the prompt's governing noun is singular
            assert pair in verbs if singular else pair[::-1] in verbs
    ex = get_task("agreement_across_pp").generate_one(random.Random(0))
    assert " near " in ex.prompt or " the " in ex.prompt


TOKENIZER = Path(__file__).resolve().parents[2] / "sparsecircuits" / "assets" / "quickstart" / "dense" / "tokenizer.json"


def test_feature_circuit_cli(tmp_path, capsys):
    from tokenizers import Tokenizer

    from sparsecircuits.cli import main
    from sparsecircuits.model.checkpoint import save_checkpoint
    from sparsecircuits.viz.data import page_data

    vocab = Tokenizer.from_file(str(TOKENIZER)).get_vocab_size()
    model = tiny_model(act_sparsity=1.0, d_vocab=vocab, n_ctx=64, init_std=0.2)
    ck = save_checkpoint(tmp_path / "model", model, meta={"step": 0}, tokenizer_json=TOKENIZER.read_text())
    for j, d in enumerate(_dicts(dtype=torch.float32)):
        save_dictionary(d, tmp_path / "dicts" / f"d{j}")
    out = tmp_path / "fc.json"
    args = ["feature-circuit", "--model", str(ck), "--dicts", str(tmp_path / "dicts"), "--task", "bracket_type",
            "--n-examples", "6", "--node-threshold", "0.001", "--edge-threshold", "0.0001"]
    assert main([*args, "--method", "ig", "--ig-steps", "2", "--compare-neurons", "--curve-sizes", "1", "10",
                 "--out", str(out)]) == 0
    c = Circuit.load(out)
    assert c.metadata["method"] == "ig" and c.metadata["n_nodes"] > 0 and c.edges
    assert {n.kind for n in c.nodes} >= {"feature", "error"} and 0 <= c.metadata["faithfulness_curve"]["sizes"][0]
    assert len(page_data(c)["nodes"]) == len(c.nodes)
    text = capsys.readouterr().out
    assert "faithfulness" in text and "completeness" in text
    # bad input: a dictionary on a hook the model lacks, a width mismatch, an unknown task
    bad = make_dictionary(DictConfig(arch="relu", hook="blocks.7.hook_resid_post", d_in=32, width=8))
    save_dictionary(bad, tmp_path / "bad_hook")
    assert main([*args, "--dicts", str(tmp_path / "bad_hook"), "--out", str(out)]) == 2
    assert "blocks.7.hook_resid_post" in capsys.readouterr().out
    wide = make_dictionary(DictConfig(arch="relu", hook="blocks.0.hook_resid_post", d_in=16, width=8))
    save_dictionary(wide, tmp_path / "bad_width")
    assert main([*args, "--dicts", str(tmp_path / "bad_width"), "--out", str(out)]) == 2
    assert "d_in=16" in capsys.readouterr().out
    assert main(["feature-circuit", "--model", str(ck), "--dicts", str(tmp_path / "dicts"), "--task", "nope",
                 "--out", str(out)]) == 2
    assert "unknown task" in capsys.readouterr().out
