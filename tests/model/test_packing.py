"""`Transformer.forward(tokens, packed=lengths)`: prompts laid end to end in one row (`model/packing.py`).

Ground truth is each prompt run alone. The packed row must give every prompt's own logits at every
token and, with `at=`, at one token per prompt (with and without `trim`), on every attention path and
model variant of `test_attention_mask.py`; parameter gradients must be the sum of the prompts' own;
many prompts of mixed lengths (several attention groups) and resuming with `start` must agree too,
and so must prompts packed with their common prefixes stored once (`shared_prefix_packing`).
Hooks see the packed row (attention scores and pattern excepted, laid out padded, and fired once).
"""

from __future__ import annotations

import pytest
import torch
from test_attention_mask import PATHS, VARIANTS, _path, _strong_sinks

from conftest import tiny_model
from sparsecircuits.model.packing import at_positions, pack, packing_of, shared_prefix_packing

ATOL = 1e-5


def _prompts(lengths: tuple[int, ...], seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 97, (n,), generator=g) for n in lengths]


LENGTHS = (7, 10, 1, 4)
MANY = tuple(int(n) for n in torch.randint(1, 13, (37,), generator=torch.Generator().manual_seed(3)))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_packed_row_gives_each_prompts_own_logits(variant):
    model = _strong_sinks(tiny_model(**VARIANTS[variant]))
    for lengths in (LENGTHS, MANY):
        prompts = _prompts(lengths)
        row, ln = torch.cat(prompts)[None], torch.tensor(lengths)
        with torch.no_grad():
            alone = [model(p[None])[0] for p in prompts]
        for path in PATHS:
            with _path(model, path):
                logits = model(row, packed=ln)
                last = [model(row, packed=ln, at=ln - 1, trim=trim) for trim in (False, True)]
            assert logits.shape == (1, int(ln.sum()), model.cfg.d_vocab)
            torch.testing.assert_close(logits[0], torch.cat(alone), atol=ATOL, rtol=ATOL, msg=f"{path} {len(lengths)}")
            for out in last:
                assert out.shape == (len(prompts), 1, model.cfg.d_vocab)
                torch.testing.assert_close(out[:, 0], torch.stack([a[-1] for a in alone]), atol=ATOL, rtol=ATOL,
                                           msg=f"{path} at")


@pytest.mark.parametrize("variant", ["default", "learned", "gqa_sink", "gemma2", "parallel"])
def test_packed_gradients_are_the_sum_of_each_prompts_own(variant):
    model = _strong_sinks(tiny_model(**VARIANTS[variant]))
    prompts = _prompts(MANY)
    weights = [torch.randn(len(p), model.cfg.d_vocab, generator=torch.Generator().manual_seed(i))
               for i, p in enumerate(prompts)]
    for p, w in zip(prompts, weights):
        (model(p[None])[0] * w).sum().backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    for path in ("fused", "explicit"):
        model.zero_grad()
        with _path(model, path):
            (model(torch.cat(prompts)[None], packed=torch.tensor(MANY))[0] * torch.cat(weights)).sum().backward()
        for n, g in expected.items():
            torch.testing.assert_close(dict(model.named_parameters())[n].grad, g, atol=1e-4, rtol=1e-4, msg=f"{path} {n}")


def test_hooks_see_the_packed_row_and_the_pattern_once():
    model = tiny_model()
    prompts = _prompts(MANY)
    n, seen = sum(MANY), {}

    def note(x, hook):
        seen.setdefault(hook.name, []).append(tuple(x.shape))

    with torch.no_grad(), model.hooks([(lambda name: name.startswith("blocks.0."), note)]):
        model(torch.cat(prompts)[None], packed=torch.tensor(MANY))
    cfg = model.cfg
    assert seen["blocks.0.hook_resid_pre"] == [(1, n, cfg.d_model)]
    assert seen["blocks.0.attn.hook_q"] == [(1, n, cfg.n_heads, cfg.d_head)]
    assert seen["blocks.0.attn.hook_z"] == [(1, n, cfg.n_heads, cfg.d_head)]
    assert seen["blocks.0.mlp.hook_post"] == [(1, n, cfg.d_mlp)]
    assert seen["blocks.0.attn.hook_pattern"] == [(len(MANY), cfg.n_heads, max(MANY), max(MANY))]


def test_packed_start_resumes_from_a_packed_residual():
    model = tiny_model()
    prompts = _prompts(MANY)
    row, ln = torch.cat(prompts)[None], torch.tensor(MANY)
    with torch.no_grad():
        _, cache = model.run_with_cache(row, names_filter=["blocks.1.hook_resid_pre"], packed=ln)
        full = model(row, packed=ln, at=ln - 1)
        resumed = model(row, packed=ln, at=ln - 1, start=(1, cache["blocks.1.hook_resid_pre"]))
    torch.testing.assert_close(resumed, full, atol=ATOL, rtol=ATOL)


def test_pack_and_packing_agree():
    lengths = torch.tensor(MANY)
    padded = torch.zeros(len(MANY), max(MANY), dtype=torch.long)
    for i, p in enumerate(_prompts(MANY)):
        padded[i, : len(p)] = p
    assert torch.equal(pack(padded, lengths)[0], torch.cat(_prompts(MANY)))
    packing = packing_of(lengths)
    groups = packing.grouped.groups
    assert sorted(torch.cat([rows for rows, _ in groups]).tolist()) == list(range(len(MANY))) and len(groups) > 1
    assert [n for _, n in groups] == [int(torch.tensor(MANY)[rows].max()) for rows, _ in groups]
    assert torch.equal(packing.positions[0], torch.cat([torch.arange(n) for n in MANY]))


@pytest.mark.parametrize("call, message", [
    (lambda m, row, ln: m(row, packed=ln, attention_mask=torch.ones_like(row)), "either packed= or attention_mask"),
    (lambda m, row, ln: m(row[:, :-1], packed=ln), r"one row \[1, sum\(lengths\)\]"),
    (lambda m, row, ln: m(row.view(2, -1), packed=ln), r"one row \[1, sum\(lengths\)\]"),
    (lambda m, row, ln: m(row, packed=ln, at=ln), "one position within each prompt"),
    (lambda m, row, ln: m(row, packed=ln, at=(ln - 1)[:-1]), "one position within each prompt"),
    (lambda m, row, ln: m(row, packed=ln.float()), "lengths must be integers"),
    (lambda m, row, ln: m(row, packed=torch.tensor([0, 4, 4])), "at least one token"),
    (lambda m, row, ln: m(torch.zeros(1, 200, dtype=torch.long), packed=torch.tensor([200])), "exceeds the model's n_ctx"),
])
def test_bad_packed_input_is_named(call, message):
    model = tiny_model()
    row, ln = torch.arange(8)[None], torch.tensor([3, 1, 4])
    with pytest.raises(ValueError, match=message):
        call(model, row, ln)


def _stemmed_prompts() -> tuple[list[torch.Tensor], torch.Tensor]:
    """Prompts that share prefixes: three stems with random continuations, a prompt that is a prefix
    of another, a repeated prompt, and one that shares nothing; and their right-padded batch."""
    g = torch.Generator().manual_seed(5)
    stems = [torch.randint(0, 97, (n,), generator=g) for n in (3, 6, 1)]
    prompts = [torch.cat([stems[i % 3], torch.randint(0, 97, (int(torch.randint(0, 6, (1,), generator=g)),),
                                                      generator=g)]) for i in range(20)]
    prompts += [prompts[4][:2], prompts[7].clone(), torch.randint(0, 97, (9,), generator=g)]
    padded = torch.zeros(len(prompts), max(len(p) for p in prompts), dtype=torch.long)
    for i, p in enumerate(prompts):
        padded[i, : len(p)] = p
    return prompts, padded


@pytest.mark.parametrize("variant", ["default", "learned", "partial_rotary", "gemma2", "parallel"])
def test_shared_prefixes_give_each_prompts_own_logits_and_gradients(variant):
    model = _strong_sinks(tiny_model(**VARIANTS[variant]))
    prompts, padded = _stemmed_prompts()
    lengths = torch.tensor([len(p) for p in prompts])
    row, packing = shared_prefix_packing(padded, lengths)
    distinct = {tuple(p[: i + 1].tolist()) for p in prompts for i in range(len(p))}
    assert row.shape == (1, len(distinct)) < (1, int(lengths.sum()))
    weights = [torch.randn(len(p), model.cfg.d_vocab, generator=torch.Generator().manual_seed(i))
               for i, p in enumerate(prompts)]
    for p, w in zip(prompts, weights):
        (model(p[None])[0][-1] * w[-1]).sum().backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    with torch.no_grad():
        alone = [model(p[None])[0] for p in prompts]
    for path in ("fused", "explicit", "split"):
        with _path(model, path):
            logits = model(row, packed=packing)[0]
        for i, p in enumerate(prompts):
            torch.testing.assert_close(logits[packing.index[i, : len(p)]], alone[i], atol=ATOL, rtol=ATOL, msg=path)
    for path in ("fused", "explicit"):
        model.zero_grad()
        with _path(model, path):
            last = model(row, packed=packing, at=lengths - 1, trim=True)[:, 0]
        torch.testing.assert_close(last.detach(), torch.stack([a[-1] for a in alone]), atol=ATOL, rtol=ATOL)
        (last * torch.stack([w[-1] for w in weights])).sum().backward()
        for n, g in expected.items():
            torch.testing.assert_close(dict(model.named_parameters())[n].grad, g, atol=1e-4, rtol=1e-4, msg=f"{path} {n}")
    assert torch.equal(at_positions(packing, lengths - 1), packing.index[torch.arange(len(prompts)), lengths - 1])


def test_a_packing_given_for_other_tokens_is_refused():
    model = tiny_model()
    prompts, padded = _stemmed_prompts()
    row, packing = shared_prefix_packing(padded, torch.tensor([len(p) for p in prompts]))
    with pytest.raises(ValueError, match=r"one row \[1, sum\(lengths\)\]"):
        model(torch.cat([row, row], 1), packed=packing)


@pytest.mark.parametrize("tokens, lengths", [
    (torch.zeros(3, 4, dtype=torch.long), torch.tensor([2, 5, 1])),  # a length past the padded width
    (torch.zeros(2, 4, dtype=torch.long), torch.tensor([2, 3, 1])),  # fewer prompts than lengths
    (torch.zeros(4, dtype=torch.long), torch.tensor([4])),  # not [batch, pos]
])
def test_bad_prompts_for_shared_prefixes_are_named(tokens, lengths):
    with pytest.raises(ValueError, match="right-padded tokens"):
        shared_prefix_packing(tokens, lengths)
