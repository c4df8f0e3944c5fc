"""`Transformer.forward(tokens, attention_mask=...)`: padded batches give each prompt's own logits.

Ground truth is each prompt run alone (no padding, no mask). A batch of prompts of different
lengths, left- or right-padded with random junk tokens, must give the same logits at every real
token, on every attention path (fused SDPA with and without a gradient on the sink, explicit with
patterns, split q/k/v inputs), with `at=` and `trim`, and the same parameter gradients; padded keys
get pattern 0 and nothing is NaN, not even a row of only padding. Tiny random models (2 layers,
d_model 32) in the variants the model supports. HF parity with masks is in `test_load.py`.
"""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_model
from sparsecircuits.model.transformer import padding_of

ATOL = 1e-5
LENGTHS = (7, 10, 1, 4)  # one row unpadded, one of a single token
WIDTH = max(LENGTHS)

VARIANTS = {
    "default": {},  # RMSNorm, no positions, attention sink, AbsTopK, bigram table
    "no_sink": dict(attn_sink=False),
    "learned": dict(positions="learned", norm="layer", act="gelu_new", attn_sink=False),
    "rotary": dict(positions="rotary", attn_sink=False),
    "partial_rotary": dict(positions="rotary", rotary_dim=4),
    "gqa": dict(n_kv_heads=2, attn_sink=False),
    "gqa_sink": dict(n_kv_heads=1, positions="rotary", rotary_dim=4),
    "sliding_window": dict(sliding_window=3, sliding_window_layers=(0,), attn_sink=False),
    "sliding_window_sink": dict(sliding_window=3, sliding_window_layers=(1,), n_kv_heads=2),
    "gemma2": dict(act="geglu", post_norms=True, embed_scale=2.0, attn_softcap=2.0, logit_softcap=4.0,
                   attn_sink=False, sliding_window=3, sliding_window_layers=(0,), positions="rotary",
                   n_kv_heads=2, rotary_scaling=(8.0, 1.0, 4.0, 8.0)),
    "parallel": dict(parallel_attn_mlp=True, act="swiglu", positions="rotary", rotary_dim=4, attn_sink=False),
}


def _prompts(seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 97, (n,), generator=g) for n in LENGTHS]


def _batch(prompts: list[torch.Tensor], side: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """tokens (padding = random junk, which must not matter), the 0/1 mask, and each row's real slice start."""
    tokens = torch.randint(0, 97, (len(prompts), WIDTH), generator=torch.Generator().manual_seed(9))
    mask = torch.zeros(len(prompts), WIDTH, dtype=torch.long)
    starts = torch.tensor([WIDTH - len(p) if side == "left" else 0 for p in prompts])
    for i, (p, s) in enumerate(zip(prompts, starts.tolist())):
        tokens[i, s:s + len(p)], mask[i, s:s + len(p)] = p, 1
    return tokens, mask, starts


def _path(model, path: str):
    """Which attention code runs: hooking the pattern forces the explicit path, hooking a q input
    the split q/k/v inputs; "no_grad" takes the fused path with the sink in a float mask."""
    if path == "explicit":
        return model.hooks([(lambda n: n.endswith("hook_pattern"), lambda x, h: None)])
    if path == "split":
        return model.hooks([(lambda n: n.endswith("hook_q_input"), lambda x, h: None)])
    return torch.no_grad() if path == "no_grad" else torch.enable_grad()


PATHS = ("fused", "no_grad", "explicit", "split")


def _strong_sinks(model):
    with torch.no_grad():
        for block in model.blocks:
            if block.attn.sink is not None:
                block.attn.sink.copy_(1.0 + torch.randn(block.attn.sink.shape, generator=torch.Generator().manual_seed(2)))
    return model


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_padded_batch_gives_each_prompts_own_logits(variant, side):
    model = _strong_sinks(tiny_model(**VARIANTS[variant]))
    prompts = _prompts()
    tokens, mask, starts = _batch(prompts, side)
    with torch.no_grad():
        alone = [model(p[None])[0] for p in prompts]
    for path in PATHS:
        with _path(model, path):
            logits = model(tokens, attention_mask=mask)
        assert logits.isfinite().all(), path
        for i, (p, s) in enumerate(zip(prompts, starts.tolist())):
            torch.testing.assert_close(logits[i, s:s + len(p)], alone[i], atol=ATOL, rtol=ATOL, msg=f"{path} row {i}")


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("variant", ["default", "rotary", "gemma2", "parallel", "sliding_window_sink"])
def test_at_with_a_mask_reads_each_prompts_last_token(variant, side):
    model = _strong_sinks(tiny_model(**VARIANTS[variant]))
    prompts = _prompts()
    tokens, mask, starts = _batch(prompts, side)
    with torch.no_grad():
        alone = torch.stack([model(p[None])[0, -1] for p in prompts])
    last = starts + torch.tensor(LENGTHS) - 1
    for path in PATHS:
        for trim in (False, True):
            with _path(model, path):
                out = model(tokens, attention_mask=mask, at=last, trim=trim)
            assert out.shape == (len(prompts), 1, model.cfg.d_vocab)
            torch.testing.assert_close(out[:, 0], alone, atol=ATOL, rtol=ATOL, msg=f"{path} trim={trim}")


@pytest.mark.parametrize("variant", ["default", "learned", "gqa_sink", "gemma2", "parallel"])
def test_gradients_are_finite_and_sum_over_the_prompts(variant):
    """The gradient of a loss on real tokens of the padded batch is the sum of each prompt's own;
    a loss that also reads the padded positions still has finite gradients."""
    model = _strong_sinks(tiny_model(**VARIANTS[variant]))
    prompts = _prompts()
    weights = [torch.randn(len(p), model.cfg.d_vocab, generator=torch.Generator().manual_seed(i))
               for i, p in enumerate(prompts)]
    for p, w in zip(prompts, weights):
        (model(p[None])[0] * w).sum().backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    for side in ("left", "right"):
        tokens, mask, starts = _batch(prompts, side)
        for path in ("fused", "explicit"):
            model.zero_grad()
            with _path(model, path):
                logits = model(tokens, attention_mask=mask)
            loss = sum((logits[i, s:s + len(p)] * w).sum() for i, (p, s, w) in enumerate(zip(prompts, starts.tolist(), weights)))
            loss.backward()
            for n, g in expected.items():
                torch.testing.assert_close(dict(model.named_parameters())[n].grad, g, atol=1e-4, rtol=1e-4,
                                           msg=f"{side} {path} {n}")
            model.zero_grad()
            with _path(model, path):
                model(tokens, attention_mask=mask).pow(2).sum().backward()
            assert all(p.grad.isfinite().all() for p in model.parameters() if p.grad is not None), (side, path)


@pytest.mark.parametrize("variant", ["default", "no_sink", "gemma2"])
def test_padded_keys_get_pattern_zero_and_shapes_are_kept(variant):
    model = tiny_model(**VARIANTS[variant])
    tokens, mask, _ = _batch(_prompts(), "left")
    names = ("blocks.0.attn.hook_pattern", "blocks.0.attn.hook_attn_scores")
    _, cache = model.run_with_cache(tokens, attention_mask=mask, names_filter=list(names))
    pattern, scores = cache[names[0]], cache[names[1]]
    B, H = len(tokens), model.cfg.n_heads
    assert pattern.shape == scores.shape == (B, H, WIDTH, WIDTH)
    pad_keys = ~mask.bool()[:, None, None, :].expand_as(pattern)
    assert (pattern[pad_keys] == 0).all() and (scores[pad_keys] == float("-inf")).all()
    assert pattern.isfinite().all()
    # a padded query before any real token attends nowhere; a real query's row sums to 1 without a sink
    pad_rows = ~mask.bool()[:, None, :, None].expand(B, H, WIDTH, 1).squeeze(-1)
    assert (pattern.sum(-1)[pad_rows] == 0).all()
    if not model.cfg.attn_sink:
        torch.testing.assert_close(pattern.sum(-1)[~pad_rows], torch.ones(int((~pad_rows).sum())))


def test_a_row_of_only_padding_is_finite_and_changes_no_other_row():
    for variant in ("default", "no_sink", "learned", "gemma2"):
        model = tiny_model(**VARIANTS[variant])
        tokens, mask, _ = _batch(_prompts(), "left")
        mask_empty = mask.clone()
        mask_empty[2] = 0
        for path in ("fused", "explicit"):
            model.zero_grad()
            with _path(model, path):
                out = model(tokens, attention_mask=mask_empty)
                out.sum().backward()
                ref = model(tokens, attention_mask=mask)
            assert out.isfinite().all() and all(p.grad.isfinite().all() for p in model.parameters() if p.grad is not None)
            keep = torch.tensor([0, 1, 3])
            torch.testing.assert_close(out[keep], ref[keep], atol=ATOL, rtol=ATOL)


def test_all_ones_mask_is_the_unmasked_forward_and_positions_follow_the_mask():
    model = tiny_model(**VARIANTS["learned"])
    tokens, mask, _ = _batch(_prompts(), "left")
    torch.testing.assert_close(model(tokens, attention_mask=torch.ones_like(mask, dtype=torch.bool)), model(tokens),
                               atol=ATOL, rtol=ATOL)
    assert padding_of(mask).positions[2].tolist() == [0] * WIDTH  # the one-token row: position 0 throughout
    assert padding_of(mask).positions[0].tolist() == [0, 0, 0, 0, 1, 2, 3, 4, 5, 6]
    _, cache = model.run_with_cache(tokens, attention_mask=mask, names_filter=["hook_pos_embed"])
    assert cache["hook_pos_embed"].shape == (len(tokens), WIDTH, model.cfg.d_model)  # per row with a mask
    torch.testing.assert_close(cache["hook_pos_embed"][0, -1], model.W_pos[6])


def test_mask_is_validated():
    model = tiny_model()
    tokens, mask, _ = _batch(_prompts(), "right")
    with pytest.raises(ValueError, match=r"attention_mask must be \[batch, pos\]"):
        model(tokens, attention_mask=mask[:, :-1])
    with pytest.raises(ValueError, match="bool or integer"):
        model(tokens, attention_mask=mask.float())
    with pytest.raises(ValueError, match="only 0 .* and 1"):
        model(tokens, attention_mask=mask * 2)
    with pytest.raises(ValueError, match=r"at points at padding .* rows \[0, 2, 3\]"):
        model(tokens, attention_mask=mask, at=torch.full((len(tokens),), WIDTH - 1))
    model(tokens, attention_mask=mask.bool(), at=torch.tensor(LENGTHS) - 1)  # bool masks are fine
    model(tokens, attention_mask=mask.to(torch.int32))
