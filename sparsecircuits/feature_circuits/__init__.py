"""Sparse feature circuits (Marks et al. 2025, "Sparse feature circuits", arXiv 2403.19647):
dictionaries spliced into the model so features and error terms are nodes (`dictionary_graph`),
node and edge attribution and thresholds (`circuit`), faithfulness and completeness (`evaluation`),
SHIFT (`shift`, `edit`, `shift_data`) and the unsupervised many-circuits pipeline (`clusters`)."""
