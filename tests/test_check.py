"""`sparsecircuits check` against ground truth: the sampling and statistics (`sparsecircuits/check.py`),
component circuits on the planted model (`planted.py`) with exact, EAP and corrupted scores, EAP's
blind spot on saturated attention, a feature circuit, a pruned circuit of the shipped sparse model,
the JSON round trip and the CLI end to end."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from planted import DIRS, GROUND_TRUTH, planted_data, planted_model

from conftest import tiny_model, tokens
from sparsecircuits.check import (
    CheckResult,
    circuit_kind,
    default_items,
    edge_id,
    items_of,
    pearson,
    run_check,
    sign_agreement,
    spearman,
    store_check,
    stored_check,
    stratified_sample,
)
from sparsecircuits.component_circuits import eap, patching
from sparsecircuits.component_circuits.check import check_component_circuit
from sparsecircuits.component_circuits.prepare import prepare, to_circuit
from sparsecircuits.graph import Circuit, Edge, Node

GT = {edge_id(a, b) for a, b in GROUND_TRUTH}
K_EDGE = edge_id("hook_embed[0]", "blocks.0.hook_k_input[0]")  # into the mover head's keys
Q_EDGE = edge_id("blocks.0.hook_mlp_out[0]", "blocks.1.hook_q_input[0]")  # into the answer head's queries
Q_FEED = edge_id("hook_embed[0]", "blocks.0.hook_mlp_out[0]")  # MLP0 matters only through that query
# the planted edges that act through a nonlinearity (attention softmax, RMS norms, ReLU): EAP's errors
NONLINEAR = {K_EDGE, Q_EDGE, Q_FEED, edge_id("hook_embed[0]", "blocks.0.hook_v_input[0]")}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: one torch thread is as fast, and on a loaded machine (tests run beside other
    jobs) a second thread waiting for a core makes every small op slow."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- sampling and statistics ----------------------------------------------------------------------------

def test_stratified_sample_covers_every_quantile_and_is_deterministic():
    scores = {f"n{i}": float(i - 30) for i in range(100)}  # 30 negative, 70 non-negative
    s = stratified_sample(scores, 16, seed=3, strata=8)
    assert s.n_items == 100 and s.n_strata == 8 and len(set(s.ids)) == 16
    assert sorted(s.strata) == [b for b in range(8) for _ in range(2)]  # two from every stratum
    for i, b in zip(s.ids, s.strata):  # each item lies in its stratum's score range
        rank = sorted(scores, key=scores.get).index(i)
        assert rank * 8 // 100 == b
    assert any(v < 0 for v in s.scores) and max(s.scores) > 50
    assert stratified_sample(scores, 16, seed=3, strata=8).ids == s.ids
    assert stratified_sample(scores, 16, seed=4, strata=8).ids != s.ids
    assert stratified_sample(scores, 3, seed=0, strata=8).strata == [0, 7, 1]  # extremes first
    everything = stratified_sample(scores, 500, seed=0, strata=8)
    assert sorted(everything.ids) == sorted(scores)
    small = stratified_sample({"a": 1.0, "b": -1.0}, 8, strata=8)
    assert small.n_strata == 2 and sorted(small.ids) == ["a", "b"]
    with pytest.raises(ValueError, match="n and strata"):
        stratified_sample(scores, 0)


def test_correlations_and_sign_agreement():
    x = [1.0, 2.0, 3.0, 4.0]
    assert pearson(x, [2 * v + 1 for v in x]) == pytest.approx(1.0)
    assert pearson(x, [-v for v in x]) == pytest.approx(-1.0)
    assert spearman(x, [1.0, 4.0, 9.0, 100.0]) == pytest.approx(1.0)  # monotone, not linear
    assert spearman([1.0, 1.0, 2.0], [1.0, 2.0, 3.0]) == pytest.approx(0.8660254)  # ties take average ranks
    assert pearson([1.0], [2.0]) is None and pearson(x, [1.0] * 4) is None
    # items that neither score nor matter are left out; a near-zero score of an item that matters disagrees
    assert sign_agreement([1.0, -2.0, 0.001, 0.0], [0.5, -1.0, 3.0, 0.0]) == (2 / 3, 3)
    assert sign_agreement([0.0], [0.0]) == (None, 0)


def test_a_check_of_perfect_and_of_corrupted_scores():
    effects = {f"e{i}": (i - 10) / 3 for i in range(40)}
    perfect = run_check(dict(effects), lambda ids: [effects[i] for i in ids], "edges", n=16)
    assert perfect.pearson == pytest.approx(1.0) and perfect.sign_agreement == 1.0
    negated = run_check({k: -v for k, v in effects.items()}, lambda ids: [effects[i] for i in ids], "edges", n=16)
    assert negated.pearson == pytest.approx(-1.0) and negated.sign_agreement == 0.0
    assert negated.worst[0]["error"] == pytest.approx(2 * max(abs(v) for v in negated.effects))


# --- component circuits on the planted model ------------------------------------------------------------

@pytest.fixture(scope="module")
def planted():
    model, data = planted_model(), planted_data()
    task = prepare(model, data, "mean")
    every = task.graph.n_edges  # a score file: every edge of the graph, negative scores included
    return model, data, {"exact": to_circuit(task, patching.exact_edge(task), "exact", every),
                         "exact-node": to_circuit(task, patching.exact_node(task), "exact-node"),
                         "eap": to_circuit(task, eap.eap(task), "eap", every)}


def _with_scores(circuit: Circuit, new: dict[str, float]) -> Circuit:
    edges = [Edge(e.src, e.dst, new.get(edge_id(e.src, e.dst), e.weight), e.kind) for e in circuit.edges]
    return Circuit(circuit.nodes, edges, dict(circuit.scores), dict(circuit.metadata))


def test_exact_patching_scores_check_perfectly(planted):
    model, data, circuits = planted
    edges = check_component_circuit(model, data, circuits["exact"], "edges", n=64)
    assert edges.n_sampled == edges.n_items == len(items_of(circuits["exact"], "edges"))  # all of them
    assert edges.pearson == pytest.approx(1.0, abs=1e-6) and edges.spearman == pytest.approx(1.0, abs=1e-6)
    assert edges.sign_agreement == 1.0 and edges.worst[0]["error"] < 1e-4
    assert edges.sign_n == len(GROUND_TRUTH)  # every other edge is ~0 in both
    assert default_items(circuits["exact-node"]) == "nodes"  # its node check is exact_node's intervention
    nodes = check_component_circuit(model, data, circuits["exact-node"], "nodes", n=64)
    assert nodes.pearson == pytest.approx(1.0, abs=1e-6) and nodes.sign_agreement == 1.0


def test_corrupted_score_files_check_badly(planted):
    model, data, circuits = planted
    scores = items_of(circuits["exact"], "edges")
    negated = check_component_circuit(model, data, _with_scores(circuits["exact"], {k: -v for k, v in scores.items()}),
                                      "edges", n=64)
    assert negated.pearson == pytest.approx(-1.0, abs=1e-6) and negated.sign_agreement == 0.0
    values = list(scores.values())
    random.Random(0).shuffle(values)
    shuffled = check_component_circuit(model, data, _with_scores(circuits["exact"], dict(zip(scores, values))),
                                       "edges", n=64)
    assert abs(shuffled.pearson) < 0.5 and shuffled.sign_agreement < 0.5


def test_eap_on_the_planted_circuit(planted):
    """EAP ranks the planted edges right but underestimates those that pass through a nonlinearity
    (by 30-50% here): they are the worst cases, the q and k edges among them."""
    model, data, circuits = planted
    r = check_component_circuit(model, data, circuits["eap"], "edges", n=64)
    assert r.pearson > 0.95 and r.spearman > 0.85 and r.sign_agreement == 1.0
    assert {w["id"] for w in r.worst[:4]} == NONLINEAR
    for w in r.worst[:4]:
        assert 0.3 * w["effect"] < w["score"] < 0.8 * w["effect"]


def test_eap_blind_spot_saturated_attention():
    """The documented blind spot: with the two planted heads' q/k weights sharpened (softmax
    saturated), the edges that act only through those attention patterns get EAP scores of ~0 while
    ablating them costs 1.6-2.8 logits under mean ablation; `check` lists them first and they are all
    its sign disagreements. The other edges still correlate."""
    model = planted_model()
    with torch.no_grad():
        model.blocks[0].attn.W_K[0, DIRS["key"]] = 8.0
        model.blocks[1].attn.W_Q[0, DIRS["isq"]] = 9.6
    data = planted_data()
    task = prepare(model, data, "mean")
    circuit = to_circuit(task, eap.eap(task), "eap", task.graph.n_edges)
    r = check_component_circuit(model, data, circuit, "edges", n=64)
    blind = {K_EDGE, Q_EDGE, Q_FEED}
    top = {w["id"]: w for w in r.worst[:4]}
    assert blind <= set(top)
    for i in blind:
        assert top[i]["effect"] > 1.0 and abs(top[i]["score"]) < 0.05 * top[i]["effect"]
    assert r.sign_agreement == pytest.approx(1 - 3 / r.sign_n)
    rest = [(s, e) for i, s, e in zip(r.ids, r.scores, r.effects) if i not in blind]
    assert pearson([s for s, _ in rest], [e for _, e in rest]) > 0.95


# --- stored results and circuit kinds -------------------------------------------------------------------

def test_the_check_round_trips_in_the_circuit_json_and_old_circuits_load(planted, tmp_path):
    model, data, circuits = planted
    circuit = circuits["exact"]
    path = tmp_path / "c.json"
    circuit.save(path)
    old = Circuit.load(path)
    assert "check" not in old.metadata and stored_check(old) is None
    store_check(old, check_component_circuit(model, data, old, "nodes", n=4))
    r = check_component_circuit(model, data, old, "edges", n=8, seed=5)
    store_check(old, r)  # replaces the older check
    old.save(path)
    raw = json.loads(path.read_text())
    json.dumps(raw, allow_nan=False)  # strict JSON: no NaN for a browser's JSON.parse to choke on
    d = raw["metadata"]["check"]
    assert d["items"] == "edges" and d["n_sampled"] == 8 and d["seed"] == 5 and len(d["points"]) == 8
    assert d["ablation"] == "mean" and d["task"] == "planted" and d["circuit_method"] == "exact"
    assert all(not isinstance(v, dict) for v in d.values())  # flat: scalars and two lists of rows
    back = stored_check(Circuit.load(path))
    assert isinstance(back, CheckResult) and back.to_dict() == r.to_dict()
    assert Circuit.from_dict({**raw, "metadata": {}}).to_dict()["edges"] == circuit.to_dict()["edges"]
    assert Circuit.load(path).to_dict()["edges"] == circuit.to_dict()["edges"]  # nothing else changed


def test_unsupported_circuits_are_refused_clearly():
    logit = Node("logits", 0, "logit", 2)
    graph = Circuit([logit], [], {}, {"method": "attribution-graph"})
    with pytest.raises(ValueError, match="attribution graphs"):
        circuit_kind(graph)
    with pytest.raises(ValueError, match="intersection"):
        circuit_kind(Circuit([logit], [], {}, {"method": "intersection"}))
    channel = Circuit([Node("blocks.0.mlp.hook_post", 3, "neuron", 0)], [], {"blocks.0.mlp.hook_post[3]": 0.5},
                      {"sites": [{"hook": "blocks.0.mlp.hook_post", "kind": "neuron", "layer": 0, "shape": [8]}]})
    assert circuit_kind(channel) == "channel" and default_items(channel) == "nodes"
    with pytest.raises(ValueError, match="check its nodes"):
        items_of(channel, "edges")
    with pytest.raises(ValueError, match="none of them"):
        circuit_kind(Circuit([Node("x", 0, "head", 0)], [], {}, {}))


# --- feature circuits and channel circuits --------------------------------------------------------------

def test_feature_circuit_exact_scores_check_perfectly():
    from feature_circuits.test_feature_circuits import _dicts

    from sparsecircuits.feature_circuits.check import check_feature_circuit
    from sparsecircuits.feature_circuits.circuit import find_feature_circuit, task_metric
    from sparsecircuits.feature_circuits.config import FeatureCircuitConfig
    from sparsecircuits.feature_circuits.dictionary_graph import make_sites
    from sparsecircuits.tasks.base import Example, TaskData

    model, dicts, n = tiny_model(act_sparsity=1.0, init_std=0.3), _dicts(dtype=torch.float32), 4
    tok, cf = tokens(n, 6), tokens(n, 6, seed=7)
    data = TaskData("t", [Example("p", "c", "i")] * n, tok, torch.full((n,), 6), torch.full((n,), 3),
                    torch.full((n,), 5), cf, ("c", "i"), 0)
    cfg = FeatureCircuitConfig(method="exact", aggregation="position", node_threshold=0.001, edges=False)
    found = find_feature_circuit(model, make_sites(model, dicts), tok, task_metric(data), cfg, cf, data.lengths)
    r = check_feature_circuit(model, data, found.circuit, dicts, n=32)
    assert r.n_sampled == 32 and r.pearson == pytest.approx(1.0, abs=1e-5) and r.sign_agreement == 1.0
    assert set(r.item_strata) == set(range(8))
    with pytest.raises(ValueError, match="do not splice the circuit's sites"):
        check_feature_circuit(model, data, found.circuit, dicts[:2], n=4)


def test_a_pruned_circuit_of_the_shipped_sparse_model_checks_positively():
    """bracket_type, solved by the shipped sparse model: a quick prune (node scores on 4 held-out
    examples) checked on 8 other held-out examples; means over the task's own tokens keep it fast."""
    from sparsecircuits.ablation import mean_activations
    from sparsecircuits.data.tokenizer import load_tokenizer
    from sparsecircuits.model.checkpoint import load_checkpoint
    from sparsecircuits.tasks.base import load_task
    from sparsecircuits.weight_sparse.check import check_channel_circuit
    from sparsecircuits.weight_sparse.prune import PruneConfig, prune_task, split_indices
    from sparsecircuits.weight_sparse.quickstart import ASSETS

    ck = load_checkpoint(ASSETS / "sparse")
    model = ck.model.eval()
    data = load_task("bracket_type", load_tokenizer(ck.tokenizer_path), model.cfg.n_ctx, 24)
    means = mean_activations(model, [data.tokens])
    cfg = PruneConfig(steps=20, batch_size=12, lr=0.1, k_coef=1e-3, effect_examples=4)
    circuit = prune_task(model, data, cfg, means).circuit
    assert circuit.metadata["reached_target"] and 0 < len(circuit.scores) <= 512
    assert circuit_kind(circuit) == "channel"
    _, held = split_indices(len(data), cfg.seed)
    r = check_channel_circuit(model, data.subset(held[cfg.effect_examples:]), circuit, means, n=32)
    assert r.n_sampled == 32 and r.context["n_examples"] == 8 and r.context["ablation"] == "mean"
    # effects on other examples: small scores flip sign between example sets, large ones agree
    assert r.pearson > 0.5 and r.spearman > 0.5 and r.sign_agreement > 0.5


# --- the CLI --------------------------------------------------------------------------------------------

def test_check_cli_end_to_end(tmp_path, capsys):
    from sparsecircuits.cli import main
    from sparsecircuits.model.checkpoint import save_checkpoint

    tokenizer = Path(__file__).resolve().parents[1] / "sparsecircuits" / "assets" / "quickstart" / "dense" / "tokenizer.json"
    from tokenizers import Tokenizer

    model = tiny_model(act_sparsity=1.0, d_vocab=Tokenizer.from_file(str(tokenizer)).get_vocab_size(), n_ctx=64,
                       init_std=0.1)
    ck = save_checkpoint(tmp_path / "model", model, meta={"step": 0}, tokenizer_json=tokenizer.read_text())
    out = tmp_path / "eap.json"
    task = ["--model", str(ck), "--task", "bracket_type", "--n-examples", "6"]
    assert main(["discover", *task, "--method", "eap", "--no-filter", "--no-curve", "--bootstrap", "0",
                 "--top-edges", "40", "--out", str(out)]) == 0
    before = out.read_text()
    capsys.readouterr()
    assert main(["check", str(out), *task, "--n", "12", "--no-filter", "--no-write"]) == 0
    text = capsys.readouterr().out
    assert "Pearson" in text and "worst cases" in text and "12 of 40 edges" in text
    assert out.read_text() == before  # --no-write
    assert main(["check", str(out), *task, "--n", "12", "--no-filter", "--items", "nodes"]) == 0
    stored = Circuit.load(out).metadata["check"]
    assert stored["items"] == "nodes" and stored["model"] == str(ck) and stored["n_sampled"] <= 12
    assert stored["pearson"] is not None
    assert main(["check", str(out), *task, "--n", "0"]) == 2  # bad input: one red line, exit code 2
    graph = tmp_path / "graph.json"
    Circuit([Node("logits", 0, "logit", 2)], [], {}, {"method": "attribution-graph"}).save(graph)
    capsys.readouterr()
    assert main(["check", str(graph), *task]) == 2
    assert "attribution graphs" in capsys.readouterr().out
