"""Writing our dictionaries in other tools' layouts (circuit-tracer sets, dictionary_learning, SAELens):
the files have the published names and shapes, and reading them back gives the same activations and
reconstructions."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from sparsecircuits.dictionaries import DictConfig, make_dictionary, save_dictionary
from sparsecircuits.dictionaries.layouts import load_any, save_dictionary_learning, save_transcoder_set
from sparsecircuits.dictionaries.layouts.circuit_tracer import parse_simple_yaml

D, F = 16, 40


def random_dictionary(arch: str, hook: str = "blocks.0.hook_resid_post", out_hook: str = "", skip: bool = False,
                      seed: int = 0, k: int = 5):
    torch.manual_seed(seed)
    d = make_dictionary(DictConfig(arch=arch, hook=hook, out_hook=out_hook, d_in=D, width=F, k=k, skip=skip))
    with torch.no_grad():
        for p in d.parameters():
            p.add_(0.2 * torch.randn_like(p))
        d.W_dec.mul_(torch.rand(F, 1) + 0.5)  # decoder rows of varied norm
        if arch == "batchtopk":
            d.threshold.fill_(0.05)
    return d.eval()


def transcoder_set(arch: str, skip: bool = False) -> list:
    return [random_dictionary(arch, f"blocks.{i}.ln2.hook_normalized", f"blocks.{i}.hook_mlp_out", skip, seed=i)
            for i in range(2)]


def assert_same(a, b, x: torch.Tensor, acts_scale: torch.Tensor | None = None) -> None:
    oa, ob = a(x, x), b(x, x)
    want = oa.acts if acts_scale is None else oa.acts * acts_scale
    torch.testing.assert_close(ob.acts, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ob.recon, oa.recon, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("arch,skip", [("relu", False), ("jumprelu", True), ("topk", False), ("batchtopk", False)])
def test_circuit_tracer_set_round_trip(arch, skip, tmp_path):
    tcs = transcoder_set(arch, skip)
    save_transcoder_set(tcs, tmp_path / "set", model_name="tiny")
    cfg = parse_simple_yaml((tmp_path / "set" / "config.yaml").read_text())
    assert cfg["model_kind"] == "transcoder_set" and "transcoders" not in cfg
    assert (cfg["feature_input_hook"], cfg["feature_output_hook"]) == ("mlp.hook_in", "hook_mlp_out")
    t = load_file(str(tmp_path / "set" / "layer_1.safetensors"))
    assert tuple(t["W_enc"].shape) == (F, D) and tuple(t["W_dec"].shape) == (F, D)
    assert ("activation_function.threshold" in t) == (arch in ("jumprelu", "batchtopk")) and ("W_skip" in t) == skip
    back = load_any(tmp_path / "set")
    assert back.layout == "circuit-tracer"
    x = torch.randn(7, D)
    for a, b in zip(tcs, back.dictionaries):
        assert (b.cfg.hook, b.cfg.out_hook) == (a.cfg.hook, a.cfg.out_hook)
        assert_same(a, b, x)


@pytest.mark.parametrize("arch,cls", [("relu", "AutoEncoder"), ("topk", "AutoEncoderTopK"),
                                      ("batchtopk", "BatchTopKSAE"), ("jumprelu", "JumpReluAutoEncoder")])
def test_dictionary_learning_round_trip(arch, cls, tmp_path):
    d = random_dictionary(arch, "blocks.2.hook_mlp_out")
    save_dictionary_learning(d, tmp_path / "dl", lm_name="tiny")
    trainer = json.loads((tmp_path / "dl" / "config.json").read_text())["trainer"]
    assert (trainer["dict_class"], trainer["submodule_name"], trainer["layer"]) == (cls, "mlp_out_layer_2", 2)
    sd = torch.load(str(tmp_path / "dl" / "ae.pt"), weights_only=True)
    keys = {"AutoEncoder": {"bias", "encoder.weight", "encoder.bias", "decoder.weight"},
            "AutoEncoderTopK": {"k", "threshold", "encoder.weight", "encoder.bias", "decoder.weight", "b_dec"},
            "JumpReluAutoEncoder": {"W_enc", "b_enc", "W_dec", "b_dec", "threshold"}}
    assert set(sd) == keys.get(cls, keys["AutoEncoderTopK"])
    back = load_any(tmp_path / "dl")
    assert back.layout == "dictionary_learning" and back.dictionary.cfg.hook == "blocks.2.hook_mlp_out"
    # relu: written with unit-norm decoder columns (dictionary_learning's convention), so its
    # activations are ours times the decoder-row norms; reconstructions are the same.
    scale = d.W_dec.detach().norm(dim=1) if arch == "relu" else None
    assert_same(d, back.dictionary, torch.randn(9, D), scale)


def test_saelens_layout_round_trip_through_load_any(tmp_path):
    d = random_dictionary("jumprelu")
    save_dictionary(d, tmp_path / "sae")
    back = load_any(tmp_path / "sae")
    assert back.layout == "sparsecircuits"
    assert_same(d, back.dictionary, torch.randn(5, D))


def test_writers_refuse_what_the_layout_cannot_hold(tmp_path):
    tc = random_dictionary("relu", "blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out")
    with pytest.raises(ValueError, match="no transcoder class"):
        save_dictionary_learning(tc, tmp_path / "dl")
    mixed = [tc, random_dictionary("relu", "blocks.1.hook_resid_mid", "blocks.1.hook_mlp_out")]
    with pytest.raises(ValueError, match="same hooks at every layer"):
        save_transcoder_set(mixed, tmp_path / "ct")
    with pytest.raises(ValueError, match="layer 0's hooks"):
        save_transcoder_set([mixed[1]], tmp_path / "ct")
    assert not (tmp_path / "ct").exists() and not (tmp_path / "dl").exists()
