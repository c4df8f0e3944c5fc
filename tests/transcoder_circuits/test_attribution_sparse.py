"""Attribution graphs on models with AbsTopK activation sparsity (Gao et al.) and post-norms / soft-caps
(Gemma 2): the replacement model freezes every AbsTopK selection, so the same ground-truth checks as
the dense case hold — every edge is the measured intervention in the frozen model, values are incoming
edges plus bias, the clean replacement reproduces the logits, greedy paths sum to their roots — and
`sparsecircuits graph` runs end to end on an AbsTopK checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_attribution_graph import (
    assert_edges_are_interventions,
    assert_greedy_paths_sum_to_root,
    assert_replacement_reproduces_logits,
    assert_values_are_incoming_edges_plus_bias,
    setup,
)

from conftest import tiny_model
from sparsecircuits.dictionaries import DictConfig, make_dictionary
from sparsecircuits.model.config import ACT_SPARSITY_SITES
from sparsecircuits.transcoder_circuits.attribution_graph import AttributionConfig, attribute
from sparsecircuits.transcoder_circuits.replacement import freeze

# AbsTopK keeps half of every site's entries (all eight sites: tiny_model's default).
VARIANTS = {
    "abstopk-gqa-skip": dict(model=dict(n_kv_heads=2, act_sparsity=0.5), skip=True, site="ln2.hook_normalized"),
    "postnorm-softcap": dict(model=dict(post_norms=True, attn_softcap=0.05, logit_softcap=0.5), skip=True,
                             site="ln2.hook_normalized"),
    "abstopk-postnorm-softcap-layernorm": dict(
        model=dict(act_sparsity=0.5, post_norms=True, attn_softcap=0.05, logit_softcap=0.5, norm="layer",
                   positions="rotary"), skip=False, site="ln2.hook_normalized"),
    "abstopk-parallel-mlp-in": dict(model=dict(act_sparsity=0.5, parallel_attn_mlp=True, positions="learned",
                                               bias_unembed=True), skip=True, site="hook_mlp_in"),
}


@pytest.fixture(scope="module", params=list(VARIANTS))
def built(request):
    model, tcs, toks = setup(VARIANTS[request.param])
    return model, tcs, toks, attribute(model, tcs, toks, AttributionConfig(batch_size=16))


def test_every_selection_is_frozen(built):
    """`freeze` records one 0/1 selection per AbsTopK site and layer, keeping half of each row."""
    model, tcs, toks, _ = built
    st = freeze(model, tcs, toks)
    if not model.cfg.sparse_at("v"):
        assert st.keeps == {}
        return
    assert len(st.keeps) == len(ACT_SPARSITY_SITES) * model.cfg.n_layers
    for name, keep in st.keeps.items():
        assert keep.shape[0] == toks.numel() and set(keep.unique().tolist()) == {0.0, 1.0}, name
        assert bool((keep.sum(-1) == keep.shape[-1] // 2).all()), name


def test_every_edge_is_the_measured_intervention(built):
    """As in the dense case: removing each source alone in the frozen replacement model (selections,
    scales and patterns fixed) changes every target by minus its edge."""
    assert_edges_are_interventions(*built)


def test_values_are_incoming_edges_plus_bias(built):
    assert_values_are_incoming_edges_plus_bias(built[3])


def test_replacement_reproduces_logits(built):
    assert_replacement_reproduces_logits(*built[:3])


def test_greedy_paths_sum_to_root(built):
    assert_greedy_paths_sum_to_root(*built[:3])


def test_cli_graph_on_abstopk_model(tmp_path):
    """`sparsecircuits graph` and `transcoder-paths` on an AbsTopK checkpoint (all eight sites)."""
    from tokenizers import Tokenizer

    from sparsecircuits.cli import main
    from sparsecircuits.dictionaries import save_dictionary
    from sparsecircuits.graph import Circuit
    from sparsecircuits.model.checkpoint import save_checkpoint

    tok_path = Path(__file__).resolve().parents[2] / "sparsecircuits" / "assets" / "quickstart" / "sparse" / "tokenizer.json"
    vocab = Tokenizer.from_file(str(tok_path)).get_vocab_size()
    model = tiny_model(act_sparsity=0.5, d_vocab=vocab, n_ctx=64, n_layers=2)
    assert all(model.cfg.sparse_at(s) for s in ACT_SPARSITY_SITES)
    ck = save_checkpoint(tmp_path / "model", model, meta={"step": 0}, tokenizer_json=tok_path.read_text())
    for layer in range(2):
        d = make_dictionary(DictConfig(arch="relu", hook=f"blocks.{layer}.ln2.hook_normalized",
                                       out_hook=f"blocks.{layer}.hook_mlp_out", d_in=32, width=16))
        save_dictionary(d, tmp_path / "tcs" / f"L{layer}")
    common = ["--model", str(ck), "--transcoders", str(tmp_path / "tcs"), "--prompt", "def f(x): return x"]
    assert main(["graph", *common, "--out", str(tmp_path / "g.json"), "--circuit", str(tmp_path / "c.json")]) == 0
    js = json.loads((tmp_path / "g.json").read_text())
    kinds = {n["feature_type"] for n in js["nodes"]}
    assert js["links"] and {"cross layer transcoder", "embedding", "logit"} <= kinds
    assert Circuit.load(tmp_path / "c.json").edges
    assert main(["transcoder-paths", *common, "--feature", "1", "-1", "-1", "--steps", "2", "--branches", "4",
                 "--out", str(tmp_path / "p.json")]) == 0
    assert Circuit.load(tmp_path / "p.json").nodes
