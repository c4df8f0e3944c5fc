"""Published dictionary layouts (dictionaries/layouts/): for each, a tiny file written here in the exact
published layout (file names, tensor names, dtypes, config keys as in the public repositories), loaded
with `load_any` and checked against a plain re-implementation of that tool's encoder and decoder; the
HF-cache lookup; fitting to a model (widths, hooks, TransformerLens' pre-gain norm hooks); bad files."""

from __future__ import annotations

import dataclasses
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from conftest import tiny_model
from sparsecircuits.dictionaries.layouts import find_dictionaries, load_any
from sparsecircuits.model.checkpoint import CheckpointError

D, F = 32, 48  # the tiny model's d_model; features


def _r(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def _hf_cache(tmp_path: Path, monkeypatch, repo: str) -> Path:
    """An HF hub cache with one snapshot of `repo` (refs/main -> the revision); returns the snapshot."""
    hub = tmp_path / "hub"
    root = hub / f"models--{repo.replace('/', '--')}"
    snap = root / "snapshots" / "0123abcd"
    snap.mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text("0123abcd")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return snap


# --- SAELens -------------------------------------------------------------------------------------------

def _saelens_folder(folder: Path, cfg: dict, tensors: dict) -> Path:
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder


def test_saelens_6_jumprelu_with_b_dec_on_input(tmp_path):
    t = {"W_enc": _r(D, F, seed=1), "W_dec": _r(F, D, seed=2), "b_enc": _r(F, seed=3), "b_dec": _r(D, seed=4),
         "threshold": _r(F, seed=5).abs()}
    cfg = {"architecture": "jumprelu", "d_in": D, "d_sae": F, "dtype": "float32", "device": "cpu",
           "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none",
           "metadata": {"sae_lens_version": "6.5.0", "sae_lens_training_version": "6.5.0", "model_name": "tiny",
                        "hook_name": "blocks.1.hook_resid_post", "hook_head_index": None, "prepend_bos": True,
                        "context_size": 128}}
    loaded = load_any(_saelens_folder(tmp_path / "sae", cfg, t))
    d = loaded.dictionary
    assert loaded.layout == "saelens" and d.cfg.arch == "jumprelu" and d.cfg.hook == "blocks.1.hook_resid_post"
    x = _r(7, D, seed=6)
    pre = (x - t["b_dec"]) @ t["W_enc"] + t["b_enc"]  # SAELens JumpReLUSAE.encode
    acts = torch.relu(pre) * (pre > t["threshold"])
    _close(d.encode(x), acts)
    _close(d(x).recon, acts @ t["W_dec"] + t["b_dec"])
    del cfg["apply_b_dec_to_input"]  # absent: SAELens' default, True
    _close(load_any(_saelens_folder(tmp_path / "default", cfg, t)).dictionary.encode(x), acts)


def test_saelens_5_topk_and_6_topk_rescaled(tmp_path):
    t = {"W_enc": _r(D, F, seed=1), "W_dec": _r(F, D, seed=2), "b_enc": _r(F, seed=3), "b_dec": _r(D, seed=4)}
    v5 = {"architecture": "standard", "d_in": D, "d_sae": F, "dtype": "float32", "device": "cpu",
          "model_name": "tiny", "hook_name": "blocks.0.hook_mlp_out", "hook_layer": 0, "hook_head_index": None,
          "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 5}, "apply_b_dec_to_input": False,
          "finetuning_scaling_factor": False, "normalize_activations": "none", "sae_lens_training_version": "5.1.0"}
    x = _r(9, D, seed=7)

    def topk(pre: torch.Tensor, k: int) -> torch.Tensor:  # SAELens TopK: top-k values, then ReLU
        v, i = pre.topk(k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, i, v.relu())

    d = load_any(_saelens_folder(tmp_path / "v5", v5, t)).dictionary
    assert d.cfg.arch == "topk" and d.cfg.k == 5
    acts = topk(x @ t["W_enc"] + t["b_enc"], 5)
    _close(d.encode(x), acts)
    _close(d(x).recon, acts @ t["W_dec"] + t["b_dec"])
    v6 = {"architecture": "topk", "d_in": D, "d_sae": F, "k": 5, "rescale_acts_by_decoder_norm": True,
          "apply_b_dec_to_input": False, "normalize_activations": "none",
          "metadata": {"hook_name": "blocks.0.hook_mlp_out", "sae_lens_version": "6.12.0"}}
    d = load_any(_saelens_folder(tmp_path / "v6", v6, t)).dictionary
    n = t["W_dec"].norm(dim=-1)
    acts = topk((x @ t["W_enc"] + t["b_enc"]) * n, 5)  # TopKSAE.encode / decode with the rescaling
    _close(d(x).recon, (acts / n) @ t["W_dec"] + t["b_dec"])
    _close(d.encode(x), acts)


def test_saelens_skip_transcoder_and_refusals(tmp_path):
    t = {"W_enc": _r(D, F, seed=1), "W_dec": _r(F, D, seed=2), "b_enc": _r(F, seed=3), "b_dec": _r(D, seed=4),
         "W_skip": _r(D, D, seed=5)}
    cfg = {"architecture": "skip_transcoder", "d_in": D, "d_out": D, "d_sae": F, "apply_b_dec_to_input": False,
           "normalize_activations": "none", "metadata": {"hook_name": "blocks.0.ln2.hook_normalized",
                                                         "hook_name_out": "blocks.0.hook_mlp_out"}}
    d = load_any(_saelens_folder(tmp_path / "tc", cfg, t)).dictionary
    x = _r(4, D, seed=6)
    acts = torch.relu(x @ t["W_enc"] + t["b_enc"])
    _close(d(x, x).recon, acts @ t["W_dec"] + t["b_dec"] + x @ t["W_skip"].T)
    for i, (key, value, match) in enumerate([("normalize_activations", "layer_norm", "per-token|each token"),
                                             ("architecture", "gated", "gated"),
                                             ("hook_head_index", 2, "per-head")]):
        bad = {**cfg, "architecture": "standard", key: value}
        with pytest.raises(CheckpointError, match=match):
            load_any(_saelens_folder(tmp_path / f"bad{i}", bad, {k: v for k, v in t.items() if k != "W_skip"}))


# --- Gemma Scope -------------------------------------------------------------------------------------------

def _gemma_params(d_in: int = D, width: int = F, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    p = {"W_enc": rng.normal(size=(d_in, width)), "W_dec": rng.normal(size=(width, d_in)),
         "b_enc": rng.normal(size=width), "b_dec": rng.normal(size=d_in), "threshold": rng.uniform(0.1, 1, size=width)}
    return {k: v.astype(np.float32) for k, v in p.items()}


def _jumprelu(x: torch.Tensor, p: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Gemma Scope's JumpReLU SAE (the published tutorial's `JumpReLUSAE`): acts, reconstruction."""
    t = {k: torch.from_numpy(v) for k, v in p.items()}
    pre = x @ t["W_enc"] + t["b_enc"]
    acts = (pre > t["threshold"]) * torch.relu(pre)
    return acts, acts @ t["W_dec"] + t["b_dec"]


def test_gemma_scope_from_the_hf_cache(tmp_path, monkeypatch):
    snap = _hf_cache(tmp_path, monkeypatch, "google/gemma-scope-2b-pt-res")
    folder = snap / "layer_1" / "width_16k" / "average_l0_40"
    folder.mkdir(parents=True)
    p = _gemma_params()
    np.savez(folder / "params.npz", **p)
    loaded = load_any("google/gemma-scope-2b-pt-res/layer_1/width_16k/average_l0_40")
    d = loaded.dictionary
    assert loaded.layout == "gemma-scope" and d.cfg.hook == "blocks.1.hook_resid_post" and d.cfg.width == F
    x = _r(6, D, seed=8)
    acts, recon = _jumprelu(x, p)
    _close(d.encode(x), acts)
    _close(d(x).recon, recon)
    assert load_any("hf://google/gemma-scope-2b-pt-res/layer_1/width_16k/average_l0_40/params.npz").dictionary.cfg.width == F
    with pytest.raises(FileNotFoundError, match="not in the Hugging Face cache.*HF_HUB_OFFLINE"):
        load_any("google/gemma-scope-2b-pt-res/layer_9/width_16k/average_l0_40", download=True)


def test_gemma_scope_transcoder_and_embedding_hooks(tmp_path, monkeypatch):
    snap = _hf_cache(tmp_path, monkeypatch, "google/gemma-scope-2b-pt-transcoders")
    (snap / "layer_0" / "width_16k" / "average_l0_76").mkdir(parents=True)
    p = _gemma_params(seed=1)
    np.savez(snap / "layer_0" / "width_16k" / "average_l0_76" / "params.npz", **p)
    d = load_any("google/gemma-scope-2b-pt-transcoders/layer_0/width_16k/average_l0_76").dictionary
    assert (d.cfg.hook, d.cfg.out_hook) == ("blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out")
    emb = tmp_path / "res" / "embedding" / "width_4k" / "average_l0_6"
    emb.mkdir(parents=True)
    np.savez(emb / "params.npz", **p)
    e = load_any(emb / "params.npz").dictionary
    assert e.cfg.hook == "hook_embed"
    x = _r(5, D, seed=9)  # our hook_embed = sqrt(d) * the embedding Gemma Scope was trained on
    acts, recon = _jumprelu(x / D ** 0.5, p)
    _close(e.encode(x), acts)
    _close(e(x).recon, recon * D ** 0.5)


# --- dictionary_learning -------------------------------------------------------------------------------------

def _dl_folder(folder: Path, sd: dict, trainer: dict) -> Path:
    folder.mkdir(parents=True)
    torch.save(sd, str(folder / "ae.pt"))
    (folder / "config.json").write_text(json.dumps({"trainer": trainer, "buffer": {"d_submodule": D, "io": "out"}},
                                                   indent=4))
    return folder


def test_dictionary_learning_autoencoder_marks_release(tmp_path):
    """Marks et al.'s Pythia release: dictionaries/pythia-70m-deduped/mlp_out_layer1/10_32768/{ae.pt, config.json},
    an `AutoEncoder` whose decoder columns are not unit norm (its from_pretrained normalises them)."""
    sd = {"bias": _r(D, seed=1), "encoder.weight": _r(F, D, seed=2), "encoder.bias": _r(F, seed=3),
          "decoder.weight": _r(D, F, seed=4)}
    folder = _dl_folder(tmp_path / "dictionaries" / "pythia-70m-deduped" / "mlp_out_layer1" / "10_32768", sd,
                        {"dict_class": "AutoEncoder", "activation_dim": D, "dict_size": F, "lr": 1e-4,
                         "l1_penalty": 0.1, "warmup_steps": 10000, "resample_steps": 30000, "device": "cuda:0"})
    loaded = load_any(folder)
    d = loaded.dictionary
    assert loaded.layout == "dictionary_learning" and d.cfg.hook == "blocks.1.hook_mlp_out" and d.cfg.arch == "relu"
    x = _r(6, D, seed=5)
    n = sd["decoder.weight"].norm(dim=0)  # AutoEncoder.normalize_decoder
    W_e, b_e, W_d = sd["encoder.weight"] * n[:, None], sd["encoder.bias"] * n, sd["decoder.weight"] / n
    acts = torch.relu((x - sd["bias"]) @ W_e.T + b_e)
    _close(d.encode(x), acts)
    _close(d(x).recon, acts @ W_d.T + sd["bias"])
    raw = torch.relu((x - sd["bias"]) @ sd["encoder.weight"].T + sd["encoder.bias"])  # the same reconstruction
    _close(d(x).recon, raw @ sd["decoder.weight"].T + sd["bias"])


@pytest.mark.parametrize("cls", ["AutoEncoderTopK", "BatchTopKSAE", "JumpReluAutoEncoder"])
def test_dictionary_learning_classes(cls, tmp_path):
    W_enc, b_enc, W_dec, b_dec = _r(D, F, seed=1), _r(F, seed=2), _r(F, D, seed=3), _r(D, seed=4)
    k, th = 6, torch.tensor(0.3)
    if cls == "JumpReluAutoEncoder":
        sd = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec, "threshold": _r(F, seed=5).abs()}
    else:
        sd = {"k": torch.tensor(k, dtype=torch.int), "threshold": th if cls == "BatchTopKSAE" else torch.tensor(-1.0),
              "decoder.weight": W_dec.T.contiguous(), "encoder.weight": W_enc.T.contiguous(), "encoder.bias": b_enc,
              "b_dec": b_dec}
    trainer = {"trainer_class": "x", "dict_class": cls, "activation_dim": D, "dict_size": F, "layer": 3,
               "lm_name": "EleutherAI/pythia-70m-deduped", "submodule_name": "resid_post_layer_3"}
    if cls != "JumpReluAutoEncoder":
        trainer["k"] = k
    d = load_any(_dl_folder(tmp_path / "resid_post_layer_3" / "trainer_0", sd, trainer)).dictionary
    assert d.cfg.hook == "blocks.3.hook_resid_post"
    x = _r(8, D, seed=6)
    if cls == "JumpReluAutoEncoder":
        pre = x @ W_enc + b_enc
        acts = torch.relu(pre * (pre > sd["threshold"]))
    else:
        r = torch.relu((x - b_dec) @ W_enc + b_enc)
        if cls == "AutoEncoderTopK":
            v, i = r.topk(k, dim=-1)
            acts = torch.zeros_like(r).scatter(-1, i, v)
        else:
            acts = r * (r > th)
    _close(d.encode(x), acts)
    _close(d(x).recon, acts @ W_dec + b_dec)


# --- Dunefsky et al. -----------------------------------------------------------------------------------------

def _dunefsky_file(path: Path, layer: int = 0, d_in: int = D, width: int = F) -> dict:
    """Saved as their SparseAutoencoder.save_model does: torch.save({"cfg": <config object>, "state_dict"})."""
    mod = types.ModuleType("sae_training.config")

    @dataclasses.dataclass
    class LanguageModelSAERunnerConfig:
        hook_point: str = f"blocks.{layer}.ln2.hook_normalized"
        out_hook_point: str = f"blocks.{layer}.hook_mlp_out"
        is_transcoder: bool = True
        d_in: int = D

    LanguageModelSAERunnerConfig.__module__ = "sae_training.config"
    LanguageModelSAERunnerConfig.__qualname__ = "LanguageModelSAERunnerConfig"
    mod.LanguageModelSAERunnerConfig = LanguageModelSAERunnerConfig
    parent = types.ModuleType("sae_training")
    parent.config = mod
    sys.modules.update({"sae_training": parent, "sae_training.config": mod})
    sd = {"W_enc": _r(d_in, width, seed=1), "b_enc": _r(width, seed=2), "W_dec": _r(width, d_in, seed=3),
          "b_dec": _r(d_in, seed=4), "b_dec_out": _r(d_in, seed=5)}
    try:
        torch.save({"cfg": LanguageModelSAERunnerConfig(), "state_dict": sd}, str(path))
    finally:
        del sys.modules["sae_training.config"], sys.modules["sae_training"]
    return sd


def _dunefsky_forward(x_tl: torch.Tensor, sd: dict) -> tuple[torch.Tensor, torch.Tensor]:
    acts = torch.relu((x_tl - sd["b_dec"]) @ sd["W_enc"] + sd["b_enc"])  # SparseAutoencoder.forward
    return acts, acts @ sd["W_dec"] + sd["b_dec_out"]


def test_dunefsky_file_fitted_to_a_model_reads_our_post_gain_hook(tmp_path):
    """Their `ln2.hook_normalized` is TransformerLens' with fold_ln: before the gain and bias. Fitted to
    our model (whose hook is after them), the encoder sees exactly what theirs saw."""
    model = tiny_model(norm="layer", act_sparsity=1.0)  # dense: the norm output is the MLP input
    pt = tmp_path / "final_sparse_autoencoder_gpt2-small_blocks.1.ln2.hook_normalized_48.pt"
    sd = _dunefsky_file(pt, layer=1)
    raw = load_any(pt)
    assert raw.layout == "dunefsky" and raw.dictionary.cfg.out_hook == "blocks.1.hook_mlp_out"
    fitted = load_any(pt, model).dictionary
    tokens = torch.randint(0, 97, (2, 10), generator=torch.Generator().manual_seed(0))
    _, cache = model.run_with_cache(tokens, names_filter=["blocks.1.hook_resid_mid", "blocks.1.ln2.hook_normalized"])
    mid = cache["blocks.1.hook_resid_mid"]
    centred = mid - mid.mean(-1, keepdim=True)
    x_tl = centred / (centred.pow(2).mean(-1, keepdim=True) + model.cfg.norm_eps).sqrt()  # LayerNormPre
    acts, recon = _dunefsky_forward(x_tl, sd)
    x_ours = cache["blocks.1.ln2.hook_normalized"]
    torch.testing.assert_close(fitted.encode(x_ours), acts, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fitted.decode(fitted.encode(x_ours)), recon, rtol=1e-4, atol=1e-4)
    _close(raw.dictionary.encode(x_tl), acts)


def test_fit_to_model_rejects_wrong_width_and_hook(tmp_path):
    model = tiny_model()
    pt = tmp_path / "wide.pt"
    _dunefsky_file(pt, d_in=24)
    with pytest.raises(CheckpointError, match="input width 24 does not fit.*width 32"):
        load_any(pt, model)
    p = _gemma_params()
    np.savez(tmp_path / "params.npz", **p)
    with pytest.raises(CheckpointError, match="does not fit the model.*blocks.7.hook_resid_post"):
        load_any(tmp_path / "params.npz", model, hook="blocks.7.hook_resid_post")
    with pytest.raises(CheckpointError, match="does not fit the model.*batch, pos, d"):
        load_any(tmp_path / "params.npz", model, hook="blocks.0.attn.hook_z")


# --- circuit-tracer ----------------------------------------------------------------------------------------

def _ct_layer(seed: int, jump: bool = False, skip: bool = False) -> dict:
    t = {"W_enc": _r(F, D, seed=seed), "W_dec": _r(F, D, seed=seed + 1), "b_enc": _r(F, seed=seed + 2),
         "b_dec": _r(D, seed=seed + 3)}
    if jump:
        t["activation_function.threshold"] = _r(F, seed=seed + 4).abs()
    if skip:
        t["W_skip"] = _r(D, D, seed=seed + 5)
    return t


def _ct_forward(x: torch.Tensor, t: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """SingleLayerTranscoder: pre = F.linear(x, W_enc, b_enc); JumpReLU or ReLU; acts @ W_dec + b_dec (+ skip)."""
    pre = torch.nn.functional.linear(x, t["W_enc"], t["b_enc"])
    th = t.get("activation_function.threshold")
    acts = torch.relu(pre) if th is None else pre * (pre > th)
    return acts, acts @ t["W_dec"] + t["b_dec"] + (x @ t["W_skip"].T if "W_skip" in t else 0)


def test_circuit_tracer_set_in_the_cache_layout(tmp_path):
    layers = [_ct_layer(10, jump=True, skip=True), _ct_layer(20, jump=True, skip=True)]
    for i, t in enumerate(layers):
        save_file(t, str(tmp_path / f"layer_{i}.safetensors"))
    (tmp_path / "config.yaml").write_text("feature_input_hook: mlp.hook_in\nfeature_output_hook: mlp.hook_out\n"
                                          "model_kind: transcoder_set\nmodel_name: google/gemma-2-2b\n"
                                          "scan: mwhanna/gemma-scope-transcoders\n")
    loaded = load_any(tmp_path)
    assert loaded.layout == "circuit-tracer" and len(loaded.dictionaries) == 2
    d1 = loaded.dictionaries[1]
    assert (d1.cfg.hook, d1.cfg.out_hook, d1.cfg.arch, d1.cfg.skip) == (
        "blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out", "jumprelu", True)
    x = _r(5, D, seed=30)
    for d, t in zip(loaded.dictionaries, layers):
        acts, recon = _ct_forward(x, t)
        _close(d.encode(x), acts)
        torch.testing.assert_close(d(x, x).recon, recon, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("norm", ["rms", "layer"])
def test_circuit_tracer_norm_hook_fitted_to_a_model(norm, tmp_path):
    """circuit-tracer runs TransformerLens with fold_ln=False: its `ln2.hook_normalized` is before the gain
    in RMSNorm (TransformerLens' RMSNorm hooks x / rms) but after gain and bias in LayerNorm."""
    model = tiny_model(norm=norm, act_sparsity=1.0)
    layers = [_ct_layer(100 + 10 * i) for i in range(2)]
    for i, t in enumerate(layers):
        save_file(t, str(tmp_path / f"layer_{i}.safetensors"))
    (tmp_path / "config.yaml").write_text("model_kind: transcoder_set\nfeature_input_hook: ln2.hook_normalized\n"
                                          "feature_output_hook: hook_mlp_out\n")
    fitted = load_any(tmp_path, model).dictionaries
    tokens = torch.randint(0, 97, (2, 8), generator=torch.Generator().manual_seed(1))
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith(("hook_mlp_in", "ln2.hook_normalized")))
    for i, (d, t) in enumerate(zip(fitted, layers)):
        x_ours = cache[f"blocks.{i}.ln2.hook_normalized"]
        if norm == "rms":
            x = cache[f"blocks.{i}.hook_mlp_in"]
            x_tl = x / (x.pow(2).mean(-1, keepdim=True) + model.cfg.norm_eps).sqrt()
        else:
            x_tl = x_ours
        acts, _ = _ct_forward(x_tl, t)
        torch.testing.assert_close(d.encode(x_ours), acts, rtol=1e-4, atol=1e-4)


def test_circuit_tracer_hf_list_and_old_config(tmp_path, monkeypatch):
    snap = _hf_cache(tmp_path, monkeypatch, "mntss/transcoder-tiny")
    layers = [_ct_layer(40), _ct_layer(50)]
    for i, t in enumerate(layers):
        save_file(t, str(snap / f"layer_{i}.safetensors"))
    set_dir = tmp_path / "set"
    set_dir.mkdir()
    (set_dir / "config.yaml").write_text(
        "model_name: tiny\nmodel_kind: transcoder_set\nfeature_input_hook: hook_resid_mid\n"
        "feature_output_hook: hook_mlp_out\ntranscoders:\n"
        "  - hf://mntss/transcoder-tiny/layer_0.safetensors\n  - hf://mntss/transcoder-tiny/layer_1.safetensors\n")
    a = load_any(set_dir).dictionaries
    old = tmp_path / "old"
    old.mkdir()
    (old / "config.yaml").write_text(
        '# older circuit-tracer config\nmodel_name: "tiny"\nfeature_input_hook: "hook_resid_mid"\n'
        "feature_output_hook: 'hook_mlp_out'\n\ntranscoders:\n"
        '  - id: "tiny-1"\n    layer: 1\n    filepath: "hf://mntss/transcoder-tiny/layer_1.safetensors"\n'
        '  - id: "tiny-0"\n    layer: 0\n    filepath: "hf://mntss/transcoder-tiny/layer_0.safetensors"\n')
    b = load_any(old).dictionaries
    x = _r(4, D, seed=60)
    for da, db, t in zip(a, b, layers):
        acts, recon = _ct_forward(x, t)
        _close(da.encode(x), acts)
        _close(db.encode(x), acts)
        torch.testing.assert_close(db(x, x).recon, recon, rtol=1e-5, atol=1e-4)
    assert a[1].cfg.hook == "blocks.1.hook_resid_mid"


def test_cross_layer_transcoder(tmp_path):
    n = 2
    enc, dec = [], []
    for i in range(n):
        e = {f"W_enc_{i}": _r(F, D, seed=70 + i), f"b_enc_{i}": _r(F, seed=72 + i), f"b_dec_{i}": _r(D, seed=74 + i),
             f"threshold_{i}": _r(F, seed=76 + i).abs()}
        w = {f"W_dec_{i}": _r(F, n - i, D, seed=78 + i)}
        save_file({k: v.to(torch.bfloat16) for k, v in e.items()}, str(tmp_path / f"W_enc_{i}.safetensors"))
        save_file({k: v.to(torch.bfloat16) for k, v in w.items()}, str(tmp_path / f"W_dec_{i}.safetensors"))
        enc.append({k: v.to(torch.bfloat16).float() for k, v in e.items()})
        dec.append(w[f"W_dec_{i}"].to(torch.bfloat16).float())
    (tmp_path / "config.yaml").write_text("model_kind: cross_layer_transcoder\nmodel_name: tiny\n"
                                          "feature_input_hook: hook_resid_mid\nfeature_output_hook: hook_mlp_out\n")
    loaded = load_any(tmp_path)
    assert loaded.layout == "circuit-tracer-clt" and loaded.clt.n_layers == n
    xs = [_r(3, D, seed=90 + i) for i in range(n)]
    acts = []
    for i in range(n):  # CrossLayerTranscoder.encode_layer + apply_activation_function
        pre = xs[i] @ enc[i][f"W_enc_{i}"].T + enc[i][f"b_enc_{i}"]
        acts.append(pre * (pre > enc[i][f"threshold_{i}"]))
        _close(loaded.clt.encode(i, xs[i]), acts[i])
    for j, y in enumerate(loaded.clt.reconstruct(acts)):  # compute_reconstruction
        want = sum(acts[i] @ dec[i][:, j - i] for i in range(j + 1)) + enc[j][f"b_dec_{j}"]
        torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-4)
    with pytest.raises(CheckpointError, match="spans 2 layers; the model has 3"):
        load_any(tmp_path, tiny_model(n_layers=3))


# --- bad files and the listing -----------------------------------------------------------------------------------

def test_bad_files_are_named(tmp_path):
    (tmp_path / "x.pkl").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(CheckpointError, match="never unpickled"):
        load_any(tmp_path / "x.pkl")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_any(tmp_path / "junk.pt")
    dl = _dl_folder(tmp_path / "mlp_out_layer0" / "run", {"bias": _r(D)}, {"dict_class": "AutoEncoder"})
    with pytest.raises(CheckpointError, match=r"needs \['encoder.weight'"):
        load_any(dl)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="holds no dictionary in a known layout"):
        load_any(tmp_path / "empty")
    with pytest.raises(FileNotFoundError):
        load_any(tmp_path / "missing")


def test_find_dictionaries_and_cli_list(tmp_path, capsys):
    from sparsecircuits.cli import main

    root = tmp_path / "all"
    _dl_folder(root / "pythia" / "attn_out_layer0" / "10_32768",
               {"bias": _r(D), "encoder.weight": _r(F, D), "encoder.bias": _r(F), "decoder.weight": _r(D, F)},
               {"dict_class": "AutoEncoder", "activation_dim": D, "dict_size": F})
    (root / "gs" / "gemma-scope-2b-pt-mlp" / "layer_1").mkdir(parents=True)
    np.savez(root / "gs" / "gemma-scope-2b-pt-mlp" / "layer_1" / "params.npz", **_gemma_params())
    _dunefsky_file(root / "tc.pt")
    (root / "broken").mkdir()
    (root / "broken" / "cfg.json").write_text("{")
    rows = {Path(r.path).relative_to(root).as_posix(): r for r in find_dictionaries(root)}
    assert rows["pythia/attn_out_layer0/10_32768"].hook == "blocks.0.hook_attn_out"
    gs = rows["gs/gemma-scope-2b-pt-mlp/layer_1/params.npz"]
    assert (gs.layout, gs.hook, gs.width, gs.d_in, gs.layer) == ("gemma-scope", "blocks.1.hook_mlp_out", F, D, 1)
    assert rows["tc.pt"].out_hook == "blocks.0.hook_mlp_out" and rows["tc.pt"].width == F
    assert "not valid JSON" in rows["broken"].error
    assert main(["dicts", "list", str(root), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert len(listed) == 4 and {r["layout"] for r in listed} >= {"gemma-scope", "dictionary_learning", "dunefsky"}
    assert main(["dicts", "list", str(root)]) == 0
    assert "attn_out_layer0" in capsys.readouterr().out
    assert main(["dicts", "list", str(tmp_path / "nowhere")]) == 2
