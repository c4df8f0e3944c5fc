"""Weight and activation sparsity: AbsTopK, the top-k projection with a per-neuron minimum (against
a slow brute-force reference, including matrices built to starve neurons), the L0 and learning-rate
schedules, and what one training step leaves in a tiny model."""

import math

import pytest
import torch

from conftest import tiny_model, tokens
from sparsecircuits.model import sparsity
from sparsecircuits.model.sparsity import (
    abs_topk,
    kept_fraction,
    matrix_l0,
    min_nonzeros,
    project_,
    target_nonzeros,
    topk_count,
    topk_mask,
)
from sparsecircuits.weight_sparse.train import (
    StepInput,
    TrainConfig,
    autocast_for,
    make_optimizer,
    target_nonzeros_at,
    train_step,
)

# ---------------------------------------------------------------------------------------------
# AbsTopK


def test_abs_topk_keeps_largest_magnitudes_including_negative():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 40, generator=g)
    x[..., 7] = -50.0  # the largest magnitude of every token is negative
    x[0, 0, 3] = -49.0
    y = abs_topk(x, 0.25)
    assert topk_count(40, 0.25) == 10
    for token, kept in zip(x.reshape(-1, 40), y.reshape(-1, 40)):
        order = sorted(range(40), key=lambda i: -abs(float(token[i])))
        expected = set(order[:10])
        assert {int(i) for i in kept.nonzero()} == expected
        assert 7 in expected
        for i in range(40):
            assert float(kept[i]) == (float(token[i]) if i in expected else 0.0)
    assert float(y[0, 0, 3]) == -49.0


@pytest.mark.parametrize(
    "d, frac, k", [(40, 0.1, 4), (40, 0.3, 12), (64, 1 / 16, 4), (10, 0.01, 1), (7, 0.99, 7)]
)
def test_abs_topk_count(d, frac, k):
    assert topk_count(d, frac) == k
    x = torch.randn(6, d) + 0.01  # no exact zeros
    assert (abs_topk(x, frac) != 0).sum(-1).tolist() == [k] * 6


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_abs_topk_integer_selection_equals_float_topk(dtype):
    """AbsTopK selects on the magnitudes' bit patterns read as integers (faster on the CPU): it must keep
    what a float `topk` keeps, with exact zeros (masked inputs), -0.0, +-inf and NaN present. Low-precision
    magnitudes tie, and ties may be broken differently, so rows compare as sorted kept magnitudes."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 128, generator=g, dtype=torch.float64)
    x[:16] *= torch.rand(16, 128, generator=g, dtype=torch.float64) < 0.1  # rows with fewer nonzeros than k
    x[16, :5] = -0.0
    x[17, 0], x[17, 1], x[18, 2] = float("inf"), float("-inf"), float("nan")
    x = x.to(dtype)
    y = abs_topk(x, 0.25)
    ref_idx = x.abs().double().topk(32, dim=-1, sorted=False).indices  # float topk on exact float64 copies
    ref = x * torch.zeros_like(x).scatter_(-1, ref_idx, 1.0)

    def kept(t):
        return t.abs().double().nan_to_num(nan=float("inf")).sort(-1).values

    assert torch.equal(kept(y), kept(ref))
    assert ((y != 0) | y.isnan()).sum(-1).le(32).all()
    if dtype in (torch.float32, torch.float64):
        assert torch.equal(y[19:].nan_to_num(), ref[19:].nan_to_num())  # random rows: no ties, same entries


def test_abs_topk_gradient_only_through_kept_entries():
    x = torch.randn(4, 32, requires_grad=True)
    upstream = torch.randn(4, 32)
    y = abs_topk(x, 0.25)
    (y * upstream).sum().backward()
    kept = y.detach() != 0
    assert kept.sum() == 4 * 8
    assert torch.equal(x.grad, torch.where(kept, upstream, torch.zeros(())))


def test_abs_topk_frac_one_is_identity():
    x = torch.randn(2, 3, 16)
    assert torch.equal(abs_topk(x, 1.0), x)


# ---------------------------------------------------------------------------------------------
# Weight top-k with a per-neuron minimum


def reference_mask(w: torch.Tensor, k: int, j: int, neuron_dim: int) -> torch.Tensor:
    """The definition, slowly: each neuron's j largest |w| by a Python sort, then the largest others.

    Well defined only when all magnitudes are distinct (then no tie-breaking is involved)."""
    by_neuron = w if neuron_dim == 0 else w.t()  # neurons are rows of by_neuron
    a = by_neuron.abs().tolist()
    n_neurons, fan = by_neuron.shape
    j = min(j, fan)
    kept = set()
    for r in range(n_neurons):
        kept |= {(r, c) for _, c in sorted(((a[r][c], c) for c in range(fan)), reverse=True)[:j]}
    others = sorted(
        ((a[r][c], r, c) for r in range(n_neurons) for c in range(fan) if (r, c) not in kept), reverse=True
    )
    kept |= {(r, c) for _, r, c in others[: k - len(kept)]}
    mask = torch.zeros(n_neurons, fan, dtype=torch.bool)
    for r, c in kept:
        mask[r, c] = True
    return mask if neuron_dim == 0 else mask.t()


def distinct_matrix(shape, seed, starve=0, neuron_dim=0) -> torch.Tensor:
    """Random signs, magnitudes a permutation of 1..numel (all distinct); the first `starve`
    neurons scaled by 1e-6 so that a plain global top-k would give them nothing."""
    g = torch.Generator().manual_seed(seed)
    n = math.prod(shape)
    mag = (torch.randperm(n, generator=g) + 1).double()
    sign = torch.randint(0, 2, (n,), generator=g).double() * 2 - 1
    w = (mag * sign).view(shape)
    if starve:
        (w[:starve] if neuron_dim == 0 else w[:, :starve]).mul_(1e-6)
    return w.float()


def per_neuron(mask: torch.Tensor, neuron_dim: int) -> torch.Tensor:
    return mask.sum(dim=1 - neuron_dim)


# (shape, neuron_dim, kept fraction, j); the larger shapes exceed the size at which the CPU path
# narrows candidates with a sampled threshold.
CASES = [
    ((12, 9), 0, 0.3, 2),
    ((9, 12), 1, 0.5, 3),
    ((40, 16), 0, 0.125, 1),
    ((16, 40), 1, 0.1, 4),
    ((256, 128), 0, 1 / 16, 4),
    ((128, 256), 1, 1 / 8, 4),
    ((96, 400), 1, 0.05, 4),
    ((200, 200), 0, 0.3, 4),
]


@pytest.mark.parametrize("shape, neuron_dim, frac, j", CASES)
@pytest.mark.parametrize("starve", [0, 5])
def test_topk_mask_matches_reference(shape, neuron_dim, frac, j, starve):
    w = distinct_matrix(shape, seed=sum(shape) + starve, starve=starve, neuron_dim=neuron_dim)
    k = target_nonzeros(shape, frac, j, neuron_dim)
    mask = topk_mask(w, k, j, neuron_dim)
    assert mask.dtype == torch.bool and mask.shape == w.shape
    assert int(mask.sum()) == k
    assert int(per_neuron(mask, neuron_dim).min()) >= j
    assert torch.equal(mask, reference_mask(w, k, j, neuron_dim))
    if starve:  # the case is really adversarial: a plain global top-k leaves the scaled neurons empty
        plain = torch.zeros(w.numel(), dtype=torch.bool)
        plain[w.abs().flatten().topk(k).indices] = True
        assert int(per_neuron(plain.view_as(w), neuron_dim)[:starve].max()) == 0


@pytest.mark.parametrize("shape, neuron_dim, frac, j", CASES[4:])
def test_topk_mask_without_candidate_narrowing_matches_reference(shape, neuron_dim, frac, j, monkeypatch):
    """The fall-back path (a bad threshold sample, or a matrix too small to narrow) is exact too."""
    w = distinct_matrix(shape, seed=3, starve=7, neuron_dim=neuron_dim)
    k = target_nonzeros(shape, frac, j, neuron_dim)
    fast = topk_mask(w, k, j, neuron_dim)
    monkeypatch.setattr(sparsity, "_candidates", lambda flat, k, row_len: None)
    assert torch.equal(topk_mask(w, k, j, neuron_dim), fast)
    assert torch.equal(fast, reference_mask(w, k, j, neuron_dim))


@pytest.mark.parametrize("shape, k", [((256, 128), 2048), ((512, 128), 8192), ((96, 400), 1500)])
def test_candidate_threshold_holds_the_top_k(shape, k):
    """On random matrices the sampled threshold narrows the search (and so is really exercised),
    and its candidates are exactly the entries above a value, at least k of them."""
    flat = torch.randn(shape, generator=torch.Generator().manual_seed(k)).abs().flatten()
    cand = sparsity._candidates(flat, k, shape[1])
    assert cand is not None
    assert k <= cand.numel() < flat.numel() // 2
    inside = torch.zeros_like(flat, dtype=torch.bool)
    inside[cand] = True
    assert float(flat[~inside].max()) < float(flat[inside].min())


@pytest.mark.parametrize("shape, neuron_dim", [((64, 48), 0), ((48, 64), 1), ((300, 200), 0)])
@pytest.mark.parametrize("fill", [0.0, 1.0])
def test_topk_mask_ties_keep_exact_count(shape, neuron_dim, fill):
    """All-equal (e.g. all-zero) matrices: any choice is right, but the count and minimum are exact."""
    w = torch.full(shape, fill)
    w[1, 2] = 5.0
    for frac, j in ((0.1, 4), (0.02, 2), (0.5, 0)):
        k = target_nonzeros(shape, frac, j, neuron_dim)
        mask = topk_mask(w, k, j, neuron_dim)
        assert int(mask.sum()) == k
        assert int(per_neuron(mask, neuron_dim).min()) >= j
        assert bool(mask[1, 2])


def test_topk_mask_min_per_neuron_above_fan_keeps_everything():
    w = distinct_matrix((4, 3), seed=0)
    assert min_nonzeros((4, 3), 5, 0) == 12
    assert topk_mask(w, 12, 5, 0).all()
    with pytest.raises(ValueError, match="per-neuron minimum"):
        topk_mask(w, 11, 5, 0)


def test_topk_mask_errors():
    w = torch.randn(8, 6)
    with pytest.raises(ValueError, match="per-neuron minimum"):
        topk_mask(w, 8 * 2 - 1, 2, 0)  # 8 rows x 2
    with pytest.raises(ValueError, match="per-neuron minimum"):
        topk_mask(w, 6 * 3 - 1, 3, 1)  # 6 columns x 3
    with pytest.raises(ValueError, match=r"k must be in \[1, 48\]"):
        topk_mask(w, 49, 1, 0)
    with pytest.raises(ValueError, match=r"k must be in \[1, 48\]"):
        topk_mask(w, 0, 0, 0)
    for bad in (torch.randn(48), torch.randn(2, 4, 6)):
        with pytest.raises(ValueError, match="2-D"):
            topk_mask(bad, 4, 0, 0)
    with pytest.raises(ValueError, match="2-D"):
        project_(torch.randn(2, 4, 6), 4, 0, 0)


def test_project_in_place():
    w = distinct_matrix((30, 20), seed=4, starve=3, neuron_dim=1)
    before = w.clone()
    k = target_nonzeros((30, 20), 0.1, 4, 1)
    mask = project_(w, k, 4, 1)
    assert torch.equal(mask, reference_mask(before, k, 4, 1))
    assert torch.equal(w, torch.where(mask, before, torch.zeros(())))
    assert int((w != 0).sum()) == k


def test_project_bf16_and_non_contiguous():
    w = distinct_matrix((20, 64), seed=5).t()  # [64, 20], a transposed view
    k = target_nonzeros((64, 20), 0.2, 4, 0)
    assert torch.equal(topk_mask(w, k, 4, 0), reference_mask(w.contiguous(), k, 4, 0))
    wb = torch.randn(64, 20).bfloat16()
    mask = project_(wb, k, 4, 0)
    assert int(mask.sum()) == k == int((wb != 0).sum())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_topk_mask_cuda_matches_reference():
    for shape, neuron_dim, frac, j in CASES:
        w = distinct_matrix(shape, seed=1, starve=5, neuron_dim=neuron_dim)
        k = target_nonzeros(shape, frac, j, neuron_dim)
        assert torch.equal(topk_mask(w.cuda(), k, j, neuron_dim).cpu(), reference_mask(w, k, j, neuron_dim))


# ---------------------------------------------------------------------------------------------
# Schedules


def test_kept_fraction_schedule():
    total, target = 400, 0.25  # start 100, end 300
    sched = [
        kept_fraction(s, total, target, start=0.25, end=0.75) for s in (0, 50, 100, 150, 200, 250, 300, 399)
    ]
    assert sched == [1.0, 1.0, 1.0, 0.8125, 0.625, 0.4375, 0.25, 0.25]
    assert kept_fraction(5, 1000, 0.1) == 1.0  # default start 1% = step 10
    assert kept_fraction(500, 1000, 0.1) == 0.1  # default end 50%
    assert kept_fraction(255, 1000, 0.1) == pytest.approx(1.0 - 0.9 * 245 / 490, abs=1e-15)
    with pytest.raises(ValueError, match="schedule fractions"):
        kept_fraction(0, 100, 0.5, start=0.6, end=0.5)


def test_target_nonzeros_never_below_minimum():
    assert target_nonzeros((64, 32), 0.25, 4, 0) == 512
    assert target_nonzeros((64, 32), 0.001, 4, 0) == 64 * 4
    assert target_nonzeros((64, 32), 0.001, 4, 1) == 32 * 4
    assert target_nonzeros((64, 32), 1.0, 4, 0) == 2048
    assert target_nonzeros((4, 3), 0.1, 5, 0) == 12  # j above the fan-in: every entry
    for frac in torch.linspace(0.001, 1.0, 50).tolist():
        for nd in (0, 1):
            t = target_nonzeros((64, 32), frac, 4, nd)
            assert t == max(round(frac * 2048), min_nonzeros((64, 32), 4, nd))


def test_lr_schedule_with_l0_scaling():
    cfg = TrainConfig(
        steps=1000, lr=0.01, warmup_frac=0.1, weight_frac=0.25, anneal_start=0.2, anneal_end=0.6
    )
    dense_factor = math.sqrt(0.25 / 1.0)  # before annealing: L0_now is the full matrix
    assert cfg.lr_at(0) == pytest.approx(0.01 * (1 / 100) * dense_factor)
    assert cfg.lr_at(49) == pytest.approx(0.01 * 0.5 * dense_factor)
    assert cfg.lr_at(99) == pytest.approx(0.01 * dense_factor)  # warmup done; decay not started
    mid = cfg.kept(400)["hidden"]
    assert mid == pytest.approx(0.625)
    assert cfg.lr_at(400) == pytest.approx(0.01 * (600 / 900) * math.sqrt(0.25 / 0.625))
    assert cfg.lr_at(800) == pytest.approx(0.01 * (200 / 900))  # annealed: factor 1
    assert cfg.lr_at(999) == pytest.approx(0.01 / 900)
    assert cfg.lr_at(1000) == 0.0
    unscaled = TrainConfig(steps=1000, lr=0.01, warmup_frac=0.1, weight_frac=0.25, lr_l0_scaling=False)
    dense = TrainConfig(steps=1000, lr=0.01, warmup_frac=0.1, weight_frac=0.25, dense=True)
    for s in (0, 99, 400, 999):
        base = 0.01 * min((s + 1) / 100, (1000 - s) / 900)
        assert unscaled.lr_at(s) == pytest.approx(base)
        assert dense.lr_at(s) == pytest.approx(base)


def test_kept_groups():
    cfg = TrainConfig(steps=100, weight_frac=0.125, embed_frac=0.25, anneal_start=0.1, anneal_end=0.5)
    assert cfg.kept(0) == {"hidden": 1.0, "embed": 1.0}
    assert cfg.kept(50) == {"hidden": 0.125, "embed": 0.25}
    assert cfg.kept(30) == {"hidden": pytest.approx(1 - 0.875 / 2), "embed": pytest.approx(1 - 0.75 / 2)}
    dense = TrainConfig(steps=100, dense=True)
    assert all(dense.kept(s) == {"hidden": 1.0, "embed": 1.0} for s in (0, 30, 50, 99))


# ---------------------------------------------------------------------------------------------
# One training step


def _step(model, cfg, step, seed=0):
    opt = make_optimizer(model, cfg)
    inp = StepInput(tokens(batch=2, pos=17, seed=seed), step, cfg.lr_at(step), cfg.kept(step))
    return train_step(model, opt, cfg, inp, lambda: autocast_for(torch.device("cpu"), "fp32"))


def _starve_some_neurons(model):
    """Shrink a few neurons so the step must force their top-j in: rows of W_in and W_E, columns of W_O."""
    with torch.no_grad():
        model.blocks[0].mlp.W_in[:3].mul_(1e-4)
        model.blocks[1].attn.W_O[:, :2].mul_(1e-4)
        model.W_E[:5].mul_(1e-4)


SPARSE_CFG = dict(steps=100, batch_size=2, lr=1e-2, weight_frac=0.25, embed_frac=0.5, min_per_neuron=4)


@pytest.mark.parametrize("step", [30, 60])  # inside the annealing window (1..50) and after it
def test_train_step_leaves_exact_sparsity(step):
    model = tiny_model()
    _starve_some_neurons(model)
    cfg = TrainConfig(**SPARSE_CFG)
    dense_before = {
        n: p.detach().clone() for n, p in model.named_parameters() if p.dim() == 1 or "bigram" in n
    }
    out = _step(model, cfg, step)
    assert math.isfinite(out.loss)
    params = dict(model.named_parameters())
    targets = target_nonzeros_at(model, cfg, step)
    kept = cfg.kept(step)
    if step >= 50:
        assert kept == {"hidden": 0.25, "embed": 0.5}
    for sw in model.sparse_weights():
        w = params[sw.name]
        assert targets[sw.name] == target_nonzeros(tuple(w.shape), kept[sw.group], 4, sw.neuron_dim)
        assert targets[sw.name] < w.numel()
        census = matrix_l0(sw.name, w, targets[sw.name], 4, sw.neuron_dim)
        assert census.nonzeros == census.target, sw.name
        assert census.neurons_below_min == 0, sw.name
    for name, before in dense_before.items():  # bigram table, biases, norm gains, sinks: dense, trained
        assert int((params[name] != 0).sum()) == params[name].numel(), name
        assert not torch.equal(params[name].detach(), before), name


def test_weight_decay_scales_survivors_and_revives_nothing():
    """Decay after the projection multiplies the kept entries by (1 - wd * lr): same support as
    without decay (no zero comes back), same values up to that factor; the bigram table is exempt."""
    cfg = TrainConfig(**SPARSE_CFG, weight_decay=0.5)
    no_decay = TrainConfig(**SPARSE_CFG, weight_decay=0.0)
    a, b = tiny_model(), tiny_model()
    _step(a, cfg, 60)
    _step(b, no_decay, 60)
    factor = 1.0 - 0.5 * cfg.lr_at(60)
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    for sw in a.sparse_weights():
        wa, wb = pa[sw.name].detach(), pb[sw.name].detach()
        assert torch.equal(wa != 0, wb != 0), sw.name
        torch.testing.assert_close(wa, wb * factor, rtol=1e-6, atol=0.0)
    torch.testing.assert_close(pa["W_bigram"], pb["W_bigram"], rtol=0, atol=0)
    # a further step keeps the count exact: Adam revives zeros, the projection removes them again
    _step(a, cfg, 61, seed=2)
    for sw in a.sparse_weights():
        w = pa[sw.name]
        target = target_nonzeros(tuple(w.shape), cfg.kept(61)[sw.group], 4, sw.neuron_dim)
        assert matrix_l0(sw.name, w, target, 4, sw.neuron_dim).nonzeros == target


def test_dense_twin_step_keeps_matrices_dense():
    model = tiny_model()
    cfg = TrainConfig(**SPARSE_CFG, dense=True)
    _step(model, cfg, 60)
    params = dict(model.named_parameters())
    for sw in model.sparse_weights():
        assert int((params[sw.name] != 0).sum()) == params[sw.name].numel(), sw.name


SITE_KEEPS = {"attn_in": "blocks.{L}.ln1.hook_keep", "q": "blocks.{L}.attn.hook_q_keep",
              "k": "blocks.{L}.attn.hook_k_keep", "v": "blocks.{L}.attn.hook_v_keep",
              "attn_out": "blocks.{L}.hook_attn_out_keep", "mlp_in": "blocks.{L}.ln2.hook_keep",
              "mlp_neurons": "blocks.{L}.mlp.hook_post_keep", "mlp_out": "blocks.{L}.hook_mlp_out_keep"}


def test_keep_hooks_exist_exactly_where_abstopk_is_on():
    model = tiny_model(act_sparsity=0.5, act_sparsity_sites=("q", "attn_out", "mlp_neurons"))
    keeps = {n for n in model.hook_points if n.endswith("keep")}
    want = {SITE_KEEPS[s].format(L=L) for s in ("q", "attn_out", "mlp_neurons") for L in range(model.cfg.n_layers)}
    assert keeps == want
    assert not any(n.endswith("keep") for n in tiny_model(act_sparsity=1.0).hook_points)


def test_keep_hooks_read_the_live_selection_and_freezing_it_linearises_abstopk():
    """The `*_keep` hooks see AbsTopK's 0/1 selection (kept = nonzero after the site); a frozen
    selection makes the site the linear map x -> S * x, so the logits of a frozen run with a scaled
    residual input are those of applying the fixed masks (checked at attn_out: scaling the block's
    attention output pre-selection scales the post-selection output exactly)."""
    sites = tuple(SITE_KEEPS)
    model = tiny_model(act_sparsity=0.5, act_sparsity_sites=sites)
    toks = tokens()
    names = [SITE_KEEPS[s].format(L=0) for s in sites]
    logits, cache = model.run_with_cache(toks, names_filter=names + ["blocks.0.hook_attn_out", "blocks.0.hook_mlp_out"])
    for s, n in zip(sites, names):
        mask = cache[n]
        assert set(mask.unique().tolist()) <= {0.0, 1.0}, s
        frac = mask.mean().item()
        assert 0.3 < frac < 0.7, (s, frac)
    # Kept entries of the outputs are exactly the nonzeros (random weights: no exact zeros otherwise).
    assert torch.equal(cache["blocks.0.hook_attn_out"] != 0, cache[names[4]].bool())
    assert torch.equal(cache["blocks.0.hook_mlp_out"] != 0, cache[names[7]].bool())
    # Replacing the selection with the recorded one changes nothing; with a different one, it does.
    frozen = [(n, (lambda v: lambda x, hook: v)(cache[n])) for n in names]
    with model.hooks(frozen):
        assert torch.equal(model(toks), logits)
    flipped = [(names[4], lambda x, hook: 1.0 - x)]
    with model.hooks(flipped):
        assert not torch.allclose(model(toks), logits)


def test_abs_topk_mask_is_the_selection_of_abs_topk():
    x = torch.randn(4, 7, 32)
    mask = sparsity.abs_topk_mask(x, 0.25)
    assert torch.equal(x * mask, abs_topk(x, 0.25))
    assert mask.sum(-1).eq(8).all()
    assert sparsity.abs_topk_mask(x, 1.0) is None
