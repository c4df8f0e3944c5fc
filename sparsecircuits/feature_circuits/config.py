"""The feature-circuit configs, importable without torch (the CLI builds its flags from them; each
is used and re-exported by the module it configures): `FeatureCircuitConfig` (`circuit.py`, Marks et
al. 2025's node and edge attribution), `ClusterConfig` (`clusters.py`), `ShiftConfig` (`shift.py`),
`ShiftDataConfig` (`shift_data.py`), and the node-effect methods and patch values of
`dictionary_graph.py` (`METHODS`, `ABLATIONS`)."""

from __future__ import annotations

from dataclasses import dataclass

from sparsecircuits.config_utils import opt, require_at_least

ABLATIONS = ("counterfactual", "zero", "mean")  # patch values of the nodes (`dictionary_graph.patch_values`)
METHODS = ("exact", "attrib", "ig")  # node effects (`dictionary_graph.node_effects`)


@dataclass
class FeatureCircuitConfig:
    method: str = opt("ig", f"node effects: {' | '.join(METHODS)} (exact = one forward per node)")
    ig_steps: int = opt(10, "integrated gradients: interpolation steps (alpha = 0, 1/N, ..., (N-1)/N)")
    ablation: str = opt("counterfactual", f"patch values: {' | '.join(ABLATIONS)}")
    node_threshold: float = opt(0.1, "keep nodes with |score| above this (logit-difference units)")
    edge_threshold: float = opt(0.01, "keep edges with |weight| above this")
    aggregation: str = opt("auto", "auto | position | sum: nodes per (position, feature), or summed over positions; "
                                   "auto = per position when all prompts have one length")
    edges: bool = opt(True, "compute edges between the kept nodes")

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"FeatureCircuitConfig.method must be one of {METHODS}, got {self.method!r}")
        if self.ablation not in ABLATIONS:
            raise ValueError(f"FeatureCircuitConfig.ablation must be one of {ABLATIONS}, got {self.ablation!r}")
        if self.ig_steps < 1:
            raise ValueError(f"FeatureCircuitConfig.ig_steps must be >= 1, got {self.ig_steps}")
        if self.aggregation not in ("auto", "position", "sum"):
            raise ValueError(f"FeatureCircuitConfig.aggregation must be auto, position or sum, got {self.aggregation!r}")
        require_at_least(self, 0, "node_threshold", "edge_threshold")


@dataclass
class ClusterConfig:
    windows: int = opt(64, "held-out corpus windows (n_ctx tokens) scanned for contexts")
    max_loss: float = opt(0.2, "keep positions whose next-token loss is below this (nats)")
    context: int = opt(24, "tokens per context, ending at the predicted position")
    max_contexts: int = opt(2000, "contexts kept (a seeded random subset when more qualify)")
    clusters: int = opt(64, "k of k-means")
    kmeans_iters: int = opt(50, "Lloyd iterations")
    min_size: int = opt(4, "clusters with fewer contexts get no circuit")
    per_cluster: int = opt(16, "contexts per circuit (those nearest the cluster centre)")
    batch: int = opt(64, "contexts per forward/backward pass (whole clusters are batched together)")
    seed: int = opt(0, "seed of the subset and of k-means")

    def __post_init__(self) -> None:
        require_at_least(self, 1, "windows", "context", "max_contexts", "clusters", "kmeans_iters", "min_size", "per_cluster", "batch")
        if self.max_loss <= 0:
            raise ValueError(f"ClusterConfig.max_loss must be > 0, got {self.max_loss}")


@dataclass
class ShiftConfig:
    probe_hook: str = opt("blocks.1.hook_resid_post", "activation the probe reads (mean over positions; the middle of a 4-layer model)")
    circuit_examples: int = opt(128, "ambiguous snippets used for the probe's node effects")
    ig_steps: int = opt(10, "integrated-gradients steps of the node effects")
    circuit_size: int = opt(40, "features in the probe's circuit (largest |effect|)")
    auto_quote_min: float = opt(0.5, "auto mode: least |quote response| (feature standard deviations)")
    auto_ratio: float = opt(2.0, "auto mode: least |quote response| / |label response|")
    random_seeds: int = opt(5, "random-ablation baseline: draws averaged")
    l2: float = opt(1e-3, "L2 penalty of the probe fits (on standardised inputs)")
    batch: int = opt(32, "snippets per forward pass")

    def __post_init__(self) -> None:
        require_at_least(self, 1, "circuit_examples", "ig_steps", "circuit_size", "random_seeds", "batch")
        if self.auto_quote_min < 0 or self.auto_ratio < 0 or self.l2 < 0:
            raise ValueError("ShiftConfig.auto_quote_min, auto_ratio and l2 must be >= 0")


@dataclass
class ShiftDataConfig:
    length: int = opt(64, "tokens per snippet")
    n_ambiguous: int = opt(400, "snippets of the ambiguous (training) split; even")
    n_balanced_train: int = opt(400, "snippets of the balanced training split (oracle probe); multiple of 4")
    n_balanced_test: int = opt(400, "snippets of the balanced test split (evaluation); multiple of 4")
    min_quotes: int = opt(2, "quote characters of the snippet's style a snippet must hold")
    per_file: int = opt(3, "snippets tried per file")
    seed: int = opt(0, "seed of the file split, the snippets and the group assignment")

    def __post_init__(self) -> None:
        if self.length < 8:
            raise ValueError(f"ShiftDataConfig.length must be >= 8, got {self.length}")
        if self.n_ambiguous < 2 or self.n_ambiguous % 2:
            raise ValueError(f"ShiftDataConfig.n_ambiguous must be even and >= 2, got {self.n_ambiguous}")
        for name in ("n_balanced_train", "n_balanced_test"):
            if getattr(self, name) < 4 or getattr(self, name) % 4:
                raise ValueError(f"ShiftDataConfig.{name} must be a multiple of 4, got {getattr(self, name)}")
        if self.min_quotes < 1 or self.per_file < 1:
            raise ValueError("ShiftDataConfig.min_quotes and per_file must be >= 1")
