"""The circuit viewer: safe JSON embedding, page data, batched activation statistics against a naive
reference, the task panel against pruning's own numbers, and the page itself in a real headless
Chromium (loads without errors or network, renders every node, the graph fills the view on load and
after a resize, click opens the right card with contexts of both signs, search filters, the edge
limit, links between the index and every page, hostile strings stay text). Browser tests skip only
when no Chromium binary exists (and fail then when $SPARSECIRCUITS_REQUIRE_BROWSER is set, as in CI)."""

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
from sparsecircuits.viz.html import (
    CircuitCell,
    IndexRow,
    embed_json,
    render_circuit_page,
    render_quickstart_index,
)

HOSTILE = [
    "</script><img src=x onerror=\"window.__pwned=1;alert(1)\">",
    "<!--<script>window.__pwned=2</script>",
    "\u2028\u2029&amp;<b>bold</b>",
    "<svg onload=alert(3)>",
    "'\"><iframe src=javascript:alert(4)>",
    '[bold]x[/bold] " e:-1: <script>',
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
    # one count: the embedding endpoint is drawn but not counted, and the summary says so
    assert d["counts"] == {"nodes": 8, "endpoints": 1, "edges": len(c.edges)}
    assert ["nodes", "8 (+ 1 embedding/logit endpoints)"] in d["summary"]
    assert [n["endpoint"] for n in d["nodes"]] == [n.kind == "embed" for n in c.nodes]
    assert set(d["guide"]["kinds"]) == {n.kind for n in c.nodes} and set(d["guide"]["edges"]) == {"residual", "weight", "qk"}


def test_page_data_never_shows_one_number_under_two_names():
    c = small_circuit()
    c.metadata["node_effects"] = "single-node ablation from the circuit, mean logit difference"
    d = page_data(c)
    assert d["score_label"] == "single-node ablation effect"
    assert all(n["effect"] is None for n in d["nodes"])  # the scores are the effects: shown once
    c.metadata["effects"] = {c.nodes[1].id: 0.5}  # effects stored apart from the scores: both shown
    assert page_data(c)["nodes"][1]["effect"] == 0.5


def test_page_data_target_and_check():
    c = small_circuit()
    c.metadata.update(losses={"circuit": 0.204, "full": 0.05, "empty": 0.7}, reached_target=False,
                      target_loss_used=0.15, check={"n": 12, "pearson": 0.93, "worst": [{"node": "a", "score": 1.0}]})
    d = page_data(c)
    assert d["target"] == {"loss": 0.204, "full": 0.05, "empty": 0.7, "target": 0.15, "asked": 0.15, "reached": False}
    assert any("0.204 nats, NOT reached" in line for line in d["guide"]["lines"])
    assert d["check"]["pearson"] == 0.93
    c.metadata["n_nodes"] = 99  # a method that counts differently: the page says what it counts
    assert any("n_nodes = 99" in n for n in page_data(c)["notes"])


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
        # each sign: the same k extreme per-window values (windows may tie), each at a position holding it
        torch.testing.assert_close(acts.top_value[j], torch.topk(x_WT.max(1).values, 4).values)
        torch.testing.assert_close(acts.bottom_value[j], -torch.topk(-x_WT.min(1).values, 4).values)
        torch.testing.assert_close(acts.top_value[j], x_WT[acts.top_window[j], acts.top_pos[j]])
        torch.testing.assert_close(acts.bottom_value[j], x_WT[acts.bottom_window[j], acts.bottom_pos[j]])
        assert len(set(acts.top_window[j].tolist())) == 4 == len(set(acts.bottom_window[j].tolist()))
        flat = x_WT.flatten()[:100]
        assert int(acts.hist[j].sum()) == int((flat != 0).sum()) and int(acts.zeros[j]) == int((flat == 0).sum())
        if (flat != 0).any():
            assert float(acts.hist_lo[j]) == pytest.approx(float(flat[flat != 0].min()))
            assert float(acts.hist_hi[j]) == pytest.approx(float(flat[flat != 0].max()))
        assert float(acts.mean[j]) == pytest.approx(float(flat.mean()), abs=1e-6)
    rows = context_rows(windows, acts, before=2, after=1)
    r = rows[0]["pos"][0]
    assert r["tokens"][r["at"]] == int(windows[acts.top_window[0, 0], acts.top_pos[0, 0]])
    for j in range(len(nodes)):  # each list holds only its sign
        assert all(x["value"] > 0 for x in rows[j]["pos"]) and all(x["value"] < 0 for x in rows[j]["neg"])
    assert rows[0]["pos"] and rows[0]["neg"]  # a q channel of a random model fires both ways


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
        for r in n.get("contexts", {}).get("pos", []) + n.get("contexts", {}).get("neg", []):
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


def open_page(browser: Browser, path: Path, data: dict | None = None, html: str | None = None,
              size: tuple[int, int] = (1280, 800)):
    if html is None:
        html = render_circuit_page(data)
    path.write_text(html, encoding="utf-8")
    page = browser.new_page(*size)
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
    assert "ablation effect" not in facts  # the circuit has no effects apart from its scores
    assert page.evaluate("document.getElementById('card-kind').textContent").startswith(target.kind + ": ")
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


def layered_circuit(per_column: int = 9, n_layers: int = 4, n_edges: int = 60, seed: int = 0) -> Circuit:
    """A pruning-shaped circuit: several nodes in each of 4 sites per layer, random weight edges forward."""
    import random

    rng = random.Random(seed)
    sites = [("ln1.hook_normalized", "resid_read"), ("attn.hook_q", "q"), ("attn.hook_k", "k"), ("mlp.hook_post", "neuron")]
    cols = [[Node(f"blocks.{L}.{site}", i, kind, L) for i in range(rng.randint(2, per_column))]
            for L in range(n_layers) for site, kind in sites]
    nodes = [n for col in cols for n in col]
    edges: dict[tuple[str, str], Edge] = {}
    while len(edges) < n_edges:
        a = rng.randrange(len(cols) - 1)
        src, dst = rng.choice(cols[a]), rng.choice(cols[rng.randrange(a + 1, len(cols))])
        edges[src.id, dst.id] = Edge(src.id, dst.id, rng.gauss(0, 1), "weight")
    return Circuit(nodes, list(edges.values()), {n.id: rng.gauss(0, 1) for n in nodes}, {"task": "toy"})


NODE_BOX = """(() => {
  const g = document.getElementById('edges').getBoundingClientRect();
  let x0 = 1e9, y0 = 1e9, x1 = -1e9, y1 = -1e9, rmin = 1e9;
  for (const c of document.querySelectorAll('circle.node')) {
    const r = c.getBoundingClientRect();
    x0 = Math.min(x0, r.left); y0 = Math.min(y0, r.top); x1 = Math.max(x1, r.right); y1 = Math.max(y1, r.bottom);
    rmin = Math.min(rmin, r.width / 2);
  }
  const font = Math.min(...[...document.querySelectorAll('text.col, text.layer')].map((t) => parseFloat(getComputedStyle(t).fontSize)));
  return {cover: (x1 - x0) * (y1 - y0) / (g.width * g.height), w: g.width, h: g.height, rmin, font};
})()"""


def test_graph_fills_the_view_on_load_and_after_resize_and_is_readable(browser, tmp_path):
    c = layered_circuit()
    page = open_page(browser, tmp_path / "c.html", page_data(c), size=(1400, 860))
    box = page.evaluate(NODE_BOX)
    assert box["cover"] >= 0.8, box  # the nodes' bounding box covers >= 80% of the canvas
    assert box["rmin"] >= 3 and box["font"] >= 11, box  # nodes and labels readable at 100% zoom
    for width, height in ((900, 600), (1800, 1100)):
        page.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1,
                                                         "mobile": False})
        page.wait_for(f"viewer.size()[0] === document.getElementById('graph').clientWidth && "
                      f"document.getElementById('graph').clientWidth < {width}")
        box = page.evaluate(NODE_BOX)
        assert box["cover"] >= 0.8 and box["w"] > 0.5 * width - 460, box
    page.evaluate("viewer.focus(0, 4)")  # zoomed in and back: "fit" restores the filled view
    page.click_selector("#fit")
    page.wait_for("document.querySelector('#viewport').getAttribute('transform') === 'translate(0,0) scale(1)'")
    assert page.evaluate(NODE_BOX)["cover"] >= 0.8
    assert page.log.errors == []


def test_edge_limit_keeps_a_large_circuit_legible(browser, tmp_path):
    c = layered_circuit(per_column=30, n_layers=4, n_edges=2000, seed=1)
    page = open_page(browser, tmp_path / "c.html", page_data(c))
    default = page.evaluate("viewer.edgeLimit()")
    assert 0 < default <= 500 and f"{default} of 2,000 edges drawn" in page.evaluate("document.getElementById('count').textContent")
    page.evaluate("(() => { const s = document.getElementById('edge-limit'); s.value = '1000'; s.dispatchEvent(new Event('input')); })()")
    assert page.evaluate("viewer.edgeLimit()") == 2000
    page.evaluate("(() => { const s = document.getElementById('edge-limit'); s.value = '0'; s.dispatchEvent(new Event('input')); })()")
    assert page.evaluate("viewer.edgeLimit()") == 0
    assert page.log.errors == []


def test_node_card_shows_contexts_of_both_signs_and_the_check(browser, tmp_path):
    c = small_circuit()
    c.metadata["check"] = {"schema": "x", "items": "nodes", "n_sampled": 2, "pearson": 0.91, "spearman": 0.88,
                           "sign_agreement": 0.875, "worst": [{"id": c.nodes[1].id, "score": 0.5, "effect": -0.1}],
                           "points": [{"id": c.nodes[1].id, "score": 0.5, "effect": -0.1},
                                      {"id": c.nodes[2].id, "score": -0.2, "effect": -0.3}]}
    d = page_data(c)
    d["vocab"] = {"1": " the", "2": "(", "3": "\n", "4": "x"}
    i = 6
    d["nodes"][i]["contexts"] = {"pos": [{"tokens": [1, 2, 4], "at": 1, "value": 2.5}, {"tokens": [4, 2], "at": 1, "value": 1.0}],
                                 "neg": [{"tokens": [4, 1, 3], "at": 1, "value": -3.0}]}
    d["nodes"][i]["hist"] = {"lo": -3.0, "hi": 2.5, "counts": [1, 0, 2, 5], "zeros": 90, "total": 100, "mean": 0.01, "std": 0.4}
    page = open_page(browser, tmp_path / "c.html", d)
    page.click_selector(f"circle.node[data-i='{i}']")  # a real click
    page.wait_for("!document.getElementById('card').hidden")
    heads = page.evaluate("[...document.querySelectorAll('#card-contexts h3')].map(h => h.textContent)")
    assert heads == ["Top activating contexts: most positive", "Top activating contexts: most negative"]
    assert page.evaluate("[...document.querySelectorAll('#card-contexts .tok.hit:not(.neg)')].map(t => t.textContent)") == ["(", "("]
    assert page.evaluate("[...document.querySelectorAll('#card-contexts .tok.hit.neg')].map(t => t.textContent)") == ["\u00b7the"]
    facts = page.evaluate("[...document.querySelectorAll('#card-facts td')].map(td => td.textContent)")
    assert facts[facts.index("largest / smallest seen") + 1] == "2.50 / -3"
    assert "nonzero 10.0%" in facts[facts.index("activation over 100 tokens") + 1]
    check = page.evaluate("document.getElementById('check').textContent")
    assert "Pearson r" in check and "0.910" in check and c.nodes[1].id in check
    assert page.evaluate("document.querySelectorAll('#check svg circle').length") == 2  # score vs exact, per point
    page.evaluate("document.querySelector('#check button.edge').scrollIntoView()")
    page.click_selector("#check button.edge")  # a worst case opens its node's card
    assert page.evaluate("document.getElementById('card-name').textContent") == c.nodes[1].id
    page.click_selector(f"circle.node[data-i='{i - 1}']")  # a node without contexts
    assert page.evaluate("document.querySelectorAll('#card-contexts .ctx').length") == 0
    assert page.log.errors == []


def feature_circuit_with_dashboards(hrefs: dict[str, str]) -> Circuit:
    """Two feature nodes and an error node at two sites, with dashboard links in the metadata."""
    nodes = [Node("blocks.0.hook_resid_post", 3, "feature", 0), Node("blocks.0.hook_resid_post", -1, "error", 0),
             Node("blocks.1.hook_mlp_out", 17, "feature", 1)]
    edges = [Edge(nodes[0].id, nodes[2].id, 0.5, "attribution"), Edge(nodes[1].id, nodes[2].id, -0.2, "attribution")]
    return Circuit(nodes, edges, {n.id: 1.0 for n in nodes}, {"task": "toy", "method": "feature-circuit",
                                                                "dashboards": hrefs})


def test_dashboard_links_keep_only_relative_hrefs_and_rebase():
    from sparsecircuits.viz.report import rebase_hrefs

    c = feature_circuit_with_dashboards({"blocks.0.hook_resid_post": "dash/L0.html", "blocks.1.hook_mlp_out":
                                         "javascript:alert(1)", "x": "//evil.example/a.html", "y": "/etc/passwd",
                                         "z": "https://example.com/d.html", "w": 3})
    assert page_data(c)["dashboards"] == {"blocks.0.hook_resid_post": "dash/L0.html"}
    # a page written in another folder than the circuit JSON still reaches the same file
    out = rebase_hrefs({"s": "dash/L0.html#f=2"}, Path("/r/circuits"), Path("/r/pages/sparse"))
    assert out == {"s": "../../circuits/dash/L0.html#f=2"}
    assert rebase_hrefs({"s": "../d.html"}, Path("/r/a"), Path("/r/a")) == {"s": "../d.html"}


def test_feature_card_links_to_its_dashboard(browser, tmp_path):
    c = feature_circuit_with_dashboards({"blocks.0.hook_resid_post": "dash/L0.html",
                                         "blocks.1.hook_mlp_out": "javascript:window.__pwned=1"})
    (tmp_path / "dash").mkdir()
    c.save(tmp_path / "c.json")
    from sparsecircuits.cli.main import main

    pages = tmp_path / "pages"
    pages.mkdir()
    assert main(["view", str(tmp_path / "c.json"), "--out", str(pages / "c.html")]) == 0
    page = browser.new_page()
    page.goto((pages / "c.html").as_uri())
    page.wait_for("document.body.dataset.ready === '1'")
    links = "[...document.querySelectorAll('#card-links a')].map(a => a.getAttribute('href'))"
    page.evaluate("viewer.select(0)")  # feature 3 at a site with a dashboard: rebased to the page's folder
    assert page.evaluate(links) == ["../dash/L0.html#f=3"]
    assert page.evaluate("document.getElementById('card-links').hidden") is False
    page.evaluate("viewer.select(1)")  # the error node has no feature to open
    assert page.evaluate(links) == [] and page.evaluate("document.getElementById('card-links').hidden") is True
    page.evaluate("viewer.select(2)")  # a javascript: href from data never becomes a link
    assert page.evaluate(links) == []
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert page.log.errors == [] and page.log.requests == [] and page.log.dialogs == []


def test_hostile_strings_render_as_text(browser, tmp_path):
    evil = HOSTILE[0]
    nodes = [Node(evil, 0, "neuron", 0), Node("blocks.0.mlp.hook_post" + HOSTILE[3], 1, "neuron", 0),
             Node(HOSTILE[4], 2, "q", 1)]
    c = Circuit(nodes, [Edge(nodes[0].id, nodes[2].id, -1.0, "weight")], {nodes[0].id: 1.0},
                {"task": evil, "method": HOSTILE[1], "answer_tokens": HOSTILE[2:4], "hyperparameters": {"x": evil}})
    d = page_data(c, title=evil)
    d["vocab"] = {str(i): s for i, s in enumerate(HOSTILE)}
    d["nodes"][0]["contexts"] = {"pos": [{"tokens": [0, 1, 2, 3, 4], "at": 1, "value": 2.0}],
                                 "neg": [{"tokens": [5, 2, 3], "at": 0, "value": -1.5}]}
    d["nodes"][0]["hist"] = {"lo": 0.0, "hi": 1.0, "counts": [1, 2], "zeros": 1, "total": 4, "mean": 0.5, "std": 0.1}
    d["links"] = [{"text": evil, "href": "javascript:window.__pwned=3"}, {"text": HOSTILE[5], "href": "../index.html"}]
    d["guide"]["lines"].append(HOSTILE[5])
    d["task"] = {"name": evil, "answers": HOSTILE[:2], "n_evaluated": 1, "accuracy": {"full": 1.0},
                 "examples": [{"tokens": [0, 1, 2], "correct": 3, "incorrect": 4, "full": {"pred": 0, "diff": 1.0},
                               "circuit": None}]}
    d["nodes"][2]["attn"] = [{"ex": 0, "head": 0, "q": 2, "keys": [[0, 0.5]], "chan": [1, 0.1]}]
    d["notes"] = [evil]
    page = open_page(browser, tmp_path / "evil.html", d)
    page.evaluate("viewer.select(0)")
    assert page.evaluate("document.getElementById('card-name').textContent") == nodes[0].id == evil + "[0]"
    assert page.evaluate("document.querySelector('#card-contexts .tok.hit').textContent") == HOSTILE[1]
    # "[bold]", quotes and spaces stay text; the highlighted token shows its spaces as ·
    assert page.evaluate("document.querySelector('#card-contexts .tok.hit.neg').textContent") == HOSTILE[5].replace(" ", "\u00b7")
    assert page.evaluate("[...document.querySelectorAll('#links a')].map(a => [a.textContent, a.getAttribute('href')])") == \
        [[HOSTILE[5], "../index.html"]]  # the javascript: link is dropped, the relative one kept
    assert HOSTILE[5] in page.evaluate("document.getElementById('guide-body').textContent")
    page.evaluate("viewer.select(2)")
    assert page.evaluate("document.getElementById('card-name').textContent") == nodes[2].id
    assert page.evaluate("document.getElementById('title').textContent") == evil
    assert page.evaluate("document.title") == evil
    assert page.evaluate("document.querySelectorAll('img, iframe, b').length") == 0
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert page.log.dialogs == [] and page.log.requests == [] and page.log.errors == []
    # the index page escapes its cells too
    cell = CircuitCell(3, 4, 0.2, 0.15, False, evil)
    row = IndexRow(evil, HOSTILE[5], HOSTILE[4], HOSTILE[5], HOSTILE[1], 1.0, 0.5, True, {"sparse": cell, "dense": cell})
    index = render_quickstart_index(evil, HOSTILE[2], [(evil, HOSTILE[5])], [row], [evil], HOSTILE[3])
    (tmp_path / "index.html").write_text(index)
    page = browser.new_page()
    page.goto((tmp_path / "index.html").as_uri())
    assert page.evaluate("document.querySelector('tbody td strong').textContent") == evil
    assert page.evaluate("document.querySelector('.ans.good code').textContent") == HOSTILE[5].replace(" ", "\u00b7")
    assert page.evaluate("document.querySelectorAll('img, iframe, b').length") == 0
    assert page.evaluate("document.querySelectorAll('svg.chart rect').length") >= 2  # the chart, as text-safe SVG
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
    index = write_quickstart_report(report, tmp_path / "cache", solve_threshold=0.0)
    pages = {kind: tmp_path / "qs" / "circuits" / kind / "single_double_quote.html" for kind in ("sparse", "dense")}
    assert all(p.exists() for p in pages.values())
    page = browser.new_page()
    page.goto(index.as_uri())
    assert page.evaluate("document.querySelectorAll('tbody tr').length") == 1
    assert page.evaluate("document.querySelector('tbody td strong').textContent") == "single_double_quote"
    text = page.evaluate("document.body.textContent")
    for words in ("solved", "target", "baseline", "node", "edge"):  # the index says what its words mean
        assert page.evaluate(f"[...document.querySelectorAll('dt')].some(d => d.textContent.startsWith('{words}'))"), words
    assert "target task loss 0.15 nats" in text and "\u2264 0.15" not in page.evaluate("document.title")
    assert page.evaluate("document.querySelector('.ans.good code').textContent")  # an example with both answers
    assert page.evaluate("document.querySelectorAll('svg.chart rect.sparse').length") >= 1  # no matplotlib needed
    hrefs = page.evaluate("[...document.querySelectorAll('tbody a')].map(a => a.href)")
    assert {p.resolve().as_uri() for p in pages.values()} <= set(hrefs)  # the index links to every page
    assert page.log.errors == [] and page.log.requests == []
    since = len(browser._events)
    page.evaluate("document.querySelector(\"a[href='circuits/sparse/single_double_quote.html']\").scrollIntoView()")
    page.click_selector("a[href='circuits/sparse/single_double_quote.html']")  # follow the link
    browser.wait_event("Page.loadEventFired", page.session, since)
    page.wait_for("document.body && document.body.dataset.ready === '1'")
    circuit = Circuit.load(tmp_path / "qs" / "circuits" / "sparse" / "single_double_quote.json")
    assert visible_nodes(page) == len(circuit.nodes)
    assert page.evaluate("document.querySelectorAll('#task tr').length") > 1
    n_nodes = circuit.metadata["n_nodes"]  # one count: the header, the summary and the index agree
    assert page.evaluate("document.getElementById('count').textContent").startswith(f"{n_nodes} nodes")
    links = page.evaluate("[...document.querySelectorAll('#links a')].map(a => a.href)")
    assert links == [index.resolve().as_uri(), pages["dense"].resolve().as_uri()]  # every page links back, and across
    since = len(browser._events)
    page.click_selector("#links a")  # and back to the index
    browser.wait_event("Page.loadEventFired", page.session, since)
    assert page.evaluate("document.querySelectorAll('tbody tr').length") == 1
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
