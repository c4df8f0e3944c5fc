"""The entry point of `sparsecircuits <command>`: the command table, the parser and the dispatch.

`COMMANDS` names every command with the CLI module that holds it and its one-line help. The table is
static, so `sparsecircuits --help` lists the commands without importing any command module, and
`sparsecircuits <command> ...` imports only that command's module: start-up costs no torch. A command
module `sparsecircuits.cli.<module>` has `PARSERS[name](sub, name, help)`, which adds the command's
sub-parser, and `COMMANDS[name](args, console)`, which runs it and returns the exit code. Command
modules import only the shared `cli.common`, `cli.console` and `cli.loading`, never each other; at
their top only the torch-free configs (`<package>/config.py`), the rest inside the functions.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass
from types import ModuleType

from sparsecircuits import __version__
from sparsecircuits.cli.common import ArgumentParser, run


@dataclass(frozen=True)
class Command:
    module: str  # the module in sparsecircuits.cli that builds and runs it
    help: str  # one line for `sparsecircuits --help`, also the description of `sparsecircuits <command> --help`


COMMANDS: dict[str, Command] = {
    "train": Command("training", "train a weight-sparse transformer (or its dense twin) on code"),
    "info": Command("training", "show a checkpoint: config, per-matrix L0, validation loss"),
    "export": Command("training", "copy a checkpoint without its optimizer state, optionally in float16"),
    "average": Command("training", "average the weights of checkpoints of one run (sparse runs: projected back to top-k)"),
    "quickstart": Command("circuits", "the main job: task circuits in a shipped sparse model vs its dense twin"),
    "prune": Command("circuits", "prune a task circuit in a checkpoint (Gao et al. learned masks)"),
    "compare": Command("circuits", "circuit sizes of a sparse model vs its dense twin, per task"),
    "tasks": Command("circuits", "list the tasks; with a checkpoint, evaluate it on each"),
    "view": Command("view", "write a circuit's page: one self-contained HTML file (opens offline)"),
    "train-dict": Command("dictionaries", "train sparse dictionaries (SAEs / transcoders) on a model's activations"),
    "eval-dict": Command("dictionaries", "L0, FVU, spliced CE/KL and loss recovered of a dictionary"),
    "features": Command("dictionaries", "top activating contexts and histograms of every feature (or neuron)"),
    "convert-dict": Command("dictionaries", "convert a pickled dictionary (Dunefsky et al.) to the SAELens layout"),
    "dicts": Command("dictionaries", "dictionaries in any published layout: `dicts list PATH` shows layout, hook, width"),
    "discover": Command("discover", "find a component circuit (heads, MLPs, edges) for a task"),
    "compare-circuits": Command("discover", "node/edge IoU of circuits; with --model, the cross-task faithfulness matrix"),
    "heads": Command("discover", "head roles on a task: attention by position type, OV successor/copy, logit lens"),
    "check": Command("check", "verify a circuit's scores against exact patching: correlation, sign agreement, "
                              "worst cases (stored in the circuit JSON)"),
    "sweep": Command("sweep", "train a grid of sparse and dense models, prune every task on each, plot validation "
                              "loss vs circuit size (Gao et al. frontier)"),
    "train-bridges": Command("bridges", "train bridges between a dense model and a weight-sparse model, jointly with "
                                        "the sparse model (Gao et al. 2025)"),
    "bridge-intervene": Command("bridges", "edit sparse residual channels and carry the edit into the dense model "
                                           "through the bridges; compare the task logit-difference changes"),
    "feature-circuit": Command("feature_circuits", "sparse feature circuit: dictionary features and error terms as "
                                                   "nodes (Marks et al. 2025)"),
    "graph": Command("graph", "attribution graph of one prompt through per-layer transcoders (circuit-tracer JSON)"),
    "transcoder-paths": Command("graph", "greedy path search (Dunefsky et al.) from a feature or a logit difference"),
    "connections": Command("graph", "input-invariant upstream features of a transcoder feature, direct and through "
                                    "attention OV (Dunefsky et al.)"),
    "de-embed": Command("graph", "vocabulary tokens that most directly activate a transcoder feature (W_E · e)"),
    "ov-de-embed": Command("graph", "vocabulary tokens that drive a transcoder feature through attention heads' OV "
                                    "circuits (Dunefsky et al.)"),
    "shift": Command("shift", "SHIFT: ablate the features a probe uses for a spurious cue (quote style), "
                              "Marks et al. 2025"),
    "clusters": Command("clusters", "cluster well-predicted contexts and find one feature circuit per cluster "
                                    "(Marks et al. 2025)"),
    "task-corpus": Command("corpus", "write a JSONL corpus of sequence-continuation text (Lan et al.) to train on"),
}


def command_module(name: str) -> ModuleType:
    """The CLI module that holds command `name`."""
    return importlib.import_module(f"sparsecircuits.cli.{COMMANDS[name].module}")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only `command`'s sub-parser gets its arguments (and only its module is imported),
    the others are a name and a line of help for the command list."""
    parser = ArgumentParser(prog="sparsecircuits",
                            description="Find, verify and show interpretable circuits in language models.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, c in COMMANDS.items():
        if name == command:
            command_module(name).PARSERS[name](sub, name, c.help)
        else:
            sub.add_parser(name, help=c.help)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse `argv` (default: the process's arguments), run the command, return its exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    # The top-level options (-h, --version) take no value, so the first other word is the command.
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command if command in COMMANDS else None).parse_args(argv)
    return run(command_module(args.command).COMMANDS[args.command], args)
