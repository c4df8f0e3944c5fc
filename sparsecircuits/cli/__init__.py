"""`sparsecircuits <command>`: the command line (one module per command group)."""

from sparsecircuits.cli.app import main

__all__ = ["main"]
