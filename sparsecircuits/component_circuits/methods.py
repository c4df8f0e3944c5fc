"""The registry of circuit-discovery methods, their shared config, and `discover`, which runs one and
returns a `graph.Circuit`.

Component-graph methods (`component_circuits/component_graph.py`): exact edge / node patching, path patching,
ACDC and Lan et al.'s iterative pruning (`patching.py`), EAP and EAP-IG (`attribution.py`). The
channel-level learned-mask pruning of Gao et al. (`prune.py`) is registered too (granularity
"channel"); it needs mean activations over pretraining data and is run by the CLI with its own
`PruneConfig`. CLI choices and help are generated from `METHODS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sparsecircuits.ablation import ABLATIONS
from sparsecircuits.component_circuits import eap as attribution
from sparsecircuits.component_circuits import patching
from sparsecircuits.component_circuits.prepare import ComponentScores, ComponentTask, prepare, to_circuit
from sparsecircuits.config_utils import opt, require_at_least
from sparsecircuits.graph import Circuit
from sparsecircuits.model.transformer import Transformer
from sparsecircuits.tasks.base import TaskData


@dataclass
class DiscoverConfig:
    ablation: str = opt("counterfactual", f"baseline of ablated edges: {' | '.join(ABLATIONS)}")
    ig_steps: int = opt(8, "EAP-IG: interpolation steps")
    ig_variant: str = opt("inputs", f"EAP-IG: what is interpolated: {' | '.join(attribution.IG_VARIANTS)}")
    top_edges: int = opt(0, "score methods: keep this many top-scoring edges; 0 = all with positive score")
    acdc_threshold: float = opt(0.05, "ACDC: remove an edge if the logit difference changes by less than this")
    path_threshold: float = opt(0.02, "path patching: keep senders / edges with effect >= this x |full logit diff|")
    node_threshold: float = opt(0.01, "exact node patching: keep writers with effect >= this x |full logit diff|")
    keep_fraction: float = opt(0.8, "iterative pruning: share of the full logit difference the circuit must keep")
    batch_masks: int = opt(0, "mask sets per batched forward; 0 = 1 on CPU (batching is 1.6-3.4x slower per mask set there, docs/results.md), 16 on a GPU")
    seed: int = opt(0, "seed of the resample ablation")

    def __post_init__(self) -> None:
        if self.ablation not in ABLATIONS:
            raise ValueError(f"DiscoverConfig.ablation must be one of {ABLATIONS}, got {self.ablation!r}")
        if self.ig_variant not in attribution.IG_VARIANTS:
            raise ValueError(f"DiscoverConfig.ig_variant must be one of {attribution.IG_VARIANTS}, got {self.ig_variant!r}")
        require_at_least(self, 1, "ig_steps")
        require_at_least(self, 0, "batch_masks")
        if self.top_edges < 0:
            raise ValueError(f"DiscoverConfig.top_edges must be >= 0, got {self.top_edges}")
        require_at_least(self, 0, "acdc_threshold", "path_threshold", "node_threshold")
        if not 0.0 < self.keep_fraction <= 1.0:
            raise ValueError(f"DiscoverConfig.keep_fraction must be in (0, 1], got {self.keep_fraction}")


ScoreFn = Callable[[ComponentTask, DiscoverConfig], ComponentScores]


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    granularity: str  # "component" (this graph) or "channel" (Gao et al.'s node sites)
    score: ScoreFn | None  # None for channel methods (run by the CLI)


METHODS: dict[str, Method] = {}


def register(name: str, summary: str, score: ScoreFn | None, granularity: str = "component") -> None:
    if name in METHODS:
        raise ValueError(f"method {name!r} is registered twice")
    METHODS[name] = Method(name, summary, granularity, score)


register("exact", "exact edge patching: ablate each edge alone (one forward per edge, batched)",
         lambda t, c: patching.exact_edge(t))
register("exact-node", "exact node patching: ablate each head / MLP / the embedding alone",
         lambda t, c: patching.exact_node(t, c.node_threshold))
register("path", "path patching from the logits backwards (Wang et al. 2023)",
         lambda t, c: patching.path_patching(t, c.path_threshold))
register("iterative", "Lan et al. (2024): iterative node pruning from the last layer, then edge pruning",
         lambda t, c: patching.iterative_pruning(t, c.keep_fraction))
register("eap", "edge attribution patching (Syed et al. 2023): gradient x activation difference",
         lambda t, c: attribution.eap(t))
register("eap-ig", "EAP with integrated gradients (Hanna et al. 2024); --ig-variant inputs | activations",
         lambda t, c: attribution.eap_ig(t, c.ig_steps, c.ig_variant))
register("acdc", "ACDC (Conmy et al. 2023): greedy edge removal from the logits backwards",
         lambda t, c: patching.acdc(t, c.acdc_threshold))
register("prune", "learned channel masks (Gao et al. 2025); `sparsecircuits prune` options apply", None, "channel")


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(METHODS)}")
    return METHODS[name]


def discover(model: Transformer, data: TaskData, method: str, cfg: DiscoverConfig | None = None) -> Circuit:
    """Run a component-graph method on a task and return its circuit (see `components.to_circuit`);
    the circuit's metric and faithfulness are added to its metadata."""
    from sparsecircuits.component_circuits.prepare import circuit_edge_mask, metric

    cfg = cfg or DiscoverConfig()
    m = get_method(method)
    if m.score is None:
        raise ValueError(f"method {method!r} works on channels, not the component graph; use `sparsecircuits prune`")
    task = prepare(model, data, cfg.ablation, cfg.seed, cfg.batch_masks)
    scores = m.score(task, cfg)
    circuit = to_circuit(task, scores, method, cfg.top_edges or None)
    value = float(metric(task, circuit_edge_mask(task, circuit).float()))
    circuit.metadata["circuit_metric"] = value
    denom = task.full - task.empty
    circuit.metadata["faithfulness"] = (value - task.empty) / denom if abs(denom) > 1e-9 else float("nan")
    return circuit


__all__ = ["METHODS", "DiscoverConfig", "Method", "discover", "get_method", "register"]
