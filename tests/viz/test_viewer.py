"""The circuit viewer: safe JSON embedding, page data, batched activation statistics against a naive
reference, the task panel against pruning's own numbers, and the page itself in a real headless
Chromium (loads without errors or network, renders every node, click opens the right card, search
filters, hostile strings stay text). Browser tests skip only when no Chromium binary exists (and fail
then when $SPARSECIRCUITS_REQUIRE_BROWSER is set, as in CI)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from conftest import TINY, tiny_model
from sparsecircuits.graph import Circuit, Edge, Node
from sparsecircuits.viz.browser import Browser, find_chromium
from sparsecircuits.viz.data import page_data
from sparsecircuits.viz.html import embed_json, render_circuit_page, render_index

HOSTILE = [
    "</script><img src=x onerror=\"window.__pwned=1;alert(1)\">",
    "<!--<script>window.__pwned=2</script>",
    "\u2028\u2029&amp;<b>bold</b>",
    "<svg onload=alert(3)>",
    "'\"><iframe src=javascript:alert(4)>",
]


def small_circuit(n_layers: int = 2) -> Circuit:
    """A hand-made weight-sparse-style circuit: 4 nodes per layer, weight/residual/qk edges, scores."""
    nodes, edges, scores = [Node("hook_embed", 3, "embed", -1)], [], {}
    for L in range(n_layers):
        p = f"blocks.{L}"
        layer = [Node(f"{p}.ln1.hook_normalized", 3, "resid_read", L), Node(f"{p}.attn.hook_q", 5, "q", L),
                 Node(f"{p}.attn.hook_k", 5, "k", L), Node(f"{p}.mlp.hook_post", 7 + L, "neuron", L)]
        nodes += layer
        edges += [Edge(nodes[0].id, layer[0].id, 1.0, "residual"), Edge(layer[0].id, layer[1].id, 0.5, "weight"),
                  Edge(layer[0].id, layer[2].id, -0.25, "weight"), Edge(layer[2].id, layer[1].id, 1.0, "qk")]
        scores.update({n.id: (-1.0) ** i * (i + 1) / 4 for i, n in enumerate(layer)})
    md = {"task": "toy", "method": "hand-made", "n_nodes": len(nodes), "losses": {"circuit": 0.1, "full": 0.05},
          "bisection": [{"k": 8, "loss": 0.1, "accuracy": 1.0}, {"k": 0, "loss": 0.9, "accuracy": 0.5},
                        {"k": 4, "loss": 0.3, "accuracy": 0.8}],
          "hyperparameters": {"target_loss": 0.15}}
    return Circuit(nodes, edges, scores, md)


# ---------------------------------------------------------------- pure python


def test_embed_json_cannot_break_out_and_round_trips():
    data = {"s": HOSTILE, "nan": float("nan"), "inf": [float("inf")], "k\u2028": "a&b"}
    text = embed_json(data)
    for bad in ("<", ">", "&", "\u2028", "\u2029"):
        assert bad not in text
    assert json.loads(text) == {"s": HOSTILE, "nan": None, "inf": [None], "k\u2028": "a&b"}
    page = render_circuit_page({**page_data(small_circuit()), "title": HOSTILE[0]})
    body = page.split('<script id="circuit-data" type="application/json">', 1)[1]
    assert body.index("</script>") > body.index("\\u003c/script\\u003e")  # the data's own </script> is escaped
    assert "<img" not in page and "<title>&lt;/script&gt;&lt;img" in page


def test_page_data_columns_edges_and_curve():
    c = small_circuit()
    d = page_data(c)
    assert [col["label"] for col in d["columns"]] == ["embed", "L0 attn in", "L0 q", "L0 k", "L0 neurons",
                                                      "L1 attn in", "L1 q", "L1 k", "L1 neurons"]
    assert len(d["nodes"]) == len(c.nodes) and len(d["edges"]["src"]) == len(c.edges)
    ids = [n["id"] for n in d["nodes"]]
    for e, s, t, k in zip(c.edges, d["edges"]["src"], d["edges"]["dst"], d["edges"]["kind"]):
        assert (ids[s], ids[t], d["edge_kinds"][k]) == (e.src, e.dst, e.kind)
    assert [p["k"] for p in d["bisection"]["points"]] == [0, 4, 8] and d["bisection"]["target"] == 0.15
    assert d["nodes"][0]["score"] is None  # the embedding node has no score


# ---------------------------------------------------------------- batched statistics vs a naive loop


def test_node_activations_match_a_per_node_loop():
    from sparsecircuits.viz.activations import context_rows, node_activations

    model = tiny_model()
    g = torch.Generator().manual_seed(0)
    windows = torch.randint(0, TINY["d_vocab"], (11, 20), generator=g)
    nodes = [Node("blocks.0.attn.hook_q", 13, "q", 0), Node("blocks.1.mlp.hook_post", 5, "neuron", 1),
             Node("blocks.0.hook_attn_out", 2, "resid_write", 0), Node("hook_embed", 30, "embed", -1)]
    acts = node_activations(model, nodes, windows, k=4, bins=8, batch_size=3, hist_tokens=100)
    _, cache = model.run_with_cache(windows)
    for j, n in enumerate(nodes):
        x_WT = cache[n.site].flatten(2)[..., n.index]
        best, pos = x_WT.abs().max(1)
        # the same k largest per-window maxima (windows may tie), each at a position holding it
        torch.testing.assert_close(acts.top_value[j].abs(), torch.topk(best, 4).values)
        torch.testing.assert_close(acts.top_value[j], x_WT[acts.top_window[j], acts.top_pos[j]])
        assert len(set(acts.top_window[j].tolist())) == 4  # one context per window
        flat = x_WT.flatten()[:100]
        assert int(acts.hist[j].sum()) == int((flat != 0).sum()) and int(acts.zeros[j]) == int((flat == 0).sum())
        if (flat != 0).any():
            assert float(acts.hist_lo[j]) == pytest.approx(float(flat[flat != 0].min()))
            assert float(acts.hist_hi[j]) == pytest.approx(float(flat[flat != 0].max()))
    rows = context_rows(windows, acts, before=2, after=1)
    r = rows[0][0]
    assert r["tokens"][r["at"]] == int(windows[acts.top_window[0, 0], acts.top_pos[0, 0]])


# ---------------------------------------------------------------- with a model: the page reproduces pruning


@pytest.fixture(scope="module")
def pruned(stdlib_tokenizers):
    from sparsecircuits.ablation import mean_activations
    from sparsecircuits.tasks.base import load_task
    from sparsecircuits.weight_sparse.prune import PruneConfig, prune_task

    tok = stdlib_tokenizers[1024]
    model = tiny_model(d_vocab=1024, n_ctx=64)
    data = load_task("single_double_quote", tok, 64, n=24)
    g = torch.Generator().manual_seed(3)
    windows = torch.randint(0, 1024, (8, 64), generator=g)
    means = mean_activations(model, [windows])
    # target = the full model's own loss (a random model is far above 0.15): a non-empty circuit
    cfg = PruneConfig(steps=3, batch_size=8, effect_examples=4, target_loss=1e-6, target_slack=0.0)
    result = prune_task(model, data, cfg, means=means)
    return model, tok, windows, means, result.circuit


def test_page_with_a_model_reproduces_the_pruning_numbers(pruned):
    from sparsecircuits.viz.report import ModelContext, ViewConfig, circuit_page_data

    model, tok, windows, means, circuit = pruned
    d = circuit_page_data(circuit, ModelContext(model, tok, windows, means), ViewConfig(examples=5, attn_examples=3))
    md = circuit.metadata
    assert d["task"]["n_evaluated"] == md["n_examples"]["held_out"]
    assert d["task"]["accuracy"]["full"] == pytest.approx(md["accuracy"]["full"])
    assert d["task"]["accuracy"]["circuit"] == pytest.approx(md["accuracy"]["circuit"])
    assert len(d["task"]["examples"]) == 5
    channel = [n for n in d["nodes"] if n["kind"] not in ("logit",)]
    assert channel and all("hist" in n for n in channel)
    assert not any("hist" in n for n in d["nodes"] if n["kind"] == "logit")
    for n in d["nodes"]:
        for r in n.get("top", []):
            assert all(str(t) in d["vocab"] for t in r["tokens"])
        for a in n.get("attn", []):
            ex = d["task"]["examples"][a["ex"]]
            assert a["q"] == len(ex["tokens"]) - 1 and sum(w for _, w in a["keys"]) <= 1 + 1e-5
    assert any(n.get("attn") for n in d["nodes"] if n["kind"] in ("q", "k")) or not any(
        n["kind"] in ("q", "k") for n in d["nodes"])


def test_view_cli_without_a_model(tmp_path):
    from sparsecircuits.cli import main

    c = small_circuit()
    c.save(tmp_path / "c.json")
    assert main(["view", str(tmp_path / "c.json"), "-o", str(tmp_path / "c.html")]) == 0
    page = (tmp_path / "c.html").read_text()
    assert page.startswith("<!doctype html>") and "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert main(["view", str(tmp_path / "missing.json")]) == 2


# ---------------------------------------------------------------- in a real browser


@pytest.fixture(scope="module")
def browser():
    if find_chromium() is None:
        if os.environ.get("SPARSECIRCUITS_REQUIRE_BROWSER"):  # CI: a missing browser is a failure, not a skip
            pytest.fail("SPARSECIRCUITS_REQUIRE_BROWSER is set but no Chromium binary was found")
        pytest.skip("no Chromium binary (Debian: apt-get install chromium); browser tests need a real browser")
    with Browser() as b:
        yield b


def open_page(browser: Browser, path: Path, data: dict | None = None, html: str | None = None):
    if html is None:
        html = render_circuit_page(data)
    path.write_text(html, encoding="utf-8")
    page = browser.new_page(1280, 800)
    page.goto(path.as_uri())
    page.wait_for("document.body.dataset.ready === '1'")
    return page


def visible_nodes(page) -> int:
    return page.evaluate("document.querySelectorAll('circle.node:not(.hidden)').length")


def test_page_renders_every_node_click_opens_card_search_filters(browser, tmp_path):
    c = small_circuit(n_layers=3)
    page = open_page(browser, tmp_path / "c.html", page_data(c))
    assert page.evaluate("document.querySelectorAll('circle.node').length") == len(c.nodes)
    assert page.evaluate("viewer.edgeCount") == len(c.edges)
    target = c.nodes[6]
    i = [n.id for n in c.nodes].index(target.id)
    assert page.evaluate("document.getElementById('card').hidden") is True
    page.click_selector(f"circle.node[data-i='{i}']")  # a real mouse click at the circle
    page.wait_for("!document.getElementById('card').hidden")
    assert page.evaluate("document.getElementById('card-name').textContent") == target.id
    facts = page.evaluate("[...document.querySelectorAll('#card-facts td')].map(td => td.textContent)")
    assert float(facts[facts.index("score") + 1]) == pytest.approx(c.scores[target.id])
    assert facts[facts.index("kind") + 1] == target.kind
    # clicking an edge in the card moves to the neighbour
    page.click_selector("#card-edges button.edge")
    assert page.evaluate("document.getElementById('card-name').textContent") != target.id
    # search: same matching rule as the page (id, kind, column label)
    page.type_into("#search", "hook_q")
    assert visible_nodes(page) == sum("hook_q" in n.id for n in c.nodes) == 3
    page.type_into("#search", "L1 neurons")
    assert visible_nodes(page) == 1
    page.evaluate("(() => { const s = document.getElementById('search'); s.value = '';"
                  " s.dispatchEvent(new Event('input')); })()")
    assert visible_nodes(page) == len(c.nodes)
    page.type_into("#threshold", "0.7")  # |score| >= 0.7: scores are ±(i+1)/4 for i = 0..3 per layer
    assert visible_nodes(page) == 2 * 3
    page.type_into("#threshold", "0")
    page.click_selector("#kinds input[data-kind='neuron']")  # untick a kind
    assert visible_nodes(page) == len(c.nodes) - 3
    assert page.log.errors == [] and page.log.requests == [] and page.log.dialogs == []


def test_hostile_strings_render_as_text(browser, tmp_path):
    evil = HOSTILE[0]
    nodes = [Node(evil, 0, "neuron", 0), Node("blocks.0.mlp.hook_post" + HOSTILE[3], 1, "neuron", 0),
             Node(HOSTILE[4], 2, "q", 1)]
    c = Circuit(nodes, [Edge(nodes[0].id, nodes[2].id, -1.0, "weight")], {nodes[0].id: 1.0},
                {"task": evil, "method": HOSTILE[1], "answer_tokens": HOSTILE[2:4], "hyperparameters": {"x": evil}})
    d = page_data(c, title=evil)
    d["vocab"] = {str(i): s for i, s in enumerate(HOSTILE)}
    d["nodes"][0]["top"] = [{"tokens": [0, 1, 2, 3, 4], "at": 1, "value": 2.0}]
    d["nodes"][0]["hist"] = {"lo": 0.0, "hi": 1.0, "counts": [1, 2], "zeros": 1, "total": 4}
    d["task"] = {"name": evil, "answers": HOSTILE[:2], "n_evaluated": 1, "accuracy": {"full": 1.0},
                 "examples": [{"tokens": [0, 1, 2], "correct": 3, "incorrect": 4, "full": {"pred": 0, "diff": 1.0},
                               "circuit": None}]}
    d["nodes"][2]["attn"] = [{"ex": 0, "head": 0, "q": 2, "keys": [[0, 0.5]], "chan": [1, 0.1]}]
    d["notes"] = [evil]
    page = open_page(browser, tmp_path / "evil.html", d)
    page.evaluate("viewer.select(0)")
    assert page.evaluate("document.getElementById('card-name').textContent") == nodes[0].id == evil + "[0]"
    assert page.evaluate("document.querySelector('#card-contexts .tok.hit').textContent") == HOSTILE[1]
    page.evaluate("viewer.select(2)")
    assert page.evaluate("document.getElementById('card-name').textContent") == nodes[2].id
    assert page.evaluate("document.getElementById('title').textContent") == evil
    assert page.evaluate("document.title") == evil
    assert page.evaluate("document.querySelectorAll('img, iframe, b').length") == 0
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert page.log.dialogs == [] and page.log.requests == [] and page.log.errors == []
    # the index page escapes its cells too
    index = render_index(evil, ["task", "x"], [[evil, HOSTILE[3]]], [{evil: "a.html"}], [evil], {})
    (tmp_path / "index.html").write_text(index)
    page = browser.new_page()
    page.goto((tmp_path / "index.html").as_uri())
    assert page.evaluate("document.querySelector('td').textContent") == evil
    assert page.evaluate("document.querySelectorAll('img, iframe, b').length") == 0
    assert page.log.dialogs == [] and page.log.requests == [] and page.log.errors == []


def test_any_circuit_renders_empty_no_edges_unknown_kinds(browser, tmp_path):
    odd = Node("dict.layer3.feature_acts", 17, "feature", 3)
    unknown = Node("somewhere", 1, "feature", 0)
    object.__setattr__(unknown, "kind", "mystery-kind")  # a kind from a future method
    for i, c in enumerate([Circuit([]), Circuit([odd, unknown]), Circuit([odd], [], {odd.id: float("nan")})]):
        page = open_page(browser, tmp_path / f"c{i}.html", page_data(c))
        assert visible_nodes(page) == len(c.nodes)
        if c.nodes:
            page.click_selector("circle.node[data-i='0']")
            assert page.evaluate("document.getElementById('card-name').textContent") == c.nodes[0].id
        assert page.log.errors == [] and page.log.requests == [] and page.log.dialogs == []


def test_page_with_model_data_in_browser(browser, pruned, tmp_path):
    from sparsecircuits.viz.report import ModelContext, write_circuit_page

    model, tok, windows, means, circuit = pruned
    path = write_circuit_page(circuit, tmp_path / "p.html", ModelContext(model, tok, windows, means))
    page = browser.new_page()
    page.goto(path.as_uri())
    page.wait_for("document.body.dataset.ready === '1'")
    assert visible_nodes(page) == len(circuit.nodes)
    i = next(j for j, n in enumerate(circuit.nodes) if n.kind in ("q", "k", "neuron"))
    page.evaluate(f"viewer.select({i})")
    assert page.evaluate("document.querySelectorAll('#card-contexts .ctx').length") > 0
    assert page.evaluate("document.querySelectorAll('#card-hist rect').length") > 0
    assert page.evaluate("document.querySelectorAll('#task tr').length") > 1
    assert page.log.errors == [] and page.log.requests == [] and page.log.dialogs == []


def test_quickstart_report_pages_and_index(browser, pruned, small_corpus, tmp_path):
    import dataclasses

    from sparsecircuits.data.corpus import DataConfig
    from sparsecircuits.model.checkpoint import save_checkpoint
    from sparsecircuits.viz.report import write_quickstart_report
    from sparsecircuits.weight_sparse.prune import PruneConfig
    from sparsecircuits.weight_sparse.quickstart import run_quickstart

    model, tok, _, _, _ = pruned
    spec = {"data": dataclasses.asdict(DataConfig(sources=(str(small_corpus),), vocab_size=1024, tokenizer_sample_mb=1.0))}
    for name in ("sparse", "dense"):  # the same tiny model twice: twins by construction
        save_checkpoint(tmp_path / name, model, meta={"spec": spec}, tokenizer_json=tok.to_str())
    report = run_quickstart(tmp_path / "qs", tmp_path / "cache", tmp_path / "sparse", tmp_path / "dense",
                            tasks=["single_double_quote"], prune_cfg=PruneConfig(steps=2, batch_size=8, effect_examples=4),
                            n_examples=16, solve_threshold=0.0)
    index = write_quickstart_report(report, tmp_path / "cache")
    for kind in ("sparse", "dense"):
        assert (tmp_path / "qs" / "circuits" / kind / "single_double_quote.html").exists()
    page = browser.new_page()
    page.goto(index.as_uri())
    assert page.evaluate("document.querySelectorAll('tbody tr').length") == 1
    assert page.evaluate("document.querySelector('tbody td').textContent") == "single_double_quote"
    assert page.log.errors == [] and page.log.requests == []
    since = len(browser._events)
    page.click_selector("a[href='circuits/sparse/single_double_quote.html']")  # follow the link
    browser.wait_event("Page.loadEventFired", page.session, since)
    page.wait_for("document.body && document.body.dataset.ready === '1'")
    circuit = Circuit.load(tmp_path / "qs" / "circuits" / "sparse" / "single_double_quote.json")
    assert visible_nodes(page) == len(circuit.nodes)
    assert page.evaluate("document.querySelectorAll('#task tr').length") > 1
    assert page.log.errors == []


def test_plots_are_pngs_and_matplotlib_is_imported_lazily(tmp_path):
    import subprocess
    import sys

    code = ("import sys, sparsecircuits.viz.report, sparsecircuits.viz.plots, sparsecircuits.cli.view;"
            " sys.exit('matplotlib' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    pytest.importorskip("matplotlib")
    from sparsecircuits.viz.plots import bisection_plot

    png = bisection_plot(small_circuit(), tmp_path / "curve.png")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and (tmp_path / "curve.png").read_bytes() == png
    assert bisection_plot(Circuit([]), tmp_path / "empty.png")[:4] == b"\x89PNG"  # no trace: still a plot
