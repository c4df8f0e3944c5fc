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

from sparsecircuits.component_circuits.component_graph import run_masked
from sparsecircuits.component_circuits.config import IG_VARIANTS  # torch-free, for the CLI
from sparsecircuits.component_circuits.prepare import ComponentScores, ComponentTask, metric_of_logits
from sparsecircuits.model.hooks import HookPoint


def _mask_grad(task: ComponentTask, m: Tensor, alpha: float | None) -> Float[Tensor, "W R"]:
    """d metric / d mask at mask value `m` (activations path), or at the interpolated input `alpha`."""
    mask = m.clone().requires_grad_(True)
    tokens = task.data.tokens.to(task.device)
    with torch.enable_grad():
        if alpha is None:
            logits = run_masked(task.model, task.graph, tokens, mask, base=task.base, frozen=True)
        else:
            shift = (1 - alpha) * (task.base[..., 0, :] - task.clean[..., 0, :])  # writer 0 = embed

            def interpolate(x: Tensor, hook: HookPoint) -> Tensor:
                return x + shift[:, : x.shape[1]].to(x.dtype)

            delta = task.clean - task.base
            logits = run_masked(task.model, task.graph, tokens, mask, delta=delta, embed_fn=interpolate, frozen=True)
        value = metric_of_logits(logits, task.data).sum()
        (grad,) = torch.autograd.grad(value, mask)
    return grad.detach().cpu()


def _scores(task: ComponentTask, edges: Tensor, info: dict) -> ComponentScores:
    edges = edges * task.graph.valid
    return ComponentScores(edges, edges.sum(1), None, info)


def eap(task: ComponentTask) -> ComponentScores:
    """EAP edge scores: the mask gradient at m = 1 (one forward, one backward)."""
    ones = torch.ones(len(task.graph.writers), len(task.graph.readers), device=task.device)
    return _scores(task, _mask_grad(task, ones, None), {"method_detail": "eap"})


def eap_ig(task: ComponentTask, steps: int = 8, variant: str = "inputs") -> ComponentScores:
    """EAP-IG edge scores, the gradient averaged over `steps` midpoints of the chosen path."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if variant not in IG_VARIANTS:
        raise ValueError(f"variant must be one of {IG_VARIANTS}, got {variant!r}")
    ones = torch.ones(len(task.graph.writers), len(task.graph.readers), device=task.device)
    total = torch.zeros(ones.shape)
    for k in range(steps):
        alpha = (k + 0.5) / steps
        if variant == "activations":
            total += _mask_grad(task, alpha * ones, None)
        else:
            total += _mask_grad(task, ones, alpha)
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
