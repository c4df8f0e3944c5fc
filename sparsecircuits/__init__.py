"""sparsecircuits: find, verify and show interpretable circuits in language models."""

__version__ = "0.1.0"
