"""`sparsecircuits average`: the weight mean of a run's checkpoints, projected back onto top-k."""

import json

import pytest
import torch
from test_run import spec

from sparsecircuits.cli import main
from sparsecircuits.model.checkpoint import load_checkpoint, step_dir
from sparsecircuits.model.sparsity import topk_mask
from sparsecircuits.weight_sparse.average import AverageError, average_checkpoints, record_validation_loss
from sparsecircuits.weight_sparse.info import checkpoint_info
from sparsecircuits.weight_sparse.run import train_run


@pytest.fixture(scope="module")
def runs(small_corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("avg")
    cache = root / "cache"
    train_run(spec(small_corpus, steps=20), root / "sparse", cache)
    train_run(spec(small_corpus, steps=20, dense=True), root / "dense", cache)
    return root, cache


def params(path):
    return {k: v.detach() for k, v in load_checkpoint(path).model.state_dict().items()}


def test_dense_average_is_the_exact_mean(runs, tmp_path):
    root, _ = runs
    steps = [step_dir(root / "dense", s) for s in (10, 15, 20)]
    res = average_checkpoints(steps, tmp_path / "avg")
    assert not res.projected
    got, each = params(res.path), [params(p) for p in steps]
    for k in got:
        want = sum(e[k].double() for e in each) / 3
        torch.testing.assert_close(got[k].double(), want, rtol=0, atol=1e-6)


def test_sparse_average_keeps_the_runs_sparsity_and_its_masks(runs, tmp_path):
    root, _ = runs
    steps = [step_dir(root / "sparse", s) for s in (15, 20)]
    res = average_checkpoints(steps, tmp_path / "avg")
    info = checkpoint_info(res.path)
    assert res.projected and info.all_at_target
    assert res.nonzeros_before >= res.nonzeros_after == sum(m.target for m in info.matrices)
    got, a, b = params(res.path), *[params(p) for p in steps]
    model = load_checkpoint(res.path).model
    targets = {m.name: m.target for m in info.matrices}
    for sw in model.sparse_weights():
        kept = got[sw.name] != 0
        mean = (a[sw.name] + b[sw.name]) / 2
        # the kept entries are the training projection's top-k set of the mean, holding the mean
        assert torch.equal(kept, topk_mask(mean, targets[sw.name], 4, sw.neuron_dim)), sw.name
        torch.testing.assert_close(got[sw.name][kept], mean[kept], rtol=0, atol=1e-6)


def test_recomputed_validation_loss_matches_the_run(runs):
    """Ground truth: a training checkpoint's recomputed validation loss is the one the run logged."""
    root, cache = runs
    folder = step_dir(root / "sparse", 20)
    logged = json.loads((folder / "meta.json").read_text())["metrics"]["val_loss"]
    assert record_validation_loss(folder, cache) == pytest.approx(logged, abs=1e-6)


def test_refuses_checkpoints_of_different_runs(runs, tmp_path):
    root, _ = runs
    with pytest.raises(AverageError, match="TrainConfig.dense"):
        average_checkpoints([step_dir(root / "sparse", 20), step_dir(root / "dense", 20)], tmp_path / "x")
    with pytest.raises(AverageError, match="at least two"):
        average_checkpoints([step_dir(root / "sparse", 20)], tmp_path / "x")
    with pytest.raises(AverageError, match="listed twice"):
        average_checkpoints([step_dir(root / "sparse", 20)] * 2, tmp_path / "x")


def test_cli_average_reports_and_stores_the_validation_loss(runs, tmp_path, capsys):
    root, cache = runs
    out = tmp_path / "avg"
    args = ["average", str(step_dir(root / "sparse", 15)), str(step_dir(root / "sparse", 20)),
            "--out", str(out), "--cache-dir", str(cache)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "averaged 2 checkpoints" in printed and "validation loss" in printed
    meta = json.loads((out / "meta.json").read_text())
    assert isinstance(meta["metrics"]["val_loss"], float) and len(meta["averaged_from"]) == 2
    assert main(["average", str(step_dir(root / "sparse", 20)), "--out", str(out)]) != 0
