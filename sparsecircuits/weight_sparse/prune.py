"""Learned-mask pruning of Gao et al. (2025), "Weight-sparse transformers have interpretable
circuits" (arXiv 2511.13653), Section "Pruning".

Nodes are the scalar channels of the eight sites per layer (`ablation.prune_sites`). Steps:
  1. one gate parameter tau per node, initialised N(init_mean, init_std) with init_mean > 0, so
     every node starts on;
  2. each step, on a batch of task examples: mask = H(tau) (Heaviside forward; backward the
     sigmoid derivative sigma'(tau / T) / T, a straight-through estimator); pruned nodes take their
     baseline (mean over pretraining data by default, zero, or the counterfactual activation);
     loss = task BCE + k_coef * (number of active nodes); AdamW with gradient clipping and linear lr
     decay; tau clamped to [-1, 1]. The batch is drawn with replacement, and an example drawn twice
     is run once, its logit difference counted twice (the same loss and gradient, up to the order
     of float sums; about a fifth less work at batch 64 of 128 training examples);
  3. discretise: order nodes by tau (averaged over the second half of training, ties -- e.g. nodes
     pinned at the +1 clamp -- broken by accumulated task-loss gradient), and bisect on k for the smallest circuit of the top-k nodes
     whose task loss on held-out examples is <= target_loss (default 0.15 nats; for a model whose own
     held-out loss is above that, full loss + target_slack, recorded as `target_loss_used`); optionally with a
     logit scale + per-answer-token shift fitted by 16 LBFGS steps ("calibration");
     With `extra_targets`, the same order is bisected again for each of those losses (gate training,
     most of a prune, does not depend on the target) and each circuit's size is recorded in
     `metadata["sizes_at_targets"]` (a target below the full model's own loss is recorded unreached);
  4. report the circuit: nodes with their single-node ablation effect (metric(circuit) - metric(circuit
     without the node), mean logit difference; exact, many nodes per batched forward), edges = nonzero weights between kept nodes plus the
     residual identities (`weight_edges.circuit_edges`), and the losses of the circuit, the full
     model and the empty circuit, the bisection trace and the hyperparameters.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from sparsecircuits.ablation import NodeSite, prune_sites
from sparsecircuits.evaluate import Evaluation, MaskedTask
from sparsecircuits.graph import Circuit, Node
from sparsecircuits.model.transformer import Transformer
from sparsecircuits.tasks.base import TaskData, task_loss
from sparsecircuits.weight_sparse.config import PruneConfig  # torch-free, for the CLI
from sparsecircuits.weight_sparse.weight_edges import circuit_edges


class _HeavisideSTE(torch.autograd.Function):
    """H(tau) forward; sigma'(tau / T) / T backward."""

    @staticmethod
    def forward(ctx: Any, tau: Tensor, temperature: float) -> Tensor:
        ctx.save_for_backward(tau)
        ctx.temperature = temperature
        return (tau > 0).to(tau.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (tau,) = ctx.saved_tensors
        s = torch.sigmoid(tau / ctx.temperature)
        return grad * s * (1 - s) / ctx.temperature, None


@contextmanager
def _denormals_flushed() -> Iterator[None]:
    """Flush subnormal floats to zero on the CPU for the duration (torch.set_flush_denormal; off again
    after). GELU sends very negative pre-activations to subnormal values (|x| < 1.2e-38), and every
    CPU operation that touches one takes a microcode slow path: a gate step's elementwise products ran
    up to 10x slower on them (about 7% of a prune). Their contribution to any sum of normal-sized
    numbers is far below rounding, so the pruned circuit is unchanged (the prune benchmark checks it)."""
    flushed = torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if flushed:
            torch.set_flush_denormal(False)


def _masks_from_flat(flat: Tensor, sites: list[NodeSite]) -> dict[str, Tensor]:
    out, start = {}, 0
    for s in sites:
        out[s.hook] = flat[start : start + s.size].view(s.shape)
        start += s.size
    return out


@dataclass
class Gates:
    """The outcome of gate training: final gates and the statistics that order nodes for bisection."""

    tau: Tensor  # final gate parameters, flat in site order
    tau_avg: Tensor  # mean of tau over the second half of training
    importance: Tensor  # sum over steps of -d(task loss)/d(gate): how much keeping the node helped

    def order(self) -> Tensor:
        """Nodes from most to least kept: by tau averaged over the second half of training (a node held
        at the +1 clamp throughout ranks above one that got there late), ties (e.g. all nodes pinned at
        +1) broken by accumulated importance, not by site order."""
        by_importance = torch.argsort(self.importance, descending=True, stable=True)
        return by_importance[torch.argsort(self.tau_avg[by_importance], descending=True, stable=True)]


def train_gates(task: MaskedTask, cfg: PruneConfig, on_step: Any = None) -> Gates:
    """Steps 1-2: optimise one gate per node (nodes in site order)."""
    g = torch.Generator().manual_seed(cfg.seed)
    n_nodes = sum(s.size for s in task.sites)
    tau = (cfg.init_mean + cfg.init_std * torch.randn(n_nodes, generator=g)).requires_grad_(True)
    opt_ = torch.optim.AdamW([tau], lr=cfg.lr, betas=(0.9, cfg.beta2), weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt_, lambda s: max(0.0, 1 - s / cfg.steps))
    tau_sum, importance, n_avg = torch.zeros(n_nodes), torch.zeros(n_nodes), 0
    for step in range(cfg.steps):
        pick = torch.randint(len(task.data), (min(cfg.batch_size, len(task.data)),), generator=g)
        gate = _HeavisideSTE.apply(tau, cfg.temperature)
        # Drawn with replacement, about a fifth of a batch repeats an example: run each once.
        once, copies = torch.unique(pick, return_inverse=True)
        diff = task.diff(_masks_from_flat(gate, task.sites), once)[copies]
        loss = task_loss(diff) + cfg.k_coef * gate.sum()
        opt_.zero_grad()
        loss.backward()
        with torch.no_grad():  # the penalty's share of the surrogate gradient is k_coef * sigma'(tau/T) / T
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
        if on_step is not None:
            on_step(step + 1, cfg.steps, float(loss.detach()), int((tau > 0).sum()))
    return Gates(tau.detach(), tau_sum / max(1, n_avg), importance)


@dataclass
class Bisection:
    k: int  # nodes in the circuit
    reached: bool  # whether loss <= target was reached (False: k = all nodes)
    trace: list[dict[str, float]]  # every (k, loss, accuracy) evaluated, in order
    evaluation: Evaluation  # the circuit of the top-k nodes on the task


def bisect_k(task: MaskedTask, order: Tensor, target: float, calibrate: bool,
             known: dict[int, Evaluation] | None = None) -> Bisection:
    """Step 3: smallest k whose top-k circuit has task loss <= target (bisection, assumes monotone).
    `known` holds evaluations already made on `task` with the same `calibrate` (e.g. k = all nodes
    and k = 0, the full model and the empty circuit): they are reused, not run again, and the ones
    made here are added to it (so bisections of one order to several targets share them)."""
    n = len(order)
    trace: list[dict[str, float]] = []
    cache: dict[int, Evaluation] = known if known is not None else {}  # shared: later bisections reuse it

    def loss_at(k: int) -> float:
        if k not in cache:
            flat = torch.zeros(n)
            flat[order[:k]] = 1.0
            cache[k] = task.evaluate(_masks_from_flat(flat, task.sites), calibrate)
        ev = cache[k]
        if all(t["k"] != k for t in trace):
            trace.append({"k": k, "loss": ev.loss, "accuracy": ev.accuracy, "logit_diff": ev.logit_diff})
        return ev.loss

    def done(k: int, reached: bool) -> Bisection:
        loss_at(k)
        return Bisection(k, reached, trace, cache[k])

    if loss_at(n) > target:
        return done(n, False)
    lo, hi = 0, n  # invariant: loss(hi) <= target; loss(lo) > target unless lo == 0 and it passes
    if loss_at(0) <= target:
        return done(0, True)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if loss_at(mid) <= target:
            hi = mid
        else:
            lo = mid
    return done(hi, True)


def kept_nodes(flat_on: Tensor, sites: list[NodeSite]) -> list[Node]:
    nodes, start = [], 0
    for s in sites:
        for i in torch.nonzero(flat_on[start : start + s.size]).flatten().tolist():
            nodes.append(Node(s.hook, int(i), s.kind, s.layer))
        start += s.size
    return nodes


@torch.no_grad()
def node_effects(task: MaskedTask, flat_on: Tensor, max_rows: int = 64) -> dict[str, float]:
    """Score of each kept node: mean logit diff of the circuit minus that of the circuit without it.

    Exact single-node ablations, several nodes of one layer per forward pass (each on its own copy
    of the examples, at most `max_rows` rows per pass: small passes keep the activations in the CPU's
    caches, 64 rows ran ~30% faster than 1024; `MaskedTask.ablated_diffs`). Ablating a node
    of layer L changes nothing before block L, so the residual entering block L under the circuit is
    computed once and each pass starts there: about half the work of full passes."""
    circuit = _masks_from_flat(flat_on, task.sites)
    base = float(task.diff(circuit).mean())
    kept = torch.nonzero(flat_on).flatten()
    site_of = [(s, i) for s in task.sites for i in range(s.size)]
    effects = torch.zeros(len(kept))
    for layer in sorted({site_of[k][0].layer for k in kept.tolist()}):
        here = [p for p, k in enumerate(kept.tolist()) if site_of[k][0].layer == layer]  # site order
        nodes = [(site_of[k][0].hook, site_of[k][1]) for k in kept[here].tolist()]
        effects[here] = base - task.ablated_diffs(circuit, nodes, layer, max_rows).mean(1)
    return {n.id: v for n, v in zip(kept_nodes(flat_on, task.sites), effects.tolist())}


def split_indices(n: int, seed: int, eval_frac: float = 0.5) -> tuple[Tensor, Tensor]:
    """Deterministic train/held-out split of example indices."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7919))
    n_eval = max(1, int(n * eval_frac))
    return perm[n_eval:], perm[:n_eval]


@dataclass
class PruneResult:
    circuit: Circuit
    gates: Gates  # final gate parameters and the node order, flat in site order
    bisection: Bisection
    full: Evaluation  # held-out examples, full model
    empty: Evaluation  # held-out examples, every node ablated
    in_circuit: Evaluation  # held-out examples, the circuit


def prune_task(
    model: Transformer,
    data: TaskData,
    cfg: PruneConfig,
    means: dict[str, Tensor] | None = None,
    sites: list[NodeSite] | None = None,
    on_step: Any = None,
) -> PruneResult:
    """Learned-mask pruning of one task (steps 1-4 of the module docstring)."""
    sites = sites if sites is not None else prune_sites(model)
    train_idx, eval_idx = split_indices(len(data), cfg.seed)
    requires = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        with _denormals_flushed():
            train = MaskedTask(model, data.subset(train_idx), cfg.baseline, means, sites)
            held = MaskedTask(model, data.subset(eval_idx), cfg.baseline, means, sites)
            gates = train_gates(train, cfg, on_step)
            order = gates.order()
            ones = {s.hook: torch.ones(s.shape) for s in sites}
            zeros = {s.hook: torch.zeros(s.shape) for s in sites}
            full, empty = held.evaluate(ones, cfg.calibrate), held.evaluate(zeros, cfg.calibrate)
            target = cfg.target_loss if full.loss <= cfg.target_loss else full.loss + cfg.target_slack
            known = {len(order): full, 0: empty}
            bis = bisect_k(held, order, target, cfg.calibrate, known=known)
            others = [(t, bisect_k(held, order, t, cfg.calibrate, known=known) if full.loss <= t else None)
                      for t in cfg.extra_targets]
            flat_on = torch.zeros(len(order))
            flat_on[order[: bis.k]] = 1.0
            nodes = kept_nodes(flat_on, sites)
            scores: dict[str, float] = {}
            if bis.k <= cfg.max_effect_nodes:
                few = MaskedTask(model, data.subset(eval_idx[: cfg.effect_examples]), cfg.baseline, means, sites)
                scores = node_effects(few, flat_on)
            circ = bis.evaluation
    finally:
        for p, r in zip(model.parameters(), requires):
            p.requires_grad_(r)
    answers = torch.cat([data.correct, data.incorrect]).tolist()
    extra, edges = circuit_edges(model, nodes, sites, answers)
    at_targets = []
    for t, b in others:
        if b is None:  # the full model itself is above this loss
            at_targets.append({"target": t, "reached": False, "n_nodes": None, "n_edges": None, "loss": None})
            continue
        on = torch.zeros(len(order))
        on[order[: b.k]] = 1.0
        kept = kept_nodes(on, sites)
        at_targets.append({"target": t, "reached": b.reached, "n_nodes": len(kept),
                           "n_edges": len(circuit_edges(model, kept, sites, answers)[1]), "loss": b.evaluation.loss})
    metadata = {
        "task": data.name,
        "method": "learned-mask pruning (Gao et al. 2025)",
        "n_nodes": len(nodes),
        "n_edges": len(edges),
        "reached_target": bis.reached,
        "target_loss_used": target,
        "node_effects": "single-node ablation from the circuit, mean logit difference"
        if scores else f"not computed: circuit larger than max_effect_nodes={cfg.max_effect_nodes}",
        "losses": {"circuit": circ.loss, "full": full.loss, "empty": empty.loss},
        "accuracy": {"circuit": circ.accuracy, "full": full.accuracy, "empty": empty.accuracy},
        "logit_diff": {"circuit": circ.logit_diff, "full": full.logit_diff, "empty": empty.logit_diff},
        "bisection": bis.trace,
        "sizes_at_targets": at_targets,
        "hyperparameters": dataclasses.asdict(cfg),
        "n_examples": {"train": len(train_idx), "held_out": len(eval_idx)},
        "answer_tokens": list(data.answer_strings),
        "sites": [dataclasses.asdict(s) for s in sites],
    }
    metadata = json.loads(json.dumps(metadata))  # JSON-native (lists, not tuples): a reload compares equal
    circuit = Circuit(nodes + extra, edges, scores, metadata)
    return PruneResult(circuit, gates, bis, full, empty, circ)
