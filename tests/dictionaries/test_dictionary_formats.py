"""Dictionary files: our SAELens-layout round trip, SAELens / circuit-tracer / Gemma Scope loaders,
the explicit pickle conversion, and clear errors for bad files. Files of other tools are written
here in their published layouts (more layouts: test_layouts.py; SAELens itself: test_peers.py)."""

from __future__ import annotations

import dataclasses
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from sparsecircuits.dictionaries import (
    DictConfig,
    convert_pickle,
    fold_scaling,
    load_dictionary,
    load_gemma_scope,
    load_transcoder_set,
    make_dictionary,
    save_dictionary,
)
from sparsecircuits.dictionaries.formats import parse_simple_yaml
from sparsecircuits.model.checkpoint import CheckpointError


def _random(cfg: DictConfig) -> torch.nn.Module:
    torch.manual_seed(1)
    d = make_dictionary(cfg)
    with torch.no_grad():
        for p in d.parameters():
            p.add_(0.1 * torch.randn_like(p))
    if cfg.arch == "batchtopk":
        d.threshold.fill_(0.05)
    return d.eval()


CASES = [
    DictConfig(arch="relu", hook="blocks.0.hook_resid_post", d_in=16, width=40),
    DictConfig(arch="topk", hook="blocks.0.hook_resid_post", d_in=16, width=40, k=6),
    DictConfig(arch="batchtopk", hook="blocks.0.hook_resid_post", d_in=16, width=40, k=6),
    DictConfig(arch="jumprelu", hook="blocks.0.hook_resid_post", d_in=16, width=40),
    DictConfig(arch="relu", hook="blocks.0.ln2.hook_normalized", out_hook="blocks.0.hook_mlp_out", d_in=16,
               d_out=12, width=40, skip=True),
]


@pytest.mark.parametrize("cfg", CASES, ids=lambda c: c.name + ("-skip" if c.skip else ""))
def test_save_load_round_trip_identical(cfg, tmp_path):
    d = _random(cfg)
    save_dictionary(d, tmp_path / "d")
    back = load_dictionary(tmp_path / "d")
    assert back.cfg == d.cfg
    x, y = torch.randn(9, cfg.d_in), torch.randn(9, cfg.d_out)
    a, b = d(x, y), back(x, y)
    assert torch.equal(a.acts, b.acts) and torch.equal(a.recon, b.recon)


def test_saelens_layout_contents(tmp_path):
    d = _random(CASES[3])
    save_dictionary(d, tmp_path / "j", {"model_name": "tiny"})
    cfg = json.loads((tmp_path / "j" / "cfg.json").read_text())
    assert cfg["architecture"] == "jumprelu" and cfg["d_in"] == 16 and cfg["d_sae"] == 40
    assert cfg["hook_name"] == cfg["metadata"]["hook_name"] == "blocks.0.hook_resid_post"
    assert cfg["apply_b_dec_to_input"] is False and cfg["normalize_activations"] == "none"
    t = load_file(str(tmp_path / "j" / "sae_weights.safetensors"))
    assert {k: tuple(v.shape) for k, v in t.items()} == {"W_enc": (16, 40), "W_dec": (40, 16), "b_enc": (40,),
                                                       "b_dec": (16,), "threshold": (40,)}
    torch.testing.assert_close(t["threshold"], d.threshold.detach())
    tc = _random(CASES[4])
    save_dictionary(tc, tmp_path / "t")
    cfg = json.loads((tmp_path / "t" / "cfg.json").read_text())
    assert cfg["architecture"] == "skip_transcoder" and cfg["d_out"] == 12
    assert cfg["hook_name_out"] == cfg["metadata"]["hook_name_out"] == "blocks.0.hook_mlp_out"
    assert tuple(load_file(str(tmp_path / "t" / "sae_weights.safetensors"))["W_skip"].shape) == (12, 16)
    topk = _random(CASES[1])
    save_dictionary(topk, tmp_path / "k")
    assert json.loads((tmp_path / "k" / "cfg.json").read_text())["k"] == 6


def test_fold_scaling_works_on_raw_activations():
    cfg = CASES[4]
    d = _random(cfg)
    s_in, s_out = 3.0, 0.25
    x, y = torch.randn(7, 16), torch.randn(7, 12)
    scaled = d(x * s_in, y * s_out)
    folded = fold_scaling(d, s_in, s_out)(x, y)
    torch.testing.assert_close(folded.recon, scaled.recon / s_out)
    torch.testing.assert_close(folded.acts, scaled.acts)


def test_load_foreign_saelens_folder_folds_b_dec(tmp_path):
    """An SAELens standard SAE that subtracts b_dec from its input (apply_b_dec_to_input)."""
    torch.manual_seed(2)
    W_enc, W_dec, b_enc, b_dec = torch.randn(16, 24), torch.randn(24, 16), torch.randn(24), torch.randn(16)
    folder = tmp_path / "sl"
    folder.mkdir()
    save_file({"W_enc": W_enc, "W_dec": W_dec, "b_enc": b_enc, "b_dec": b_dec}, str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps({
        "architecture": "standard", "d_in": 16, "d_sae": 24, "dtype": "float32", "device": "cpu",
        "apply_b_dec_to_input": True, "normalize_activations": "none",
        "metadata": {"hook_name": "blocks.2.hook_resid_pre", "sae_lens_version": "6.5.0"}}))
    d = load_dictionary(folder)
    assert d.cfg.arch == "relu" and d.cfg.hook == "blocks.2.hook_resid_pre"
    x = torch.randn(5, 16)
    acts = torch.relu((x - b_dec) @ W_enc + b_enc)
    torch.testing.assert_close(d.encode(x), acts, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(d(x).recon, acts @ W_dec + b_dec, rtol=1e-5, atol=1e-5)


def test_circuit_tracer_transcoder_set(tmp_path):
    torch.manual_seed(3)
    d, F = 16, 32
    layers = []
    for layer in range(2):
        t = {"W_enc": torch.randn(F, d), "W_dec": torch.randn(F, d), "b_enc": torch.randn(F), "b_dec": torch.randn(d)}
        if layer == 1:
            t["activation_function.threshold"] = torch.rand(F) + 0.1
            t["W_skip"] = torch.randn(d, d)
        save_file(t, str(tmp_path / f"layer_{layer}.safetensors"))
        layers.append(t)
    (tmp_path / "config.yaml").write_text(
        "# a circuit-tracer transcoder set\nmodel_name: tiny\nmodel_kind: transcoder_set\n"
        'feature_input_hook: "ln2.hook_normalized"\nfeature_output_hook: hook_mlp_out\nscan: tiny-scan\n'
        "transcoders:\n  - layer_0.safetensors\n  - 'layer_1.safetensors'  # with skip\n")
    ts = load_transcoder_set(tmp_path)
    assert sorted(ts) == [0, 1]
    assert ts[1].cfg.hook == "blocks.1.ln2.hook_normalized" and ts[1].cfg.out_hook == "blocks.1.hook_mlp_out"
    assert ts[0].cfg.arch == "relu" and ts[1].cfg.arch == "jumprelu" and ts[1].cfg.skip
    x = torch.randn(6, d)
    for layer, t in enumerate(layers):
        pre = x @ t["W_enc"].T + t["b_enc"]
        th = t.get("activation_function.threshold")
        acts = torch.relu(pre) if th is None else pre * (pre > th)
        want = acts @ t["W_dec"] + t["b_dec"] + (x @ t["W_skip"].T if "W_skip" in t else 0)
        torch.testing.assert_close(ts[layer](x, torch.zeros(6, d)).recon, want, rtol=1e-5, atol=1e-4)
    assert parse_simple_yaml("a: 1\nb: true\nc: null\nd:\n  - x\n") == {"a": 1, "b": True, "c": None, "d": ["x"]}


@pytest.mark.parametrize("fmt", ["npz", "safetensors2"])
def test_gemma_scope_jumprelu(fmt, tmp_path):
    rng = np.random.default_rng(4)
    p = {"W_enc": rng.normal(size=(16, 32)), "W_dec": rng.normal(size=(32, 16)), "b_enc": rng.normal(size=32),
         "b_dec": rng.normal(size=16), "threshold": rng.uniform(0.1, 1.0, size=32)}
    p = {k: v.astype(np.float32) for k, v in p.items()}
    if fmt == "npz":
        path = tmp_path / "params.npz"
        np.savez(path, **p)
    else:  # Gemma Scope 2 naming
        path = tmp_path / "params.safetensors"
        save_file({("w_enc" if k == "W_enc" else "w_dec" if k == "W_dec" else k): torch.from_numpy(v)
                   for k, v in p.items()}, str(path))
    d = load_gemma_scope(path, hook="blocks.0.hook_resid_post")
    x = torch.randn(5, 16)
    pre = x @ torch.from_numpy(p["W_enc"]) + torch.from_numpy(p["b_enc"])
    acts = pre * (pre > torch.from_numpy(p["threshold"]))
    torch.testing.assert_close(d.encode(x), acts, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(d(x).recon, acts @ torch.from_numpy(p["W_dec"]) + torch.from_numpy(p["b_dec"]),
                               rtol=1e-4, atol=1e-4)


def _dunefsky_pickle(path: Path) -> dict:
    """A transcoder saved the way Dunefsky et al.'s code saves it: {"cfg": <config object>, "state_dict"}."""
    mod = types.ModuleType("sae_training.config")

    @dataclasses.dataclass
    class LanguageModelSAERunnerConfig:
        hook_point: str = "blocks.0.ln2.hook_normalized"
        out_hook_point: str = "blocks.0.hook_mlp_out"
        is_transcoder: bool = True
        d_in: int = 16

    LanguageModelSAERunnerConfig.__module__ = "sae_training.config"
    LanguageModelSAERunnerConfig.__qualname__ = "LanguageModelSAERunnerConfig"
    mod.LanguageModelSAERunnerConfig = LanguageModelSAERunnerConfig
    parent = types.ModuleType("sae_training")
    parent.config = mod
    sys.modules.update({"sae_training": parent, "sae_training.config": mod})
    torch.manual_seed(5)
    sd = {"W_enc": torch.randn(16, 24), "b_enc": torch.randn(24), "W_dec": torch.randn(24, 12),
          "b_dec": torch.randn(16), "b_dec_out": torch.randn(12)}
    try:
        torch.save({"cfg": LanguageModelSAERunnerConfig(), "state_dict": sd}, str(path))
    finally:
        del sys.modules["sae_training.config"], sys.modules["sae_training"]
    return sd


def test_pickle_only_through_explicit_conversion(tmp_path):
    pt = tmp_path / "final_sparse_autoencoder_blocks.0.ln2.hook_normalized_24.pt"
    sd = _dunefsky_pickle(pt)
    with pytest.raises(CheckpointError, match="not a dictionary folder"):
        load_dictionary(pt)
    with pytest.warns(UserWarning, match="weights_only=True"):
        out = convert_pickle(pt, tmp_path / "converted")
    d = load_dictionary(out)
    assert d.cfg.hook == "blocks.0.ln2.hook_normalized" and d.cfg.out_hook == "blocks.0.hook_mlp_out"
    x = torch.randn(4, 16)
    acts = torch.relu((x - sd["b_dec"]) @ sd["W_enc"] + sd["b_enc"])
    torch.testing.assert_close(d(x, torch.zeros(4, 12)).recon, acts @ sd["W_dec"] + sd["b_dec_out"],
                               rtol=1e-5, atol=1e-4)


def test_convert_dict_cli(tmp_path):
    from sparsecircuits.cli import main

    pt = tmp_path / "tc.pt"
    _dunefsky_pickle(pt)
    assert main(["convert-dict", str(pt), "--out", str(tmp_path / "c")]) == 0
    assert (tmp_path / "c" / "cfg.json").exists()
    assert main(["convert-dict", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "d")]) == 2


def test_bad_files_give_clear_errors(tmp_path):
    d = _random(CASES[1])
    save_dictionary(d, tmp_path / "ok")
    bad = tmp_path / "ok" / "sae_weights.safetensors"
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated"):
        load_dictionary(tmp_path / "ok")
    save_dictionary(d, tmp_path / "shape")
    t = load_file(str(tmp_path / "shape" / "sae_weights.safetensors"))
    t["W_dec"] = t["W_dec"][:, :8].contiguous()
    save_file(t, str(tmp_path / "shape" / "sae_weights.safetensors"))
    with pytest.raises(CheckpointError, match="W_dec: file \\(40, 8\\) vs expected \\(40, 16\\)"):
        load_dictionary(tmp_path / "shape")
    (tmp_path / "shape" / "cfg.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_dictionary(tmp_path / "shape")
    with pytest.raises(CheckpointError, match="no config.yaml"):
        load_transcoder_set(tmp_path)
