"""`sparsecircuits <command>`: the command line. It owns all output (rich) and all file choices.

  main.py     the entry point: the command table (name -> module, one line of help), parser, dispatch
  common.py   shared by the commands: the console, flags from config dataclasses, errors, cache folder
  console.py  rich progress bars and report tables
  loading.py  loading a model, a task and dictionaries (several commands take them)
  training.py circuits.py view.py dictionaries.py discover.py sweep.py bridges.py feature_circuits.py
  graph.py shift.py clusters.py corpus.py   one module per command group

Command modules import only the shared modules, never each other; nothing outside `cli/` imports the
CLI (the console-script target is `sparsecircuits.cli:main`, and `python -m sparsecircuits` runs it).
"""

from sparsecircuits.cli.main import main

__all__ = ["main"]
