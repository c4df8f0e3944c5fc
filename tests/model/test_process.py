"""Weight processing (`model/process.py`) leaves the logits unchanged, on tiny models of each family's shape."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_model, tokens
from sparsecircuits.model.process import center_writing_weights, fold_norms

DENSE = dict(act_sparsity_sites=())
SHAPES = {
    "gpt2": dict(norm="layer", positions="learned", act="gelu_new", tied_embeddings=True, **DENSE),
    "neox": dict(norm="layer", positions="rotary", rotary_dim=4, parallel_attn_mlp=True, bias_qkv=False,
                 bias_mlp=False, **DENSE),
    "llama": dict(act="swiglu", n_kv_heads=2, positions="rotary", bias_qkv=False, bias_attn_out=False,
                  bias_mlp=False, **DENSE),
    "gemma2": dict(act="geglu", n_kv_heads=2, positions="rotary", bias_qkv=False, bias_mlp=False, post_norms=True,
                   attn_softcap=3.0, logit_softcap=5.0, sliding_window=4, sliding_window_layers=(0,),
                   embed_scale=4.0, tied_embeddings=True, attn_scale=0.2, **DENSE),
}
LAYER_NORM = [n for n, o in SHAPES.items() if o.get("norm") == "layer"]


@pytest.mark.parametrize("shape", list(SHAPES))
def test_fold_norms_keeps_logits(shape):
    model = tiny_model(**SHAPES[shape])
    folded = fold_norms(model)
    t = tokens()
    torch.testing.assert_close(folded(t), model(t), atol=1e-5, rtol=1e-5)
    for name, p in folded.named_parameters():
        if name.endswith(("ln1.w", "ln2.w", "ln_final.w")):
            assert torch.equal(p, torch.ones_like(p)), name
    assert not folded.cfg.tied_embeddings
    # the input model is untouched
    assert not torch.equal(model.blocks[0].ln1.w, torch.ones_like(model.blocks[0].ln1.w))


@pytest.mark.parametrize("shape", LAYER_NORM)
def test_center_writing_weights_keeps_logits(shape):
    model = tiny_model(**SHAPES[shape])
    centred = center_writing_weights(model)
    t = tokens()
    torch.testing.assert_close(centred(t), model(t), atol=1e-5, rtol=1e-5)
    _, cache = centred.run_with_cache(t, names_filter=lambda n: n.endswith(("hook_attn_out", "hook_mlp_out")))
    for name in cache:
        assert cache[name].mean(-1).abs().max() < 1e-5, name
    both = center_writing_weights(fold_norms(model))
    torch.testing.assert_close(both(t), model(t), atol=1e-5, rtol=1e-5)


def test_processing_refuses_what_it_cannot_keep_exact():
    with pytest.raises(ValueError, match="LayerNorm"):
        center_writing_weights(tiny_model(**SHAPES["llama"]))
    with pytest.raises(ValueError, match="AbsTopK choice at \\['attn_in', 'mlp_in'\\]"):
        fold_norms(tiny_model())
    with pytest.raises(ValueError, match="gate bias"):
        fold_norms(tiny_model(norm="layer", act="swiglu", **DENSE))
