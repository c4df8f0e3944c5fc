"""SHIFT: remove a classifier's reliance on a spurious cue by ablating the features that carry it
(Marks et al. 2025, "Sparse feature circuits", arXiv 2403.19647, section 4).

Steps (1: `train_probe`, 2: `probe_circuit`, 4: `feature_responses` + `auto_select`, 5-6: `shift_rows`):
  1. fit a linear probe on the mean-pooled activation at `probe_hook` on the *ambiguous* split, where
     the spurious attribute (here: quote style, `feature_circuits/shift_data.py`) predicts the label perfectly;
  2. the probe's feature circuit: node effects of every dictionary feature and error term by
     zero-ablation integrated gradients (`dictionary_graph.node_effects`), metric = the probe's
     logit towards the true label, (2y − 1)(w·x̄ + b), mean over examples, summed over positions;
     the `circuit_size` features with the largest |effect| form the circuit. The metric reads the
     pooled activation from a hook that runs after the last spliced site (`read_hook`);
  3. a person reads each circuit feature's top activating contexts and marks the features that
     track the spurious cue (the review file and the ablate file, written by the CLI);
  4. or, for scripting, a stand-in for the person (`auto_select`): each feature's response to the
     quote-swapped counterfactual of every ambiguous snippet (same code, other quote style) and to
     the label (mean over the test-module snippets minus the library ones, in both styles), both in
     units of the feature's standard deviation; a feature is marked when |quote response| >=
     `auto_quote_min` and |quote response| >= `auto_ratio` |label response|. It uses only the
     ambiguous split and its counterfactuals, never the balanced data;
  5. zero-ablate the marked features (`edit.zero_ablation_hooks`) and evaluate the same probe, and a
     probe head retrained on the ablated ambiguous split, on the balanced test split: label,
     spurious-attribute and worst-group accuracy;
  6. baselines: as many random features (among those that fire on the ambiguous split) ablated,
     averaged over `random_seeds` draws, and an oracle probe fitted on balanced training data.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import torch
from jaxtyping import Int
from torch import Tensor

from sparsecircuits.feature_circuits.circuit import EdgeScores, NodeScores, aggregate, build_circuit
from sparsecircuits.feature_circuits.config import ShiftConfig  # torch-free, for the CLI
from sparsecircuits.feature_circuits.dictionary_graph import (
    Site,
    execution_order,
    node_effects,
    node_values,
    patch_values,
)
from sparsecircuits.feature_circuits.edit import (
    Accuracy,
    Feature,
    Probe,
    accuracy,
    fit_probe,
    pooled_activations,
)
from sparsecircuits.feature_circuits.shift_data import ShiftDataset, ShiftSplit
from sparsecircuits.graph import Circuit
from sparsecircuits.model.hooks import HookPoint
from sparsecircuits.model.transformer import Transformer

Progress = Callable[[str, int, int], None]


@dataclass
class ProbeCircuit:
    features: list[Feature]  # by decreasing |effect|
    effects: list[float]  # their effects (probe-logit units)
    errors: dict[str, float]  # site -> effect of its error term
    circuit: Circuit


@dataclass
class Responses:
    quote: dict[Feature, float]  # standardised response to quote-swapping (' minus ")
    label: dict[Feature, float]  # standardised label difference (test minus library)


def read_hook(model: Transformer, hook: str) -> str:
    """A hook holding the same value as `hook` that runs after any splice at `hook` (the next
    block's `hook_resid_pre` for a `hook_resid_post`), else `hook` itself."""
    parts = hook.split(".")
    if len(parts) == 3 and parts[0] == "blocks" and parts[2] == "hook_resid_post":
        nxt = f"blocks.{int(parts[1]) + 1}.hook_resid_pre"
        if nxt in model.hook_points:
            return nxt
    return hook


def probe_metric(model: Transformer, probe: Probe, labels: Tensor, store: dict[str, Tensor]):  # noqa: ANN201
    """(hook, reader) and the metric (2y − 1)·logit reading the pooled activation the reader stores."""
    def reader(x: Tensor, hp: HookPoint) -> None:
        store["x"] = x.mean(1)

    def metric(logits: Tensor) -> Tensor:
        return (2 * labels.to(logits) - 1) * probe.logit(store["x"])

    return (read_hook(model, probe.hook), reader), metric


def probe_circuit(model: Transformer, sites: list[Site], probe: Probe, tokens: Int[Tensor, "batch pos"],
                  labels: Int[Tensor, " batch"], size: int, steps: int = 10, batch: int = 32,
                  progress: Progress | None = None) -> ProbeCircuit:
    """Step 2 of the module docstring."""
    hook = read_hook(model, probe.hook)
    order = execution_order(model)
    late = [s.name for s in sites if order.index(s.name) >= order.index(hook)]
    if late:
        raise ValueError(f"dictionary sites {late} run at or after the probe's hook {probe.hook!r}; use sites "
                         "before it (a hook_resid_post probe may share its hook with a dictionary)")
    device = next(model.parameters()).device
    sums: NodeScores | None = None
    for start in range(0, tokens.shape[0], batch):
        tok, lab = tokens[start:start + batch].to(device), labels[start:start + batch]
        store: dict[str, Tensor] = {}
        reader, metric = probe_metric(model, probe, lab, store)
        clean = node_values(model, sites, tok)
        patch = patch_values(model, sites, clean, "zero")
        with model.hooks([reader]):
            eff = node_effects(model, sites, tok, metric, patch, "ig", steps, clean)
        part = aggregate(eff, per_position=False)
        k = tok.shape[0]
        if sums is None:
            sums = NodeScores({s: v * k for s, v in part.feats.items()}, {s: v * k for s, v in part.errors.items()}, False)
        else:
            for s in part.feats:
                sums.feats[s] += part.feats[s] * k
                sums.errors[s] += part.errors[s] * k
        if progress:
            progress("probe circuit (integrated gradients)", min(start + batch, len(tokens)), len(tokens))
    assert sums is not None
    N = tokens.shape[0]
    scores = NodeScores({s: v / N for s, v in sums.feats.items()}, {s: v / N for s, v in sums.errors.items()}, False)
    cands = [((s.name, i), float(scores.feats[s.name][0, i])) for s in sites if s.kind == "dictionary"
             for i in range(s.width)]
    cands.sort(key=lambda c: -abs(c[1]))
    top = cands[:size]
    kept = [(f[0], None, f[1]) for f, _ in top] + [(s.name, None, -1) for s in sites if s.kind == "dictionary"]
    md = {"method": "ig", "ablation": "zero", "ig_steps": steps, "metric": f"probe logit towards the label ({probe.hook})",
          "n_examples": N, "shift_circuit_size": size}
    circuit = build_circuit(model, sites, scores, kept, EdgeScores([], [], torch.zeros(0)), 0.0, md)
    errors = {s.name: float(scores.errors[s.name][0]) for s in sites if s.kind == "dictionary"}
    return ProbeCircuit([f for f, _ in top], [v for _, v in top], errors, circuit)


@torch.no_grad()
def pooled_features(model: Transformer, sites: list[Site], tokens: Int[Tensor, "batch pos"], batch: int = 32,
                    reduce: str = "mean") -> dict[str, Tensor]:
    """Every dictionary feature's activation per snippet: the mean (or max) over positions, [n, width]."""
    device = next(model.parameters()).device
    out: dict[str, list[Tensor]] = {}
    for start in range(0, tokens.shape[0], batch):
        vals = node_values(model, sites, tokens[start:start + batch].to(device))
        for s in sites:
            if s.kind == "dictionary":
                f = vals.feats[s.name]
                out.setdefault(s.name, []).append((f.mean(1) if reduce == "mean" else f.amax(1)).float().cpu())
    return {k: torch.cat(v) for k, v in out.items()}


def feature_responses(model: Transformer, sites: list[Site], split: ShiftSplit, features: list[Feature],
                      batch: int = 32) -> Responses:
    """Step 4's quote and label responses of `features` on a split and its quote-swapped twins."""
    a = pooled_features(model, sites, split.tokens, batch)
    b = pooled_features(model, sites, split.cf_tokens, batch)
    q = split.quote.bool()
    lab = split.label.bool()
    quote, label = {}, {}
    for site, i in features:
        x, x_cf = a[site][:, i], b[site][:, i]
        single, double = torch.where(q, x, x_cf), torch.where(q, x_cf, x)
        sd = float(torch.cat([x, x_cf]).std()) + 1e-6
        quote[(site, i)] = float((single - double).mean()) / sd
        both = (single + double) / 2
        label[(site, i)] = (float(both[lab].mean()) - float(both[~lab].mean())) / sd if lab.any() and (~lab).any() else 0.0
    return Responses(quote, label)


def auto_select(responses: Responses, quote_min: float, ratio: float) -> list[Feature]:
    """Step 4's rule: features responding to quote style and not (as much) to the label."""
    return [f for f, dq in responses.quote.items()
            if abs(dq) >= quote_min and abs(dq) >= ratio * abs(responses.label[f])]


def active_features(model: Transformer, sites: list[Site], tokens: Int[Tensor, "batch pos"], batch: int = 32) -> list[Feature]:
    """Dictionary features that fire somewhere in `tokens`."""
    pooled = pooled_features(model, sites, tokens, batch, reduce="max")
    return [(s, int(i)) for s, v in pooled.items() for i in torch.nonzero(v.amax(0) > 0).flatten().tolist()]


def _evaluate(model: Transformer, sites: list[Site], data: ShiftDataset, probe: Probe, ablate: list[Feature],
              cfg: ShiftConfig) -> tuple[Accuracy, Accuracy]:
    """(the probe, a head retrained on the ablated ambiguous split) on the balanced test split."""
    test, amb = data.splits["balanced_test"], data.splits["ambiguous"]
    x_test = pooled_activations(model, test.tokens, probe.hook, sites, ablate, cfg.batch)
    x_amb = pooled_activations(model, amb.tokens, probe.hook, sites, ablate, cfg.batch)
    head = fit_probe(x_amb, amb.label, probe.hook, cfg.l2)
    return (accuracy(probe.predict(x_test), test.label, test.quote),
            accuracy(head.predict(x_test), test.label, test.quote))


def _mean(accs: list[Accuracy]) -> Accuracy:
    n = len(accs)
    return Accuracy(sum(a.label for a in accs) / n, sum(a.spurious for a in accs) / n,
                    sum(a.worst_group for a in accs) / n, [sum(a.groups[g] for a in accs) / n for g in range(4)])


def shift_rows(model: Transformer, sites: list[Site], data: ShiftDataset, probe: Probe, ablate: list[Feature],
               cfg: ShiftConfig, progress: Progress | None = None) -> dict[str, Accuracy]:
    """Steps 5-6: balanced-test accuracies of every condition."""
    test, amb, bal = data.splits["balanced_test"], data.splits["ambiguous"], data.splits["balanced_train"]
    rows: dict[str, Accuracy] = {}
    x_test = pooled_activations(model, test.tokens, probe.hook, batch=cfg.batch)
    rows["original probe"] = accuracy(probe.predict(x_test), test.label, test.quote)
    rows["ablated"], rows["ablated + retrained head"] = _evaluate(model, sites, data, probe, ablate, cfg)
    pool = active_features(model, sites, amb.tokens, cfg.batch)
    rnd, rnd_re = [], []
    for seed in range(cfg.random_seeds):
        pick = random.Random(seed).sample(pool, min(len(ablate), len(pool)))
        a, b = _evaluate(model, sites, data, probe, pick, cfg)
        rnd.append(a)
        rnd_re.append(b)
        if progress:
            progress("random-ablation baseline", seed + 1, cfg.random_seeds)
    rows["random ablation"], rows["random ablation + retrained head"] = _mean(rnd), _mean(rnd_re)
    oracle = fit_probe(pooled_activations(model, bal.tokens, probe.hook, batch=cfg.batch), bal.label, probe.hook, cfg.l2)
    rows["oracle (balanced training data)"] = accuracy(oracle.predict(x_test), test.label, test.quote)
    return rows


def train_probe(model: Transformer, split: ShiftSplit, hook: str, l2: float = 1e-3, batch: int = 32) -> Probe:
    """Step 1: the probe of the ambiguous split."""
    return fit_probe(pooled_activations(model, split.tokens, hook, batch=batch), split.label, hook, l2)



@torch.no_grad()
def top_contexts(model: Transformer, sites: list[Site], features: list[Feature], tokens: Int[Tensor, "batch pos"],
                 n: int = 5, batch: int = 32) -> dict[Feature, list[tuple[int, int, float]]]:
    """The `n` (snippet, position, activation) where each feature fires most, one per snippet."""
    device = next(model.parameters()).device
    best: dict[Feature, list[tuple[float, int, int]]] = {f: [] for f in features}
    for start in range(0, tokens.shape[0], batch):
        vals = node_values(model, sites, tokens[start:start + batch].to(device))
        for site, i in features:
            v, pos = vals.feats[site][..., i].float().max(1)  # [b]
            best[(site, i)] += [(float(a), start + j, int(p)) for j, (a, p) in enumerate(zip(v.tolist(), pos.tolist()))
                                if a > 0]
    return {f: [(s, p, a) for a, s, p in sorted(rows, reverse=True)[:n]] for f, rows in best.items()}


__all__ = ["ProbeCircuit", "Responses", "ShiftConfig", "active_features", "auto_select", "top_contexts",
           "feature_responses", "pooled_features", "probe_circuit", "probe_metric", "read_hook", "shift_rows",
           "train_probe"]
