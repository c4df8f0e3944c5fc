"""The registry of circuit-discovery methods and `discover`, which runs one and returns a
`graph.Circuit`.

Component-graph methods (`component_circuits/component_graph.py`): exact edge / node patching, path patching,
ACDC and Lan et al.'s iterative pruning (`patching.py`), EAP and EAP-IG (`eap.py`). The
channel-level learned-mask pruning of Gao et al. (`weight_sparse/prune.py`) is registered too (granularity
"channel"); it needs mean activations over pretraining data and is run by the CLI with its own
`PruneConfig`. The methods' shared `DiscoverConfig` and their one-line summaries are in `config.py`,
which loads without torch: the CLI's `--method` choices and help come from there (a test keeps the
names equal to `METHODS`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sparsecircuits.component_circuits import eap as attribution
from sparsecircuits.component_circuits import patching
from sparsecircuits.component_circuits.config import METHOD_SUMMARIES, DiscoverConfig  # torch-free, for CLI
from sparsecircuits.component_circuits.prepare import ComponentScores, ComponentTask, prepare, to_circuit
from sparsecircuits.graph import Circuit
from sparsecircuits.model.transformer import Transformer
from sparsecircuits.tasks.base import TaskData

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


def _builtin(name: str, score: ScoreFn | None, granularity: str = "component") -> None:
    register(name, METHOD_SUMMARIES[name], score, granularity)  # summaries live in config.py, for the CLI


_builtin("exact", lambda t, c: patching.exact_edge(t))
_builtin("exact-node", lambda t, c: patching.exact_node(t, c.node_threshold))
_builtin("path", lambda t, c: patching.path_patching(t, c.path_threshold))
_builtin("iterative", lambda t, c: patching.iterative_pruning(t, c.keep_fraction))
_builtin("eap", lambda t, c: attribution.eap(t))
_builtin("eap-ig", lambda t, c: attribution.eap_ig(t, c.ig_steps, c.ig_variant))
_builtin("acdc", lambda t, c: patching.acdc(t, c.acdc_threshold))
_builtin("prune", None, "channel")


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(METHODS)}")
    return METHODS[name]


def discover(model: Transformer, data: TaskData, method: str, cfg: DiscoverConfig | None = None) -> Circuit:
    """Run a component-graph method on a task and return its circuit (see `prepare.to_circuit`);
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
