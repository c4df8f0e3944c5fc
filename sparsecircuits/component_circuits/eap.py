"""Gradient attribution on the component graph: EAP and EAP-IG (two variants).

All three are gradients of the metric with respect to the edge mask (DESIGN.md "Methods as mask
strategies"). Since a reader's input is `input_r - (1 - m[w, r]) * delta_w`, the gradient at m = 1 is
`delta_w . d metric / d input_r` — the EAP edge score of Syed, Rager & Conmy (2023), "Attribution
patching outperforms automated circuit discovery": (clean - corrupt activation of the writer) times
the gradient at the reader's input, every edge from one forward and one backward pass.

EAP-IG (Hanna, Pezzelle & Belinkov 2024, "Have faith in faithfulness"; integrated gradients of
Sundararajan et al. 2017) averages that gradient over `steps` points of a path (midpoint rule):
  inputs       the input embedding (the embed writer's output) moves from the baseline to the clean
               one, alpha = (k + 0.5) / steps; the delta stays fixed at clean - baseline; everything
               downstream is recomputed (Hanna et al.'s EAP-IG);
  activations  all edge masks move together, m = alpha (per-activation interpolation; each reader
               sees its upstream writers interpolated between baseline and clean). Along this path the
               scores sum exactly to metric(all on) - metric(all off) as steps grow (completeness),
               which the tests check.
Use a logit difference (not KL, whose gradient vanishes at the clean point).

How it is computed (equal to differentiating `run_masked` with respect to the mask, to float
rounding; tests/component_circuits/test_resume.py, every model variant): under a uniform mask m = a
every reader of a group (a layer's q heads, k groups, v groups, its MLP, the logits) reads
`x - (1 - a) * sum_w (out_w - base_w)` over the same upstream writers, one running sum per layer
instead of a writers x readers einsum (nothing at a = 1). One forward and one backward give the
gradient at every reader input, and the scores are one matmul per reader group,
`(out_w - base_w) . d metric / d input_r` summed over examples, positions and d_model. The logits are
taken at each prompt's last position only (`Transformer.forward(at=...)`).

Nonlinear writers (post-norms, AbsTopK on the attention output; `component_graph.py`): the gradient
passes hold their state constant, as attribution graphs hold norm scales and attention patterns: the
post-norms' scales are detached (`run_masked(..., frozen=True)`), AbsTopK's selection is constant
under autograd anyway. Gradients then pass a post-norm and AbsTopK as the fixed linear map
x -> S * (w / s) * C x (pre-norms and everything else stay live, as for dense models). The forward
values are the model's own, and exact patching (`patching.py`) recomputes the state live. `edge_ig` keeps the state live too: it is the reference
that converges to exact patching, which holds where the state moves smoothly along the path (norm
scales), not where an AbsTopK selection flips on it.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from sparsecircuits.component_circuits.component_graph import frozen_state_hooks, head_hooks, run_masked
from sparsecircuits.component_circuits.config import IG_VARIANTS  # torch-free, for the CLI
from sparsecircuits.component_circuits.prepare import ComponentScores, ComponentTask, metric_of_logits
from sparsecircuits.component_circuits.resume import last_positions, reader_groups
from sparsecircuits.model.hooks import HookFn, HookPoint
from sparsecircuits.tasks.base import logit_diff


def _reader_groups(task: ComponentTask) -> list[tuple[str, int, int, int, bool]]:
    """(hook, upstream writers, first reader, end reader, 3-d input) of every reader group, in order."""
    g = task.graph
    return [grp for layer in range(g.n_layers + 1) for grp in reader_groups(g, layer)]


def _reader_gradients(task: ComponentTask, a: float, shift: Tensor | None) -> tuple[list[Tensor], list[Tensor]]:
    """One forward and backward under the uniform mask m = `a` (embedding shifted by `shift`): the
    gradient of the metric at every reader group's input, and (a < 1) this run's writer outputs, in
    chunks (the embedding, then per layer its heads and its MLP).

    Under a uniform mask every reader of a group sees `x - (1 - a) * sum_w (out_w - base_w)` over
    the same upstream writers, so the run needs one running sum, not a writers x readers einsum; and
    d metric / d m[w, r] = (out_w - base_w) . d metric / d input_r, contracted afterwards (module
    docstring). Equal to the gradient through `run_masked` (tests/component_circuits/test_resume.py)."""
    model, g = task.model, task.graph
    dev = task.device
    tokens = task.data.tokens.to(dev)
    record = a < 1.0
    chunks: list[Tensor] = []  # writer outputs in graph order (embed, then per layer heads and MLP)
    cum: list[Tensor] = []  # cum[k]: the sum of the first k + 1 chunks over their writers
    starts = [0] + [s for layer in range(g.n_layers) for s in (g.writer_start(layer), g.mlp_writer(layer))]
    inputs: list[Tensor] = []

    def emit(x: Tensor) -> None:
        chunks.append(x)
        s = x.sum(2)
        cum.append(s if not cum else cum[-1] + s)

    def leaf(x: Tensor, hook: HookPoint) -> Tensor:  # the root of the graph that the gradients flow back to
        return x.detach().requires_grad_(True)

    hooks: list[tuple[str, HookFn]] = [*frozen_state_hooks(model), ("hook_embed", leaf)]
    if shift is not None:
        def interpolate(x: Tensor, hook: HookPoint) -> Tensor:
            return x + shift[:, : x.shape[1]].to(x.dtype)

        hooks.append(("hook_embed", interpolate))
    if record:
        def embed(x: Tensor, hook: HookPoint) -> None:
            emit(x.unsqueeze(2))

        def pos(x: Tensor, hook: HookPoint) -> None:
            chunks[0] = chunks[0] + x.unsqueeze(-2)
            cum[0] = chunks[0].sum(2)

        def mlp(x: Tensor, hook: HookPoint) -> None:
            emit(x.unsqueeze(2))

        hooks.append(("hook_embed", embed))
        if model.cfg.positions == "learned":
            hooks.append(("hook_pos_embed", pos))
        for layer in range(g.n_layers):
            hooks += head_hooks(model, layer, emit) + [(f"blocks.{layer}.hook_mlp_out", mlp)]

    base_cum: dict[int, Tensor] = {}  # upstream writers -> the sum of their baselines
    if record:
        T, total, prev = tokens.shape[1], 0, 0
        for n_up in sorted({grp[1] for grp in _reader_groups(task)}):
            total = total + task.base[:, :T, prev:n_up].sum(2)
            base_cum[n_up], prev = total, n_up

    def reader(n_up: int, flat: bool) -> HookFn:
        k = sum(1 for s in starts if s < n_up)  # chunks upstream of the group

        def fn(x: Tensor, hook: HookPoint) -> Tensor:
            if record:
                adj = (1.0 - a) * (cum[k - 1] - base_cum[n_up]).to(x.dtype)
                x = x - (adj if flat else adj.unsqueeze(2))
            elif flat:  # the MLP's input is also the residual the block adds to: a copy that feeds the MLP only
                x = x.clone()
            inputs.append(x)
            return x

        return fn

    hooks += [(hook, reader(n_up, flat)) for hook, n_up, _, _, flat in _reader_groups(task)]
    with torch.enable_grad(), model.hooks(hooks):
        logits = model(tokens, at=last_positions(task.data, dev))
        value = logit_diff(logits[:, 0], task.data).mean()
        grads = torch.autograd.grad(value, inputs)
    return [gr.detach() for gr in grads], [c.detach() for c in chunks]


def _delta_rows(task: ComponentTask, outs: list[Tensor] | Tensor) -> Tensor:
    """[W, n * pos * d_model]: each writer's output minus its baseline, one row per writer, written
    chunk by chunk (`outs`: chunks of a run, or the [n, pos, W, d_model] clean outputs)."""
    parts = list(outs.split(16, dim=2)) if isinstance(outs, Tensor) else outs
    n, T, _, d = parts[0].shape
    D = torch.empty(len(task.graph.writers), n * T * d, dtype=parts[0].dtype, device=parts[0].device)
    w = 0
    for part in parts:
        k = part.shape[2]
        D[w: w + k] = (part - task.base[:, :T, w: w + k]).permute(2, 0, 1, 3).reshape(k, -1)
        w += k
    return D


def _contract(task: ComponentTask, D: Tensor, grads: list[Tensor]) -> Float[Tensor, "W R"]:
    """scores[w, r] = sum over examples, positions and d_model of delta_w * grad_r (`D`: `_delta_rows`;
    one matmul per reader group, over its upstream writers)."""
    g = task.graph
    out = torch.zeros(len(g.writers), len(g.readers), dtype=D.dtype, device=D.device)
    for (_, n_up, r0, r1, flat), gr in zip(_reader_groups(task), grads):
        G = (gr.unsqueeze(2) if flat else gr).permute(2, 0, 1, 3).reshape(r1 - r0, -1).to(D.dtype)
        out[:n_up, r0:r1] = D[:n_up] @ G.T
    return out.cpu()


def _mask_grad(task: ComponentTask, a: float, alpha: float | None) -> Float[Tensor, "W R"]:
    """d metric / d mask at the uniform mask value `a` (activations path), or at mask 1 with the
    input interpolated to `alpha` (the delta then fixed at clean - baseline)."""
    if alpha is None:
        grads, outs = _reader_gradients(task, a, None)
        return _contract(task, _delta_rows(task, outs if outs else task.clean), grads)
    shift = (1 - alpha) * (task.base[..., 0, :] - task.clean[..., 0, :])  # writer 0 = embed
    grads, _ = _reader_gradients(task, 1.0, shift)
    return _contract(task, _delta_rows(task, task.clean), grads)


def _scores(task: ComponentTask, edges: Tensor, info: dict) -> ComponentScores:
    edges = edges * task.graph.valid
    return ComponentScores(edges, edges.sum(1), None, info)


def eap(task: ComponentTask) -> ComponentScores:
    """EAP edge scores: the mask gradient at m = 1 (one forward, one backward)."""
    return _scores(task, _mask_grad(task, 1.0, None), {"method_detail": "eap"})


def eap_ig(task: ComponentTask, steps: int = 8, variant: str = "inputs") -> ComponentScores:
    """EAP-IG edge scores, the gradient averaged over `steps` midpoints of the chosen path."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if variant not in IG_VARIANTS:
        raise ValueError(f"variant must be one of {IG_VARIANTS}, got {variant!r}")
    if variant == "activations":  # the run's own writer outputs enter the delta: one contraction per step
        total = sum(_mask_grad(task, (k + 0.5) / steps, None) for k in range(steps))
    else:  # the delta is fixed: sum the gradients, contract once
        clean = task.clean
        grads: list[Tensor] | None = None
        for k in range(steps):
            shift = (1 - (k + 0.5) / steps) * (task.base[..., 0, :] - clean[..., 0, :])
            step, _ = _reader_gradients(task, 1.0, shift)
            grads = step if grads is None else [a + b for a, b in zip(grads, step)]
        assert grads is not None
        total = _contract(task, _delta_rows(task, clean), grads)
    return _scores(task, total / steps, {"ig_steps": steps, "ig_variant": variant})


def edge_ig(task: ComponentTask, edges: Tensor, steps: int = 8) -> Float[Tensor, " k"]:
    """Integrated gradients of single edges, each along its own path (its mask from 1 to 0, all others
    on): as steps grow this converges to exact edge patching (the fundamental theorem of calculus),
    which makes it the reference that the tests hold EAP and EAP-IG against. `edges` is [k, 2]."""
    from sparsecircuits.component_circuits.prepare import single_edge_masks

    g, k = task.graph, len(edges)
    rows = torch.arange(k)
    total = torch.zeros(k)
    tokens = task.data.tokens.to(task.device)
    for step in range(steps):
        m = single_edge_masks(g, edges).to(task.device)
        m[rows, edges[:, 0], edges[:, 1]] = (step + 0.5) / steps
        m.requires_grad_(True)
        with torch.enable_grad():
            logits = run_masked(task.model, g, tokens, m, base=task.base)
            (grad,) = torch.autograd.grad(metric_of_logits(logits, task.data).sum(), m)
        total += grad[rows, edges[:, 0], edges[:, 1]].detach().cpu()
    return total / steps


__all__ = ["IG_VARIANTS", "eap", "eap_ig", "edge_ig"]
