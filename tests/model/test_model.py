import json
import math

import pytest
import torch

from conftest import tiny_model, tokens
from sparsecircuits.model import ModelConfig, Transformer
from sparsecircuits.model.sparsity import topk_count

VARIANTS = [
    {},
    dict(attn_sink=False),
    dict(n_kv_heads=2),
    dict(positions="rotary", rotary_dim=4, n_kv_heads=1),
    dict(positions="learned", norm="layer", act="gelu_new", act_sparsity_sites=()),
    dict(act="swiglu", parallel_attn_mlp=True, bias_qkv=False, bias_mlp=False, tied_embeddings=True),
    dict(act="relu", bigram_table=False, bias_unembed=True),
    # pretrained-family options: sliding window with the sink (fused mask path), Gemma-2-like block
    dict(sliding_window=4, sliding_window_layers=(1,), attn_scale=0.3, n_kv_heads=2),
    dict(act="geglu", post_norms=True, embed_scale=2.0, logit_softcap=4.0, attn_sink=False, sliding_window=3,
         sliding_window_layers=(0, 1), positions="rotary", rotary_scaling=(8.0, 1.0, 4.0, 8.0)),
]


def _explicit(model):
    """Hooking the pattern forces the explicit attention path."""
    return model.hooks([(lambda n: n.endswith("hook_pattern"), lambda x, h: None)])


def _strong_sinks(model):
    """Sink logits around 1 (conftest's ~0.1 barely move a row of 16 keys), so a wrong sink term shows."""
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for block in model.blocks:
            if block.attn.sink is not None:
                block.attn.sink.copy_(1.0 + torch.randn(block.attn.sink.shape, generator=g))
    return model


@pytest.mark.parametrize("overrides", VARIANTS)
def test_fused_and_explicit_attention_agree(overrides):
    model = _strong_sinks(tiny_model(**overrides))
    t = tokens()
    fused = model(t)
    fused.sum().backward()
    g_fused = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    with _explicit(model):
        explicit = model(t)
        explicit.sum().backward()
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=1e-5)
    for n, p in model.named_parameters():  # including the sink logits
        torch.testing.assert_close(g_fused[n], p.grad, atol=1e-4, rtol=1e-4, msg=n)


@pytest.mark.parametrize("overrides", VARIANTS)
def test_fused_attention_with_a_frozen_sink_agrees(overrides):
    """With the sink logit frozen (pruning) or no grad (evaluation), the fused path carries the sink
    in a float mask, not in an extra key channel as in training: the same logits either way."""
    model = _strong_sinks(tiny_model(**overrides))
    t = tokens()
    with _explicit(model), torch.no_grad():
        explicit = model(t)
    with torch.no_grad():
        torch.testing.assert_close(model(t), explicit, atol=1e-5, rtol=1e-5)
    model.requires_grad_(False)
    torch.testing.assert_close(model(t), explicit, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("overrides", VARIANTS)
def test_trimmed_last_block_gives_the_same_logits_and_gradients(overrides):
    """`trim=True` computes the last block only at each row's position `at` (keys and values
    everywhere): same logits and parameter gradients as the full forward, on the fused path, the
    explicit one and with split q/k/v inputs; the last block's hooks from `hook_z` see one position."""
    model = tiny_model(**overrides)
    t = tokens()
    at = torch.arange(len(t)) % t.shape[1]  # a different position in every row, 0 included
    split = model.hooks([(lambda n: n.endswith("hook_q_input"), lambda x, h: None)])
    for path in (None, _explicit, lambda m: split):
        ctx = path(model) if path else torch.enable_grad()
        with ctx:
            model.zero_grad()
            full = model(t, at=at)
            full.pow(2).sum().backward()
            g_full = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
            model.zero_grad()
            trimmed = model(t, at=at, trim=True)
            trimmed.pow(2).sum().backward()
        torch.testing.assert_close(trimmed, full, atol=1e-5, rtol=1e-5)
        for n, g in g_full.items():
            torch.testing.assert_close(dict(model.named_parameters())[n].grad, g, atol=1e-4, rtol=1e-4, msg=n)
    last = len(model.blocks) - 1
    shapes = {}
    with model.hooks([(lambda n: n.startswith(f"blocks.{last}."), lambda x, h: (shapes.setdefault(h.name, x.shape), None)[1])]):
        model(t, at=at, trim=True)
    assert shapes[f"blocks.{last}.attn.hook_k"][1] == t.shape[1] and shapes[f"blocks.{last}.hook_mlp_out"][1] == 1


@pytest.mark.parametrize("overrides", VARIANTS)
def test_forward_resumed_at_a_block_from_its_cached_input_is_the_full_forward(overrides):
    """`start=(layer, resid)`: the blocks from `layer` on, fed the cached `hook_resid_pre`, give the
    full forward's logits (with `at` and `trim` too); hooks before the start do not fire."""
    model = tiny_model(**overrides)
    t = tokens()
    at = torch.arange(len(t)) % t.shape[1]
    _, cache = model.run_with_cache(t, names_filter=lambda n: n.endswith("hook_resid_pre"))
    for layer in range(model.cfg.n_layers):
        resid = cache[f"blocks.{layer}.hook_resid_pre"]
        torch.testing.assert_close(model(t, start=(layer, resid)), model(t), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model(t, at=at, trim=True, start=(layer, resid)), model(t, at=at), atol=1e-5, rtol=1e-5)
    fired = []
    with model.hooks([(lambda n: True, lambda x, h: fired.append(h.name))]):
        model(t, start=(1, cache["blocks.1.hook_resid_pre"]))
    assert fired[0] == "blocks.1.hook_resid_pre" and not any(n.startswith(("hook_embed", "blocks.0.")) for n in fired)


def test_forward_start_is_checked():
    model = tiny_model()
    t = tokens()
    with pytest.raises(ValueError, match="start layer"):
        model(t, start=(2, torch.zeros(*t.shape, model.cfg.d_model)))
    with pytest.raises(ValueError, match="start residual"):
        model(t, start=(1, torch.zeros(*t.shape, model.cfg.d_model + 1)))


def test_sink_at_minus_infinity_is_plain_attention():
    with_sink = tiny_model(attn_sink=True)
    plain = Transformer(ModelConfig(**{**with_sink.cfg.to_dict(), "attn_sink": False}))
    state = {k: v for k, v in with_sink.state_dict().items() if not k.endswith("sink")}
    plain.load_state_dict(state)
    t = tokens()
    assert not torch.allclose(with_sink(t), plain(t), atol=1e-4)
    with torch.no_grad():
        for block in with_sink.blocks:
            block.attn.sink.fill_(-float("inf"))
    torch.testing.assert_close(with_sink(t), plain(t))
    with _explicit(with_sink):
        torch.testing.assert_close(with_sink(t), plain(t))


def test_sink_only_enlarges_the_denominator():
    model = tiny_model()
    with torch.no_grad():
        model.blocks[0].attn.sink.fill_(2.0)
    _, cache = model.run_with_cache(tokens(), names_filter=["blocks.0.attn.hook_pattern", "blocks.0.attn.hook_attn_scores"])
    pattern, scores = cache["blocks.0.attn.hook_pattern"], cache["blocks.0.attn.hook_attn_scores"]
    expected = scores.exp() / (scores.exp().sum(-1, keepdim=True) + math.exp(2.0))
    torch.testing.assert_close(pattern, expected)
    assert (pattern.sum(-1) < 1).all()


SITE_HOOKS = {
    "attn_in": "blocks.{L}.ln1.hook_normalized",
    "q": "blocks.{L}.attn.hook_q",
    "k": "blocks.{L}.attn.hook_k",
    "v": "blocks.{L}.attn.hook_v",
    "attn_out": "blocks.{L}.hook_attn_out",
    "mlp_in": "blocks.{L}.ln2.hook_normalized",
    "mlp_neurons": "blocks.{L}.mlp.hook_post",
    "mlp_out": "blocks.{L}.hook_mlp_out",
}


@pytest.mark.parametrize("site", list(SITE_HOOKS))
def test_abstopk_site_keeps_exactly_the_fraction(site):
    frac = 0.25
    model = tiny_model(act_sparsity=frac, act_sparsity_sites=(site,), n_kv_heads=2)
    names = [SITE_HOOKS[site].format(L=L) for L in range(2)]
    _, cache = model.run_with_cache(tokens(), names_filter=names)
    for name in names:
        x = cache[name].flatten(2)  # heads concatenated for q, k, v
        nonzero = (x != 0).sum(-1)
        assert (nonzero == topk_count(x.shape[-1], frac)).all(), name
    # the other sites stay dense
    others = [h.format(L=0) for s, h in SITE_HOOKS.items() if s != site]
    _, cache = model.run_with_cache(tokens(), names_filter=others)
    for name in others:
        assert ((cache[name].flatten(2) != 0).sum(-1) > topk_count(cache[name].flatten(2).shape[-1], frac)).all()


def test_gqa_equals_mha_with_repeated_kv_heads():
    gqa = tiny_model(n_kv_heads=2, attn_sink=True)
    mha = Transformer(ModelConfig(**{**gqa.cfg.to_dict(), "n_kv_heads": 0}))
    state = gqa.state_dict()
    group, dh = gqa.cfg.n_heads // 2, gqa.cfg.d_head
    for key, value in list(state.items()):
        if key.endswith(("W_K", "W_V", "b_K", "b_V")):
            heads = value.view(2, dh, *value.shape[1:])
            state[key] = heads.repeat_interleave(group, dim=0).reshape(-1, *value.shape[1:])
    mha.load_state_dict(state)
    t = tokens()
    torch.testing.assert_close(gqa(t), mha(t), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("overrides", VARIANTS)
def test_causal(overrides):
    model = tiny_model(**overrides)
    t = tokens()
    t2 = t.clone()
    t2[:, -1] = (t2[:, -1] + 1) % 97
    a, b = model(t), model(t2)
    torch.testing.assert_close(a[:, :-1], b[:, :-1])
    assert not torch.allclose(a[:, -1], b[:, -1])


def test_bigram_table_adds_current_token_row():
    model = tiny_model()
    t = tokens()
    with_table = model(t)
    with torch.no_grad():
        table = model.W_bigram.clone()
        model.W_bigram.zero_()
    torch.testing.assert_close(with_table - model(t), table[t])


def test_rotary_rotates_only_rotary_dim():
    model = tiny_model(positions="rotary", rotary_dim=4)
    _, c = model.run_with_cache(tokens(), names_filter=lambda n: "attn.hook_" in n and "blocks.0" in n)
    q, rq = c["blocks.0.attn.hook_q"], c["blocks.0.attn.hook_rot_q"]
    torch.testing.assert_close(q[..., 4:], rq[..., 4:])
    torch.testing.assert_close(q[:, 0], rq[:, 0])  # position 0: rotation by angle 0
    assert not torch.allclose(q[:, 1:, :, :4], rq[:, 1:, :, :4])
    torch.testing.assert_close(q.norm(dim=-1), rq.norm(dim=-1))  # rotations keep norms


def test_parallel_block_sums_both_branches():
    model = tiny_model(parallel_attn_mlp=True)
    assert "blocks.0.hook_resid_mid" not in model.hook_points
    _, c = model.run_with_cache(tokens())
    torch.testing.assert_close(
        c["blocks.0.hook_resid_post"],
        c["blocks.0.hook_resid_pre"] + c["blocks.0.hook_attn_out"] + c["blocks.0.hook_mlp_out"],
    )


def test_bad_tokens_are_clear_errors():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 97\)"):
        model(torch.tensor([[1, 97]]))
    with pytest.raises(ValueError, match="exceeds the model's n_ctx=24"):
        model(torch.zeros(1, 25, dtype=torch.long))
    with pytest.raises(ValueError, match="integer tensor"):
        model(torch.zeros(1, 3))


@pytest.mark.parametrize(
    "bad, field",
    [(dict(norm="batch"), "norm"), (dict(n_kv_heads=3), "n_kv_heads"), (dict(act_sparsity=0.0), "act_sparsity"),
     (dict(act_sparsity_sites=("q", "zz")), "act_sparsity_sites"), (dict(d_model=0), "d_model"),
     (dict(rotary_dim=3), "rotary_dim"), (dict(sliding_window=4), "sliding_window"),
     (dict(sliding_window=4, sliding_window_layers=(2,)), "sliding_window"), (dict(attn_softcap=-1.0), "attn_softcap"),
     (dict(rotary_scaling=(8.0, 1.0, 4.0, 8.0)), "rotary_scaling"), (dict(embed_scale=0.0), "embed_scale")],
)
def test_config_validation_names_the_field(bad, field):
    with pytest.raises(ValueError, match=f"ModelConfig.{field}"):
        ModelConfig(**bad)


def test_config_round_trip_and_unknown_fields():
    cfg = ModelConfig(n_kv_heads=2, act_sparsity_sites=("q", "k"))
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    family = ModelConfig(positions="rotary", rotary_scaling=(8, 1, 4, 64), sliding_window=4, sliding_window_layers=[1])
    assert ModelConfig.from_dict(json.loads(json.dumps(family.to_dict()))) == family
    with pytest.raises(ValueError, match="unknown ModelConfig fields"):
        ModelConfig.from_dict({**cfg.to_dict(), "d_modle": 3})


def test_init_scales():
    torch.manual_seed(0)
    model = Transformer(ModelConfig(d_model=128, n_layers=4, d_mlp=512))
    assert abs(model.blocks[0].mlp.W_in.std().item() - 0.02) < 0.002
    assert abs(model.blocks[0].mlp.W_out.std().item() - 0.02 / math.sqrt(8)) < 0.001
    assert 0 <= model.W_bigram.min() and model.W_bigram.max() <= 0.02
    assert torch.equal(model.blocks[0].attn.sink, torch.zeros(8))


def test_rotary_tables_made_under_inference_mode_still_allow_backward():
    model = tiny_model(positions="rotary", rotary_scaling=(8.0, 1.0, 4.0, 8.0))
    with torch.inference_mode():
        expected = model(tokens())
    out = model(tokens())  # same length: the cached tables are reused
    out.sum().backward()
    torch.testing.assert_close(out.detach(), expected)


def test_attention_masks_made_under_inference_mode_still_allow_backward():
    """The fused path reuses its additive (causal + sink) mask; one made under inference_mode must
    still serve a later forward whose backward saves it (a frozen sink, as when pruning)."""
    model = tiny_model()
    for block in model.blocks:
        block.attn.sink.requires_grad_(False)
    with torch.inference_mode():
        expected = model(tokens())
    out = model(tokens())  # same shape: the cached masks are reused
    out.sum().backward()
    torch.testing.assert_close(out.detach(), expected)
    assert model.blocks[0].attn.W_Q.grad is not None


def test_logits_at_one_position_per_row_match_full_forward():
    model = tiny_model(bigram_table=True)
    tokens = torch.randint(0, model.cfg.d_vocab, (3, 9))
    at = torch.tensor([8, 0, 4])
    full = model(tokens)
    torch.testing.assert_close(model(tokens, at=at)[:, 0], full[torch.arange(3), at])
