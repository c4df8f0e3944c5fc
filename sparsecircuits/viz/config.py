"""The circuit page's config, `ViewConfig`, importable without torch: the CLI builds the flags of
`sparsecircuits view` from it (used and re-exported by `report.py`)."""

from __future__ import annotations

from dataclasses import dataclass

from sparsecircuits.config_utils import opt, require_at_least


@dataclass
class ViewConfig:
    windows: int = opt(64, "corpus windows (n_ctx tokens each, held-out split) scanned for top contexts and histograms")
    top_k: int = opt(8, "top activating contexts kept per node")
    bins: int = opt(32, "histogram bins per node")
    examples: int = opt(16, "task examples listed with full-model and circuit predictions")
    attn_examples: int = opt(6, "task examples shown for the attention of q/k nodes (<= examples)")
    effect_nodes: int = opt(0, "compute exact single-node ablation effects for circuits without them, up to this many nodes (0: never; costs one forward per node)")
    effect_examples: int = opt(32, "held-out task examples for those ablation effects")

    def __post_init__(self) -> None:
        require_at_least(self, 1, "windows", "top_k", "bins", "examples")
        if not 0 <= self.attn_examples <= self.examples:
            raise ValueError(f"ViewConfig.attn_examples must be in [0, examples={self.examples}], got {self.attn_examples}")
        if self.effect_nodes < 0 or self.effect_examples < 1:
            raise ValueError("ViewConfig.effect_nodes must be >= 0 and effect_examples >= 1")
