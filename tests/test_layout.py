"""The package's layering (docs/architecture.md, "Layers and allowed dependencies"), checked on its source.

An AST scan of every module of `sparsecircuits/` (nothing is imported, so the check is fast and sees
code that never runs in the tests) fails if
  (a) a module imports a package or module of a higher layer;
  (b) a method package imports another method package, other than feature_circuits / transcoder_circuits
      importing dictionaries;
  (c) a module outside `cli/` and `__main__.py` imports `sparsecircuits.cli`;
  (d) a top-level module or package has no layer (a new one must be placed deliberately, here and in
      docs/architecture.md);
  (e) a module has no docstring.

Which imports count: every `import` / `from ... import` anywhere in a module — at the top, inside
functions (lazy imports hide a dependency but do not remove it), and under `if TYPE_CHECKING:`. The
last ones count on purpose: a type from a higher layer in a lower module's signatures makes its API
depend on that layer, and such imports tend to become runtime imports later. Relative imports are
resolved, and `importlib.import_module` / `__import__` with a constant string are read as imports;
module names computed at run time (the CLI's command table) are not checked.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "sparsecircuits"

# Bottom to top. A unit is a top-level module or sub-package of sparsecircuits; "__init__" is the
# package root. Mirrors docs/architecture.md: change both together.
LAYERS: list[tuple[str, set[str]]] = [
    ("utilities", {"atomic", "config_utils", "distributed", "lazy", "threads"}),
    ("model/data/tasks", {"model", "data", "tasks", "task_files"}),
    ("core", {"graph", "ablation", "ablation_names", "evaluate", "check"}),
    ("methods", {"dictionaries", "weight_sparse", "component_circuits", "feature_circuits", "transcoder_circuits"}),
    ("viz", {"viz"}),
    ("api", {"api", "__init__"}),
    ("cli", {"cli", "__main__"}),
]
METHODS = "methods"
METHOD_IMPORTS_ALLOWED = {("feature_circuits", "dictionaries"), ("transcoder_circuits", "dictionaries")}
CLI_IMPORTERS = {"cli", "__main__"}

LAYER_OF = {unit: i for i, (_, units) in enumerate(LAYERS) for unit in units}


@dataclass(frozen=True)
class Import:
    file: str  # path relative to the repository root
    line: int
    target: str  # dotted module name, e.g. "sparsecircuits.viz.report"

    def __str__(self) -> str:
        return f"{self.file}:{self.line} imports {self.target}"


def unit_of(module: str) -> str:
    """'sparsecircuits.viz.report' -> 'viz'; the package root itself -> '__init__'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def package_modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the package (a package's name maps to its __init__.py)."""
    mods = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = ("sparsecircuits", *path.relative_to(PACKAGE_DIR).with_suffix("").parts)
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return mods


def imports_of(source: str, module: str, is_package: bool, modules: set[str], file: str) -> list[Import]:
    """Every import of a sparsecircuits module in `source`, wherever it stands in the file."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            # `from pkg import sub` imports the module pkg.sub when there is one, else a name of pkg
            targets = [f"{origin}.{a.name}" if f"{origin}.{a.name}" in modules else origin for a in node.names]
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                   or (isinstance(node.func, ast.Name) and node.func.id in ("import_module", "__import__")))):
            targets = [node.args[0].value]
        found += [Import(file, node.lineno, t) for t in targets if t == "sparsecircuits" or t.startswith("sparsecircuits.")]
    return sorted(found, key=lambda i: i.line)


def scan() -> tuple[dict[str, Path], list[Import]]:
    mods = package_modules()
    root = PACKAGE_DIR.parent
    imports = []
    for name, path in mods.items():
        imports += imports_of(path.read_text(encoding="utf-8"), name, path.name == "__init__.py", set(mods),
                              str(path.relative_to(root)))
    return mods, imports


def source_unit(imp: Import) -> str:
    parts = Path(imp.file).with_suffix("").parts  # ("sparsecircuits", "viz", "report") or ("sparsecircuits", "graph")
    return parts[1] if len(parts) > 1 else "__init__"


def layer_name(unit: str) -> str:
    i = LAYER_OF[unit]
    return f"layer {i} ({LAYERS[i][0]})"


def _fail(problems: list[str], what: str) -> None:
    assert not problems, f"{what} (see docs/architecture.md):\n  " + "\n  ".join(problems)


def test_every_module_has_a_layer():
    mods, _ = scan()
    problems = sorted({f"{path.relative_to(PACKAGE_DIR.parent)}: '{unit_of(name)}' is in no layer; add it to LAYERS "
                       f"in tests/test_layout.py and to docs/architecture.md"
                       for name, path in mods.items() if unit_of(name) not in LAYER_OF})
    _fail(problems, "modules outside the layer table")


def test_no_module_imports_a_higher_layer():
    _, imports = scan()
    problems = []
    for imp in imports:
        src, dst = source_unit(imp), unit_of(imp.target)
        if src not in LAYER_OF:
            continue  # reported by test_every_module_has_a_layer
        if dst not in LAYER_OF:
            problems.append(f"{imp}: no such part of the package has a layer")
        elif LAYER_OF[dst] > LAYER_OF[src]:
            problems.append(f"{imp}, which is in {layer_name(dst)}, above {src} in {layer_name(src)}")
    _fail(problems, "imports from a higher layer")


def test_method_packages_import_no_other_method_package():
    _, imports = scan()
    methods = dict(LAYERS)[METHODS]
    problems = [f"{imp}: method package {source_unit(imp)} may not import method package {unit_of(imp.target)}"
                for imp in imports
                if source_unit(imp) in methods and unit_of(imp.target) in methods
                and source_unit(imp) != unit_of(imp.target)
                and (source_unit(imp), unit_of(imp.target)) not in METHOD_IMPORTS_ALLOWED]
    _fail(problems, "imports between method packages (only feature_circuits/transcoder_circuits -> dictionaries)")


def test_only_the_cli_imports_the_cli():
    _, imports = scan()
    problems = [f"{imp}: only cli/ and __main__.py may import sparsecircuits.cli"
                for imp in imports if unit_of(imp.target) == "cli" and source_unit(imp) not in CLI_IMPORTERS]
    _fail(problems, "imports of the CLI from library code")


def test_every_module_has_a_docstring():
    mods, _ = scan()
    problems = [f"{path.relative_to(PACKAGE_DIR.parent)}: no module docstring (say what it is; for an algorithm, "
                f"its paper and steps)" for path in mods.values()
                if not (ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or "").strip()]
    _fail(problems, "modules without a docstring")


def test_scanner_sees_every_import_form():
    """The checks are only as good as the scan: lazy, TYPE_CHECKING, relative and dynamic imports are found."""
    source = '''"""doc"""
from typing import TYPE_CHECKING
import sparsecircuits.graph
from sparsecircuits import model
from . import prune
from ..viz import report
if TYPE_CHECKING:
    from sparsecircuits.cli.app import main
def f():
    import importlib
    from sparsecircuits.feature_circuits.circuit import NodeKey
    return importlib.import_module("sparsecircuits.api")
'''
    mods = {"sparsecircuits.model", "sparsecircuits.weight_sparse.prune", "sparsecircuits.viz.report"}
    found = imports_of(source, "sparsecircuits.weight_sparse.sweep", False, mods, "x.py")
    assert [i.target for i in found] == [
        "sparsecircuits.graph", "sparsecircuits.model", "sparsecircuits.weight_sparse.prune",
        "sparsecircuits.viz.report", "sparsecircuits.cli.app", "sparsecircuits.feature_circuits.circuit",
        "sparsecircuits.api"]
    assert str(found[3]) == "x.py:6 imports sparsecircuits.viz.report"
    _, imports = scan()
    assert any(i.file.endswith("evaluate.py") and i.target == "sparsecircuits.ablation" for i in imports)
