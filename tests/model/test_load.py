"""Parity of `load_pretrained` with `transformers` on tiny random models of every family, and its errors.

Each family's model is built from a config here (2 layers, d_model 64, weights drawn wider than
HF's init so attention is peaked and the soft-caps bite), saved with `save_pretrained`, loaded by
us, and compared on random tokens in float32: logits within ATOL = 1e-4, and the residual stream,
the final norm output and the attention patterns within the same tolerance. Sequences (12 tokens)
are longer than the sliding windows (5). Skipped when `transformers` is not installed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

transformers = pytest.importorskip("transformers")

from sparsecircuits.model.load import PretrainedLoadError, load_pretrained  # noqa: E402

ATOL = 1e-4
VOCAB, T = 101, 12
COMMON = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128,
              vocab_size=VOCAB, max_position_embeddings=64, initializer_range=0.2)
LLAMA3 = dict(rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
              original_max_position_embeddings=8)


def _config(name: str):
    t = transformers
    if name == "gpt2":
        return t.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=VOCAB, n_positions=64, initializer_range=0.2), t.GPT2LMHeadModel
    if name == "gpt_neox":
        return t.GPTNeoXConfig(**COMMON, rotary_pct=0.25, use_parallel_residual=True), t.GPTNeoXForCausalLM
    if name == "gpt_neox_sequential":
        return t.GPTNeoXConfig(**COMMON, rotary_pct=0.5, use_parallel_residual=False), t.GPTNeoXForCausalLM
    if name == "llama":  # GQA, llama3 rotary scaling (original context 8 so every band is exercised)
        cfg = t.LlamaConfig(**COMMON, num_key_value_heads=2, rope_scaling=LLAMA3)
        return cfg, t.LlamaForCausalLM
    if name == "mistral":
        return t.MistralConfig(**COMMON, num_key_value_heads=1, sliding_window=5), t.MistralForCausalLM
    if name == "qwen2":
        return t.Qwen2Config(**COMMON, num_key_value_heads=2, tie_word_embeddings=True), t.Qwen2ForCausalLM
    if name == "gemma2":
        cfg = t.Gemma2Config(**COMMON, num_key_value_heads=2, head_dim=16, sliding_window=5, query_pre_attn_scalar=24,
                             attn_logit_softcapping=2.0, final_logit_softcapping=3.0)
        return cfg, t.Gemma2ForCausalLM
    raise KeyError(name)


FAMILIES = ["gpt2", "gpt_neox", "gpt_neox_sequential", "llama", "mistral", "qwen2", "gemma2"]


def _hf_model(name: str, seed: int = 0):
    cfg, cls = _config(name)
    cfg._attn_implementation = "eager"  # the reference path; also returns attention weights
    torch.manual_seed(seed)
    model = cls(cfg).eval()
    with torch.no_grad():  # non-trivial biases and norm gains
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.2 * torch.randn_like(p))
    return model


def _save(model, path: Path) -> Path:
    kwargs = {} if int(transformers.__version__.split(".")[0]) >= 5 else {"safe_serialization": True}
    model.save_pretrained(path, **kwargs)
    return path


def _tokens(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (3, T), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """name -> (HF model, its saved folder), built once per module."""
    out = {}
    for name in FAMILIES:
        model = _hf_model(name)
        out[name] = (model, _save(model, tmp_path_factory.mktemp(name)))
    return out


@pytest.mark.parametrize("name", FAMILIES)
def test_logits_hidden_states_and_patterns_match_transformers(saved, name):
    hf_model, folder = saved[name]
    ours = load_pretrained(folder).model
    t = _tokens()
    with torch.no_grad():
        ref = hf_model(t, output_hidden_states=True, output_attentions=True)
        logits, cache = ours.run_with_cache(t)
    assert (logits - ref.logits).abs().max() < ATOL, (logits - ref.logits).abs().max()
    L = ours.cfg.n_layers
    # HF hidden_states: the block inputs, then the final norm's output in place of the last block's output.
    for i in range(L):
        torch.testing.assert_close(cache[f"blocks.{i}.hook_resid_pre"], ref.hidden_states[i], atol=ATOL, rtol=0)
        torch.testing.assert_close(cache[f"blocks.{i}.attn.hook_pattern"], ref.attentions[i], atol=ATOL, rtol=0)
    torch.testing.assert_close(cache["ln_final.hook_normalized"], ref.hidden_states[L], atol=ATOL, rtol=0)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("name", FAMILIES)
def test_padded_batches_match_transformers(saved, name, side):
    """With `attention_mask` (prompts of 12, 7 and 3 tokens, left- or right-padded): our logits at
    every real token match `transformers` given the same mask and the position ids its `generate`
    derives from it (a plain HF forward would count padding as positions), on the fused and the
    explicit attention path. Padded positions are not compared (both are arbitrary there)."""
    hf_model, folder = saved[name]
    ours = load_pretrained(folder).model
    t = _tokens()
    mask = torch.zeros_like(t)
    for row, n in enumerate((T, 7, 3)):
        if side == "left":
            mask[row, T - n:] = 1
        else:
            mask[row, :n] = 1
    position_ids = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    real = mask.bool()
    with torch.no_grad():
        ref = hf_model(t, attention_mask=mask, position_ids=position_ids).logits
        fused = ours(t, attention_mask=mask)
        with ours.hooks([(lambda n: n.endswith("hook_pattern"), lambda x, h: None)]):
            explicit = ours(t, attention_mask=mask)
    for logits in (fused, explicit):
        assert logits.isfinite().all()
        assert (logits - ref)[real].abs().max() < ATOL, (logits - ref)[real].abs().max()
    if side == "left":  # not vacuous: without the mask, left padding changes the real tokens' logits
        with torch.no_grad():
            assert (ours(t) - ref)[real].abs().max() > 100 * ATOL


def test_family_features_are_exercised(saved):
    """The parity above would be vacuous if windows, caps or rotary scaling never changed anything."""
    gemma = load_pretrained(saved["gemma2"][1]).model
    assert gemma.cfg.sliding_window_layers == (0,) and gemma.cfg.post_norms
    _, cache = gemma.run_with_cache(_tokens(), names_filter=lambda n: n.endswith("hook_attn_scores"))
    scores = cache["blocks.1.attn.hook_attn_scores"]  # full attention layer: softcapped, finite scores
    assert scores.isfinite().sum() > 0 and scores[scores.isfinite()].abs().max() > 1.0  # the cap (2.0) is reached
    assert (cache["blocks.0.attn.hook_attn_scores"][..., -1, :-5] == float("-inf")).all()  # outside the window
    logits = gemma(_tokens())
    assert logits.abs().max() > 1.0 and logits.abs().max() < 3.0
    llama = load_pretrained(saved["llama"][1]).model
    assert len(llama.cfg.rotary_scaling) == 4


def test_fused_attention_agrees_with_explicit(saved):
    for name in ("mistral", "gemma2", "gpt_neox"):
        model = load_pretrained(saved[name][1]).model
        t = _tokens()
        fused = model(t)
        with model.hooks([(lambda n: n.endswith("hook_pattern"), lambda x, h: None)]):
            explicit = model(t)
        torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=1e-5)


def test_bin_only_checkpoint_loads_through_weights_only(saved, tmp_path):
    hf_model, folder = saved["gpt_neox"]
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    torch.save(hf_model.state_dict(), tmp_path / "pytorch_model.bin")
    ours = load_pretrained(tmp_path).model
    with torch.no_grad():
        assert (ours(_tokens()) - hf_model(_tokens()).logits).abs().max() < ATOL


def test_pickle_that_is_not_a_state_dict_is_refused(saved, tmp_path):
    (tmp_path / "config.json").write_text((saved["gpt2"][1] / "config.json").read_text())
    torch.save({"w": torch.zeros(1), "evil": Path("x")}, tmp_path / "pytorch_model.bin")
    with pytest.raises(PretrainedLoadError, match=r"weights_only=True"):
        load_pretrained(tmp_path)


def test_sharded_safetensors(saved, tmp_path):
    hf_model, folder = saved["llama"]
    hf_model.save_pretrained(tmp_path, max_shard_size="50KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    ours = load_pretrained(tmp_path).model
    with torch.no_grad():
        assert (ours(_tokens()) - hf_model(_tokens()).logits).abs().max() < ATOL
    shard = sorted(tmp_path.glob("model-*.safetensors"))[0]
    shard.unlink()
    with pytest.raises(PretrainedLoadError, match="shards listed in model.safetensors.index.json are missing"):
        load_pretrained(tmp_path)


def _copy(folder: Path, dest: Path, edit_config=None, edit_tensors=None) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((folder / "config.json").read_text())
    (dest / "config.json").write_text(json.dumps(edit_config(cfg) if edit_config else cfg))
    tensors = load_file(str(folder / "model.safetensors"))
    save_file(edit_tensors(tensors) if edit_tensors else tensors, str(dest / "model.safetensors"))
    return dest


def test_errors_name_the_problem(saved, tmp_path):
    folder = saved["llama"][1]
    with pytest.raises(PretrainedLoadError, match=r"model_type 'bert'.*not supported; supported: gpt2 .*gemma2"):
        load_pretrained(_copy(folder, tmp_path / "bert", edit_config=lambda c: {**c, "model_type": "bert"}))
    with pytest.raises(PretrainedLoadError, match=r"architecture \['LlamaForSequenceClassification'\]"):
        load_pretrained(_copy(folder, tmp_path / "cls",
                              edit_config=lambda c: {**c, "architectures": ["LlamaForSequenceClassification"]}))
    with pytest.raises(PretrainedLoadError, match="rope_type 'yarn'"):
        load_pretrained(_copy(folder, tmp_path / "yarn", edit_config=lambda c: {
            **c, "rope_parameters": {"rope_type": "yarn", "factor": 2.0}}))
    with pytest.raises(PretrainedLoadError, match=r"shapes that do not match.*embed_tokens.weight: checkpoint \(101, 64\) vs config \(102, 64\)"):
        load_pretrained(_copy(folder, tmp_path / "shape", edit_config=lambda c: {**c, "vocab_size": 102}))
    drop = lambda ts: {k: v for k, v in ts.items() if "layers.1.mlp.up_proj" not in k}  # noqa: E731
    with pytest.raises(PretrainedLoadError, match=r"missing tensors: layers.1.mlp.up_proj.weight"):
        load_pretrained(_copy(folder, tmp_path / "missing", edit_tensors=drop))
    extra = lambda ts: {**ts, "model.layers.0.mystery.weight": torch.zeros(2)}  # noqa: E731
    with pytest.raises(PretrainedLoadError, match=r"unexpected tensors: layers.0.mystery.weight"):
        load_pretrained(_copy(folder, tmp_path / "extra", edit_tensors=extra))
    broken = _copy(folder, tmp_path / "truncated")
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(PretrainedLoadError, match="truncated or not a safetensors file"):
        load_pretrained(broken)
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "config.json").write_text((folder / "config.json").read_text())
    with pytest.raises(PretrainedLoadError, match="has no weights: expected model.safetensors"):
        load_pretrained(tmp_path / "noweights")
    (tmp_path / "noconfig").mkdir()
    with pytest.raises(PretrainedLoadError, match="has no config.json"):
        load_pretrained(tmp_path / "noconfig")
    with pytest.raises(PretrainedLoadError, match="has no hidden_size"):
        load_pretrained(_copy(folder, tmp_path / "nokey", edit_config=lambda c: {
            k: v for k, v in c.items() if k != "hidden_size"}))


def test_hub_cache_name_resolution_and_offline_error(saved, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = tmp_path / "hub" / "models--tiny-org--tiny-gpt2"
    _copy(saved["gpt2"][1], repo / "snapshots" / "0123abcd")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    loaded = load_pretrained("tiny-org/tiny-gpt2")
    assert loaded.family == "gpt2" and loaded.path == repo / "snapshots" / "0123abcd"
    with pytest.raises(PretrainedLoadError, match=r"'tiny-org/absent': no such folder, and not in the Hugging Face cache.*HF_HUB_OFFLINE"):
        load_pretrained("tiny-org/absent")
    with pytest.raises(PretrainedLoadError, match="download=False"):
        load_pretrained("tiny-org/absent", download=False)


def test_tokenizer_and_context_cap(saved, tmp_path):
    from tokenizers import Tokenizer, models

    folder = _copy(saved["gpt2"][1], tmp_path / "withtok")
    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1, "b": 2}, unk_token="[UNK]"))
    tok.save(str(folder / "tokenizer.json"))
    loaded = load_pretrained(folder, n_ctx=16)
    assert loaded.tokenizer is not None and loaded.tokenizer.token_to_id("b") == 2
    assert loaded.model.cfg.n_ctx == 16 and loaded.model.W_pos.shape == (16, 64)
    full = load_pretrained(folder).model
    torch.testing.assert_close(loaded.model(_tokens()), full(_tokens()))


def test_cli_tasks_evaluates_a_hugging_face_folder(tmp_path, capsys):
    import inspect

    from sparsecircuits.cli import main
    from sparsecircuits.data.tokenizer import save_tokenizer, train_tokenizer

    tok = train_tokenizer([Path(inspect.__file__).read_text()], 384)
    cfg = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=tok.get_vocab_size(), n_positions=256)
    folder = _save(transformers.GPT2LMHeadModel(cfg), tmp_path / "gpt2")
    save_tokenizer(tok, folder / "tokenizer.json")
    assert main(["tasks", "--model", str(folder), "--n-examples", "4"]) == 0
    assert "accuracy" in capsys.readouterr().out


def test_loaded_model_round_trips_through_our_checkpoint_format(saved, tmp_path):
    from sparsecircuits.model.checkpoint import load_checkpoint, save_checkpoint

    model = load_pretrained(saved["gemma2"][1]).model
    save_checkpoint(tmp_path / "ck", model)
    again = load_checkpoint(tmp_path / "ck").model
    assert again.cfg == model.cfg
    torch.testing.assert_close(again(_tokens()), model(_tokens()), atol=0, rtol=0)
