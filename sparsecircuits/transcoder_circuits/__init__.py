"""Transcoder circuits (Dunefsky et al. 2024, "Transcoders find interpretable LLM feature circuits",
in the attribution-graph formulation of Ameisen et al. 2025): the linearised replacement model
(`replacement`), exact attribution graphs (`attribution_graph`), influence and pruning
(`influence`), export to our `Circuit` and circuit-tracer's JSON (`export`), and the weight-based
and path-based analyses (`analysis`: input-invariant connections, OV paths, de-embeddings)."""
