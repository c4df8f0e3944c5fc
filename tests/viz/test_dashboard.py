"""Feature dashboards: the numbers against brute force on a tiny model (logit effects against an
intervention with the final norm's scale frozen, upstream features against every pair, the page's
contexts and densities against the dictionary run token by token), the page in headless Chromium
(a feature's contexts, search by id and by token, `#f=N`, hostile token strings stay text), and the
CLI: `features --html` for a transcoder set, links recorded by `graph --dashboards`. Browser tests
skip only when no Chromium exists (and fail then under $SPARSECIRCUITS_REQUIRE_BROWSER)."""

from __future__ import annotations

import base64
import io
import json
import os
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_model
from sparsecircuits.dictionaries import (
    DictConfig,
    dictionary_source,
    feature_examples,
    make_dictionary,
    save_dictionary,
)
from sparsecircuits.dictionaries.feature_effects import logit_effects
from sparsecircuits.viz.browser import Browser, find_chromium
from sparsecircuits.viz.dashboard import dashboard_info, dashboard_links, render_dashboard, write_dashboard
from sparsecircuits.viz.dashboard_data import dashboard_data, upstream_features

HOSTILE = ["</script><img src=x onerror=\"window.__pwned=1;alert(1)\">", "<!--<script>window.__pwned=2</script>",
           "\u2028\u2029&amp;<b>bold</b>", "<svg onload=alert(3)>", "'\"><iframe src=javascript:alert(4)>"]


def transcoder(layer: int, width: int, seed: int, d: int = 32):
    torch.manual_seed(seed)
    return make_dictionary(DictConfig(arch="topk", hook=f"blocks.{layer}.ln2.hook_normalized",
                                      out_hook=f"blocks.{layer}.hook_mlp_out", d_in=d, width=width, k=6))


def unpack(rec: dict) -> np.ndarray:
    raw = base64.b64decode(rec["b64"])
    raw = zlib.decompress(raw) if rec["codec"] == "deflate" else raw
    return np.frombuffer(raw, dtype="<" + rec["dtype"]).reshape(rec["shape"])


# ---------------------------------------------------------------- numbers


@pytest.mark.parametrize("norm", ["rms", "layer"])
def test_logit_effects_match_an_intervention_with_frozen_norm_scale(norm):
    """Adding d_f to the last residual with ln_final's scale held at 1 moves the logits by exactly the
    effect vector whose top/bottom tokens the page lists (bias, bigram table cancel in the difference)."""
    model = tiny_model(norm=norm, act_sparsity=1.0).eval()
    sae = make_dictionary(DictConfig(arch="topk", hook="blocks.1.hook_resid_post", d_in=32, width=12, k=4))
    toks = torch.randint(0, 97, (1, 5), generator=torch.Generator().manual_seed(0))
    frozen = ("ln_final.hook_scale", lambda x, hook: torch.ones_like(x))
    cases = [("blocks.1.hook_resid_post", sae.W_dec.detach()),  # an SAE on the last residual
             ("blocks.1.mlp.hook_post", torch.eye(64)[::4])]  # neurons of the last MLP (W_FD None), every 4th
    with torch.no_grad(), model.hooks([frozen]):
        base = model(toks)[0, -1]
        for site, rows in cases:  # one batch row per feature, each with its own direction added
            with model.hooks([(site, lambda x, hook, rows=rows: x + rows[:, None, :])]):
                truth = model(toks.expand(len(rows), -1))[:, -1] - base  # [F, vocab]
            eff = logit_effects(model, site, None if site.endswith("hook_post") else rows, k=5)
            if site.endswith("hook_post"):
                eff = type(eff)(*(t[::4] for t in (eff.promoted_ids, eff.promoted, eff.suppressed_ids, eff.suppressed)))
            top, bot = truth.topk(5), truth.topk(5, largest=False)
            assert torch.equal(eff.promoted_ids, top.indices) and torch.equal(eff.suppressed_ids, bot.indices)
            torch.testing.assert_close(eff.promoted, top.values, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(eff.suppressed, bot.values, rtol=1e-4, atol=1e-5)
    q = make_dictionary(DictConfig(arch="topk", hook="blocks.0.attn.hook_q", d_in=32, width=8, k=2))
    assert logit_effects(model, "blocks.0.attn.hook_q", q.W_dec.detach()) is None  # no direct path: the page says so


def test_upstream_features_match_every_pair():
    from sparsecircuits.transcoder_circuits.analysis import input_invariant

    ups = {0: transcoder(0, 20, 1), 1: transcoder(1, 24, 2), 3: transcoder(3, 8, 4)}  # layer 3 is not below
    down = transcoder(2, 16, 3)
    got = upstream_features(ups, down, k=5, chunk=7)
    for f in range(16):
        pairs = [(float(ups[L].W_dec[i].detach() @ down.W_enc[:, f].detach()), L, i) for L in (0, 1) for i in range(ups[L].cfg.width)]
        pairs.sort(reverse=True)
        assert [(L, i) for _, L, i in pairs[:5]] == list(zip(got.layer[f].tolist(), got.feature[f].tolist()))
        torch.testing.assert_close(got.value[f], torch.tensor([v for v, _, _ in pairs[:5]]), rtol=1e-5, atol=1e-6)
    # the same number as input_invariant's (which ranks the other way: downstream features of one upstream)
    L, i, f = int(got.layer[4, 0]), int(got.feature[4, 0]), 4
    top = input_invariant(ups[L], down, i, k=16)
    assert float(top.values.detach()[top.indices.tolist().index(f)]) == pytest.approx(float(got.value[f, 0]), rel=1e-5)
    assert upstream_features({}, down).value.shape == (16, 0)


@pytest.fixture(scope="module")
def tiny_pages(tmp_path_factory):
    """A model, two transcoders, their examples and dashboards (layer 0 linked from layer 1)."""
    torch.manual_seed(0)
    model = tiny_model(act_sparsity=1.0).eval()
    tcs = {0: transcoder(0, 40, 5), 1: transcoder(1, 48, 6)}
    windows = [torch.randint(0, 97, (4, 20), generator=torch.Generator().manual_seed(s)) for s in range(3)]
    vocab = {t: f"t{t}" for t in range(97)}
    for t, s in zip(range(10, 15), HOSTILE):
        vocab[t] = s
    vocab[20], vocab[21] = " def", "def"
    folder = tmp_path_factory.mktemp("dash")
    out = {}
    for L, tc in tcs.items():
        ex = feature_examples(model, dictionary_source(tc), windows, k=5, context=8, context_after=2, n_bins=8)
        eff = logit_effects(model, tc.cfg.out_hook, tc.W_dec.detach(), k=4)
        up = upstream_features(tcs, tc, k=3) if L else None
        info = {"title": f"layer {L} " + HOSTILE[0], "out_hook": tc.cfg.out_hook, "width": tc.cfg.width, "name": tc.cfg.name}
        links = dashboard_links(folder, [("0", {"hook": tcs[0].cfg.hook, "out_hook": tcs[0].cfg.out_hook, "width": 40})],
                                folder)[0] if L else {}
        data = dashboard_data(ex, vocab.__getitem__, info, eff, up, {int(k): v for k, v in links.items()}, [HOSTILE[1]])
        out[L] = (ex, eff, up, data, write_dashboard(folder / f"L{L}.html", data))
    return model, tcs, windows, vocab, out


def test_page_data_matches_brute_force(tiny_pages):
    model, tcs, windows, vocab, out = tiny_pages
    ex, eff, up, data, _ = out[1]
    tc = tcs[1]
    acts = torch.cat([tc.encode(model.run_with_cache(w, names_filter=tc.cfg.hook)[1][tc.cfg.hook]) for w in windows])
    flat = acts.reshape(-1, acts.shape[-1])  # [tokens, F]
    arr = {k: unpack(v) for k, v in data["arrays"].items()}
    np.testing.assert_allclose(arr["density"], (flat > 0).float().mean(0).numpy(), rtol=1e-6)
    top = flat.topk(5, dim=0).values.T.clamp_min(0).detach().numpy()
    np.testing.assert_allclose(arr["top"], top, rtol=1e-3)  # float16: the page prints 3 digits
    tokens = torch.cat(windows)
    names = data["vocab"]
    for f in range(0, tc.cfg.width, 5):
        for j in range(5):
            if arr["top"][f, j] <= 0:
                assert not arr["tokens"][f, j].any()  # an empty slot shows nothing
                continue
            s, p = int(ex.top_window[f, j]), int(ex.top_pos[f, j])
            shown = [names[t - 1] for t in arr["tokens"][f, j] if t]
            lo = max(0, p - data["at"])
            assert shown == [vocab[int(t)] for t in tokens[s, lo:p + 8 - data["at"]]]
            assert abs(int(arr["acts"][f, j, data["at"]]) - 255 * top[f, j] / top[f, 0]) <= 1  # 8-bit shade
        assert [names[i] for i in arr["promoted_ids"][f]] == [vocab[int(t)] for t in eff.promoted_ids[f]]
        assert [names[i] for i in arr["suppressed_ids"][f]] == [vocab[int(t)] for t in eff.suppressed_ids[f]]
    np.testing.assert_array_equal(arr["up_layer"], up.layer.numpy())
    assert data["upstream_links"] == {"0": "L0.html"}
    assert dashboard_info(out[1][4]) == {"hook": tc.cfg.hook, "out_hook": tc.cfg.out_hook, "width": 48,
                                         "dictionary": None, "name": tc.cfg.name}


def test_page_escapes_every_data_string(tiny_pages):
    *_, out = tiny_pages
    page = render_dashboard(out[1][3])
    body = page.split('<script id="dashboard-data" type="application/json">', 1)[1]
    assert body.index("</script>") > body.index("\\u003c/script\\u003e")  # the data's own </script> is escaped
    assert "<img" not in page and "<iframe" not in page and "<title>layer 1 &lt;/script&gt;&lt;img" in page


def test_dashboard_links_pick_the_matching_page(tiny_pages, tmp_path):
    model, tcs, *_, out = tiny_pages
    folder = out[0][4].parent
    ident = lambda L: {"hook": tcs[L].cfg.hook, "out_hook": tcs[L].cfg.out_hook, "width": tcs[L].cfg.width}  # noqa: E731
    other = transcoder(1, 7, 9)
    links, missing = dashboard_links(folder, [("blocks.0.hook_mlp_out", ident(0)), ("blocks.1.hook_mlp_out", ident(1)),
                                              ("x", {"hook": other.cfg.hook, "out_hook": other.cfg.out_hook, "width": 7})],
                                     tmp_path / "circuits")
    assert missing == ["x"]
    assert (tmp_path / "circuits" / links["blocks.1.hook_mlp_out"]).resolve() == out[1][4].resolve()
    # what `feature-circuit --dashboards` records: {node site: href from the circuit JSON's folder}
    from rich.console import Console

    from sparsecircuits.cli.feature_circuits import _dashboards

    sae = make_dictionary(DictConfig(arch="topk", hook="blocks.0.hook_resid_post", d_in=32, width=8, k=2))
    said = io.StringIO()
    got = _dashboards(Console(file=said), folder, [tcs[0], tcs[1], sae], tmp_path / "c" / "sfc.json")
    assert set(got) == {"blocks.0.hook_mlp_out", "blocks.1.hook_mlp_out"} and "blocks.0.hook_resid_post" in said.getvalue()
    assert (tmp_path / "c" / got["blocks.0.hook_mlp_out"]).resolve() == out[0][4].resolve()


# ---------------------------------------------------------------- in a real browser


@pytest.fixture(scope="module")
def browser():
    if find_chromium() is None:
        if os.environ.get("SPARSECIRCUITS_REQUIRE_BROWSER"):
            pytest.fail("SPARSECIRCUITS_REQUIRE_BROWSER is set but no Chromium binary was found")
        pytest.skip("no Chromium binary (Debian: apt-get install chromium); browser tests need a real browser")
    with Browser() as b:
        yield b


def open_dashboard(browser: Browser, path: Path, fragment: str = ""):
    page = browser.new_page(1280, 800)
    page.goto(path.as_uri() + fragment)
    page.wait_for("document.body.dataset.ready === '1'")
    return page


def clean(page, path: Path) -> bool:
    """No errors, dialogs, or requests other than the page itself."""
    return not page.log.errors and not page.log.dialogs and not [u for u in page.log.requests if u != path.as_uri()]


def test_dashboard_in_browser_select_search_deep_link(browser, tiny_pages):
    _, tcs, _, vocab, out = tiny_pages
    ex, eff, _, data, path = out[1]
    arr = {k: unpack(v) for k, v in data["arrays"].items()}
    page = open_dashboard(browser, path, "#f=7")
    assert page.evaluate("dash.current") == 7  # the deep link opened feature 7
    n_ctx = int((arr["top"][7] > 0).sum())
    assert page.evaluate("document.querySelectorAll('#f-contexts .ctx').length") == n_ctx
    assert page.evaluate("document.querySelectorAll('#f-contexts .tok.max').length") == n_ctx
    assert page.evaluate("document.querySelectorAll('#f-hist rect').length") == int((arr["hist"][7] > 0).sum())
    promoted = page.evaluate("[...document.querySelectorAll('#f-logits td.tok')].map(e => e.textContent)")
    assert promoted[0] == vocab[int(eff.promoted_ids[7, 0])]
    ups = page.evaluate("[...document.querySelectorAll('#f-upstream a')].map(a => a.getAttribute('href'))")
    assert ups and all(h.startswith("L0.html#f=") for h in ups)
    # a click in the list selects; the hash follows
    page.click_selector("#list .row[data-f='3']")
    assert page.evaluate("dash.current") == 3 and page.evaluate("location.hash") == "#f=3"
    # search by id
    page.type_into("#fid", "41")
    page.evaluate("document.getElementById('fid').dispatchEvent(new Event('change'))")
    assert page.evaluate("dash.current") == 41
    # search by token: exactly the features whose contexts or promoted tokens hold it (brute force)
    names = data["vocab"]
    for query, substr in (("t33", False), ("def", False), ("de", True)):
        hit = {i + 1 for i, s in enumerate(names) if (query in s.strip().lower() if substr else s.strip().lower() == query)}
        want = {f for f in range(48) if hit & set(arr["tokens"][f].ravel().tolist())
                or hit & {int(i) + 1 for i in arr["promoted_ids"][f]}}
        page.evaluate(f"document.getElementById('substr').checked = {json.dumps(substr)}")
        page.type_into("#search", query)
        assert set(page.evaluate("dash.listed")) == want, query
    assert page.evaluate("dash.listed").__len__() == page.evaluate("dash.searchToken('de', true)").__len__()
    # changing the hash opens another feature
    page.evaluate("location.hash = '#f=12'")
    page.wait_for("dash.current === 12")
    # arrow keys walk the (full, by id) list
    page.evaluate("(() => { const s = document.getElementById('search'); s.value = ''; s.dispatchEvent(new Event('input'));"
                  " s.blur(); })()")
    assert page.evaluate("dash.listed.length") == 48
    page.send("Input.dispatchKeyEvent", {"type": "keyDown", "key": "ArrowDown", "code": "ArrowDown", "windowsVirtualKeyCode": 40})
    assert page.evaluate("dash.current") == 13
    assert clean(page, path)


def test_hostile_token_strings_render_as_text(browser, tiny_pages):
    *_, out = tiny_pages
    ex, _, _, data, path = out[1]
    page = open_dashboard(browser, path)
    texts = set()
    for f in range(48):  # every hostile string that appears in some context shows verbatim
        page.evaluate(f"dash.select({f})")
        texts |= set(page.evaluate("[...document.querySelectorAll('#f-contexts .tok')].map(e => e.textContent)"))
    assert set(HOSTILE) & texts
    assert page.evaluate("document.title") == "layer 1 " + HOSTILE[0]
    assert page.evaluate("document.getElementById('notes').textContent") == HOSTILE[1]
    assert page.evaluate("document.querySelectorAll('img, iframe, b, svg[onload]').length") == 0
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert clean(page, path)


# ---------------------------------------------------------------- the CLI


def test_features_html_cli_and_graph_links(tmp_path, small_corpus, capsys):
    import dataclasses

    import sparsecircuits
    from sparsecircuits.cli import main
    from sparsecircuits.data.corpus import DataConfig
    from sparsecircuits.graph import Circuit
    from sparsecircuits.model.checkpoint import save_checkpoint

    tok = Path(sparsecircuits.__file__).parent / "assets" / "quickstart" / "dense" / "tokenizer.json"  # 1,024 tokens
    model = tiny_model(d_vocab=1024, n_ctx=32, act_sparsity=1.0)
    spec = {"data": dataclasses.asdict(DataConfig(sources=(str(small_corpus),), vocab_size=1024, tokenizer_sample_mb=1.0))}
    ck = save_checkpoint(tmp_path / "model", model, meta={"spec": spec}, tokenizer_json=tok.read_text())
    for L in (0, 1):
        save_dictionary(transcoder(L, 32, L), tmp_path / "tcs" / f"L{L}")
    common = ["features", "--model", str(ck), "--dictionary", str(tmp_path / "tcs"), "--batches", "2",
              "--batch-size", "4", "--top", "4", "--context", "6", "--cache-dir", str(tmp_path / "cache")]
    dash = tmp_path / "dash"
    for L in (0, 1):  # lower layers first: layer 1's page links layer 0's
        assert main([*common, "--layer", str(L), "--html", str(dash / f"L{L}.html")]) == 0
    assert "linked to their dashboards: [0]" in capsys.readouterr().out
    assert main([*common, "--out", str(tmp_path / "feat")]) == 2  # a set needs --layer
    data = json.loads(dash.joinpath("L1.html").read_text().split('type="application/json">', 1)[1].split("</script>")[0])
    assert data["upstream_links"] == {"0": "L0.html"} and "up_layer" in data["arrays"]
    assert data["n_features"] == 32 and data["k"] == 4 and data["context"] == 6
    # the attribution graph records the dashboards, relative to where each JSON is written
    out = tmp_path / "graphs" / "g.json"
    assert main(["graph", "--model", str(ck), "--transcoders", str(tmp_path / "tcs"), "--prompt", "def f(x):",
                 "--out", str(out), "--circuit", str(tmp_path / "c.json"), "--dashboards", str(dash)]) == 0
    assert json.loads(out.read_text())["metadata"]["feature_dashboards"] == {"0": "../dash/L0.html", "1": "../dash/L1.html"}
    assert Circuit.load(tmp_path / "c.json").metadata["dashboards"] == {"blocks.0.hook_mlp_out": "dash/L0.html",
                                                                         "blocks.1.hook_mlp_out": "dash/L1.html"}
