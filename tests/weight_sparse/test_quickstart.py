"""The main job end to end on tiny twins trained in the test: quickstart, prune, compare, tasks."""

import json

import pytest
import torch

from sparsecircuits.cli import main
from sparsecircuits.data.corpus import DataConfig
from sparsecircuits.graph import Circuit
from sparsecircuits.model import ModelConfig
from sparsecircuits.weight_sparse.prune import PruneConfig
from sparsecircuits.weight_sparse.quickstart import run_quickstart
from sparsecircuits.weight_sparse.run import RunSpec, train_run
from sparsecircuits.weight_sparse.train import TrainConfig

MODEL = dict(d_model=32, n_layers=1, n_heads=4, d_head=8, d_mlp=64, n_ctx=64, d_vocab=1024)


@pytest.fixture(scope="module")
def twins(small_corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("twins")
    out = {}
    for name, dense in (("sparse", False), ("dense", True)):
        spec = RunSpec(ModelConfig(**MODEL),
                       TrainConfig(steps=4, batch_size=2, val_batches=1, dense=dense, weight_frac=0.25, embed_frac=0.5),
                       DataConfig(sources=(str(small_corpus),), vocab_size=1024, tokenizer_sample_mb=1.0))
        train_run(spec, root / name, root / "cache")
        out[name] = root / name
    return out["sparse"], out["dense"], root / "cache"


def test_quickstart_pipeline_writes_circuits_and_report(twins, tmp_path):
    sparse, dense, cache = twins
    report = run_quickstart(tmp_path / "qs", cache, sparse, dense, tasks=["single_double_quote", "bracket_counting"],
                            prune_cfg=PruneConfig(steps=5), n_examples=32, solve_threshold=0.0)
    assert [r.task for r in report.rows] == ["single_double_quote", "bracket_counting"]
    for r in report.rows:
        assert r.solved and r.sparse_circuit and r.dense_circuit
        for kind in ("sparse", "dense"):
            c = Circuit.load(tmp_path / "qs" / "circuits" / kind / f"{r.task}.json")
            assert c.metadata["task"] == r.task and c.metadata["n_edges"] == len(c.edges)
    saved = json.loads((tmp_path / "qs" / "report.json").read_text())
    assert saved["rows"][0]["task"] == "single_double_quote" and "geomean_ratio" in saved
    assert main(["compare", str(tmp_path / "qs" / "circuits" / "sparse"), str(tmp_path / "qs" / "circuits" / "dense")]) == 0


def test_parallel_prunes_give_the_in_process_circuits(twins, tmp_path, monkeypatch):
    """Prunes in 2 spawned worker processes (1 thread each) = the same prunes in this process; each
    saved circuit is handed to `on_circuit` (the pages hook, in the order the prunes finish) while the
    pool runs, and this process gets its torch threads back afterwards."""
    sparse, dense, cache = twins
    kw = dict(tasks=["single_double_quote"], prune_cfg=PruneConfig(steps=5), n_examples=32, solve_threshold=0.0)
    threads = torch.get_num_threads()
    seen = []

    def on_circuit(task, kind):
        assert (tmp_path / "par" / "circuits" / kind / f"{task}.json").exists()
        seen.append((task, kind, torch.get_num_threads()))

    parallel = run_quickstart(tmp_path / "par", cache, sparse, dense, workers=2, on_circuit=on_circuit, **kw)
    assert sorted(seen) == [("single_double_quote", "dense", 1), ("single_double_quote", "sparse", 1)]
    assert torch.get_num_threads() == threads
    torch.set_num_threads(1)
    try:
        serial = run_quickstart(tmp_path / "ser", cache, sparse, dense, workers=1, **kw)
    finally:
        torch.set_num_threads(threads)
    for kind in ("sparse", "dense"):
        a, b = (Circuit.load(tmp_path / d / "circuits" / kind / "single_double_quote.json") for d in ("par", "ser"))
        assert a.node_ids == b.node_ids and len(a.edges) == len(b.edges)
    assert parallel.rows[0].sparse_circuit["n_edges"] == serial.rows[0].sparse_circuit["n_edges"]


def test_quickstart_refuses_models_that_are_not_twins(twins, tmp_path, small_corpus):
    sparse, _, cache = twins
    spec = RunSpec(ModelConfig(**{**MODEL, "d_mlp": 48}), TrainConfig(steps=2, batch_size=2, val_batches=1),
                   DataConfig(sources=(str(small_corpus),), vocab_size=1024, tokenizer_sample_mb=1.0))
    train_run(spec, tmp_path / "other", cache)
    with pytest.raises(ValueError, match="not twins"):
        run_quickstart(tmp_path / "qs", cache, sparse, tmp_path / "other", tasks=["single_double_quote"])


def test_cli_prune_with_a_jsonl_task(twins, tmp_path, capsys):
    sparse, _, cache = twins
    task = tmp_path / "calls.jsonl"
    lines = [{"prompt": f"x = {name}", "correct": "(", "incorrect": "[", "counterfactual": f"y = {name}"}
             for name in ("foo", "bar", "spam", "eggs", "value", "items", "name", "data")]
    task.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    out = tmp_path / "c.json"
    assert main(["prune", str(sparse), "--task-file", str(task), "--out", str(out), "--steps", "5",
                 "--cache-dir", str(cache)]) == 0
    c = Circuit.load(out)
    assert c.metadata["task"] == "calls" and c.metadata["hyperparameters"]["steps"] == 5
    # a malformed task file is a clear error, not a traceback
    task.write_text('{"prompt": "x = foo", "correct": "(("}\n')
    assert main(["prune", str(sparse), "--task-file", str(task), "--out", str(out), "--cache-dir", str(cache)]) == 2
    assert "calls.jsonl:1" in " ".join(capsys.readouterr().out.split())


def test_cli_tasks_lists_and_evaluates(twins, capsys):
    sparse, _, _ = twins
    assert main(["tasks"]) == 0
    assert "single_double_quote" in capsys.readouterr().out
    assert main(["tasks", str(sparse), "--n-examples", "16"]) == 0
    assert "accuracy" in capsys.readouterr().out


def test_cli_tasks_json_records_what_evaluate_task_measures(twins, tmp_path, capsys):
    import json

    from sparsecircuits.data.tokenizer import load_tokenizer
    from sparsecircuits.evaluate import evaluate_task
    from sparsecircuits.model.checkpoint import load_checkpoint
    from sparsecircuits.tasks.base import load_task, prompt_texts

    sparse, _, _ = twins
    out = tmp_path / "acc.json"
    assert main(["tasks", str(sparse), "--n-examples", "16", "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["n_examples"] == 16
    ck = load_checkpoint(sparse)
    data = load_task("bracket_type", load_tokenizer(ck.tokenizer_path), ck.model.cfg.n_ctx, 16)
    ev = evaluate_task(ck.model, data)
    got = record["tasks"]["bracket_type"]
    assert got["accuracy"] == ev.accuracy and abs(got["loss"] - ev.loss) < 1e-6
    assert got["answers"] == list(data.answer_strings)
    # a validation sample: another seed, without the default evaluation's prompts
    assert main(["tasks", str(sparse), "--n-examples", "16", "--seed", "3", "--exclude-seed", "0",
                 "--exclude-n", "16", "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["seed"] == 3 and record["excluded"] == {"seed": 0, "n": 16}
    val = load_task("bracket_type", load_tokenizer(ck.tokenizer_path), ck.model.cfg.n_ctx, 16, seed=3,
                    exclude=prompt_texts("bracket_type", 16, 0))
    assert record["tasks"]["bracket_type"]["accuracy"] == evaluate_task(ck.model, val).accuracy
    assert main(["tasks", "--json", str(out)]) != 0  # nothing to evaluate
    assert "--json needs a checkpoint" in capsys.readouterr().out


def test_quickstart_retrain_trains_both_twins_then_reports(small_corpus, tmp_path, monkeypatch):
    """`quickstart --retrain` runs the `train` command for both twins with the quickstart preset (shrunk
    here to a few steps on a small corpus) and then the same pipeline on the new models."""
    from sparsecircuits.weight_sparse import presets

    tiny = presets.Preset("quickstart", "test", model={k: v for k, v in MODEL.items() if k != "d_vocab"},
                          train=dict(steps=3, batch_size=2, val_batches=1, val_every=3, ckpt_every=3,
                                     weight_frac=0.25, embed_frac=0.5),
                          data=dict(sources=(str(small_corpus),), vocab_size=1024, tokenizer_sample_mb=1.0))
    monkeypatch.setitem(presets.PRESETS, "quickstart", tiny)
    out = tmp_path / "qs"
    assert main(["quickstart", "--retrain", "--out", str(out), "--tasks", "single_double_quote", "--n-examples", "32",
                 "--solve-threshold", "0", "--steps", "3", "--cache-dir", str(tmp_path / "cache")]) == 0
    for name, dense in (("sparse", False), ("dense", True)):
        meta = json.loads(next((out / "models" / name / "checkpoints").glob("step-*/meta.json")).read_text())
        assert meta["spec"]["train"]["dense"] is dense and meta["spec"]["train"]["steps"] == 3
    assert json.loads((out / "report.json").read_text())["rows"][0]["task"] == "single_double_quote"
    index = (out / "index.html").read_text()
    for kind in ("sparse", "dense"):  # pages written as the circuits came in, linked from the index
        assert (out / "circuits" / kind / "single_double_quote.html").exists()
        assert f"circuits/{kind}/single_double_quote.html" in index
