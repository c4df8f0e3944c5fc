"""Training runs end to end on a small real corpus: resume exactness, L0 targets, CLI."""

import json

import pytest
import torch
from safetensors.torch import load_file

from sparsecircuits.cli import main
from sparsecircuits.data.corpus import DataConfig
from sparsecircuits.model import ModelConfig
from sparsecircuits.weight_sparse.info import checkpoint_info
from sparsecircuits.weight_sparse.run import RunSpec, train_run
from sparsecircuits.weight_sparse.train import TrainConfig

MODEL = dict(d_model=32, n_layers=2, n_heads=4, d_head=8, d_mlp=64, n_ctx=32, d_vocab=512)


def spec(corpus, **train):
    t = dict(steps=20, batch_size=4, lr=1e-2, weight_frac=0.25, embed_frac=0.5, val_every=10, val_batches=2,
             ckpt_every=5, keep_checkpoints=10, log_every=1, anneal_end=0.5)
    return RunSpec(ModelConfig(**MODEL), TrainConfig(**{**t, **train}),
                   DataConfig(sources=(str(corpus),), vocab_size=512, tokenizer_sample_mb=0.5))


def curve(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_killed_and_resumed_run_reproduces_the_loss_curve_exactly(small_corpus, tmp_path):
    cache = tmp_path / "cache"
    full = train_run(spec(small_corpus), tmp_path / "full", cache)
    assert not full.stopped_early
    # "kill" after step 13: the newest checkpoint is step 10, steps 11-13 are lost and redone
    part = train_run(spec(small_corpus), tmp_path / "part", cache, should_stop=lambda s: s == 13)
    assert part.stopped_early and part.step == 13
    resumed = train_run(spec(small_corpus), tmp_path / "part", cache, resume=True)
    assert resumed.step == 20
    a, b = curve(tmp_path / "full"), curve(tmp_path / "part")
    assert [r["step"] for r in b] == list(range(1, 21))
    for ra, rb in zip(a, b):
        assert ra["loss"] == rb["loss"] and ra.get("val_loss") == rb.get("val_loss"), (ra, rb)
    fa = load_file(str(full.checkpoint / "model.safetensors"))
    fb = load_file(str(resumed.checkpoint / "model.safetensors"))
    assert all(torch.equal(fa[k], fb[k]) for k in fa)


def test_resume_refuses_changed_settings(small_corpus, tmp_path):
    cache = tmp_path / "cache"
    train_run(spec(small_corpus, steps=5), tmp_path / "r", cache)
    with pytest.raises(ValueError, match="lr: 0.01 -> 0.02"):
        train_run(spec(small_corpus, steps=5, lr=2e-2), tmp_path / "r", cache, resume=True)
    with pytest.raises(ValueError, match="already holds checkpoints"):
        train_run(spec(small_corpus, steps=5), tmp_path / "r", cache)


def test_sparse_run_hits_exact_targets_and_learns(small_corpus, tmp_path):
    result = train_run(spec(small_corpus, steps=40, ckpt_every=0), tmp_path / "r", tmp_path / "cache")
    info = checkpoint_info(tmp_path / "r")
    assert info.step == 40 and not info.dense
    for m in info.matrices:
        assert m.nonzeros == m.target, m
        assert m.neurons_below_min == 0, m
        assert m.nonzeros < m.shape[0] * m.shape[1]
    assert info.all_at_target
    first = curve(tmp_path / "r")[0]["loss"]
    assert result.train_loss < first - 0.5  # it learns something in 40 steps


def test_dense_twin_has_identical_shapes_and_stays_dense(small_corpus, tmp_path):
    train_run(spec(small_corpus, steps=6), tmp_path / "s", tmp_path / "cache")
    train_run(spec(small_corpus, steps=6, dense=True), tmp_path / "d", tmp_path / "cache")
    s, d = checkpoint_info(tmp_path / "s"), checkpoint_info(tmp_path / "d")
    assert [m.shape for m in s.matrices] == [m.shape for m in d.matrices]
    assert d.dense and all(m.nonzeros == m.shape[0] * m.shape[1] for m in d.matrices)


def test_cli_train_and_info(small_corpus, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--preset", "tiny", "--out", str(out), "--cache-dir", str(tmp_path / "cache"),
            "--sources", str(small_corpus), "--vocab-size", "512", "--tokenizer-sample-mb", "0.5",
            "--steps", "6", "--batch-size", "2", "--n-layers", "1", "--d-model", "32", "--n-heads", "2",
            "--d-mlp", "64", "--n-ctx", "32", "--val-every", "3", "--no-attn-sink", "--act-sparsity-sites", "q", "k"]
    assert main(args) == 0
    meta = json.loads(next((out / "checkpoints").iterdir()).joinpath("meta.json").read_text())
    assert meta["spec"]["model"]["n_layers"] == 1 and meta["spec"]["model"]["attn_sink"] is False
    assert meta["spec"]["model"]["act_sparsity_sites"] == ["q", "k"]
    assert meta["spec"]["train"]["steps"] == 6
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "blocks.0.mlp.W_in" in text and "validation loss" in text


def test_cli_reports_bad_input_without_traceback(tmp_path, capsys):
    def said():
        return " ".join(capsys.readouterr().out.split())  # rich wraps long lines

    assert main(["info", str(tmp_path / "missing")]) == 2
    assert "does not exist" in said()
    assert main(["train", "--out", str(tmp_path / "x"), "--sources", str(tmp_path / "nothing-here")]) == 2
    assert "nothing-here" in said()
    assert main(["train", "--out", str(tmp_path / "y"), "--norm", "batch"]) == 2
    assert "ModelConfig.norm" in said()


def test_init_from_continues_from_a_checkpoint_and_checks_shapes(small_corpus, tmp_path):
    """`--init-from`: the new run starts at the checkpoint's weights (fresh optimizer and schedule)."""
    from sparsecircuits.model.checkpoint import load_checkpoint

    cache = tmp_path / "cache"
    first = train_run(spec(small_corpus, steps=20), tmp_path / "a", cache)
    src = load_checkpoint(first.checkpoint).model.state_dict()
    warm = train_run(spec(small_corpus, steps=1, lr=1e-9, warmup_frac=0.0, seed=1, anneal_start=0.0, anneal_end=0.0,
                          init_from=str(first.checkpoint)), tmp_path / "b", cache)
    got = load_checkpoint(warm.checkpoint).model.state_dict()
    for name, w in src.items():
        torch.testing.assert_close(got[name], w, atol=1e-6, rtol=0)
    cold = curve(tmp_path / "a")[0]["loss"]
    assert curve(tmp_path / "b")[0]["loss"] < cold - 0.1  # starts where the first run ended, not at random init
    wide = spec(small_corpus, steps=1, init_from=str(first.checkpoint))
    wide = RunSpec(ModelConfig(**{**MODEL, "d_mlp": 128}), wide.train, wide.data)
    with pytest.raises(ValueError, match="parameter shapes differ"):
        train_run(wide, tmp_path / "c", cache)
