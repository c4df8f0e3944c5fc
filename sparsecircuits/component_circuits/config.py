"""The component-circuit methods' torch-free part, for the CLI: `DiscoverConfig` (the `discover`
flags; used and re-exported by `methods.py`), the EAP-IG variants (`eap.py`) and the one-line summary
of every built-in discovery method, by name, in registration order (`METHOD_SUMMARIES`: the `--method`
choices and help). The methods themselves register in `methods.METHODS`; a test keeps the names equal.
"""

from __future__ import annotations

from dataclasses import dataclass

from sparsecircuits.ablation_names import ABLATIONS
from sparsecircuits.config_utils import opt, require_at_least

IG_VARIANTS = ("inputs", "activations")  # EAP-IG: interpolate the inputs, or the activations (`eap.py`)

METHOD_SUMMARIES = {
    "exact": "exact edge patching: ablate each edge alone (one forward per edge, batched)",
    "exact-node": "exact node patching: ablate each head / MLP / the embedding alone",
    "path": "path patching from the logits backwards (Wang et al. 2023)",
    "iterative": "Lan et al. (2024): iterative node pruning from the last layer, then edge pruning",
    "eap": "edge attribution patching (Syed et al. 2023): gradient x activation difference",
    "eap-ig": "EAP with integrated gradients (Hanna et al. 2024); --ig-variant inputs | activations",
    "acdc": "ACDC (Conmy et al. 2023): greedy edge removal from the logits backwards",
    "prune": "learned channel masks (Gao et al. 2025); `sparsecircuits prune` options apply",
}


@dataclass
class DiscoverConfig:
    ablation: str = opt("counterfactual", f"baseline of ablated edges: {' | '.join(ABLATIONS)}")
    ig_steps: int = opt(8, "EAP-IG: interpolation steps")
    ig_variant: str = opt("inputs", f"EAP-IG: what is interpolated: {' | '.join(IG_VARIANTS)}")
    top_edges: int = opt(0, "score methods: keep this many top-scoring edges; 0 = all with positive score")
    acdc_threshold: float = opt(0.05, "ACDC: remove an edge if the logit difference changes by less than this")
    path_threshold: float = opt(0.02, "path patching: keep senders / edges with effect >= this x |full logit diff|")
    node_threshold: float = opt(0.01, "exact node patching: keep writers with effect >= this x |full logit diff|")
    keep_fraction: float = opt(0.8, "iterative pruning: share of the full logit difference the circuit must keep")
    batch_masks: int = opt(0, "mask sets per batched forward; 0 = 1 on CPU (each mask then resumes from the clean run at its first masked layer; batching is 1.6-3.4x slower per mask set there, docs/results.md), 16 on a GPU")
    seed: int = opt(0, "seed of the resample ablation")

    def __post_init__(self) -> None:
        if self.ablation not in ABLATIONS:
            raise ValueError(f"DiscoverConfig.ablation must be one of {ABLATIONS}, got {self.ablation!r}")
        if self.ig_variant not in IG_VARIANTS:
            raise ValueError(f"DiscoverConfig.ig_variant must be one of {IG_VARIANTS}, got {self.ig_variant!r}")
        require_at_least(self, 1, "ig_steps")
        require_at_least(self, 0, "batch_masks")
        if self.top_edges < 0:
            raise ValueError(f"DiscoverConfig.top_edges must be >= 0, got {self.top_edges}")
        require_at_least(self, 0, "acdc_threshold", "path_threshold", "node_threshold")
        if not 0.0 < self.keep_fraction <= 1.0:
            raise ValueError(f"DiscoverConfig.keep_fraction must be in (0, 1], got {self.keep_fraction}")
