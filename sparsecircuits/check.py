"""Checking a circuit's scores against exact interventions: `sparsecircuits check`.

Every method scores a node or an edge as an estimate of `metric(clean) - metric(it ablated)`
(DESIGN.md "Score sign"), so any score can be held against the intervention it estimates: ablate
that one node or edge with the circuit's own baseline and measure the metric change. A check:
  1. takes the circuit's scored items, its edges or its nodes, with their scores (`items_of`; which
     items a circuit scores depends on its kind, `circuit_kind`);
  2. samples n of them stratified by score (`stratified_sample`): items sorted by score are cut into
     `strata` equal-count quantile bins and the bins take turns, most negative and most positive
     first, each giving a seeded-random item it has left, so large, small and negative scores are all
     represented whatever their share; every item is taken when n >= their number;
  3. measures each sampled item's exact effect (the method packages: `component_circuits/check.py`,
     `weight_sparse/check.py`, `feature_circuits/check.py`);
  4. compares scores with effects (`compare`): Pearson and Spearman correlation, sign agreement
     (among the items whose score or effect is not 0, the share whose score has the effect's sign;
     a value within `zero_tol` x the largest |score| or |effect| counts as 0, so a near-zero score
     of an item that matters disagrees), and the worst cases by |score - effect|;
  5. stores the result in the circuit's metadata (`store_check`), which old code loads unchanged.

The stored dict, `metadata["check"]` (the newest check: a check of a circuit's nodes replaces one of
its edges), is `CheckResult.to_dict()`, flat, every value JSON-native (no NaN): schema, items
("edges" | "nodes"), n_items, n_sampled, sampling (how, in words), strata, seed, pearson, spearman
(None when undefined: fewer than two items or constant values), sign_agreement (None when no item
has a nonzero score or effect), sign_n (the items it is over), zero_tol, seconds; the context the
method package and the CLI add (granularity, circuit_method, task, circuit_task, ablation,
n_examples, metric, model, circuit, total_seconds, ...); then the lists worst [{id, score, effect,
error}] and points [{id, score, effect, stratum}] (every sampled item, for a scatter plot).

This module is pure Python (no torch): the CLI and the viewer read it without loading a model.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sparsecircuits.graph import Circuit

CHECK_SCHEMA = "sparsecircuits-check-v1"
ITEMS = ("edges", "nodes")
SAMPLING = "score-quantile strata, extremes first, seeded random within a stratum"
CHANNEL_KINDS = {"resid_read", "q", "k", "v", "resid_write", "neuron"}  # Gao et al.'s pruning sites


def circuit_kind(circuit: Circuit) -> str:
    """Which supported kind a circuit is, or a ValueError saying why it cannot be checked:
      component   `discover` (heads / MLPs / embedding, edges at q/k/v/MLP/logit inputs);
      channel     learned-mask pruning (Gao et al.): channel nodes at the sites in `metadata["sites"]`;
      dictionary  `feature-circuit` (Marks et al.): dictionary features and error terms.
    Not supported: attribution graphs (transcoder_circuits: per-prompt direct effects in a frozen,
    linearised replacement model, not ablation effects in the model) and derived circuits (an
    intersection from `compare-circuits`, which holds no scores of its own)."""
    md = circuit.metadata
    granularity = md.get("granularity")
    if granularity == "component":
        return "component"
    if granularity == "dictionary":
        return "dictionary"
    if "slug" in md or "scan" in md or str(md.get("method", "")).startswith("attribution"):
        raise ValueError("check does not support attribution graphs (transcoder circuits): their edges are direct "
                         "effects in a linearised replacement model for one prompt, not ablation effects; their "
                         "replacement and completeness scores are in the metadata")
    if md.get("method") == "intersection":
        raise ValueError("check does not support derived circuits (an intersection from compare-circuits): check "
                         "the circuits it was made from")
    kinds = {n.kind for n in circuit.nodes} - {"embed", "logit"}
    if kinds and kinds <= CHANNEL_KINDS and isinstance(md.get("sites"), list):
        return "channel"
    raise ValueError(f"check supports component circuits (discover), channel circuits (prune) and feature circuits "
                     f"(feature-circuit); this circuit is none of them (granularity {granularity!r}, "
                     f"method {md.get('method')!r}, node kinds {sorted(kinds)})")


def default_items(circuit: Circuit) -> str:
    """What a check samples by default: a component circuit's edges (its nodes when the method scored
    nodes: `exact-node` edge scores are a ranking built from their endpoints, not edge effects), every
    other kind's nodes (their edges are weights or gradient attributions, not ablation estimates)."""
    if circuit_kind(circuit) == "component" and circuit.metadata.get("method") != "exact-node":
        return "edges"
    return "nodes"


def edge_id(src: str, dst: str) -> str:
    """The id of an edge in a check: `src -> dst` (as `ComponentGraph.edge_name`)."""
    return f"{src} -> {dst}"


def items_of(circuit: Circuit, items: str) -> dict[str, float]:
    """Scored items of a circuit: "edges" -> {"src -> dst": score} over its scored edges (the
    component graph's residual edges: `Edge.weight` is the score), "nodes" -> `circuit.scores`."""
    if items not in ITEMS:
        raise ValueError(f"items must be one of {ITEMS}, got {items!r}")
    kind = circuit_kind(circuit)
    if items == "nodes":
        return {k: float(v) for k, v in circuit.scores.items()}
    if kind != "component":
        raise ValueError(f"only component circuits score edges by ablation; a {kind} circuit's edges are "
                         f"{'weights' if kind == 'channel' else 'gradient attributions'}: check its nodes")
    return {edge_id(e.src, e.dst): float(e.weight) for e in circuit.edges if e.kind == "residual"}


@dataclass
class Sample:
    ids: list[str]  # sampled items, in draw order
    scores: list[float]
    strata: list[int]  # quantile bin of each sampled item: 0 = lowest scores, n_strata - 1 = highest
    n_items: int  # items there were to sample from
    n_strata: int


def stratified_sample(scores: dict[str, float], n: int, seed: int = 0, strata: int = 8) -> Sample:
    """Step 2 of the module docstring; deterministic given the seed (ties in score are broken by id)."""
    if n < 1 or strata < 1:
        raise ValueError(f"n and strata must be >= 1, got n={n}, strata={strata}")
    order = sorted(scores, key=lambda k: (scores[k], k))
    k = max(1, min(strata, len(order)))
    bins: list[list[str]] = [[] for _ in range(k)]
    for rank, key in enumerate(order):
        bins[rank * k // len(order)].append(key)
    rng = random.Random(seed)
    for b in bins:
        rng.shuffle(b)
    turn = [i for pair in zip(range(k), range(k - 1, -1, -1)) for i in pair][:k]  # 0, k-1, 1, k-2, ...
    ids: list[str] = []
    strata_of: list[int] = []
    left = [list(b) for b in bins]
    while len(ids) < min(n, len(order)):
        for i in turn:
            if left[i] and len(ids) < n:
                ids.append(left[i].pop())
                strata_of.append(i)
    return Sample(ids, [scores[i] for i in ids], strata_of, len(order), k)


def _ranks(x: Sequence[float]) -> list[float]:
    """Ranks from 0, ties given their average rank (for Spearman)."""
    order = sorted(range(len(x)), key=lambda i: x[i])
    ranks = [0.0] * len(x)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
            j += 1
        for t in range(i, j + 1):
            ranks[order[t]] = (i + j) / 2
        i = j + 1
    return ranks


def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Pearson correlation; None when undefined (fewer than two values, or either side constant)."""
    if len(x) != len(y):
        raise ValueError(f"pearson needs equal lengths, got {len(x)} and {len(y)}")
    if len(x) < 2:
        return None
    mx, my = sum(x) / len(x), sum(y) / len(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx, syy = sum((a - mx) ** 2 for a in x), sum((b - my) ** 2 for b in y)
    if sxx <= 0 or syy <= 0:
        return None
    return max(-1.0, min(1.0, sxy / math.sqrt(sxx * syy)))


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman rank correlation (Pearson of average ranks); None when undefined."""
    return pearson(_ranks(x), _ranks(y))


def sign_agreement(scores: Sequence[float], effects: Sequence[float],
                   zero_tol: float = 0.01) -> tuple[float | None, int]:
    """(share, count): among the items whose score or effect is not 0, the share whose score has the
    sign of its effect. A value within zero_tol x the largest |value| of either side counts as 0, so a
    near-zero score of an item that matters disagrees, and items that neither score nor matter are
    left out. (None, 0) when no item is left."""
    if not scores:
        return None, 0
    tol = zero_tol * max(max(abs(v) for v in scores), max(abs(v) for v in effects))

    def sign(v: float) -> int:
        return 0 if abs(v) <= tol else (1 if v > 0 else -1)

    pairs = [(sign(s), sign(e)) for s, e in zip(scores, effects) if sign(s) or sign(e)]
    if not pairs:
        return None, 0
    return sum(a == b for a, b in pairs) / len(pairs), len(pairs)


@dataclass
class CheckResult:
    """A check of a circuit's scores; `to_dict` is what `store_check` writes (module docstring)."""

    items: str  # "edges" | "nodes"
    n_items: int  # scored items there were to sample from
    n_strata: int
    seed: int
    ids: list[str]  # the sampled items, in draw order
    scores: list[float]
    effects: list[float]  # exact effect of each sampled item (same sign convention as the scores)
    item_strata: list[int]  # score stratum of each sampled item, 0 = lowest scores
    pearson: float | None
    spearman: float | None
    sign_agreement: float | None
    sign_n: int  # items the sign agreement is over (score or effect not 0)
    zero_tol: float
    worst: list[dict[str, Any]]  # {"id", "score", "effect", "error"}, largest |score - effect| first
    seconds: float = 0.0  # sampling and patching (not loading)
    context: dict[str, Any] = field(default_factory=dict)  # scalars: granularity, circuit_method, model, task, ...

    @property
    def n_sampled(self) -> int:
        return len(self.ids)

    def to_dict(self) -> dict[str, Any]:
        """One flat dict: scalars, then the lists `worst` and `points` (context keys at the top level)."""
        own = {
            "schema": CHECK_SCHEMA, "items": self.items, "n_items": self.n_items, "n_sampled": self.n_sampled,
            "sampling": SAMPLING, "strata": self.n_strata, "seed": self.seed, "pearson": self.pearson,
            "spearman": self.spearman, "sign_agreement": self.sign_agreement, "sign_n": self.sign_n,
            "zero_tol": self.zero_tol, "seconds": self.seconds,
        }
        clash = sorted(set(self.context) & (set(own) | {"worst", "points"}))
        if clash:
            raise ValueError(f"check context keys clash with the result's own: {clash}")
        return {**own, **self.context, "worst": list(self.worst),
                "points": [{"id": i, "score": s, "effect": e, "stratum": t}
                           for i, s, e, t in zip(self.ids, self.scores, self.effects, self.item_strata)]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CheckResult:
        if d.get("schema") != CHECK_SCHEMA:
            raise ValueError(f"not a check result (schema {d.get('schema')!r}, expected {CHECK_SCHEMA!r})")
        pts = d["points"]
        own = {"schema", "items", "n_items", "n_sampled", "sampling", "strata", "seed", "pearson", "spearman",
               "sign_agreement", "sign_n", "zero_tol", "seconds", "worst", "points"}
        return cls(d["items"], int(d["n_items"]), int(d["strata"]), int(d["seed"]), [p["id"] for p in pts],
                   [float(p["score"]) for p in pts], [float(p["effect"]) for p in pts], [int(p["stratum"]) for p in pts],
                   d["pearson"], d["spearman"], d["sign_agreement"], int(d["sign_n"]), float(d["zero_tol"]),
                   list(d["worst"]), float(d["seconds"]), {k: v for k, v in d.items() if k not in own})


def compare(sample: Sample, effects: Sequence[float], items: str, seed: int, zero_tol: float = 0.01,
            n_worst: int = 5) -> CheckResult:
    """Step 4: scores of a sample against the measured effects of its items (same order)."""
    effects = [float(e) for e in effects]
    if len(effects) != len(sample.ids):
        raise ValueError(f"{len(sample.ids)} sampled items but {len(effects)} effects")
    if any(not math.isfinite(v) for v in effects):
        raise ValueError("an exact effect is not finite (NaN or inf): the model or the baseline is broken")
    s = sample.scores
    errors = [abs(a - b) for a, b in zip(s, effects)]
    worst = sorted(range(len(s)), key=lambda i: (-errors[i], sample.ids[i]))[:n_worst]
    return CheckResult(
        items, sample.n_items, sample.n_strata, seed, list(sample.ids), list(s), effects, list(sample.strata), pearson(s, effects), spearman(s, effects),
        *sign_agreement(s, effects, zero_tol), zero_tol,
        [{"id": sample.ids[i], "score": s[i], "effect": effects[i], "error": errors[i]} for i in worst])


EffectsFn = Callable[[list[str]], list[float]]  # sampled item ids -> their exact effects, same order


def run_check(scores: dict[str, float], effects_of: EffectsFn, items: str, n: int = 64, seed: int = 0,
              strata: int = 8, zero_tol: float = 0.01, n_worst: int = 5,
              context: dict[str, Any] | None = None) -> CheckResult:
    """Steps 2-4 for scored items and a function measuring their exact effects; timed."""
    scores = {k: v for k, v in scores.items() if math.isfinite(v)}  # an unscored (inf / NaN) item is no claim
    if not scores:
        raise ValueError(f"the circuit holds no finite scores of its {items} to check")
    t0 = time.perf_counter()
    sample = stratified_sample(scores, n, seed, strata)
    result = compare(sample, effects_of(sample.ids), items, seed, zero_tol, n_worst)
    result.seconds = time.perf_counter() - t0
    result.context = dict(context or {})
    return result


def store_check(circuit: Circuit, result: CheckResult) -> None:
    """Step 5: `circuit.metadata["check"] = result.to_dict()` (a newer check replaces an older one).
    Save the circuit with `Circuit.save`, which writes atomically."""
    circuit.metadata["check"] = result.to_dict()


def stored_check(circuit: Circuit) -> CheckResult | None:
    """The check stored in a circuit (None for a circuit never checked)."""
    check = circuit.metadata.get("check")
    return CheckResult.from_dict(check) if isinstance(check, dict) else None


__all__ = ["CHECK_SCHEMA", "ITEMS", "CheckResult", "Sample", "circuit_kind", "compare", "default_items",
           "edge_id", "items_of", "pearson", "run_check", "sign_agreement", "spearman", "store_check",
           "stored_check", "stratified_sample"]
