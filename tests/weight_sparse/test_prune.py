"""Learned-mask pruning (Gao et al.) against ground truth on a hand-built model."""

import pytest
import torch

from sparsecircuits.ablation import circuit_masks, mean_activations, prune_sites
from sparsecircuits.graph import Circuit
from sparsecircuits.model import ModelConfig, Transformer
from sparsecircuits.tasks.base import Example, TaskData
from sparsecircuits.weight_sparse.prune import MaskedTask, PruneConfig, _masks_from_flat, bisect_k, prune_task

T0, T1, FILL, ANS_A, ANS_B = 0, 1, (2, 3), 4, 5
TRUE_NODES = {"blocks.0.ln2.hook_normalized[0]", "blocks.0.mlp.hook_post[0]", "blocks.0.hook_mlp_out[1]"}


def hand_built_model() -> Transformer:
    """1 layer, d_model 8. The answer (A after T0, B after T1) is computed by one path only:
    embedding channel 0 = 1 for T0, 0 otherwise -> MLP read channel 0 -> neuron 0 = relu(x0) ->
    MLP write channel 1 = 4 * neuron 0 -> logits A - B = 4 * ch1 (after the final norm) - 5 (bias).
    Attention writes only to channels 2..7 and the unembedding reads only channel 1, so every other
    node is irrelevant (up to RMSNorm scales), and each of the three path nodes is necessary under
    mean, zero and counterfactual ablation alike (no node on the path is redundant)."""
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=8, n_layers=1, n_heads=2, d_head=4, d_mlp=6, d_vocab=6, n_ctx=8, act="relu",
                      act_sparsity_sites=(), bigram_table=False, bias_qkv=False, bias_attn_out=False, bias_mlp=False,
                      bias_unembed=True)
    model = Transformer(cfg)
    with torch.no_grad():
        model.W_E.normal_(0, 0.1)
        model.W_E[:, :2] = 0
        model.W_E[T0, 0] = 1.0
        att, mlp = model.blocks[0].attn, model.blocks[0].mlp
        for W in (att.W_Q, att.W_K, att.W_V, att.W_O):
            W.normal_(0, 0.3)
        att.W_O[:2] = 0  # attention never writes channels 0, 1
        mlp.W_in.normal_(0, 0.3)
        mlp.W_in[:, 0] = 0
        mlp.W_in[0] = 0
        mlp.W_in[0, 0] = 1.0  # only neuron 0 reads channel 0, and it reads nothing else
        mlp.W_out.normal_(0, 0.3)
        mlp.W_out[:2] = 0
        mlp.W_out[:, 0] = 0
        mlp.W_out[1, 0] = 4.0  # channel 1 is written by neuron 0 only
        model.W_U.zero_()
        model.W_U[ANS_A, 1], model.W_U[ANS_B, 1] = 2.0, -2.0
        model.b_U.zero_()
        model.b_U[ANS_B] = 5.0
    return model


def hand_task(n: int = 128) -> TaskData:
    g = torch.Generator().manual_seed(0)
    tokens = torch.tensor(FILL)[torch.randint(0, 2, (n, 4), generator=g)]
    last = torch.randint(0, 2, (n,), generator=g)
    tokens[:, -1] = torch.where(last == 0, T0, T1)
    cf = tokens.clone()
    cf[:, -1] = torch.where(last == 0, T1, T0)
    correct = torch.where(last == 0, ANS_A, ANS_B)
    incorrect = torch.where(last == 0, ANS_B, ANS_A)
    examples = [Example(str(t.tolist()), str(int(c)), str(int(i))) for t, c, i in zip(tokens, correct, incorrect)]
    return TaskData("hand", examples, tokens, torch.full((n,), 4), correct, incorrect, cf, ("A", "B"), 0)


@pytest.fixture(scope="module")
def setup():
    model = hand_built_model()
    g = torch.Generator().manual_seed(1)
    means = mean_activations(model, [torch.randint(0, 4, (16, 8), generator=g)])
    return model, hand_task(), means


@pytest.mark.parametrize("baseline", ["mean", "zero", "counterfactual"])
def test_pruning_recovers_the_known_node_set(setup, baseline):
    model, data, means = setup
    result = prune_task(model, data, PruneConfig(steps=150, baseline=baseline, lr=0.02), means=means)
    circuit = result.circuit
    channel_nodes = {n.id for n in circuit.nodes if n.kind not in ("embed", "logit")}
    assert channel_nodes == TRUE_NODES
    md = circuit.metadata
    assert md["losses"]["circuit"] <= 0.15
    assert md["losses"]["empty"] > 0.6  # no information: at least ~log 2
    assert md["losses"]["full"] <= md["losses"]["circuit"] + 0.05
    # every true node matters: its single ablation lowers the logit difference a lot
    for node_id in TRUE_NODES:
        assert circuit.scores[node_id] > 0.5, (node_id, circuit.scores[node_id])


def test_edges_follow_the_nonzero_weights(setup):
    model, data, means = setup
    circuit = prune_task(model, data, PruneConfig(steps=150, lr=0.02), means=means).circuit
    edges = {(e.src, e.dst, e.kind) for e in circuit.edges}
    expected = {
        ("hook_embed[0]", "blocks.0.ln2.hook_normalized[0]", "residual"),
        ("blocks.0.ln2.hook_normalized[0]", "blocks.0.mlp.hook_post[0]", "weight"),
        ("blocks.0.mlp.hook_post[0]", "blocks.0.hook_mlp_out[1]", "weight"),
        ("blocks.0.hook_mlp_out[1]", f"logits[{ANS_A}]", "weight"),
        ("blocks.0.hook_mlp_out[1]", f"logits[{ANS_B}]", "weight"),
    }
    assert edges == expected
    assert circuit.metadata["n_edges"] == 5


def test_circuit_reloaded_from_json_gives_the_same_loss(setup, tmp_path):
    model, data, means = setup
    result = prune_task(model, data, PruneConfig(steps=150, lr=0.02), means=means)
    result.circuit.save(tmp_path / "c.json")
    again = Circuit.load(tmp_path / "c.json")
    assert again.to_dict() == result.circuit.to_dict()
    sites = prune_sites(model)
    from sparsecircuits.weight_sparse.prune import split_indices
    _, eval_idx = split_indices(len(data), 0)
    held = MaskedTask(model, data.subset(eval_idx), "mean", means, sites)
    ev = held.evaluate(circuit_masks(again, sites))
    assert ev.loss == pytest.approx(result.circuit.metadata["losses"]["circuit"], abs=1e-6)


def test_prune_config_validation():
    with pytest.raises(ValueError, match="PruneConfig.baseline"):
        PruneConfig(baseline="median")
    with pytest.raises(ValueError, match="PruneConfig.steps"):
        PruneConfig(steps=0)


@pytest.mark.parametrize("baseline", ["mean", "zero", "counterfactual"])
def test_batched_node_effects_equal_one_ablation_at_a_time(setup, baseline):
    from sparsecircuits.weight_sparse.prune import _masks_from_flat, node_effects

    model, data, means = setup
    sites = prune_sites(model)
    task = MaskedTask(model, data.subset(slice(0, 12)), baseline, means, sites)
    n = sum(s.size for s in sites)
    flat_on = (torch.rand(n, generator=torch.Generator().manual_seed(3)) < 0.6).float()
    got = node_effects(task, flat_on, max_rows=40)  # several chunks, the last one partial
    kept = torch.nonzero(flat_on).flatten().tolist()
    assert len(got) == len(kept)
    with torch.no_grad():
        base = float(task.diff(_masks_from_flat(flat_on, sites)).mean())
        for (node_id, value), i in zip(got.items(), kept):
            off = flat_on.clone()
            off[i] = 0.0
            want = base - float(task.diff(_masks_from_flat(off, sites)).mean())
            assert value == pytest.approx(want, abs=1e-5), node_id


def test_target_above_the_full_models_loss_is_relaxed_to_full_plus_slack(setup):
    model, data, means = setup
    cfg = PruneConfig(steps=150, lr=0.02, target_loss=1e-6, target_slack=0.05)
    md = prune_task(model, data, cfg, means=means).circuit.metadata
    assert md["losses"]["full"] > 1e-6
    assert md["target_loss_used"] == pytest.approx(md["losses"]["full"] + 0.05)
    assert md["reached_target"] and md["losses"]["circuit"] <= md["target_loss_used"]
    assert md["n_nodes"] < 40  # still a small circuit, not the whole model


def _ragged_task(baseline: str, n: int = 40, width: int = 12, **model: object) -> tuple[Transformer, MaskedTask, torch.Generator]:
    """A random 2-layer model with AbsTopK (`model`: config overrides) and a task whose prompts have 3
    to `width` tokens."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig(**{**dict(d_model=16, n_layers=2, n_heads=2, d_head=8, d_mlp=32, d_vocab=20,
                                              n_ctx=16, act_sparsity=0.5), **model}))
    g = torch.Generator().manual_seed(2)
    lengths = torch.randint(3, width + 1, (n,), generator=g)
    pad = torch.arange(width) >= lengths.unsqueeze(1)
    tokens = torch.randint(0, 20, (n, width), generator=g).masked_fill(pad, 0)
    cf = torch.randint(0, 20, (n, width), generator=g).masked_fill(pad, 0)
    correct, incorrect = torch.randint(0, 20, (n,), generator=g), torch.randint(0, 20, (n,), generator=g)
    data = TaskData("ragged", [Example("p", "c", "i")] * n, tokens, lengths, correct, incorrect, cf, ("c", "i"), 0)
    means = mean_activations(model, [torch.randint(0, 20, (8, 16), generator=g)])
    return model, MaskedTask(model, data, baseline, means, prune_sites(model)), g


@pytest.mark.parametrize("baseline", ["mean", "zero", "counterfactual"])
def test_node_effects_resumed_per_layer_equal_full_single_ablations(baseline):
    """node_effects starts each pass at the ablated node's block from the circuit's cached block
    input; on ragged prompts in a 2-layer model that must equal full-forward single ablations."""
    from sparsecircuits.weight_sparse.prune import _masks_from_flat, node_effects

    model, task, g = _ragged_task(baseline)
    flat_on = (torch.rand(sum(s.size for s in task.sites), generator=g) < 0.3).float()
    got = node_effects(task, flat_on, max_rows=200)  # several passes per layer
    kept = torch.nonzero(flat_on).flatten().tolist()
    assert len(got) == len(kept) and {n.split(".")[1] for n in got} >= {"0", "1"}
    with torch.no_grad():
        base = float(task.diff(_masks_from_flat(flat_on, task.sites)).mean())
        for (node_id, value), i in zip(got.items(), kept):
            off = flat_on.clone()
            off[i] = 0.0
            want = base - float(task.diff(_masks_from_flat(off, task.sites)).mean())
            assert value == pytest.approx(want, abs=1e-5), node_id


@pytest.mark.parametrize("packed_tokens", [8192, 9])
@pytest.mark.parametrize("baseline", ["mean", "zero", "counterfactual"])
def test_packed_runs_equal_one_padded_forward(baseline, packed_tokens, monkeypatch):
    """MaskedTask runs prompts packed (common prefixes once unless the baseline is per example; in
    one pass, or in several when they exceed the token budget); that must give the logit
    differences and the gradients of one forward over the whole right-padded batch. Its single-node
    ablations (copies of the packed prompts side by side, from a block's cached input) must equal
    a mask of 0 on that node."""
    import sparsecircuits.evaluate as evaluate_module
    from sparsecircuits.ablation import masked_hooks
    from sparsecircuits.tasks.base import logit_diff
    from sparsecircuits.weight_sparse.prune import _masks_from_flat

    monkeypatch.setattr(evaluate_module, "_PACKED_TOKENS", packed_tokens)
    model, task, g = _ragged_task(baseline)
    data, sites, tokens, lengths = task.data, task.sites, task.data.tokens, task.data.lengths
    n_nodes = sum(s.size for s in sites)
    gate = (torch.rand(n_nodes, generator=g) < 0.7).float().requires_grad_(True)
    masks = _masks_from_flat(gate, sites)
    got = task.diff(masks)
    with model.hooks(masked_hooks(masks, task.base)):
        want = logit_diff(model(tokens, at=lengths - 1)[:, 0], data)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    (g_got,) = torch.autograd.grad(got.sum(), gate)
    (g_want,) = torch.autograd.grad(want.sum(), gate)
    torch.testing.assert_close(g_got, g_want, atol=1e-4, rtol=1e-4)
    on = gate.detach()
    flat = [(s, i) for s in sites for i in range(s.size)]
    for layer in (0, 1):
        picks = [k for k in torch.randperm(n_nodes, generator=g).tolist() if flat[k][0].layer >= layer][:5]
        nodes = [(flat[k][0].hook, flat[k][1]) for k in picks]
        ablated = task.ablated_diffs(_masks_from_flat(on, sites), nodes, layer, max_rows=2 * len(data))
        for bad in [("blocks.0.attn.hook_nothing", 0), (nodes[0][0], 10**6)]:
            with pytest.raises(ValueError, match="not a channel"):
                task.ablated_diffs(_masks_from_flat(on, sites), [bad], layer)
        for row, k in zip(ablated, picks):
            off = on.clone()
            off[k] = 0.0
            torch.testing.assert_close(row, task.diff(_masks_from_flat(off, sites)).detach(), atol=1e-5, rtol=1e-5)


def test_bisection_reuses_known_evaluations_and_returns_the_circuits_own(setup):
    model, data, means = setup
    sites = prune_sites(model)
    held = MaskedTask(model, data, "mean", means, sites)
    n = sum(s.size for s in sites)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    calls = []
    evaluate = held.evaluate
    held.evaluate = lambda masks, calibrate=False: calls.append(1) or evaluate(masks, calibrate)
    full = evaluate({s.hook: torch.ones(s.shape) for s in sites})
    empty = evaluate({s.hook: torch.zeros(s.shape) for s in sites})
    fresh = bisect_k(held, order, 0.15, False)
    n_fresh = len(calls)
    reused = bisect_k(held, order, 0.15, False, known={n: full, 0: empty})
    assert (reused.k, reused.reached, reused.trace) == (fresh.k, fresh.reached, fresh.trace)
    assert [t["k"] for t in fresh.trace][:2] == [n, 0]  # the known ones are still listed in the trace
    assert len(calls) - n_fresh == n_fresh - 2
    flat = torch.zeros(n)
    flat[order[: reused.k]] = 1.0
    assert reused.evaluation.loss == evaluate(_masks_from_flat(flat, sites)).loss


# ---------------------------------------------------------------------------------------------
# The fast path (issue 25) against straightforward references: AbsTopK's selection by threshold
# against `topk` + scatter, and gate training that runs a repeated example once against the loop
# that runs every drawn example.


def _reference_abs_topk_mask(x: torch.Tensor, frac: float) -> torch.Tensor | None:
    """AbsTopK's selection the plain way: `topk` of |x| (on the same-order integers) and a scatter."""
    from sparsecircuits.model import sparsity

    k = sparsity.topk_count(x.shape[-1], frac)
    if k >= x.shape[-1]:
        return None
    mag = x.detach().abs()
    mag = mag.view(sparsity._SAME_ORDER_INT[mag.dtype]) if mag.dtype in sparsity._SAME_ORDER_INT else mag
    return torch.zeros_like(x).scatter_(-1, mag.topk(k, dim=-1, sorted=False).indices, 1.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("d, frac", [(7, 0.5), (40, 0.25), (128, 0.25), (512, 0.25), (64, 1 / 64)])
def test_abs_topk_selection_equals_topk_also_on_ties(dtype, d, frac):
    from sparsecircuits.model.sparsity import abs_topk_mask

    g = torch.Generator().manual_seed(d)
    x = torch.randn(3, 20, d, generator=g).to(dtype)
    x[0, :4] = 0.0  # all tied
    x[1, :4, : d // 2] = -1.5  # half the row tied in magnitude, across the threshold
    x[1, 4:8, :3] = 7.0  # ties above the threshold only
    x[2, 0, 0] = float("nan")
    got, want = abs_topk_mask(x, frac), _reference_abs_topk_mask(x, frac)
    assert got.dtype == x.dtype and torch.equal(got, want)
    with torch.inference_mode():
        assert torch.equal(abs_topk_mask(x, frac), want)
    assert torch.equal(abs_topk_mask(x.transpose(0, 1), frac), want.transpose(0, 1))  # not contiguous


def _reference_train_gates(task, cfg, on_step=None):
    """Steps 1-2 of the module docstring, the straightforward loop: every drawn example is run."""
    from sparsecircuits.tasks.base import task_loss
    from sparsecircuits.weight_sparse.prune import Gates, _HeavisideSTE

    g = torch.Generator().manual_seed(cfg.seed)
    n_nodes = sum(s.size for s in task.sites)
    tau = (cfg.init_mean + cfg.init_std * torch.randn(n_nodes, generator=g)).requires_grad_(True)
    opt_ = torch.optim.AdamW([tau], lr=cfg.lr, betas=(0.9, cfg.beta2), weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt_, lambda s: max(0.0, 1 - s / cfg.steps))
    tau_sum, importance, n_avg = torch.zeros(n_nodes), torch.zeros(n_nodes), 0
    for step in range(cfg.steps):
        pick = torch.randint(len(task.data), (min(cfg.batch_size, len(task.data)),), generator=g)
        gate = _HeavisideSTE.apply(tau, cfg.temperature)
        loss = task_loss(task.diff(_masks_from_flat(gate, task.sites), pick)) + cfg.k_coef * gate.sum()
        opt_.zero_grad()
        loss.backward()
        with torch.no_grad():
            sig = torch.sigmoid(tau / cfg.temperature)
            importance -= tau.grad - cfg.k_coef * sig * (1 - sig) / cfg.temperature
        torch.nn.utils.clip_grad_norm_([tau], cfg.grad_clip)
        opt_.step()
        sched.step()
        with torch.no_grad():
            tau.clamp_(-1.0, 1.0)
            if step >= cfg.steps // 2:
                tau_sum += tau
                n_avg += 1
    return Gates(tau.detach(), tau_sum / max(1, n_avg), importance)


@pytest.mark.parametrize("baseline", ["mean", "zero", "counterfactual"])
def test_fast_pruning_gives_the_reference_circuit(baseline, monkeypatch):
    """A random 2-layer model with AbsTopK at every site, answers = its own top two logits, batches
    that repeat examples: the optimized prune equals the straightforward one (same nodes, edges,
    scores; gates equal up to float summation order)."""
    import sparsecircuits.model.transformer as transformer_module
    import sparsecircuits.weight_sparse.prune as prune_module

    # no bigram table and large weights: the answers need much of the model
    model, task, _ = _ragged_task(baseline, n=48, bigram_table=False, init_std=0.5)
    data = task.data
    with torch.no_grad():
        top2 = model(data.tokens, at=data.lengths - 1)[:, 0].topk(2, dim=-1).indices
    data.correct, data.incorrect = top2[:, 0].contiguous(), top2[:, 1].contiguous()
    cfg = PruneConfig(steps=60, batch_size=20, lr=0.02, target_loss=1e-6, target_slack=0.1, baseline=baseline,
                      max_effect_nodes=4096)
    fast = prune_task(model, data, cfg, means=task.base if baseline == "mean" else None)
    monkeypatch.setattr(transformer_module, "abs_topk_mask", _reference_abs_topk_mask)
    monkeypatch.setattr(prune_module, "train_gates", _reference_train_gates)
    slow = prune_task(model, data, cfg, means=task.base if baseline == "mean" else None)
    n_all = sum(s.size for s in task.sites)
    assert 0 < fast.circuit.metadata["n_nodes"] < n_all  # a real circuit, not everything or nothing
    assert [n.id for n in fast.circuit.nodes] == [n.id for n in slow.circuit.nodes]
    assert [str(e) for e in fast.circuit.edges] == [str(e) for e in slow.circuit.edges]
    assert fast.circuit.scores.keys() == slow.circuit.scores.keys()
    for node_id, value in fast.circuit.scores.items():
        assert value == pytest.approx(slow.circuit.scores[node_id], abs=1e-5)
    torch.testing.assert_close(fast.gates.tau, slow.gates.tau, atol=1e-5, rtol=0)
    assert torch.equal(fast.gates.order(), slow.gates.order())


def test_extra_targets_bisect_the_same_gates(setup):
    """Sizes at extra targets equal what a prune at that target finds (same seed, same gates), the
    main target repeated gives the main circuit, and a target below the full loss is unreached."""
    model, data, means = setup
    base = dict(steps=150, lr=0.02)
    res = prune_task(model, data, PruneConfig(**base, extra_targets=(0.15, 0.5, 1e-9)), means=means)
    md = res.circuit.metadata
    same, loose, impossible = md["sizes_at_targets"]
    assert (same["n_nodes"], same["n_edges"], same["reached"]) == (md["n_nodes"], md["n_edges"], True)
    alone = prune_task(model, data, PruneConfig(**base, target_loss=0.5), means=means).circuit.metadata
    assert (loose["n_nodes"], loose["n_edges"]) == (alone["n_nodes"], alone["n_edges"])
    assert loose["loss"] == pytest.approx(alone["losses"]["circuit"]) and loose["n_nodes"] <= same["n_nodes"]
    assert impossible == {"target": 1e-9, "reached": False, "n_nodes": None, "n_edges": None, "loss": None}
    with pytest.raises(ValueError, match="extra_targets"):
        PruneConfig(extra_targets=(0.0,))


def test_skipping_masked_channels_leaves_the_gates_bitwise_equal(monkeypatch):
    """Gate training's backward skips the products of switched-off channels (`model/skip_linear.py`);
    the gates must be those of the plain backward, bit for bit where the BLAS blocks were found."""
    import contextlib

    import sparsecircuits.evaluate as evaluate_module
    import sparsecircuits.model.skip_linear as skip_module
    from sparsecircuits.weight_sparse.prune import train_gates

    model, task, _ = _ragged_task("mean", n=48, bigram_table=False, init_std=0.5, d_model=32, d_mlp=64, n_heads=4)
    for p in model.parameters():
        p.requires_grad_(False)
    cfg = PruneConfig(steps=40, batch_size=20, lr=0.05)
    monkeypatch.setattr(skip_module, "_MIN_WORK", 0)  # this model's products are small
    calls = []
    blockwise = skip_module._blockwise
    monkeypatch.setattr(skip_module, "_blockwise", lambda *a: calls.append(1) or blockwise(*a))
    found = all(skip_module._blocks(k, torch.get_num_threads()) for k in (32, 64))
    calls.clear()  # the probe above calls _blockwise too
    fast = train_gates(task, cfg)
    monkeypatch.setattr(evaluate_module, "skipping_masked_channels", lambda: contextlib.nullcontext())
    slow = train_gates(task, cfg)
    if found:
        assert len(calls) > 100  # the restricted products did run
        assert torch.equal(fast.tau, slow.tau) and torch.equal(fast.importance, slow.importance)
    else:  # pragma: no cover - a BLAS whose blocks were not found does not restrict
        torch.testing.assert_close(fast.tau, slow.tau)
