"""The notebook API (`import sparsecircuits as sc`): the package root stays torch-free and lists what it
exports, every API function is documented and typed, the API gives the CLI's circuits and reproduces
a circuit's own measurements, and docs/api.md and examples/quickstart_api.ipynb run as they stand."""

from __future__ import annotations

import importlib
import inspect
import json
import os
import re
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from planted import planted_data, planted_model

import sparsecircuits as sc
from sparsecircuits import api

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "sparsecircuits" / "assets" / "quickstart"


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One cache for this module, so the shipped models' corpus (the stdlib) is tokenized once: a fresh
    one, or $SPARSECIRCUITS_CACHE when set (its entries are keyed by content, so sharing it is safe and
    saves that half minute on every later run)."""
    env = os.environ.get("SPARSECIRCUITS_CACHE")
    return Path(env) if env else tmp_path_factory.mktemp("api-cache")


@pytest.fixture
def in_tmp(tmp_path, monkeypatch, cache) -> Iterator[Path]:
    """A fresh working directory, with the shared cache as the default one; torch on one thread.

    One thread because these small models prune several times faster on one (the quickstart runs its
    prunes single-threaded for the same reason), and on a shared machine two threads on many small
    ops spend most of their time waiting for each other (a prune measured 15 s on one thread, 50-120 s
    on two, with other jobs running)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SPARSECIRCUITS_CACHE", str(cache))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tmp_path
    torch.set_num_threads(threads)


def test_import_does_not_import_torch():
    """Nor do `dir`, the version or the configs (they live in torch-free modules)."""
    code = ("import sys, sparsecircuits as sc; names = dir(sc); assert 'load_model' in names and sc.__version__; "
            "assert sc.PruneConfig(steps=5).steps == 5 and sc.DiscoverConfig().ablation; "
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_all_dir_and_lazy_names_agree():
    exported = [name for names in sc.EXPORTS.values() for name in names]
    assert sorted(sc.__all__) == sorted(["__version__", *exported]) and len(set(exported)) == len(exported)
    assert set(sc.__all__) <= set(dir(sc))
    assert set(api.FUNCTIONS) | {"LoadedModel", "CircuitEvaluation"} <= set(sc.__all__)
    for name in sc.__all__:
        value = getattr(sc, name)
        assert not isinstance(value, types.ModuleType), f"sc.{name} is a module: it collides with a submodule's name"
    importlib.import_module("sparsecircuits.evaluate")  # a submodule import must not shadow the API function

    assert sc.evaluate_circuit is api.evaluate_circuit
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = sc.nope


@pytest.mark.parametrize("name", api.FUNCTIONS)
def test_api_functions_are_documented_and_typed(name):
    fn = getattr(sc, name)
    doc = inspect.getdoc(fn)
    assert doc and len(doc.splitlines()) >= (1 if name == "default_cache_dir" else 5), name
    sig = inspect.signature(fn)
    assert sig.return_annotation is not inspect.Signature.empty, name
    for p in sig.parameters.values():
        assert p.annotation is not inspect.Parameter.empty, (name, p.name)
        assert re.search(rf"\b{p.name}\b", doc), f"{name}'s docstring does not explain {p.name!r}"
    assert re.search(rf"\bsc\.{name}\b", (ROOT / "docs" / "api.md").read_text()) or name == "default_cache_dir"


def test_load_task_takes_names_and_jsonl_files(in_tmp):
    from sparsecircuits.tasks.base import TaskError

    model = sc.load_model(SHIPPED / "sparse")
    assert model.path == SHIPPED / "sparse" and model.meta["step"] > 0 and model.family is None
    data = sc.load_task("bracket_type", model, n_examples=8)
    assert len(data) == 8 and data.tokens.shape[0] == 8
    lines = [{"prompt": "values = foo([1, 2", "correct": "]", "incorrect": ")"},
             {"prompt": "values = foo((1, 2", "correct": ")", "incorrect": "]"}]
    (in_tmp / "mine.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    mine = sc.load_task("mine.jsonl", model)
    assert mine.name == "mine" and len(mine) == 2
    with pytest.raises(TaskError, match="known tasks"):
        sc.load_task("no_such_task", model)
    with pytest.raises(ValueError, match="LoadedModel"):
        sc.load_task("bracket_type", model.model)


def test_prune_gives_the_cli_circuit_and_evaluate_reproduces_it(in_tmp, cache):
    """`sc.prune` = `sparsecircuits prune` with the same settings; `sc.evaluate_circuit` on the held-out
    half reproduces the losses the circuit records."""
    from sparsecircuits.cli import main
    from sparsecircuits.graph import Circuit
    from sparsecircuits.weight_sparse.prune import PruneConfig, split_indices

    flags = ["--n-examples", "32", "--steps", "5", "--batch-size", "8", "--effect-examples", "4"]
    assert main(["prune", str(SHIPPED / "sparse"), "--task", "bracket_type", "--out", "cli.json",
                 "--cache-dir", str(cache), *flags]) == 0
    from_cli = Circuit.load(Path("cli.json"))
    model = sc.load_model(SHIPPED / "sparse")
    data = sc.load_task("bracket_type", model, n_examples=32)
    circuit = sc.prune(model, data, PruneConfig(steps=5, batch_size=8, effect_examples=4))
    assert circuit.node_ids == from_cli.node_ids and len(circuit.edges) == len(from_cli.edges)
    assert circuit.metadata["losses"] == pytest.approx(from_cli.metadata["losses"])
    assert circuit.metadata["model"] == from_cli.metadata["model"]

    _, held = split_indices(len(data), 0)
    ev = sc.evaluate_circuit(model, data.subset(held), "cli.json")
    losses = circuit.metadata["losses"]
    assert (ev.circuit.loss, ev.full.loss, ev.empty.loss) == pytest.approx(
        (losses["circuit"], losses["full"], losses["empty"]), abs=1e-5)
    assert ev.ablation == "mean" and ev.faithfulness == pytest.approx(
        (ev.circuit.logit_diff - ev.empty.logit_diff) / (ev.full.logit_diff - ev.empty.logit_diff))
    page = sc.write_page("cli.json", "cli.html")  # without a model: from the JSON alone
    assert page.read_text().startswith("<!doctype html>")


def test_discover_and_evaluate_agree_on_a_component_circuit():
    """On the hand-built model of tests/planted.py: the circuit's recorded metric and faithfulness are
    what `evaluate_circuit` measures with its edges."""
    model, data = planted_model(), planted_data()
    circuit = sc.discover(model, data, "eap", sc.DiscoverConfig(ablation="mean", top_edges=6),
                                      solved_only=False)
    md = circuit.metadata
    assert md["method"] == "eap" and md["n_edges"] == 6 and md["model"] is None
    ev = sc.evaluate_circuit(model, data, circuit)
    assert ev.ablation == "mean"
    assert ev.circuit.logit_diff == pytest.approx(md["circuit_metric"], abs=1e-5)
    assert (ev.full.logit_diff, ev.empty.logit_diff) == pytest.approx((md["full_metric"], md["empty_metric"]), abs=1e-5)
    assert ev.faithfulness == pytest.approx(md["faithfulness"], abs=1e-5)
    with torch.no_grad():  # the full model's evaluation is the unmasked model's
        assert ev.full.logit_diff == pytest.approx(sc.evaluate_circuit(model, data).full.logit_diff, abs=1e-5)


def _python_blocks(markdown: str) -> list[str]:
    """The code of every ```python block, in order."""
    return re.findall(r"^```python\n(.*?)^```", markdown, flags=re.M | re.S)


def test_docs_api_snippets_run(in_tmp):
    """Every ```python block of docs/api.md, in order, in one namespace."""
    blocks = _python_blocks((ROOT / "docs" / "api.md").read_text())
    assert len(blocks) >= 7
    namespace: dict = {"__name__": "__docs__"}
    for n, code in enumerate(blocks):
        exec(compile(code, f"docs/api.md python block {n}", "exec"), namespace)


def test_example_notebook_runs(in_tmp):
    """examples/quickstart_api.ipynb: valid nbformat 4 with outputs cleared; its code cells run in order."""
    nb = json.loads((ROOT / "examples" / "quickstart_api.ipynb").read_text())
    assert nb["nbformat"] == 4 and nb["metadata"]["kernelspec"]["language"] == "python"
    cells = nb["cells"]
    assert {c["cell_type"] for c in cells} == {"markdown", "code"}
    ids = [c["id"] for c in cells]
    assert len(set(ids)) == len(ids)
    namespace: dict = {"__name__": "__notebook__"}
    for n, cell in enumerate(cells):
        assert isinstance(cell["source"], list) and isinstance(cell["metadata"], dict)
        if cell["cell_type"] != "code":
            continue
        assert cell["outputs"] == [] and cell["execution_count"] is None, f"cell {n}: outputs not cleared"
        source = "".join(cell["source"])
        if "shell" in cell["metadata"].get("tags", []) or source.lstrip().startswith(("!", "%")):
            continue
        exec(compile(source, f"quickstart_api.ipynb cell {n}", "exec"), namespace)
    assert Path("single_double_quote.html").exists()
