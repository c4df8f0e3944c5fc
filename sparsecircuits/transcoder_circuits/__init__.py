"""Transcoder circuits (Dunefsky et al. 2024, "Transcoders find interpretable LLM feature circuits",
in the attribution-graph formulation of Ameisen et al. 2025): the linearised replacement model
(`replacement`), exact attribution graphs (`attribution_graph`), influence and pruning
(`influence`), export to our `Circuit` and circuit-tracer's JSON (`export`), the greedy path
search (`analysis`) and the weight-based analyses (`connections`: input-invariant
connections, directly and through heads' OV circuits, and de-embeddings)."""
