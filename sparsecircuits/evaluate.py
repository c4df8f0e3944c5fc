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
from sparsecircuits.model.packing import pack, shared_prefix_packing
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
        last = self._last_logits(d.tokens, d.lengths, masks, base, per_row_masks=False)
        return logit_diff(last, d)

    @torch.no_grad()
    def diff_stacked(self, masks: dict[str, Tensor], start: tuple[int, Tensor] | None = None) -> Tensor:
        """Logit differences of every example under each of c mask sets, in one batched forward.

        `masks[hook]` has a leading dim c (one mask set per row); returns [c, n_examples]. Used to
        ablate many single nodes at once: c copies of the examples, each with its own masks. With
        `start=(layer, resid)` (`resid` from `block_inputs`), the pass starts at that block: every
        mask set must then agree on the sites before it (only later masks are applied)."""
        c = next(iter(masks.values())).shape[0]
        d, n = self.data, len(self.data)
        tiled = {h: m.repeat_interleave(n, 0).unsqueeze(1) for h, m in masks.items()}  # [c*n, 1, *shape]
        base = self.base
        if self.per_example and base is not None:
            base = {h: v.repeat(c, *([1] * (v.dim() - 1))) for h, v in base.items()}
        if start is not None:
            start = (start[0], start[1].repeat(c, 1, 1))
        last = self._last_logits(d.tokens.repeat(c, 1), d.lengths.repeat(c), tiled, base, per_row_masks=True,
                                 start=start)
        rows = torch.arange(c * n)
        diff = last[rows, d.correct.repeat(c)] - last[rows, d.incorrect.repeat(c)]
        return diff.view(c, n)

    @torch.no_grad()
    def block_inputs(self, masks: dict[str, Tensor], layers: list[int]) -> dict[int, Tensor]:
        """The residual entering each block in `layers` (its `hook_resid_pre`) under masks, for every
        example: `{layer: [n_examples, pos, d_model]}` (prompts right-padded; positions past a
        prompt's end are never read by its last-position logits). One forward, stopped after the
        last of them. `diff_stacked(..., start=(layer, resid))` resumes from one."""
        from sparsecircuits.model.cache import cache_until

        hooks = [f"blocks.{layer}.hook_resid_pre" for layer in layers]
        cache = cache_until(self.model, self.data.tokens, hooks, masked_hooks(masks, self.base))
        return {layer: cache[h] for layer, h in zip(layers, hooks)}

    def _last_logits(self, tokens: Tensor, lengths: Tensor, masks: dict[str, Tensor],
                     base: dict[str, Tensor] | None, per_row_masks: bool,
                     start: tuple[int, Tensor] | None = None) -> Tensor:
        """Logits at each row's last prompt position under masks, [rows, d_vocab].

        With masks shared by all rows, the prompts run packed (`model/packing.py`: laid end to end in
        one row, no padding, common prefixes computed once unless the baseline is per example, one
        pass per `_PACKED_TOKENS` tokens). Per-row masks (`[rows, 1, *shape]`)
        run padded instead, rows sorted by prompt length in chunks, each cut to its longest prompt:
        with right padding and causal attention the last-position logits do not depend on the padding,
        so both are exact (a batch padded to its longest prompt spends up to a third of its compute
        on padding)."""
        if not len(lengths):
            return self.model.W_E.new_zeros(0, self.model.cfg.d_vocab)
        if not per_row_masks:
            return self._last_logits_packed(tokens, lengths, masks, base, start)
        order = torch.argsort(lengths, stable=True)
        parts = []
        for chunk in order.split(_chunk_rows(len(order))):
            width = int(lengths[chunk].max())
            m = {h: v[chunk] for h, v in masks.items()} if per_row_masks else masks
            b = None if base is None else {h: v[chunk, :width] if self.per_example else v for h, v in base.items()}
            resume = None if start is None else (start[0], start[1][chunk, :width])
            with self.model.hooks(masked_hooks(m, b)):
                # trim: the last block computes the last position only (its hooks see one position,
                # which a per-example baseline, indexed by position, cannot follow)
                parts.append(self.model(tokens[chunk, :width], at=lengths[chunk] - 1, trim=not self.per_example,
                                        start=resume)[:, 0])
        return torch.cat(parts)[torch.argsort(order)]

    def _last_logits_packed(self, tokens: Tensor, lengths: Tensor, masks: dict[str, Tensor],
                            base: dict[str, Tensor] | None, start: tuple[int, Tensor] | None) -> Tensor:
        """`_last_logits` for masks shared by every row: packed passes of consecutive rows."""
        parts, first = [], 0
        for n_rows in _packed_groups(lengths):
            rows = slice(first, first + n_rows)
            first += n_rows
            ln = lengths[rows]
            width = int(ln.max())
            b, packed = base, ln
            if self.per_example or start is not None:  # per-prompt inputs: no prefix is shared
                row = pack(tokens[rows, :width], ln)
                if self.per_example and base is not None:
                    b = {h: pack(v[rows, :width], ln) for h, v in base.items()}
            else:  # prompts that begin alike compute their common prefix once
                row, packed = shared_prefix_packing(tokens[rows, :width], ln)
            resume = None if start is None else (start[0], pack(start[1][rows, :width], ln))
            with self.model.hooks(masked_hooks(masks, b)):
                # trim: the last block computes the last position only (its hooks see one position,
                # which a per-example baseline, indexed by position, cannot follow)
                parts.append(self.model(row, at=ln - 1, trim=not self.per_example, start=resume, packed=packed)[:, 0])
        return torch.cat(parts)

    @torch.no_grad()
    def evaluate(self, masks: dict[str, Tensor], calibrate: bool = False) -> Evaluation:
        diff = self.diff(masks)
        if calibrate:
            diff = calibrated(diff, self.data)
        return Evaluation(float(task_loss(diff)), float((diff > 0).float().mean()), float(diff.mean()))


# Tokens per packed pass: bounds the activations a no-grad evaluation holds at once.
_PACKED_TOKENS = 8192


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


def _chunk_rows(n_rows: int, chunks: int = 4, min_rows: int = 16) -> int:
    """Rows per length-sorted chunk: about `chunks` chunks, none smaller than `min_rows` (smaller
    chunks waste less padding but cost a forward each)."""
    return max(min_rows, -(-n_rows // chunks))


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

