"""Transcoder attribution graphs checked against ground truth on tiny random float64 models: every
edge against the measured intervention in the frozen replacement model, the pre-activation identity,
exact logits, pruning fractions, the export schemas, and Dunefsky et al.'s weight-based analyses."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import tiny_model
from sparsecircuits.dictionaries import DictConfig, make_dictionary
from sparsecircuits.graph import Circuit
from sparsecircuits.transcoder_circuits import analysis as ta
from sparsecircuits.transcoder_circuits.attribution_graph import AttributionConfig, attribute
from sparsecircuits.transcoder_circuits.export import prune_graph, scores, to_circuit, to_neuronpedia
from sparsecircuits.transcoder_circuits.influence import influence, normalize_rows
from sparsecircuits.transcoder_circuits.replacement import freeze, replacement_forward

# Two model shapes that together exercise every linear path the backward pass transposes.
SHAPES = {
    "rms-gqa-sink-skip": dict(model=dict(n_kv_heads=2), skip=True, site="ln2.hook_normalized"),
    "layernorm-parallel-postnorm": dict(model=dict(norm="layer", positions="learned", bias_unembed=True,
                                                   parallel_attn_mlp=True, post_norms=True, attn_sink=False),
                                        skip=False, site="hook_mlp_in"),
}


def setup(shape: str | dict, seed: int = 0, width: int = 24, pos: int = 5):
    """A 3-layer float64 model, one random transcoder per layer and a prompt; `shape` names a SHAPES
    entry or is such a spec itself (model overrides, skip connection, transcoder input site)."""
    spec = SHAPES[shape] if isinstance(shape, str) else shape
    model = tiny_model(seed, **{"act_sparsity": 1.0, "n_layers": 3, **spec["model"]}).double().eval()
    g = torch.Generator().manual_seed(seed + 1)
    tcs = {}
    for layer in range(3):
        d = make_dictionary(DictConfig(arch="relu", hook=f"blocks.{layer}.{spec['site']}",
                                       out_hook=f"blocks.{layer}.hook_mlp_out", d_in=32, width=width,
                                       skip=spec["skip"])).double()
        with torch.no_grad():
            d.b_enc.copy_(0.3 * torch.randn(width, generator=g) - 0.2)
            d.b_dec.copy_(0.1 * torch.randn(32, generator=g))
            if d.W_skip is not None:
                d.W_skip.copy_(0.1 * torch.randn(32, 32, generator=g))
        tcs[layer] = d.eval()
    toks = torch.randint(0, 97, (pos,), generator=g)
    return model, tcs, toks


@pytest.fixture(scope="module", params=list(SHAPES))
def built(request):
    model, tcs, toks = setup(request.param)
    graph = attribute(model, tcs, toks, AttributionConfig(batch_size=7))  # several batches, mixed targets
    return model, tcs, toks, graph


def _target_reads(model, tcs, st, graph, **edits) -> torch.Tensor:
    """[batch, n_targets]: each target's value in the frozen replacement model under `edits`."""
    with torch.no_grad():
        out = replacement_forward(model, tcs, st, **edits)
        f = graph.features
        feat = torch.stack([out.pre_acts[int(layer)][:, int(p), int(i)] for layer, p, i in f], 1)
        from sparsecircuits.transcoder_circuits.attribution_graph import _logit_bias, logit_directions

        lg = out.final_normed[:, -1] @ logit_directions(model, graph.logit_tokens).T + _logit_bias(model, graph.logit_tokens)
    return torch.cat([feat, lg], 1)


def test_every_edge_is_the_measured_intervention(built):
    """Remove each source (feature activation, error, embedding) alone in the frozen replacement model;
    the change of every target's value is minus that edge. All edges, one batch row per source."""
    assert_edges_are_interventions(*built)


def assert_edges_are_interventions(model, tcs, toks, graph) -> None:
    """The check of `test_every_edge_is_the_measured_intervention` (shared with test_attribution_sparse)."""
    st = freeze(model, tcs, toks)
    T, L, nF = graph.n_pos, graph.n_layers, graph.n_features
    n_src = graph.logit_start
    acts = [a[None].repeat(n_src, 1, 1) for a in st.acts]
    errors = [e[None].repeat(n_src, 1, 1) for e in st.errors]
    embed = st.embed[None].repeat(n_src, 1, 1)
    for s in range(n_src):
        if s < nF:
            layer, p, i = (int(x) for x in graph.features[s])
            acts[layer][s, p, i] = 0.0
        elif s < graph.token_start:
            layer, p = divmod(s - nF, T)
            errors[layer][s, p] = 0.0
        else:
            embed[s, s - graph.token_start] = 0.0
    clean = _target_reads(model, tcs, st, graph)
    ablated = _target_reads(model, tcs, st, graph, acts=acts, errors=errors, embed=embed)
    measured = (clean - ablated).T  # [targets, sources]
    targets = torch.cat([torch.arange(nF), torch.arange(graph.logit_start, graph.n_nodes)])
    A = graph.adjacency[targets][:, :n_src]
    assert A.abs().max() > 0.1 and (A != 0).sum() > 50
    assert torch.allclose(A, measured, rtol=0, atol=1e-10), (A - measured).abs().max()
    assert graph.adjacency[:, graph.logit_start:].abs().max() == 0  # logits are never sources
    assert graph.adjacency[nF:graph.logit_start].abs().max() == 0  # errors and tokens are never targets
    assert L == 3


def assert_values_are_incoming_edges_plus_bias(graph) -> None:
    targets = torch.cat([torch.arange(graph.n_features), torch.arange(graph.logit_start, graph.n_nodes)])
    recon = graph.adjacency[targets].sum(1) + graph.bias[targets]
    assert torch.allclose(recon, graph.values[targets], rtol=0, atol=1e-10)
    err = graph.adjacency[targets, graph.error_start:graph.token_start].sum(1)
    assert err.abs().max() > 1e-3  # error contributions are real parts of the identity


def test_values_are_incoming_edges_plus_bias(built):
    """pre-activation (feature) / demeaned logit = Σ incoming edges (incl. errors) + bias contribution."""
    assert_values_are_incoming_edges_plus_bias(built[3])


def test_replacement_reproduces_logits(built):
    """Errors frozen, transcoders recomputed from their inputs: the model's logits exactly."""
    assert_replacement_reproduces_logits(*built[:3])


def assert_replacement_reproduces_logits(model, tcs, toks) -> None:
    st = freeze(model, tcs, toks)

    def splice(layer):
        site = f"blocks.{layer}.{st.sites[layer]}"
        store = {}
        return [(site, lambda x, hook: store.__setitem__("x", x)),
                (f"blocks.{layer}.hook_mlp_out",
                 lambda x, hook: tcs[layer].decode(tcs[layer].encode(store["x"]), store["x"]) + st.errors[layer])]

    with torch.no_grad(), model.hooks([h for layer in range(3) for h in splice(layer)]):
        logits = model(toks[None])[0]
    assert torch.allclose(logits, st.logits, rtol=0, atol=1e-12)
    with torch.no_grad():
        frozen = replacement_forward(model, tcs, st).logits[0]
    assert torch.allclose(frozen, st.logits, rtol=0, atol=1e-12)


def test_logit_targets(built):
    _, _, _, graph = built
    p = graph.logit_probs
    assert 1 <= p.numel() <= 10 and bool((p[:-1] >= p[1:]).all())
    assert p.numel() == 10 or float(p.sum()) >= 0.95 - 1e-9


def test_influence_and_pruning_fractions(built):
    _, _, _, graph = built
    from sparsecircuits.transcoder_circuits.export import logit_weights

    An, w = normalize_rows(graph.adjacency), logit_weights(graph)
    eye = torch.eye(graph.n_nodes, dtype=An.dtype)
    exact = w @ (torch.linalg.inv(eye - An) - eye)
    assert torch.allclose(influence(An, w), exact, atol=1e-10)
    for nt, et in ((0.8, 0.98), (0.5, 0.9)):
        pr = prune_graph(graph, nt, et)
        assert pr.node_fraction >= nt - 1e-9 and pr.edge_fraction >= et - 1e-9
        assert pr.node_mask[graph.token_start:].all()  # tokens and logits always kept
        assert not pr.edge_mask[~pr.node_mask].any() and not pr.edge_mask[:, ~pr.node_mask].any()
        if nt == 0.8:
            assert pr.node_mask[:graph.n_features].sum() < graph.n_features
    sc = scores(graph)
    assert 0 < sc.replacement < 1 and 0 < sc.completeness < 1


def test_exports(built, tmp_path):
    model, _, toks, graph = built
    pr = prune_graph(graph)
    sc = scores(graph)
    strs = [str(int(t)) for t in toks]
    js = to_neuronpedia(graph, pr, "p", strs, [str(int(t)) for t in graph.logit_tokens])
    json.dumps(js)
    assert set(js) == {"metadata", "qParams", "nodes", "links"}
    assert {"slug", "scan", "prompt_tokens", "prompt", "node_threshold"} <= set(js["metadata"])
    keys = {"node_id", "feature", "layer", "ctx_idx", "feature_type", "jsNodeId", "influence", "activation", "clerp",
            "token_prob", "is_target_logit"}
    assert all(keys <= set(n) for n in js["nodes"])
    ids = {n["node_id"] for n in js["nodes"]}
    assert len(ids) == len(js["nodes"]) and all(lk["source"] in ids and lk["target"] in ids for lk in js["links"])
    types = {n["feature_type"] for n in js["nodes"]}
    assert {"embedding", "logit", "cross layer transcoder"} <= types
    assert sum(n["is_target_logit"] for n in js["nodes"]) == 1
    c = to_circuit(graph, pr, sc, {"model": "tiny"})
    c.save(tmp_path / "c.json")
    c2 = Circuit.load(tmp_path / "c.json")
    assert len(c2.edges) == len(js["links"]) and c2.metadata["method"] == "attribution-graph"
    from sparsecircuits.viz.data import page_data

    page = page_data(c2)
    assert len(page["nodes"]) == len(c2.nodes) and page["edge_kinds"] == ["attribution"]


def test_circuit_tracer_schema_parity(built):
    """Our graph JSON validates against circuit-tracer's own frontend models, and node ids match theirs."""
    gm = pytest.importorskip("circuit_tracer.frontend.graph_models")
    _, _, toks, graph = built
    pr = prune_graph(graph)
    js = to_neuronpedia(graph, pr, "p", [str(int(t)) for t in toks], [str(int(t)) for t in graph.logit_tokens])
    model = gm.Model(**js)
    assert len(model.nodes) == len(js["nodes"])
    for n in js["nodes"]:
        pos = n["ctx_idx"]
        if n["feature_type"] == "cross layer transcoder":
            layer, f, _ = n["node_id"].split("_")
            ref = gm.Node.feature_node(int(layer), pos, int(f))
        elif n["feature_type"] == "mlp reconstruction error":
            ref = gm.Node.error_node(int(n["layer"]), pos)
            if ref.node_id != f"{n['layer']}_-1_{pos}":  # release 0.5.0: "0_{layer}_{pos}" (can alias a feature id)
                continue
        elif n["feature_type"] == "embedding":
            ref = gm.Node.token_node(pos, int(n["node_id"].split("_")[1]))
        else:
            ref = gm.Node.logit_node(pos, n["feature"], "t", graph.n_layers)
        assert (ref.node_id, ref.feature, ref.layer, ref.jsNodeId) == (n["node_id"], n["feature"], n["layer"], n["jsNodeId"])


def test_bad_inputs():
    model, tcs, toks = setup("rms-gqa-sink-skip")
    with pytest.raises(ValueError, match="non-empty"):
        attribute(model, tcs, toks[:0])
    with pytest.raises(ValueError, match="one transcoder per layer"):
        attribute(model, {0: tcs[0], 1: tcs[1]}, toks)
    bad = make_dictionary(DictConfig(arch="relu", hook="blocks.2.ln2.hook_normalized", out_hook="blocks.2.hook_mlp_out",
                                     d_in=16, d_out=16, width=8)).double()
    with pytest.raises(ValueError, match="d_model"):
        attribute(model, {**tcs, 2: bad}, toks)


# --- Dunefsky et al.'s analyses --------------------------------------------------------------------

def test_input_invariant_matches_direct_computation():
    """d_i · e_i′ (no norm: the dashboards' ranking); the analyses with norms, through heads and the
    de-embeddings are checked against interventions in test_connections.py."""
    _, tcs, _ = setup("rms-gqa-sink-skip")
    top = ta.input_invariant(tcs[0], tcs[2], feature=3, k=5)
    direct = torch.stack([tcs[0].W_dec[3] @ tcs[2].W_enc[:, j] for j in range(tcs[2].cfg.width)]).detach()
    assert torch.allclose(top.values, direct.topk(5).values) and torch.equal(top.indices, direct.topk(5).indices)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_greedy_paths_sum_to_root(shape):
    """Path search: every expanded node's children (features, heads x source positions, embedding,
    errors, bias, pruning error) sum exactly to the node's value, at every depth, from a feature root
    and from a logit-difference root."""
    assert_greedy_paths_sum_to_root(*setup(shape))


def assert_greedy_paths_sum_to_root(model, tcs, toks) -> None:
    st = freeze(model, tcs, toks)
    top2 = st.logits[-1].topk(2).indices.tolist()
    heads_expanded = 0
    for root in (ta.feature_root(model, st, tcs, layer=2, pos=4), ta.logit_root(model, st, *top2)):
        res = ta.greedy_paths(model, tcs, st, root, steps=3, branches=40)  # wide enough to expand heads
        assert res.paths and len(res.paths) <= 3 * 40  # the best `branches` paths kept at each step
        assert all(len(p.nodes) <= 4 for p in res.paths) and any(len(p.nodes) == 4 for p in res.paths)
        sums: dict[str, float] = {}
        for e in res.edges:
            sums[e.dst] = sums.get(e.dst, 0.0) + e.weight
        assert len(sums) > 3
        heads_expanded += sum(res.nodes[n].kind == "head" for n in sums)
        for nid, total in sums.items():
            assert abs(total - res.nodes[nid].value) < 1e-9, (nid, total, res.nodes[nid].value)
        c = res.to_circuit()
        assert any(n.kind == "error" for n in c.nodes)
    assert heads_expanded > 0


def test_cli_graph_paths_and_de_embed(tmp_path, capsys):
    from pathlib import Path

    from tokenizers import Tokenizer

    from sparsecircuits.cli import main
    from sparsecircuits.dictionaries import save_dictionary
    from sparsecircuits.model.checkpoint import save_checkpoint

    tok_path = Path(__file__).resolve().parents[2] / "sparsecircuits" / "assets" / "quickstart" / "dense" / "tokenizer.json"
    vocab = Tokenizer.from_file(str(tok_path)).get_vocab_size()
    model = tiny_model(act_sparsity=1.0, d_vocab=vocab, n_ctx=64, n_layers=2)
    ck = save_checkpoint(tmp_path / "model", model, meta={"step": 0}, tokenizer_json=tok_path.read_text())
    for layer in range(2):
        d = make_dictionary(DictConfig(arch="relu", hook=f"blocks.{layer}.ln2.hook_normalized",
                                       out_hook=f"blocks.{layer}.hook_mlp_out", d_in=32, width=16))
        save_dictionary(d, tmp_path / "tcs" / f"L{layer}")
    common = ["--model", str(ck), "--transcoders", str(tmp_path / "tcs"), "--prompt", "def f(x): return x"]
    assert main(["graph", *common, "--out", str(tmp_path / "g.json"), "--circuit", str(tmp_path / "c.json")]) == 0
    js = json.loads((tmp_path / "g.json").read_text())
    assert js["metadata"]["prompt"] == "def f(x): return x" and js["nodes"]
    assert Circuit.load(tmp_path / "c.json").metadata["method"] == "attribution-graph"
    assert main(["view", str(tmp_path / "c.json"), "-o", str(tmp_path / "c.html")]) == 0
    assert main(["transcoder-paths", *common, "--feature", "1", "-1", "-1", "--steps", "2", "--branches", "4",
                 "--out", str(tmp_path / "p.json")]) == 0
    assert main(["de-embed", "--model", str(ck), "--transcoders", str(tmp_path / "tcs"), "--layer", "0",
                 "--feature", "3", "--top", "5"]) == 0
    assert main(["graph", *common[:4], "--prompt", "  ", "--out", str(tmp_path / "x.json")]) == 2
    assert "empty" in capsys.readouterr().out
