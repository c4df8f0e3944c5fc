"""The unsupervised pipeline (Marks et al. 2025): k-means, the induction-repeat filter, context
collection, batched cluster circuits against one cluster at a time, and the escaped index page."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_model, tokens
from sparsecircuits.dictionaries import DictConfig, make_dictionary
from sparsecircuits.feature_circuits.circuit import FeatureCircuitConfig, find_feature_circuit
from sparsecircuits.feature_circuits.clusters import (
    ClusterConfig,
    Contexts,
    cluster_circuits,
    cluster_members,
    collect_contexts,
    context_features,
    induction_repeats,
    kmeans,
    next_token_metric,
)
from sparsecircuits.feature_circuits.dictionary_graph import make_sites
from sparsecircuits.viz.cluster_index import ClusterRow, render_cluster_index


def test_kmeans_separates_blobs():
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    truth = torch.arange(200) % 4
    x = centers[truth] + 0.5 * torch.randn(200, 2, generator=g)
    km = kmeans(x, 4, seed=1)
    for c in range(4):  # every true blob maps to exactly one cluster
        assert km.labels[truth == c].unique().numel() == 1
    assert km.labels.unique().numel() == 4
    found = km.centers[km.labels[:4]]
    assert torch.allclose(found, centers, atol=0.3)
    assert km.inertia < 200 * 2 * 0.5 ** 2 * 1.5


def test_kmeans_handles_duplicates_and_bad_k():
    x = torch.zeros(6, 3)
    km = kmeans(x, 3)
    assert km.labels.unique().numel() == 3  # emptied clusters restart on points
    with pytest.raises(ValueError, match="1 <= k <= n"):
        kmeans(x, 7)


def test_induction_repeats():
    t = torch.tensor([[5, 6, 7, 5, 6, 8, 6, 7]])
    # predicting position t+1 from t: bigrams (5,6) (6,7) (7,5) (5,6)* (6,8) (8,6) (6,7)*
    assert induction_repeats(t).tolist() == [[False, False, False, True, False, False, True]]


def _setup():
    model = tiny_model(act_sparsity=1.0, init_std=0.3).double()
    torch.manual_seed(0)
    dicts = []
    for hook in ("blocks.0.hook_resid_post", "blocks.1.hook_resid_post"):
        d = make_dictionary(DictConfig(arch="relu", hook=hook, d_in=32, width=16))
        with torch.no_grad():
            d.b_enc.add_(0.1)
        dicts.append(d.double())
    return model, make_sites(model, dicts)


def test_collect_contexts_filters_by_loss_and_repeats():
    model, _ = _setup()
    w = tokens(4, 20, seed=3)
    cfg = ClusterConfig(max_loss=1e9, context=6, max_contexts=10_000)
    ctx = collect_contexts(model, [w], cfg)
    rep = induction_repeats(w)
    assert len(ctx.target) == int((~rep[:, 5:]).sum())  # every non-repeat position with a full context
    for i in range(len(ctx.target)):
        b, t = int(ctx.window[i]), int(ctx.pos[i])
        assert torch.equal(ctx.tokens[i], w[b, t - 5:t + 1]) and int(ctx.target[i]) == int(w[b, t + 1])
    strict = collect_contexts(model, [w], ClusterConfig(max_loss=float(ctx.loss.median()), context=6))
    assert 0 < len(strict.target) < len(ctx.target) and bool((strict.loss < ctx.loss.median()).all())


def test_context_loss_is_measured_on_the_shortened_context():
    """A position kept for its full-window loss is dropped when the model, given only the `context`
    tokens, loses more than max_loss; the loss kept is the one of the context the circuits see."""
    model, _ = _setup()
    w = tokens(4, 20, seed=3)
    every = collect_contexts(model, [w], ClusterConfig(max_loss=1e9, context=3, max_contexts=10_000))
    with torch.no_grad():
        full = -model(w).log_softmax(-1)[every.window, every.pos].gather(-1, every.target[:, None]).squeeze(-1)
        alone = -model(every.tokens)[:, -1].log_softmax(-1).gather(-1, every.target[:, None]).squeeze(-1)
    torch.testing.assert_close(every.loss, alone.float())
    bound = float(full.median())
    kept = collect_contexts(model, [w], ClusterConfig(max_loss=bound, context=3, max_contexts=10_000))
    want = (full < bound) & (alone < bound)
    assert (full < bound).sum() > want.sum() > 0  # the shortened context drops some of the window's picks
    assert len(kept.target) == int(want.sum()) and bool((kept.loss < bound).all())


def test_batched_cluster_circuits_equal_one_cluster_at_a_time():
    model, sites = _setup()
    ctx_tokens = tokens(10, 6, seed=5)
    ctx = Contexts(ctx_tokens, tokens(10, 1, seed=6)[:, 0], torch.zeros(10), torch.arange(10), torch.full((10,), 5))
    members = {0: [0, 3, 4], 1: [1, 2], 2: [5, 6, 7, 8, 9]}
    cfg = FeatureCircuitConfig(ablation="zero", ig_steps=3, node_threshold=0.02, edge_threshold=0.001)
    batched = cluster_circuits(model, sites, ctx, members, cfg, batch=10)
    assert [c.cluster for c in batched] == [0, 1, 2]
    for cc in batched:
        idx = members[cc.cluster]
        ref = find_feature_circuit(model, sites, ctx_tokens[idx], next_token_metric(ctx.target[idx]), cfg)
        assert cc.kept == ref.kept and len(cc.kept) > 0
        assert cc.circuit.scores.keys() == ref.circuit.scores.keys()
        for k, v in ref.circuit.scores.items():
            assert abs(cc.circuit.scores[k] - v) < 1e-9
        got = {(e.src, e.dst): e.weight for e in cc.circuit.edges}
        want = {(e.src, e.dst): e.weight for e in ref.circuit.edges}
        assert got.keys() == want.keys() and all(abs(got[k] - want[k]) < 1e-9 for k in want)


def test_context_features_and_members():
    model, sites = _setup()
    x = context_features(model, sites, tokens(12, 6, seed=2), batch=5)
    assert x.shape == (12, 32) and torch.allclose(x.norm(dim=-1), torch.ones(12, dtype=x.dtype))
    km = kmeans(x, 3)
    members = cluster_members(x, km, per_cluster=2, min_size=1)
    assert all(len(m) <= 2 and all(int(km.labels[i]) == c for i in m) for c, m in members.items())


def test_index_page_escapes_hostile_strings():
    evil = "</script><script>alert(1)</script><img src=x onerror=alert(2)>"
    page = render_cluster_index(evil, [ClusterRow(0, 5, 3, 2, -0.1, "circuits/\"><b>x.json",
                                                  [(evil, "<b>"), ("&amp;", "\u2028")])], [evil])
    assert "<script>" not in page and "<img" not in page and '"><b>x.json' not in page
    assert "&lt;/script&gt;" in page and "&quot;&gt;&lt;b&gt;x.json" in page and "&amp;amp;" in page
    assert "http://" not in page and "https://" not in page and "default-src 'none'" in page


def test_cli_reports_missing_dictionaries(tmp_path, capsys):
    from pathlib import Path

    from sparsecircuits.cli import main

    qs = Path(__file__).resolve().parents[2] / "sparsecircuits" / "assets" / "quickstart" / "sparse"
    rc = main(["clusters", "--model", str(qs), "--dicts", str(tmp_path / "none"), "--out", str(tmp_path / "o")])
    assert rc == 2 and "does not exist" in " ".join(capsys.readouterr().out.split())


class _HostileDecode:
    """A tokenizer whose decoded text carries markup, to check that the index page escapes data."""

    EVIL = "</script><script>alert(1)</script><img src=x onerror=alert(2)>"

    def __init__(self, tok) -> None:  # noqa: ANN001
        self.tok = tok

    def decode(self, ids: list[int]) -> str:
        return self.EVIL + self.tok.decode(ids)


@pytest.mark.parametrize("corpus", [
    "email",  # the shipped model with its corpus record narrowed to one stdlib package: tokenizes in ~1 s
    pytest.param("stdlib", marks=pytest.mark.slow),  # as shipped: tokenizes the whole stdlib (~30 s on one core)
])
def test_cli_clusters_end_to_end(corpus, tmp_path, monkeypatch):
    """`clusters` on the shipped model with random dictionaries, every size flag turned down: rc 0,
    clusters.json, circuits/cluster-NNN.json (stale ones removed) and index.html agree with each other,
    numbers are finite, the token cache goes to --cache-dir, and decoded text is escaped on the page."""
    import json
    import math
    import shutil
    from pathlib import Path

    import sparsecircuits.cli.clusters as cli_clusters
    from sparsecircuits.cli import main
    from sparsecircuits.data.corpus import stdlib_dir
    from sparsecircuits.dictionaries import save_dictionary
    from sparsecircuits.graph import Circuit

    model = Path(__file__).resolve().parents[2] / "sparsecircuits" / "assets" / "quickstart" / "sparse"
    if corpus == "email":
        model = shutil.copytree(model, tmp_path / "model")
        meta = json.loads((model / "meta.json").read_text())
        meta["spec"]["data"].update(sources=[str(stdlib_dir() / "email")], val_percent=30.0)
        (model / "meta.json").write_text(json.dumps(meta))
    torch.manual_seed(0)
    hooks = ["blocks.0.hook_resid_post", "blocks.2.hook_resid_post"]
    for i, hook in enumerate(hooks):
        d = make_dictionary(DictConfig(arch="relu", hook=hook, d_in=128, width=16))
        with torch.no_grad():
            d.b_enc.add_(0.1)
        save_dictionary(d, tmp_path / "d" / str(i))
    monkeypatch.setenv("SPARSECIRCUITS_CACHE", str(tmp_path / "env-cache"))  # the flag must win over it
    write_outputs = cli_clusters.write_outputs
    monkeypatch.setattr(cli_clusters, "write_outputs", lambda out, tok, *a: write_outputs(out, _HostileDecode(tok), *a))
    out = tmp_path / "o"
    (out / "circuits").mkdir(parents=True)
    (out / "circuits" / "cluster-099.json").write_text("{}")  # from an earlier run
    args = ["clusters", "--model", str(model), "--dicts", str(tmp_path / "d"), "--out", str(out),
            "--cache-dir", str(tmp_path / "cache"), "--windows", "20", "--max-loss", "1.0", "--context", "8",
            "--max-contexts", "48", "--clusters", "3", "--kmeans-iters", "5", "--min-size", "2", "--per-cluster", "4",
            "--batch", "8", "--ig-steps", "2", "--contexts-shown", "2"]
    assert main(args) == 0

    assert any((tmp_path / "cache" / "tokens").glob("*.val.u16")) and not (tmp_path / "env-cache").exists()
    summary = json.loads((out / "clusters.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-finite {c}"))
    assert summary["sites"] == ["hook_embed", *hooks] and summary["circuit"]["ablation"] == "zero"
    assert summary["config"]["clusters"] == 3 and summary["circuit"]["ig_steps"] == 2
    n = summary["n_contexts"]
    assert 3 <= n <= 48 and all(math.isfinite(v) and v >= 0 for v in summary["seconds"].values())
    rows = summary["clusters"]
    files = sorted((out / "circuits").glob("*.json"))
    assert 1 <= len(rows) <= 3 and [f"circuits/{f.name}" for f in files] == sorted(r["circuit"] for r in rows)
    assert len({r["cluster"] for r in rows}) == len(rows) and sum(r["size"] for r in rows) <= n
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "from 20 held-out windows" in page  # --windows is exact, not rounded to a multiple of 16
    for r in rows:
        # every member's loss, on the context the circuit sees, is below --max-loss 1.0
        assert 0 <= r["cluster"] < 3 and r["size"] >= 2 and -1.0 < r["mean_log_p"] <= 0
        assert len(r["members"]) == min(r["size"], 4) and all(0 <= i < n for i in r["members"])
        c = Circuit.load(out / r["circuit"])
        assert c.metadata["cluster"] == r["cluster"] and c.metadata["n_examples"] == len(r["members"])
        assert r["n_nodes"] == len(c.scores) and r["n_edges"] == len(c.edges)
        assert all(math.isfinite(v) for v in c.scores.values()) and all(math.isfinite(e.weight) for e in c.edges)
        assert len(c.metadata["top_contexts"]) == 2 and c.metadata["top_contexts"][0].startswith(_HostileDecode.EVIL)
        assert f'<a href="{r["circuit"]}">' in page
    assert page.count("<tr><td>") == len(rows)
    assert "<script" not in page.lower() and "<img" not in page and "&lt;/script&gt;&lt;script&gt;" in page
    assert "default-src 'none'" in page
