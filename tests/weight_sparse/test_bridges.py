"""Bridges between a dense and a weight-sparse model (Gao et al. 2025): sites, hybrid passes at the
identity bridge, joint training, checkpoints and resume, bridged interventions, and input errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import tiny_model, tokens
from sparsecircuits.graph import Circuit, Node
from sparsecircuits.model import ModelConfig
from sparsecircuits.model.checkpoint import save_checkpoint
from sparsecircuits.tasks.base import Example, TaskData
from sparsecircuits.weight_sparse.bridges import (
    BridgeConfig,
    Bridges,
    bridge_loss,
    bridge_sites,
    check_compatible,
    spliced_logits,
)
from sparsecircuits.weight_sparse.bridges_intervene import (
    Intervention,
    apply_intervention,
    bridged_intervention,
    circuit_channels,
)
from sparsecircuits.weight_sparse.bridges_train import BridgeSetup, load_bridges, train_bridges
from sparsecircuits.weight_sparse.train import TrainConfig


@pytest.mark.parametrize("n_layers", [1, 2])
def test_two_l_plus_one_sites_exist(n_layers):
    model = tiny_model(n_layers=n_layers)
    sites = bridge_sites(model.cfg)
    assert len(sites) == 2 * n_layers + 1 and len(set(sites)) == len(sites)
    assert all(s in model.hook_points for s in sites)
    with pytest.raises(ValueError, match="resid_mid"):
        bridge_sites(ModelConfig(**{**model.cfg.to_dict(), "parallel_attn_mlp": True}))


def test_identity_bridges_reproduce_the_model():
    model = tiny_model().eval()
    x = tokens()
    sites = bridge_sites(model.cfg)
    b = Bridges.identity(sites, model.cfg.d_model)
    with torch.no_grad():
        ref, cache = model.run_with_cache(x, names_filter=sites)
        for s in sites:  # both directions are the same model here
            torch.testing.assert_close(spliced_logits(model, x, s, b.encode(s, cache[s])), ref, atol=1e-5, rtol=0)
            torch.testing.assert_close(spliced_logits(model, x, s, b.decode(s, cache[s])), ref, atol=1e-5, rtol=0)
        out = bridge_loss(model, model, b, tokens(pos=17), BridgeConfig(enc_topk=1.0))
    assert out.nmse_dec < 1e-10 and out.nmse_enc < 1e-10
    assert abs(out.kl_d2s) < 1e-5 and abs(out.kl_s2d) < 1e-5


def test_encoder_applies_abs_topk():
    b = Bridges(["blocks.0.hook_resid_pre"], 16, 32, enc_topk=0.25)
    z = b.encode("blocks.0.hook_resid_pre", torch.randn(3, 5, 16))
    assert ((z != 0).sum(-1) == 8).all()


def _stream(n: int = 6000, vocab: int = 97, seed: int = 0) -> np.ndarray:
    # A stream with structure (a noisy repeating pattern) so there is something to learn.
    rng = np.random.default_rng(seed)
    base = np.tile(np.arange(vocab), n // vocab + 1)[:n]
    noise = rng.integers(0, vocab, n)
    return np.where(rng.random(n) < 0.3, noise, base).astype(np.uint16)


def _setup(tmp_path, seed: int = 1) -> BridgeSetup:
    dense = tiny_model(seed=0)
    dense_dir = save_checkpoint(tmp_path / "dense", dense)
    return BridgeSetup(dense, str(dense_dir), tiny_model(seed=seed), "test", _stream(), _stream(seed=1))


def _cfgs(**kw) -> tuple[TrainConfig, BridgeConfig]:
    train = dict(steps=6, batch_size=4, lr=3e-3, val_every=0, ckpt_every=3, val_batches=1, weight_frac=0.25,
                 embed_frac=0.5, min_per_neuron=2, anneal_start=0.0, anneal_end=0.5, seed=0)
    return TrainConfig(**{**train, **kw}), BridgeConfig(hybrid_sites=1, seq_len=16, bridge_lr=3e-3)


def test_joint_training_decreases_the_bridge_loss(tmp_path):
    setup = _setup(tmp_path)
    train, _ = _cfgs(steps=40, ckpt_every=0, weight_frac=1.0, embed_frac=1.0, lr=1e-2, warmup_frac=0.0)
    bcfg = BridgeConfig(hybrid_sites=0, seq_len=16, bridge_lr=1e-2, lstsq_init=False)
    batch = torch.from_numpy(_stream(4 * 17, seed=5).astype(np.int64)).view(4, 17)
    torch.manual_seed(train.seed)  # the bridges train_bridges starts from
    start = Bridges(bridge_sites(setup.sparse.cfg), 32, 32, bcfg.enc_topk)
    with torch.no_grad():
        before = bridge_loss(setup.dense, setup.sparse, start, batch, bcfg)
    res = train_bridges(setup, train, bcfg, tmp_path / "run")  # trains setup.sparse in place
    with torch.no_grad():
        after = bridge_loss(setup.dense, setup.sparse, load_bridges(tmp_path / "run").bridges, batch, bcfg)
    assert res.step == 40
    assert float(after.total) < 0.8 * float(before.total), (before.as_dict(), after.as_dict())
    assert after.nmse_dec < before.nmse_dec and after.kl_s2d < before.kl_s2d


def test_checkpoint_round_trip_and_exact_resume(tmp_path):
    train, bcfg = _cfgs()
    full = train_bridges(_setup(tmp_path), train, bcfg, tmp_path / "full")
    lb = load_bridges(tmp_path / "full")
    assert lb.info["step"] == 6 and lb.info["sites"] == bridge_sites(lb.sparse.cfg)
    assert lb.info["dense"] == str(tmp_path / "dense")
    # the sparse model is weight-sparse at its target L0 and saved in the same folder
    W = lb.sparse.blocks[0].mlp.W_in
    assert int((W != 0).sum()) == round(0.25 * W.numel())

    stopped = train_bridges(_setup(tmp_path), train, bcfg, tmp_path / "cut", should_stop=lambda s: s == 3)
    assert stopped.stopped_early and stopped.step == 3
    with pytest.raises(ValueError, match="already holds"):
        train_bridges(_setup(tmp_path), train, bcfg, tmp_path / "cut")
    with pytest.raises(ValueError, match="different settings"):
        train_bridges(_setup(tmp_path), _cfgs(lr=1e-2)[0], bcfg, tmp_path / "cut", resume=True)
    resumed = train_bridges(_setup(tmp_path), train, bcfg, tmp_path / "cut", resume=True)
    assert resumed.step == 6 and full.last == resumed.last
    a, b = load_bridges(tmp_path / "full"), load_bridges(tmp_path / "cut")
    for x, y in ((a.bridges, b.bridges), (a.sparse, b.sparse)):
        for (k, v), w in zip(x.state_dict().items(), y.state_dict().values()):
            assert torch.equal(v, w), k


def _task(vocab: int = 97, n: int = 6, pos: int = 10) -> TaskData:
    g = torch.Generator().manual_seed(3)
    toks = torch.randint(0, vocab, (n, pos), generator=g)
    ex = [Example(f"p{i}", "a", "b") for i in range(n)]
    return TaskData("toy", ex, toks, torch.full((n,), pos), torch.randint(0, vocab, (n,), generator=g),
                    torch.randint(0, vocab, (n,), generator=g), None, ("a", "b"), 0)


@pytest.mark.parametrize("mode", ["ablate", "steer"])
def test_identity_bridged_intervention_equals_direct(mode):
    model = tiny_model().eval()
    sites = bridge_sites(model.cfg)
    b = Bridges.identity(sites, model.cfg.d_model)
    iv = Intervention(sites[2], (3, 17), mode, alpha=2.0, baseline=torch.linspace(-1, 1, model.cfg.d_model))
    res = bridged_intervention(model, model, b, _task(), iv)
    torch.testing.assert_close(res.dense_edit, res.sparse_edit, atol=1e-5, rtol=0)
    torch.testing.assert_close(res.dense_clean, res.sparse_clean)
    assert res.sparse_change.abs().max() > 1e-4  # the edit does something
    s = res.summary()
    assert s["sign_agreement"] == 1.0 and s["same_direction"] and s["n_prompts"] == 6


def test_apply_intervention_values():
    z = torch.arange(8.0).view(1, 8)
    base = torch.full((8,), -1.0)
    assert apply_intervention(z, Intervention("s", (1, 2), "ablate", baseline=base)).tolist() == [
        [0, -1, -1, 3, 4, 5, 6, 7]]
    assert apply_intervention(z, Intervention("s", (0,), "ablate")).tolist()[0][0] == 0.0
    assert apply_intervention(z, Intervention("s", (7,), "steer", alpha=0.5)).tolist()[0][7] == 7.5


def test_bad_inputs_raise_clear_errors(tmp_path):
    cfg = tiny_model().cfg
    for field, value in (("d_vocab", 50), ("n_ctx", 12), ("n_layers", 1)):
        other = ModelConfig(**{**cfg.to_dict(), field: value})
        with pytest.raises(ValueError, match=field):
            check_compatible(cfg, other)
    check_compatible(cfg, ModelConfig(**{**cfg.to_dict(), "d_model": 48}))  # widths may differ
    b = Bridges.identity(bridge_sites(cfg), cfg.d_model)
    with pytest.raises(ValueError, match="no bridge at site"):
        Intervention("blocks.0.hook_attn_out", (1,), "ablate").check(b)
    with pytest.raises(ValueError, match="out of range"):
        Intervention("blocks.0.hook_resid_pre", (1, 32), "ablate").check(b)
    with pytest.raises(ValueError, match="mode"):
        Intervention("blocks.0.hook_resid_pre", (1,), "scale")
    with pytest.raises(ValueError, match="enc_topk"):
        BridgeConfig(enc_topk=0.0)
    # mismatched checkpoints for training, and a different dense model at load time
    setup = _setup(tmp_path)
    setup.sparse = tiny_model(n_layers=1)
    with pytest.raises(ValueError, match="n_layers"):
        train_bridges(setup, *_cfgs(), tmp_path / "bad")
    train_bridges(_setup(tmp_path), *_cfgs(steps=1), tmp_path / "ok")
    other = save_checkpoint(tmp_path / "other", tiny_model(seed=7))
    with pytest.raises(ValueError, match="fingerprint"):
        load_bridges(tmp_path / "ok", dense_path=other)


def test_circuit_channels_map_readers_and_writers_to_resid_sites():
    nodes = [Node("blocks.0.ln1.hook_normalized", 4, "resid_read", 0),
             Node("blocks.0.hook_attn_out", 5, "resid_write", 0),
             Node("blocks.0.ln2.hook_normalized", 6, "resid_read", 0),
             Node("blocks.0.hook_mlp_out", 7, "resid_write", 0),
             Node("blocks.1.hook_mlp_out", 8, "resid_write", 1),
             Node("blocks.0.mlp.hook_post", 9, "neuron", 0)]
    c = Circuit(nodes)
    assert circuit_channels(c, "blocks.0.hook_resid_pre", 2) == [4]
    assert circuit_channels(c, "blocks.0.hook_resid_mid", 2) == [5, 6]
    assert circuit_channels(c, "blocks.1.hook_resid_pre", 2) == [7]
    assert circuit_channels(c, "blocks.1.hook_resid_post", 2) == [8]


def test_cli_parses_both_commands():
    from sparsecircuits.cli.main import build_parser

    a = build_parser("train-bridges").parse_args(["train-bridges", "--dense", "d", "--sparse-init", "s", "--out", "o", "--steps", "3",
                      "--kl-coef", "0.5"])
    assert str(a.dense) == "d" and a.__dict__["TrainConfig.steps"] == 3 and a.__dict__["BridgeConfig.kl_coef"] == 0.5
    b = build_parser("bridge-intervene").parse_args(["bridge-intervene", "--bridges", "b", "--task", "single_double_quote", "--site",
                      "blocks.1.hook_resid_mid", "--channels", "3", "17", "--mode", "steer", "--alpha", "2"])
    assert b.channels == [3, 17] and b.mode == "steer" and b.alpha == 2.0
