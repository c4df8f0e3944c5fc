"""The CLI's structure, checked on the source so import cycles cannot return, and the torch-free name
lists the CLI offers as choices, checked against the registries and modules they stand in for.

An AST scan of every module of the package (imports at the top, inside functions and under
TYPE_CHECKING all count) fails if a module outside `cli/` and `__main__.py` imports `sparsecircuits.cli`,
if a module of `cli/` imports a command module (command modules import only the shared ones), or if
the CLI's imports form a cycle. The command modules are those the command table names.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from sparsecircuits.cli.main import COMMANDS, command_module

PACKAGE = Path(__file__).resolve().parents[2] / "sparsecircuits"
SHARED = {"sparsecircuits.cli.common", "sparsecircuits.cli.console", "sparsecircuits.cli.loading"}
ENTRY = {"sparsecircuits.cli": "sparsecircuits.cli.main"}  # the package imports its entry point, nothing else
COMMAND_MODULES = {f"sparsecircuits.cli.{c.module}" for c in COMMANDS.values()}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = ("sparsecircuits", *path.relative_to(PACKAGE).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(path: Path, module: str, modules: set[str]) -> set[str]:
    """Every sparsecircuits module (or package) `path` imports, wherever the import stands."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            origin = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                origin = ".".join(base + ([node.module] if node.module else []))
            found |= {f"{origin}.{a.name}" if f"{origin}.{a.name}" in modules else origin for a in node.names}
    return {m for m in found if m == "sparsecircuits" or m.startswith("sparsecircuits.")}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _imports(path, name, set(mods)) for name, path in mods.items()}


def _is_cli(module: str) -> bool:
    return module == "sparsecircuits.cli" or module.startswith("sparsecircuits.cli.")


def test_every_cli_module_is_shared_the_entry_point_or_a_command_module(graph):
    cli = {m for m in graph if _is_cli(m)}
    unknown = cli - SHARED - set(ENTRY) - set(ENTRY.values()) - COMMAND_MODULES
    assert not unknown, f"cli modules neither shared, entry point nor in the command table: {sorted(unknown)}"
    assert COMMAND_MODULES <= cli, f"the command table names missing modules: {sorted(COMMAND_MODULES - cli)}"


def test_nothing_outside_the_cli_imports_it(graph):
    bad = [f"{m} imports {t}" for m, ts in graph.items() if not _is_cli(m) and m != "sparsecircuits.__main__"
           for t in ts if _is_cli(t)]
    assert not bad, "\n".join(bad)


def test_cli_modules_import_only_the_shared_ones(graph):
    bad = []
    for m, ts in graph.items():
        if not _is_cli(m):
            continue
        for t in ts:
            if _is_cli(t) and t not in SHARED and ENTRY.get(m) != t:
                bad.append(f"{m} imports {t}")
    assert not bad, "command modules import only " + ", ".join(sorted(SHARED)) + ":\n" + "\n".join(bad)


def test_cli_imports_have_no_cycle(graph):
    edges = {m: {t for t in ts if _is_cli(t) and t != m} for m, ts in graph.items() if _is_cli(m)}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(edges.get(m, ())):
            assert state.get(t) != 1, "import cycle: " + " -> ".join([*path, m, t])
            if t not in state:
                visit(t, [*path, m])
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [])


def test_command_table_and_modules_agree():
    by_module: dict[str, set[str]] = {}
    for name, c in COMMANDS.items():
        by_module.setdefault(c.module, set()).add(name)
    for module, names in by_module.items():
        mod = command_module(next(iter(names)))
        assert set(mod.PARSERS) == names and set(mod.COMMANDS) == names, module


# --- the torch-free name lists and configs, against what they stand in for ---------------------------

def test_architecture_names_are_the_registry():
    from sparsecircuits.dictionaries.base import ARCHITECTURES
    from sparsecircuits.dictionaries.config import ARCHITECTURE_NAMES

    assert ARCHITECTURE_NAMES == tuple(sorted(ARCHITECTURES))


def test_method_summaries_are_the_registry():
    from sparsecircuits.component_circuits.config import METHOD_SUMMARIES
    from sparsecircuits.component_circuits.methods import METHODS

    assert list(METHOD_SUMMARIES) == list(METHODS)
    assert all(METHODS[n].summary == s for n, s in METHOD_SUMMARIES.items())


def test_moved_names_are_the_ones_their_modules_use():
    """Each torch-free constant is defined once and re-exported where it used to live."""
    from sparsecircuits import ablation, ablation_names
    from sparsecircuits.component_circuits import config as cc
    from sparsecircuits.component_circuits import eap
    from sparsecircuits.feature_circuits import config as fc
    from sparsecircuits.feature_circuits import dictionary_graph
    from sparsecircuits.weight_sparse import bridges_intervene, quickstart
    from sparsecircuits.weight_sparse import config as wc

    assert ablation.BASELINES is ablation_names.BASELINES and ablation.ABLATIONS is ablation_names.ABLATIONS
    assert eap.IG_VARIANTS is cc.IG_VARIANTS
    assert dictionary_graph.ABLATIONS is fc.ABLATIONS and dictionary_graph.METHODS is fc.METHODS
    assert bridges_intervene.MODES is wc.MODES and quickstart.QUICKSTART_PRUNE is wc.QUICKSTART_PRUNE


@pytest.mark.parametrize("old, new, name", [
    ("weight_sparse.train", "weight_sparse.config", "TrainConfig"),
    ("weight_sparse.prune", "weight_sparse.config", "PruneConfig"),
    ("weight_sparse.bridges", "weight_sparse.config", "BridgeConfig"),
    ("weight_sparse.sweep", "weight_sparse.config", "SweepConfig"),
    ("dictionaries.train", "dictionaries.config", "DictTrainConfig"),
    ("dictionaries", "dictionaries.config", "DictTrainConfig"),
    ("data.corpus", "data.config", "DataConfig"),
    ("data", "data.config", "DataConfig"),
    ("data.task_corpus", "data.config", "TaskCorpusConfig"),
    ("component_circuits.methods", "component_circuits.config", "DiscoverConfig"),
    ("feature_circuits.circuit", "feature_circuits.config", "FeatureCircuitConfig"),
    ("feature_circuits.clusters", "feature_circuits.config", "ClusterConfig"),
    ("feature_circuits.shift", "feature_circuits.config", "ShiftConfig"),
    ("feature_circuits.shift_data", "feature_circuits.config", "ShiftDataConfig"),
    ("viz.report", "viz.config", "ViewConfig"),
    ("model", "model.config", "ModelConfig"),
])
def test_configs_are_importable_from_where_they_lived(old, new, name):
    import importlib

    assert getattr(importlib.import_module(f"sparsecircuits.{old}"), name) is \
        getattr(importlib.import_module(f"sparsecircuits.{new}"), name)
