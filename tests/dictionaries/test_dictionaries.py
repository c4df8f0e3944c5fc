"""Sparse dictionaries: architecture invariants, training, resume, metrics and feature examples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_model
from sparsecircuits.dictionaries import (
    ARCHITECTURES,
    DictConfig,
    DictTrainConfig,
    evaluate_dictionary,
    feature_examples,
    fvu,
    load_dictionary,
    load_feature_examples,
    make_dictionary,
    neuron_source,
    save_feature_examples,
    train_dictionaries,
)
from sparsecircuits.dictionaries.base import SparsityCoefs
from sparsecircuits.dictionaries.train import StepInput, train_step

ASSETS = Path(__file__).resolve().parents[2] / "sparsecircuits" / "assets" / "quickstart"
COEFS = SparsityCoefs(l1=1.0, l0=1.0, bandwidth=0.5)


def _dict(arch: str, width: int = 64, d: int = 16, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return make_dictionary(DictConfig(arch=arch, hook="h", d_in=d, width=width, **kw))


def test_registry_drives_cli_choices():
    from sparsecircuits.cli.main import build_parser

    assert set(ARCHITECTURES) >= {"relu", "topk", "batchtopk", "jumprelu"}
    sub = next(a for a in build_parser("train-dict")._actions if a.dest == "command")
    arch = next(a for a in sub.choices["train-dict"]._actions if a.dest == "arch")
    assert sorted(arch.choices) == sorted(ARCHITECTURES)


def test_topk_keeps_exactly_k():
    d = _dict("topk", k=5)
    with torch.no_grad():
        d.b_enc.fill_(10.0)  # every pre-activation positive: exactly k survive
    acts = d.encode(torch.randn(7, 3, 16))
    assert ((acts > 0).sum(-1) == 5).all()
    x9 = torch.randn(9, 16)
    out = d.sparsity_terms(x9, d.pre_acts(x9), COEFS)
    assert ((out.acts > 0).sum(-1) == 5).all()


def test_topk_sparse_training_path_matches_dense():
    """The sparse top-k training path (embedding lookups, sparse decode) gives the dense gradients."""
    d = _dict("topk", k=5)
    x, y = torch.randn(10, 16), torch.randn(10, 16)
    terms = d.sparsity_terms(x, d.pre_acts(x), COEFS)
    sparse_loss = (d.decode_sparse(terms.indices, terms.values) - y).pow(2).sum()
    grads = torch.autograd.grad(sparse_loss, [d.W_enc, d.b_enc, d.W_dec, d.b_dec])
    dense_loss = (d.decode(d.activation(d.pre_acts(x))) - y).pow(2).sum()
    for g_sparse, g_dense in zip(grads, torch.autograd.grad(dense_loss, [d.W_enc, d.b_enc, d.W_dec, d.b_dec])):
        torch.testing.assert_close(g_sparse, g_dense, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(terms.acts, d.activation(d.pre_acts(x)).detach())


def test_batchtopk_keeps_k_times_batch_and_learns_threshold():
    d = _dict("batchtopk", k=4)
    with torch.no_grad():
        d.b_enc.fill_(10.0)
    x = torch.randn(12, 16)
    pre = d.pre_acts(x)
    out = d.sparsity_terms(x, pre, COEFS)
    assert int((out.acts > 0).sum()) == 4 * 12
    per_token = (out.acts > 0).sum(-1)
    assert per_token.min() != per_token.max() or per_token[0] == 4
    theta = float(d.threshold)
    assert theta > 0 and theta == pytest.approx(float(out.acts.detach()[out.acts > 0].min()))
    # inference: one threshold for every token
    assert torch.equal(d.activation(pre), pre * (pre > theta))


def test_jumprelu_threshold_gets_straight_through_gradient():
    d = _dict("jumprelu")
    theta = float(d.threshold[0].detach())
    pre = torch.full((4, 64), theta) + torch.linspace(-0.2, 0.2, 4)[:, None]  # inside the bandwidth
    pre.requires_grad_(True)
    out = d.sparsity_terms(None, pre, COEFS)
    assert torch.equal(out.acts.detach(), (pre * (pre > theta)).detach())
    (out.acts.sum() + out.penalty).backward()
    assert d.log_threshold.grad is not None and d.log_threshold.grad.abs().min() > 0
    # below the threshold no gradient reaches the pre-activation (the jump is not differentiated)
    assert pre.grad[0].abs().max() == 0 and pre.grad[3].abs().min() > 0


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "jumprelu"])
def test_train_step_keeps_unit_decoder_rows(arch):
    d = _dict(arch, k=4)
    opt = torch.optim.Adam(d.parameters(), lr=1e-2)
    x = torch.randn(32, 16)
    for _ in range(3):
        train_step(d, opt, StepInput(x, x, 1e-2, COEFS, torch.ones(64, dtype=torch.bool)), 8, 1 / 32)
    torch.testing.assert_close(d.W_dec.norm(dim=1), torch.ones(64))


def test_relu_decoder_norm_is_free_and_penalised():
    d = _dict("relu")
    with torch.no_grad():
        d.W_dec.mul_(2.0)
    x = torch.randn(8, 16)
    terms = d.sparsity_terms(x, d.pre_acts(x), SparsityCoefs(1.0, 0.0, 1.0))
    want = float((torch.relu(d.pre_acts(x)) * 2.0).sum(-1).mean().detach())
    assert float(terms.penalty.detach()) == pytest.approx(want, rel=1e-5)


def test_transcoder_skip_connection_and_errors():
    torch.manual_seed(0)
    d = make_dictionary(DictConfig(arch="relu", hook="a", out_hook="b", d_in=16, d_out=12, width=32, skip=True))
    with torch.no_grad():
        d.W_skip.normal_()
    x, y = torch.randn(5, 16), torch.randn(5, 12)
    out = d(x, y)
    expected = torch.relu(x @ d.W_enc + d.b_enc) @ d.W_dec + d.b_dec + x @ d.W_skip.T
    torch.testing.assert_close(out.recon, expected)
    torch.testing.assert_close(out.error, y - expected)
    with pytest.raises(ValueError, match="target"):
        d(x)
    with pytest.raises(ValueError, match="skip connection"):
        d.decode(out.acts)
    with pytest.raises(ValueError, match="expects input width 16"):
        d.encode(torch.randn(3, 12))


def test_config_validation():
    with pytest.raises(ValueError, match="arch must be one of"):
        DictConfig(arch="gated", hook="h", d_in=4)
    with pytest.raises(ValueError, match="k must be in"):
        DictConfig(arch="topk", hook="h", d_in=4, width=8, k=9)
    with pytest.raises(ValueError, match="buffer_tokens"):
        DictTrainConfig(batch_size=64, buffer_tokens=32)


@pytest.fixture(scope="module")
def shipped():
    """The shipped quickstart model and ~200k tokens of stdlib code encoded with its tokenizer."""
    from sparsecircuits.data.corpus import stdlib_dir
    from sparsecircuits.data.tokenizer import load_tokenizer
    from sparsecircuits.model.checkpoint import load_checkpoint

    ck = load_checkpoint(ASSETS / "sparse")
    tok = load_tokenizer(ck.tokenizer_path)
    files = sorted((stdlib_dir() / "json").glob("*.py")) + sorted((stdlib_dir() / "email").glob("*.py"))
    ids = [i for f in files for i in tok.encode(f.read_text()).ids]
    return ck.model.eval(), np.array(ids, dtype=np.uint16)


def test_sweep_training_reduces_fvu_on_real_activations(shipped, tmp_path):
    torch.set_num_threads(1)
    model, tokens = shipped
    hook = "blocks.1.hook_resid_post"
    cfgs = [DictConfig(arch=a, hook=hook, d_in=128, width=256, k=16) for a in ("topk", "batchtopk", "relu", "jumprelu")]
    cfgs.append(DictConfig(arch="topk", hook="blocks.0.ln2.hook_normalized", out_hook="blocks.0.hook_mlp_out",
                           d_in=128, width=256, k=16))
    cfg = DictTrainConfig(tokens=1024 * 40, batch_size=1024, buffer_tokens=8192, lr=3e-3, warmup_steps=5,
                          l1_coef=0.5, l0_coef=0.05, log_every=5)
    first: dict[str, float] = {}
    result = train_dictionaries(model, tokens, cfgs, cfg, tmp_path,
                                on_step=lambda r: first or first.update({s.name: s.fvu for s in r.dicts}))
    for s in result.stats:
        assert s.fvu < 0.6 * first[s.name], (s.name, first[s.name], s.fvu)
    assert (tmp_path / "metrics.jsonl").exists()
    # the exported folders load and reproduce the trained (folded) dictionary on raw activations
    _, cache = model.run_with_cache(torch.from_numpy(tokens[:256].astype(np.int64)).view(2, 128), names_filter=hook)
    x = cache[hook].flatten(0, 1)
    d = load_dictionary(result.paths[cfgs[0].name])
    assert fvu(d(x).recon, x) < 0.6


def test_resume_reproduces_uninterrupted_run(tmp_path):
    torch.set_num_threads(1)
    model = tiny_model()
    tokens = np.random.default_rng(0).integers(0, 97, size=5000).astype(np.uint16)
    cfgs = [DictConfig(arch="relu", hook="blocks.0.hook_resid_post", d_in=32, width=48),
            DictConfig(arch="topk", hook="blocks.0.ln2.hook_normalized", out_hook="blocks.0.hook_mlp_out",
                       d_in=32, width=48, k=4)]
    cfg = DictTrainConfig(tokens=64 * 12, batch_size=64, buffer_tokens=24 * 8, warmup_steps=2, ckpt_every=3,
                          resample_at=(0.5,), dead_tokens=64)
    full = train_dictionaries(model, tokens, cfgs, cfg, tmp_path / "full")
    part = train_dictionaries(model, tokens, cfgs, cfg, tmp_path / "part", should_stop=lambda s: s == 5)
    assert part.stopped_early and part.step == 5
    with pytest.raises(ValueError, match="already holds a checkpoint"):
        train_dictionaries(model, tokens, cfgs, cfg, tmp_path / "part")
    resumed = train_dictionaries(model, tokens, cfgs, cfg, tmp_path / "part", resume=True)
    assert resumed.step == full.step
    for c in cfgs:
        a, b = load_dictionary(full.paths[c.name]), load_dictionary(resumed.paths[c.name])
        for k, v in a.state_dict().items():
            torch.testing.assert_close(v, b.state_dict()[k], rtol=0, atol=0)
    lines = (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len((tmp_path / "full" / "metrics.jsonl").read_text().splitlines())


def test_wrong_hook_and_shape_give_clear_errors(tmp_path):
    model = tiny_model()
    tokens = np.zeros(1000, dtype=np.uint16)
    cfg = DictTrainConfig(tokens=128, batch_size=64, buffer_tokens=96)
    with pytest.raises(ValueError, match="did you mean 'blocks.0.hook_resid_post'"):
        train_dictionaries(model, tokens, [DictConfig(hook="blocks.0.hook_resid_pots", d_in=32, width=8, k=2)],
                           cfg, tmp_path / "a")
    with pytest.raises(ValueError, match="do not match the model"):
        train_dictionaries(model, tokens, [DictConfig(hook="blocks.0.hook_resid_post", d_in=64, width=8, k=2)],
                           cfg, tmp_path / "b")
    with pytest.raises(ValueError, match="dictionaries need"):
        train_dictionaries(model, tokens, [DictConfig(hook="blocks.0.attn.hook_q", d_in=32, width=8, k=2)],
                           cfg, tmp_path / "c")
    with pytest.raises(ValueError, match="runs after"):
        train_dictionaries(model, tokens, [DictConfig(hook="blocks.0.hook_mlp_out", out_hook="blocks.0.hook_resid_pre",
                                                      d_in=32, width=8, k=2)], cfg, tmp_path / "d")


@pytest.mark.parametrize("transcoder", [False, True])
def test_spliced_loss_with_error_added_equals_clean(transcoder):
    torch.manual_seed(0)
    model = tiny_model().eval()
    hook, out_hook = ("blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out") if transcoder else ("blocks.0.hook_resid_post", "")
    d = make_dictionary(DictConfig(arch="topk", hook=hook, out_hook=out_hook, d_in=32, width=64, k=8))
    windows = [torch.randint(0, 97, (3, 17)) for _ in range(2)]
    ev = evaluate_dictionary(model, d, windows)
    assert ev.ce_error_added == pytest.approx(ev.ce_clean, abs=1e-5)
    assert ev.ce_spliced != pytest.approx(ev.ce_clean, abs=1e-5)
    assert ev.l0 == pytest.approx(8.0) and ev.n_tokens == 2 * 3 * 16
    assert sum(ev.density_hist) == 64
    assert 0 <= ev.dead_frac <= 1 and ev.kl_spliced > 0


def test_feature_examples_match_brute_force(tmp_path):
    torch.manual_seed(0)
    model = tiny_model().eval()
    windows = [torch.randint(0, 97, (4, 20)) for _ in range(3)]
    hook = "blocks.0.mlp.hook_post"
    ex = feature_examples(model, neuron_source(model, hook), windows, k=3, context=5, context_after=1, n_bins=4)
    acts = torch.cat([model.run_with_cache(w, names_filter=hook)[1][hook] for w in windows])  # [12, 20, 64]
    flat = acts.reshape(-1, acts.shape[-1])
    top = flat.clamp_min(0).topk(3, dim=0).values.T
    torch.testing.assert_close(ex.top_acts, top)
    tokens = torch.cat(windows)
    for f in range(0, 64, 7):
        for j in range(3):
            if ex.top_acts[f, j] <= 0:
                assert ex.top_window[f, j] == -1
                continue
            s, p = int(ex.top_window[f, j]), int(ex.top_pos[f, j])
            assert acts[s, p, f] == ex.top_acts[f, j]
            assert ex.contexts[f, j, 3] == tokens[s, p]  # C - 1 - after = 3 is the example token
            assert float(ex.context_acts[f, j, 3]) == pytest.approx(float(acts[s, p, f]), rel=1e-2)
    torch.testing.assert_close(ex.hist_counts.sum(1), (flat > 0).sum(0))
    torch.testing.assert_close(ex.density, (flat > 0).float().mean(0))
    save_feature_examples(ex, tmp_path / "f")
    back = load_feature_examples(tmp_path / "f")
    assert torch.equal(back.contexts, ex.contexts) and back.hook == hook and back.source == "neurons"


def test_cache_until_follows_forward_order_not_registration_order():
    """`mlp.hook_post` is registered before `hook_attn_out` but runs after it: both must be cached."""
    from sparsecircuits.model.cache import cache_until

    model = tiny_model()
    tokens = torch.randint(0, model.cfg.d_vocab, (2, 8))
    hooks = ["blocks.0.hook_attn_out", "blocks.0.mlp.hook_post"]
    got = cache_until(model, tokens, hooks)
    _, cache = model.run_with_cache(tokens, names_filter=hooks)
    assert set(got) == set(hooks)
    for h in hooks:
        torch.testing.assert_close(got[h], cache[h])
    with pytest.raises(ValueError, match="hook_atn_out"):
        cache_until(model, tokens, ["blocks.0.hook_atn_out"])
