"""Circuit discovery methods: each chooses masks over the nodes or edges of one graph (DESIGN.md)."""
