"""Dunefsky et al.'s weight-based analyses (`transcoder_circuits/connections.py`) against measured
interventions in tiny float64 models, with every norm scale held at 1 (the analyses' norm treatment):

* a direct connection d_i · r_f is the change of feature f's pre-activation when d_i is added to the
  residual stream its MLP reads (`hook_mlp_in`);
* a connection through head a.h is that change when d_i is added to the head's value input at a
  source position that the head alone attends with weight 1 (pattern frozen, every other attention
  output and the MLP outputs in between frozen, so only that one OV path carries it);
* de-embeddings: the same with the token's embedding s_E W_E[t] in place of d_i;
and the CLI commands (`connections`, `de-embed`, `ov-de-embed`, `transcoder-paths --json`) write
those numbers in their JSON, and refuse bad input with exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_attribution_graph import setup

from conftest import tiny_model
from sparsecircuits.dictionaries import DictConfig, make_dictionary
from sparsecircuits.transcoder_circuits import connections as tc_conn

# Shapes: RMSNorm + GQA + sink + transcoders on ln2.hook_normalized; LayerNorm + parallel attention/MLP
# + post-norms + learned positions on hook_mlp_in; LayerNorm (centring) + post-norms + an embedding
# scale on ln2.hook_normalized.
SHAPES = ["rms-gqa-sink-skip", "layernorm-parallel-postnorm",
          dict(model=dict(norm="layer", post_norms=True, embed_scale=1.7, n_kv_heads=2), skip=False,
               site="ln2.hook_normalized")]
IDS = ["rms-gqa", "layernorm-parallel", "layernorm-ln2"]
P, S, OTHER = 4, 1, 0  # the read position, the source position of the head path, where other heads look


def _ones(x, hook):  # noqa: ANN001, ANN202
    return torch.ones_like(x)


SCALES = (lambda n: n.endswith("hook_scale"), _ones)  # every norm's scale held at 1


def _pre_acts(model, tcs, layer, toks, hooks):  # noqa: ANN001, ANN202
    """[batch, width] pre-activations of layer `layer`'s transcoder at position P under `hooks`."""
    got = {}

    def grab(x, hook):  # noqa: ANN001, ANN202
        got["x"] = x

    with torch.no_grad(), model.hooks([SCALES, *hooks, (tcs[layer].cfg.hook, grab)]):
        model(toks)
        return tcs[layer].pre_acts(got["x"][:, P])


def _add_at_mlp_in(layer, vecs):  # noqa: ANN001, ANN202
    """Row b of the batch gets vecs[b] added to MLP `layer`'s input at P (the direct path only)."""
    def fn(x, hook):  # noqa: ANN001, ANN202
        x = x.clone()
        x[:, P] += vecs
        return x
    return (f"blocks.{layer}.hook_mlp_in", fn)


def _head_path(model, toks, a, h, vecs, layer):  # noqa: ANN001, ANN202
    """Hooks that carry vecs[b] (row b) through head a.h's OV circuit alone into position P: added to
    the head's value input at S, the head attends P -> S with weight 1 and every other head looks
    at OTHER; the other blocks' attention outputs and the MLP outputs of blocks a..layer-1 are
    frozen at their values in the same run without the edit."""
    cfg = model.cfg
    names = [f"blocks.{b}.hook_attn_out" for b in range(cfg.n_layers)] + [f"blocks.{b}.hook_mlp_out" for b in range(cfg.n_layers)]
    with torch.no_grad(), model.hooks([SCALES]):
        _, clean = model.run_with_cache(toks[None], names_filter=names)

    def pattern(x, hook):  # noqa: ANN001, ANN202
        x = x.clone()
        x[:, :, P] = 0.0
        x[:, :, P, OTHER] = 1.0
        x[:, h, P, OTHER], x[:, h, P, S] = 0.0, 1.0
        return x

    def v_in(x, hook):  # noqa: ANN001, ANN202  [batch, pos, kv_head, d_model]
        x = x.clone()
        x[:, S, h // (cfg.n_heads // cfg.kv_heads)] += vecs
        return x

    def frozen(name):  # noqa: ANN001, ANN202
        return (name, lambda x, hook: clean[name].expand_as(x))

    hooks = [(f"blocks.{a}.attn.hook_pattern", pattern), (f"blocks.{a}.hook_v_input", v_in)]
    hooks += [frozen(f"blocks.{b}.hook_attn_out") for b in range(cfg.n_layers) if b != a]
    hooks += [frozen(f"blocks.{b}.hook_mlp_out") for b in range(a, layer)]
    return hooks


def _measured(model, tcs, layer, toks, vecs, edit):  # noqa: ANN001, ANN202
    """Change of every feature's pre-activation at P per row, edit(vecs) vs edit(0): [rows, width]."""
    batch = toks[None].expand(len(vecs), -1)
    return _pre_acts(model, tcs, layer, batch, edit(vecs)) - _pre_acts(model, tcs, layer, batch, edit(torch.zeros_like(vecs)))


def _assert_top(links, measured, k, key=lambda link: link.index):  # noqa: ANN001, ANN202
    """Each listed score is the measured one, and the list is the measured top-k by |score|."""
    got = torch.tensor([link.score for link in links], dtype=measured.dtype)
    want = torch.stack([measured[key(link)] for link in links])
    assert torch.allclose(got, want, atol=1e-10), (got, want)
    assert torch.allclose(got.abs(), measured.flatten().abs().topk(k).values, atol=1e-10)


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_connections_are_measured_interventions(shape):
    model, tcs, toks = setup(shape)
    layer, f, k = 2, 5, 6
    res = tc_conn.connections(model, tcs, layer, f, k=k)
    assert sorted(res.direct) == [0, 1] and all(len(v) == k for v in res.direct.values())
    for m in (0, 1):
        W_dec = tcs[m].W_dec.detach()
        direct = _measured(model, tcs, layer, toks, W_dec, lambda v: [_add_at_mlp_in(layer, v)])[:, f]
        _assert_top(res.direct[m], direct, k)
        heads = tc_conn.head_layers(model, layer, above=m)
        assert heads == (list(range(m + 1, 2)) if model.cfg.parallel_attn_mlp else list(range(m + 1, 3)))
        if not heads:
            assert res.ov[m] == []
            continue
        ov = torch.stack([torch.stack([
            _measured(model, tcs, layer, toks, W_dec, lambda v, a=a, h=h: _head_path(model, toks, a, h, v, layer))[:, f]
            for h in range(model.cfg.n_heads)]) for a in heads])  # [block, head, feature]
        _assert_top(res.ov[m], ov, k, key=lambda x: (heads.index(x.head[0]), x.head[1], x.index))
    # the sign options rank by the signed score
    pos = tc_conn.connections(model, tcs, layer, f, k=3, sign="positive").direct[0]
    neg = tc_conn.connections(model, tcs, layer, f, k=3, sign="negative").direct[0]
    scores = (tcs[0].W_dec @ tc_conn.read_vector(model, tcs[layer], layer, f)).detach()
    assert [x.score for x in pos] == pytest.approx(scores.topk(3).values.tolist())
    assert [x.score for x in neg] == pytest.approx((-(-scores).topk(3).values).tolist())


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_de_embeddings_are_measured_interventions(shape):
    model, tcs, toks = setup(shape)
    layer, f, k = 1, 3, 7
    E = (model.W_E * model.cfg.embed_scale).detach()  # [vocab, d_model]: what the embedding writes
    res = tc_conn.de_embeddings(model, tcs, layer, f, k=k, top_heads=3)
    direct = _measured(model, tcs, layer, toks, E, lambda v: [_add_at_mlp_in(layer, v)])[:, f]
    _assert_top(res.direct, direct, k)
    blocks = tc_conn.head_layers(model, layer)
    ov = {(a, h): _measured(model, tcs, layer, toks, E, lambda v, a=a, h=h: _head_path(model, toks, a, h, v, layer))[:, f]
          for a in blocks for h in range(model.cfg.n_heads)}
    for ht in res.heads:
        _assert_top(ht.tokens, ov[(ht.layer, ht.head)], k)
    best = sorted(ov, key=lambda ah: -float(ov[ah].abs().max()))[:3]
    assert [(ht.layer, ht.head) for ht in res.heads] == best
    one = tc_conn.de_embeddings(model, tcs, layer, f, k=2, heads=[best[-1]])
    assert [(ht.layer, ht.head) for ht in one.heads] == [best[-1]]


def test_bad_input_is_refused_with_a_clear_message():
    model, tcs, _ = setup("rms-gqa-sink-skip")
    with pytest.raises(ValueError, match="feature 24 is outside the layer-2 transcoder's features 0..23"):
        tc_conn.connections(model, tcs, 2, 24)
    with pytest.raises(ValueError, match="no transcoder for layer 5"):
        tc_conn.de_embeddings(model, tcs, 5, 0)
    with pytest.raises(ValueError, match="head 2.0 does not lie before layer 1's MLP"):
        tc_conn.de_embeddings(model, tcs, 1, 0, heads=[(2, 0)])
    with pytest.raises(ValueError, match="sign"):
        tc_conn.connections(model, tcs, 2, 0, sign="both")
    sae = make_dictionary(DictConfig(arch="relu", hook="blocks.0.hook_resid_post", d_in=32, width=8)).double()
    with pytest.raises(ValueError, match="expected one of"):
        tc_conn.connections(model, {**tcs, 0: sae}, 2, 0)


@pytest.fixture(scope="module")
def cli_setup(tmp_path_factory):
    from sparsecircuits.dictionaries import save_dictionary
    from sparsecircuits.model.checkpoint import save_checkpoint

    tmp = tmp_path_factory.mktemp("cli")
    tok_path = Path(__file__).resolve().parents[2] / "sparsecircuits" / "assets" / "quickstart" / "dense" / "tokenizer.json"
    model = tiny_model(act_sparsity=1.0, d_vocab=1024, n_ctx=64, n_layers=2)
    ck = save_checkpoint(tmp / "model", model, meta={"step": 0}, tokenizer_json=tok_path.read_text())
    for layer in range(2):
        d = make_dictionary(DictConfig(arch="relu", hook=f"blocks.{layer}.ln2.hook_normalized",
                                       out_hook=f"blocks.{layer}.hook_mlp_out", d_in=32, width=16))
        save_dictionary(d, tmp / "tcs" / f"L{layer}")
    return tmp, ["--model", str(ck), "--transcoders", str(tmp / "tcs")]


def _load(common):  # noqa: ANN001, ANN202
    from sparsecircuits.cli.loading import load_model
    from sparsecircuits.dictionaries import load_dictionary

    model, tok, _ = load_model(common[1])
    tcs = {L: load_dictionary(Path(common[3]) / f"L{L}") for L in range(2)}
    return model, tok, tcs


def test_cli_connections_and_de_embeddings_write_the_library_numbers(cli_setup, capsys):
    from sparsecircuits.cli import main

    tmp, common = cli_setup
    model, tok, tcs = _load(common)
    out = tmp / "conn.json"
    assert main(["connections", *common, "--layer", "1", "--feature", "3", "7", "--top", "4", "--out", str(out)]) == 0
    assert "upstream features of L1 feature 7" in capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert doc["format"] == tc_conn.FORMAT and doc["kind"] == "connections" and doc["sign"] == "abs"
    assert [r["feature"] for r in doc["features"]] == [3, 7]
    want = tc_conn.connections(model, tcs, 1, 7, k=4)
    got = doc["features"][1]
    assert [(x["layer"], x["feature"]) for x in got["direct"]] == [(0, x.index) for x in want.direct[0]]
    assert [x["score"] for x in got["direct"]] == pytest.approx([x.score for x in want.direct[0]])
    assert [(x["head_layer"], x["head"], x["feature"]) for x in got["ov"]] == [(*x.head, x.index) for x in want.ov[0]]

    assert main(["ov-de-embed", *common, "--layer", "1", "--feature", "2", "--top", "3", "--heads", "2", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)  # --json: stdout is exactly one JSON document
    want = tc_conn.de_embeddings(model, tcs, 1, 2, k=3, top_heads=2)
    heads = doc["features"][0]["heads"]
    assert [(h["layer"], h["head"]) for h in heads] == [(h.layer, h.head) for h in want.heads]
    assert [t["token"] for t in heads[0]["tokens"]] == [x.index for x in want.heads[0].tokens]
    assert heads[0]["tokens"][0]["text"] == tok.decode([want.heads[0].tokens[0].index], skip_special_tokens=False)
    assert "direct" not in doc["features"][0]
    assert main(["ov-de-embed", *common, "--layer", "1", "--feature", "2", "--head", "0.3", "1.1"]) == 0
    assert "head 0.3" in capsys.readouterr().out

    assert main(["de-embed", *common, "--layer", "0", "--feature", "5", "--top", "3", "--sign", "positive", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    want = tc_conn.de_embeddings(model, tcs, 0, 5, k=3, heads=[], sign="positive")
    assert [t["token"] for t in doc["features"][0]["direct"]] == [x.index for x in want.direct]


def test_cli_transcoder_paths_json(cli_setup, capsys):
    from sparsecircuits.cli import main
    from sparsecircuits.graph import Circuit

    tmp, common = cli_setup
    args = ["transcoder-paths", *common, "--prompt", "def f(x): return x", "--feature", "1", "-1", "-1",
            "--steps", "2", "--branches", "3"]
    assert main([*args, "--json", "--out", str(tmp / "p.json")]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["kind"] == "paths" and doc["root"]["label"].startswith("L1 feature")
    attrs = [p["attribution"] for p in doc["paths"]]
    assert attrs == sorted(attrs, key=abs, reverse=True) and len(attrs) <= 2 * 3
    assert all(1 <= len(p["nodes"]) <= 2 and p["nodes"][-1]["value"] == p["attribution"] for p in doc["paths"])
    assert Circuit.load(tmp / "p.json").metadata["paths"] == doc["paths"]


@pytest.mark.parametrize("args, message", [
    (["connections", "--layer", "1", "--feature", "16"], "feature 16 is outside the layer-1 transcoder's features 0..15"),
    (["connections", "--layer", "4", "--feature", "0"], "no transcoder for layer 4"),
    (["ov-de-embed", "--layer", "0", "--feature", "0", "--head", "1.0"], "head 1.0 does not lie before layer 0's MLP"),
    (["ov-de-embed", "--layer", "1", "--feature", "0", "--head", "one"], "expected LAYER.HEAD"),
    (["de-embed", "--layer", "1", "--feature", "-1"], "feature -1 is outside"),
])
def test_cli_bad_input_exits_2(cli_setup, capsys, args, message):
    from sparsecircuits.cli import main

    _, common = cli_setup
    assert main([args[0], *common, *args[1:]]) == 2
    assert message in capsys.readouterr().out


def test_cli_missing_transcoders_exits_2(cli_setup, capsys):
    from sparsecircuits.cli import main

    tmp, common = cli_setup
    assert main(["connections", common[0], common[1], "--transcoders", str(tmp / "nope"), "--layer", "1",
                 "--feature", "0"]) == 2
    assert "does not exist" in capsys.readouterr().out


def test_cli_finds_transcoders_one_level_below(tmp_path, capsys):
    """`train-dict --out tcs/L0` writes tcs/L0/<name>/cfg.json: `--transcoders tcs` finds it."""
    from sparsecircuits.cli.graph import load_transcoders
    from sparsecircuits.dictionaries import save_dictionary

    for layer in range(2):
        d = make_dictionary(DictConfig(arch="topk", k=4, hook=f"blocks.{layer}.ln2.hook_normalized",
                                       out_hook=f"blocks.{layer}.hook_mlp_out", d_in=32, width=16))
        save_dictionary(d, tmp_path / "tcs" / f"L{layer}" / "tc-topk-w16-k4")
    (tmp_path / "tcs" / "L0" / "checkpoint").mkdir()  # train-dict's other folder, no cfg.json
    assert sorted(load_transcoders(tmp_path / "tcs")) == [0, 1]
    save_dictionary(d, tmp_path / "tcs" / "L0" / "again")  # a second layer-1 transcoder
    with pytest.raises(ValueError, match="two transcoders for layer 1"):
        load_transcoders(tmp_path / "tcs")
