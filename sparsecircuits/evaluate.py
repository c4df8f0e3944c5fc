"""Evaluating a model on a task, with or without node masks: the one measurement every method's
circuit is checked with (DESIGN.md: "every evaluation runs the model under masks").

`MaskedTask` binds a model, a task's data and a baseline (mean / zero / counterfactual, see
`ablation.py`) and returns per-example logit differences or an `Evaluation` (task loss, accuracy,
mean logit difference) under any set of masks. `calibrated` applies Gao et al.'s logit scale-and-shift
calibration to a set of logit differences.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from sparsecircuits.ablation import NodeSite, counterfactual_baselines, masked_hooks
from sparsecircuits.model.cache import cache_until
from sparsecircuits.model.hooks import HookFn, HookPoint
from sparsecircuits.model.packing import Packing, pack, packing_of, replicate, shared_prefix_packing
from sparsecircuits.model.skip_linear import skipping_masked_channels
from sparsecircuits.model.transformer import Transformer
from sparsecircuits.tasks.base import TaskData, last_logits, logit_diff, task_loss


@dataclass
class Evaluation:
    loss: float  # task BCE, nats
    accuracy: float  # fraction with logit(correct) > logit(incorrect)
    logit_diff: float  # mean metric


class MaskedTask:
    """A model, a task's data and a baseline: evaluates the task under node masks."""

    def __init__(self, model: Transformer, data: TaskData, baseline: str, means: dict[str, Tensor] | None,
                 sites: list[NodeSite]) -> None:
        self.model, self.data, self.sites = model, data, sites
        hooks = [s.hook for s in sites]
        if baseline == "mean":
            if means is None:
                raise ValueError("mean ablation needs mean activations (ablation.cached_means)")
            self.base: dict[str, Tensor] | None = {h: means[h] for h in hooks}
            self.per_example = False
        elif baseline == "counterfactual":
            if data.cf_tokens is None:
                raise ValueError(f"task {data.name!r} has no counterfactual prompts for counterfactual ablation")
            self.base = counterfactual_baselines(model, data.cf_tokens, hooks)
            self.per_example = True
        else:
            self.base, self.per_example = None, False

    def diff(self, masks: dict[str, Tensor], idx: Tensor | None = None) -> Tensor:
        """Per-example logit differences under masks (all examples, or the rows `idx`)."""
        d = self.data if idx is None else self.data.subset(idx)
        base = self.base
        if self.per_example and base is not None and idx is not None:
            base = {h: v[idx] for h, v in base.items()}
        return logit_diff(self._last_logits(d.tokens, d.lengths, masks, base), d)

    @torch.no_grad()
    def ablated_diffs(self, masks: dict[str, Tensor], nodes: list[tuple[str, int]], layer: int = 0,
                      max_rows: int = 64) -> Tensor:
        """Logit differences of every example with each of `nodes` ablated in turn on top of `masks`:
        `[len(nodes), n_examples]`. A node is `(hook, i)`, channel i of the site's flattened shape; it
        takes its baseline there, as under a mask of 0. Every node must be in block `layer` or later:
        the residual entering that block under `masks` is computed once and every pass starts there.
        Each node gets its own copy of the examples; copies run side by side, packed (common
        prefixes shared within a copy unless the baseline is per example), `max_rows` examples a pass."""
        d, n = self.data, len(self.data)
        sizes = {s.hook: s.size for s in self.sites}
        for hook, i in nodes:
            if hook not in sizes or not 0 <= i < sizes[hook]:
                raise ValueError(f"node ({hook!r}, {i}) is not a channel of this task's sites")
        row, packing, base = self._packed(d.tokens, d.lengths, self.base)
        hooks = masked_hooks(masks, base)
        start = None
        if layer > 0:
            entry = f"blocks.{layer}.hook_resid_pre"
            with skipping_masked_channels():
                start = cache_until(self.model, row, [entry], hooks, packed=packing)[entry]
        per_pass = max(1, max_rows // max(1, n))
        out = []
        for k in range(0, len(nodes), per_pass):
            part = nodes[k : k + per_pass]
            c = len(part)
            copies = replicate(packing, c)
            resume = None if start is None else (layer, start.repeat(1, c, 1))
            if self.per_example:  # each copy reads the same per-example baselines
                hooks = masked_hooks(masks, {h: v.repeat(1, c, *[1] * (v.dim() - 2)) for h, v in base.items()})
            with self.model.hooks(hooks + _ablation_hooks(part, base, row.shape[1], n, self.per_example)), \
                    skipping_masked_channels():
                last = self.model(row.repeat(1, c), packed=copies, at=copies.lengths - 1,
                                  trim=not self.per_example, start=resume)[:, 0]
            rows = torch.arange(c * n)
            out.append((last[rows, d.correct.repeat(c)] - last[rows, d.incorrect.repeat(c)]).view(c, n))
        return torch.cat(out) if out else torch.zeros(0, n)

    def _last_logits(self, tokens: Tensor, lengths: Tensor, masks: dict[str, Tensor],
                     base: dict[str, Tensor] | None) -> Tensor:
        """Logits at each row's last prompt position under masks, [rows, d_vocab].

        The prompts run packed (`model/packing.py`: laid end to end in one row, no padding, common
        prefixes computed once unless the baseline is per example, one pass per `_PACKED_TOKENS`
        tokens); a prompt's last-position logits do not depend on the others, so this is exact."""
        if not len(lengths):
            return self.model.W_E.new_zeros(0, self.model.cfg.d_vocab)
        parts, first = [], 0
        for n_rows in _packed_groups(lengths):
            rows = slice(first, first + n_rows)
            first += n_rows
            ln = lengths[rows]
            b = None if base is None else {h: v[rows] for h, v in base.items()} if self.per_example else base
            row, packed, b = self._packed(tokens[rows], ln, b)
            with self.model.hooks(masked_hooks(masks, b)), skipping_masked_channels():
                # trim: the last block computes the last position only (its hooks see one position,
                # which a per-example baseline, indexed by position, cannot follow)
                parts.append(self.model(row, at=ln - 1, trim=not self.per_example, packed=packed)[:, 0])
        return torch.cat(parts)

    def _packed(self, tokens: Tensor, lengths: Tensor,
                base: dict[str, Tensor] | None) -> tuple[Tensor, Packing, dict[str, Tensor] | None]:
        """Right-padded prompts as a packed row, its `Packing` and the baselines to match: common
        prefixes once, unless the baseline is per example (then each prompt keeps its own tokens and
        its baselines are packed alike)."""
        width = int(lengths.max())
        if not self.per_example:
            row, packing = shared_prefix_packing(tokens[:, :width], lengths)
            return row, packing, base
        packed_base = None if base is None else {h: pack(v[:, :width], lengths) for h, v in base.items()}
        return pack(tokens[:, :width], lengths), packing_of(lengths), packed_base

    @torch.no_grad()
    def evaluate(self, masks: dict[str, Tensor], calibrate: bool = False) -> Evaluation:
        diff = self.diff(masks)
        if calibrate:
            diff = calibrated(diff, self.data)
        return Evaluation(float(task_loss(diff)), float((diff > 0).float().mean()), float(diff.mean()))


# Tokens per packed pass: bounds the activations a no-grad evaluation holds at once.
_PACKED_TOKENS = 8192


def _ablation_hooks(nodes: list[tuple[str, int]], base: dict[str, Tensor] | None, n_tokens: int,
                    n_prompts: int, per_example: bool) -> list[tuple[str, HookFn]]:
    """Hooks (after the mask hooks) setting node j's channel to its baseline in copy j of the prompts:
    copy j holds packed tokens [j * n_tokens, (j + 1) * n_tokens), or, where the trimmed last block
    sees one position per prompt, rows [j * n_prompts, (j + 1) * n_prompts)."""
    by_hook: dict[str, list[tuple[int, int]]] = {}
    for j, (hook, i) in enumerate(nodes):
        by_hook.setdefault(hook, []).append((j, i))

    def hook_fn(pairs: list[tuple[int, int]]) -> HookFn:
        def fn(x: Tensor, hook: HookPoint) -> Tensor:
            flat = x.reshape(*x.shape[:2], -1)
            packed = x.shape[0] == 1 and x.shape[1] == n_tokens * len(nodes)
            span = n_tokens if packed else n_prompts
            where = torch.cat([torch.arange(j * span, (j + 1) * span) for j, _ in pairs])
            channel = torch.tensor([i for _, i in pairs]).repeat_interleave(span)
            b = None if base is None else base[hook.name]
            if b is None:
                value = flat.new_zeros(len(where))
            elif per_example:  # packed like one copy: [1, n_tokens, *shape] (never trimmed)
                value = b.reshape(n_tokens, -1)[where % n_tokens, channel].to(x.dtype)
            else:
                value = b.reshape(-1)[channel].to(x.dtype)
            if packed:
                flat[0, where, channel] = value
            else:
                flat[where, 0, channel] = value
            return flat.view(x.shape)
        return fn

    return [(hook, hook_fn(pairs)) for hook, pairs in by_hook.items()]


def _packed_groups(lengths: Tensor) -> list[int]:
    """Consecutive row counts whose tokens fit `_PACKED_TOKENS` (at least one row each)."""
    budget, groups, n, total = _PACKED_TOKENS, [], 0, 0
    for ln in lengths.tolist():
        if n and total + ln > budget:
            groups.append(n)
            n, total = 0, 0
        n, total = n + 1, total + ln
    groups.append(n)
    return groups


def calibrated(diff: Tensor, data: TaskData, steps: int = 16) -> Tensor:
    """Logit differences after fitting a scale and a per-answer-token shift (Gao et al.'s calibration).

    With logits' = a * logits + b[token], the difference becomes a * diff + b[correct] - b[incorrect].
    """
    tokens = torch.unique(torch.cat([data.correct, data.incorrect]))
    pos = {int(t): i for i, t in enumerate(tokens)}
    ci = torch.tensor([pos[int(t)] for t in data.correct])
    ii = torch.tensor([pos[int(t)] for t in data.incorrect])
    a = torch.ones((), requires_grad=True)
    b = torch.zeros(len(tokens), requires_grad=True)
    lbfgs = torch.optim.LBFGS([a, b], max_iter=steps, line_search_fn="strong_wolfe")
    d = diff.detach()

    def closure() -> Tensor:
        lbfgs.zero_grad()
        loss = task_loss(a * d + b[ci] - b[ii])
        loss.backward()
        return loss

    with torch.enable_grad():
        lbfgs.step(closure)
    return (a * d + b[ci] - b[ii]).detach()


@torch.no_grad()
def evaluate_task(model: Transformer, data: TaskData) -> Evaluation:
    """The full model on a task: loss, accuracy and mean logit difference."""
    return MaskedTask(model, data, "zero", None, []).evaluate({})


@torch.no_grad()
def filter_solved(model: Transformer, data: TaskData, ratio: float = 2.0) -> TaskData:
    """The examples a model gets right with p(correct) > ratio x p(incorrect), i.e. logit difference
    > ln(ratio) (Lan et al. 2024 keep prompts with ratio 2)."""
    import math

    diff = logit_diff(last_logits(model(data.tokens.to(next(model.parameters()).device)), data.lengths), data).cpu()
    keep = torch.nonzero(diff > math.log(ratio)).flatten()
    if not len(keep):
        raise ValueError(f"the model solves none of the {len(data)} examples of {data.name!r} with p ratio > {ratio}")
    return data.subset(keep)


def faithfulness(value: float, full: float, empty: float) -> float:
    """(m(C) - m(empty)) / (m(full) - m(empty)) (Marks et al. 2025; MIB); NaN when full == empty."""
    return (value - empty) / (full - empty) if abs(full - empty) > 1e-12 else float("nan")


# MIB circuit track: edge fractions (as fractions of all edges) the faithfulness curve is taken at.
MIB_FRACTIONS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


def area_under(fractions: list[float], values: list[float]) -> float:
    """Trapezoid area of values over fractions in [0, 1] (MIB's CPR on f, CMD on |1 - f|)."""
    area = 0.0
    for (x0, y0), (x1, y1) in zip(zip(fractions, values), list(zip(fractions, values))[1:]):
        area += (x1 - x0) * (y0 + y1) / 2
    return area

