"""The names of the baselines an ablated node or edge takes, importable without torch: configs
validate against them and the CLI offers them as choices. What each one is, and the code that
computes it, is in `ablation.py` (which re-exports these names)."""

BASELINES = ("mean", "zero", "counterfactual")  # learned-mask pruning (Gao et al. 2025, `weight_sparse/prune.py`)
ABLATIONS = ("mean", "position-mean", "zero", "counterfactual", "resample")  # component-graph baselines
