"""Weight-sparse transformers (Gao et al. 2025, "Weight-sparse transformers have interpretable
circuits", arXiv 2511.13653): training with top-k weight sparsity and its dense twins (`train`, `run`,
`presets`), learned-mask pruning to task circuits (`prune`, `weight_edges`), bridges to a dense
model (`bridges*`), the capability-interpretability sweep (`sweep`), checkpoint averaging
(`average`), checkpoint census (`info`) and the quickstart comparison (`quickstart`)."""
