"""Sweeps: grid expansion, validation, and a micro sweep end to end (resume, recompute, kill, CLI)."""

import copy
import dataclasses
import json
import shutil

import pytest

from sparsecircuits.cli import main
from sparsecircuits.data.corpus import DataConfig
from sparsecircuits.graph import Circuit, geometric_mean
from sparsecircuits.model.checkpoint import list_steps
from sparsecircuits.viz.frontier import pareto, write_frontier_report
from sparsecircuits.viz.plots import matplotlib_available
from sparsecircuits.weight_sparse.prune import PruneConfig
from sparsecircuits.weight_sparse.sweep import (
    SweepConfig,
    expand_grid,
    load_state,
    run_spec,
    run_sweep,
)
from sparsecircuits.weight_sparse.sweep_results import summarise

MICRO = dict(widths=(32,), weight_fracs=(0.25,), act_sparsities=(0.25,), n_layers=1, n_ctx=32, steps=20,
             batch_size=4, val_batches=1, ckpt_every=5, tasks=("single_double_quote",), n_examples=16,
             prune=PruneConfig(steps=3, batch_size=8, max_effect_nodes=0), workers=1)
SPARSE, DENSE = "d32-w0.25-a0.25", "d32-dense"


def micro(corpus, **kw):
    data = DataConfig(sources=(str(corpus),), vocab_size=1024, tokenizer_sample_mb=1.0)
    return SweepConfig(**{**MICRO, "data": data, **kw})


@pytest.fixture(scope="module")
def swept(small_corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    cfg, events = micro(small_corpus), []
    result = run_sweep(cfg, root / "a", root / "cache", on_event=events.append)
    return cfg, root, result, events


def test_grid_names_dense_baselines_and_specs():
    cfg = SweepConfig(widths=(32, 64), weight_fracs=(0.25, 0.0625), act_sparsities=(0.25, 1.0))
    runs = expand_grid(cfg)
    assert [r.name for r in runs] == [
        "d32-w0.25-a0.25", "d32-w0.25-aoff", "d32-w0.0625-a0.25", "d32-w0.0625-aoff", "d32-dense",
        "d64-w0.25-a0.25", "d64-w0.25-aoff", "d64-w0.0625-a0.25", "d64-w0.0625-aoff", "d64-dense"]
    dense = [r for r in runs if r.dense]
    assert [r.width for r in dense] == [32, 64] and all(r.act_sparsity == 1.0 for r in dense)
    spec = run_spec(cfg, runs[7])
    assert (spec.model.d_model, spec.model.n_heads, spec.model.d_mlp, spec.model.act_sparsity) == (64, 4, 256, 0.25)
    assert spec.train.weight_frac == 0.0625 and spec.train.embed_frac == 0.125 and not spec.train.dense
    assert run_spec(cfg, runs[4]).train.dense and not run_spec(cfg, runs[4]).model.sparse_at("q")
    assert not run_spec(cfg, runs[1]).model.sparse_at("q")  # act sparsity 1 = off
    # same nonzeros per matrix at every width: the fraction shrinks with the square of the width
    same = expand_grid(SweepConfig(widths=(32, 64), weight_fracs=(0.25,), match_nonzeros=True, dense_baselines=False))
    assert [(r.name, r.weight_frac) for r in same] == [("d32-w0.25-a0.25", 0.25), ("d64-w0.0625-a0.25", 0.0625)]
    assert len(expand_grid(SweepConfig(widths=("32",), weight_fracs=(), dense_baselines=True))) == 1  # CLI strings
    per_width = SweepConfig(widths=(32, 64), weight_fracs=(0.25,), lr=0.05, lr_by_width=(0.02, 0.01))
    assert [run_spec(per_width, r).train.lr for r in expand_grid(per_width)] == [0.02, 0.02, 0.01, 0.01]
    assert run_spec(SweepConfig(widths=(32,), lr=0.05), expand_grid(SweepConfig(widths=(32,)))[0]).train.lr == 0.05


@pytest.mark.parametrize("kw, match", [
    (dict(widths=(40,)), "widths"),
    (dict(widths=()), "widths"),
    (dict(weight_fracs=(1.0,)), "weight_fracs"),
    (dict(weight_fracs=(0.25, 0.25)), "duplicates"),
    (dict(act_sparsities=(0.0,)), "act_sparsities"),
    (dict(weight_fracs=(), dense_baselines=False), "empty grid"),
    (dict(tasks=()), "tasks"),
    (dict(tasks=("no_such_task",)), "unknown task"),
    (dict(steps=0), "steps"),
    (dict(preset="huge"), "unknown preset"),
    (dict(lr_by_width=(0.01,)), "lr_by_width"),
    (dict(widths=(32,), lr_by_width=(0.0,)), "lr_by_width"),
    (dict(pruning_seeds=()), "pruning seed"),
    (dict(pruning_seeds=(1, 1)), "duplicates"),
    (dict(min_accuracy=1.5), "min_accuracy"),
    (dict(workers=-1), "workers"),
])
def test_config_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        SweepConfig(**kw)


def test_micro_sweep_writes_state_and_frontier(swept):
    cfg, root, result, events = swept
    assert result.complete and [r.run.name for r in result.rows] == [SPARSE, DENSE]
    state = load_state(root / "a")
    assert state["format"] == "sparsecircuits-sweep-v1" and state["complete"]
    assert SweepConfig(**state["config"]) == cfg  # the saved config reloads equal
    for r, saved in zip(result.rows, state["runs"]):
        assert r.trained and r.step == 20 and isinstance(r.val_loss, float)
        t = r.tasks["single_double_quote"]
        assert (root / "a" / "runs" / r.run.name / "circuits" / "single_double_quote-s0.json").exists()
        assert saved["tasks"]["single_double_quote"]["n_edges"] == t.n_edges
        assert r.geomean_all == geometric_mean([float(t.n_edges)]) and t.empty_loss > 0
    assert result.rows[0].hidden_kept < 0.3 and result.rows[1].hidden_kept == 1.0
    first = state["invocations"][0]  # provenance: when, how long, where, under what load, what was done
    assert first["trained"] == [SPARSE, DENSE] and first["pruned"] == 2 and first["seconds"] > 0
    assert first["cores"] >= 1 and first["cpu"] and len(first["load_start"]) == 3
    page = write_frontier_report(result)
    text = page.read_text()
    assert SPARSE in text and "<script" not in text and "http" not in text.split("<body>")[1]
    assert (root / "a" / "frontier.png").exists() == matplotlib_available()


def test_rerun_is_a_noop_and_a_deleted_circuit_is_recomputed(swept):
    cfg, root, result, _ = swept
    events = []
    again = run_sweep(cfg, root / "a", root / "cache", on_event=events.append)
    assert events == [] and again.complete
    assert [r.val_loss for r in again.rows] == [r.val_loss for r in result.rows]
    (root / "a" / "runs" / DENSE / "circuits" / "single_double_quote-s0.json").unlink()
    assert load_state(root / "a")["invocations"][-1] | {"seconds": 0} == again.invocations[-1] | {"seconds": 0}
    assert again.invocations[-1]["trained"] == [] and again.invocations[-1]["pruned"] == 0
    third = run_sweep(cfg, root / "a", root / "cache", on_event=events.append)
    assert [e.split(":")[0] for e in events] == [DENSE, DENSE] and "pruning" in events[0]
    assert len(third.invocations) == len(again.invocations) + 1 and third.invocations[-1]["pruned"] == 1
    assert third.rows[1].tasks["single_double_quote"].n_edges == result.rows[1].tasks["single_double_quote"].n_edges


def test_killed_sweep_resumes_to_the_same_result(swept):
    cfg, root, result, _ = swept
    out = root / "killed"
    part = run_sweep(cfg, out, root / "cache", should_stop=lambda name, step: name == SPARSE and step == 13)
    assert not part.complete and part.rows[0].step == 13 and not part.rows[0].trained
    assert load_state(out)["runs"][0]["step"] == 13
    assert [p.name for p in list_steps(out / "runs" / SPARSE)] == ["step-0000010"]
    events = []
    done = run_sweep(cfg, out, root / "cache", on_event=events.append)
    assert f"{SPARSE}: resuming from step 10" in events and f"{DENSE}: training" in events
    assert done.complete
    # batches depend only on (seed, step): the resumed sweep reproduces the uninterrupted one
    assert [r.val_loss for r in done.rows] == [r.val_loss for r in result.rows]
    metrics = [json.loads(x)["step"] for x in (out / "runs" / SPARSE / "metrics.jsonl").read_text().splitlines()]
    assert metrics == [10, 20]


def test_changed_settings_are_refused_but_the_grid_may_grow(swept):
    cfg, root, _, _ = swept
    with pytest.raises(ValueError, match="steps"):
        run_sweep(micro(cfg.data.sources[0], steps=30), root / "a", root / "cache")
    grown = root / "grown"
    shutil.copytree(root / "a", grown)
    events = []
    res = run_sweep(micro(cfg.data.sources[0], dense_baselines=False), grown, root / "cache", on_event=events.append)
    assert events == [] and [r.run.name for r in res.rows] == [SPARSE]


def test_summary_uses_only_tasks_every_model_reaches(swept):
    rows = copy.deepcopy(swept[2].rows)
    t = rows[0].tasks["single_double_quote"]
    for r in rows:
        r.tasks["extra"] = type(t)(**{**t.__dict__, "task": "extra", "reached": True, "n_edges": 100,
                                      "edges_by_seed": [100]})
    rows[0].tasks["single_double_quote"].reached = True
    rows[1].tasks["single_double_quote"].reached = False
    assert summarise(rows, ("single_double_quote", "extra")) == ["extra"]
    assert rows[0].geomean_common == pytest.approx(100.0)
    # a task a full model gets below min_accuracy on is left out of the frontier, even when reached
    rows[0].tasks["extra"].full_accuracy, rows[1].tasks["extra"].full_accuracy = 1.0, 0.5
    assert summarise(rows, ("single_double_quote", "extra"), min_accuracy=0.9) == []
    assert rows[0].geomean_common is None and rows[0].geomean_common_by_seed == []
    assert summarise(rows, ("single_double_quote", "extra"), min_accuracy=0.5) == ["extra"]
    assert pareto([(3.0, 10.0), (2.0, 50.0), (4.0, 5.0), (3.5, 20.0)]) == [(2.0, 50.0), (3.0, 10.0), (4.0, 5.0)]


def test_cli_sweep_prints_the_table(swept, capsys):
    cfg, root, _, _ = swept
    args = ["sweep", "--out", str(root / "a"), "--cache-dir", str(root / "cache"), "--widths", "32",
            "--weight-fracs", "0.25", "--n-layers", "1", "--n-ctx", "32", "--steps", "20", "--batch-size", "4",
            "--val-batches", "1", "--ckpt-every", "5", "--tasks", "single_double_quote", "--n-examples", "16",
            "--sources", cfg.data.sources[0], "--vocab-size", "1024", "--tokenizer-sample-mb", "1.0",
            "--prune-steps", "3", "--prune-batch-size", "8", "--prune-max-effect-nodes", "0"]
    assert main(args) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert SPARSE in out and DENSE in out and "frontier.html" in out


def test_pruning_seeds_give_error_bars_and_the_markdown_tables(swept):
    cfg, root, result, _ = swept
    seeded = root / "seeded"
    shutil.copytree(root / "a", seeded)
    two = dataclasses.replace(cfg, pruning_seeds=(0, 1))
    events = []
    res = run_sweep(two, seeded, root / "cache", on_event=events.append)
    # seed 0's circuits are reused, seed 1's are new
    assert [e for e in events if "pruning" in e] == [f"{SPARSE}: pruning single_double_quote (seed 1)",
                                                     f"{DENSE}: pruning single_double_quote (seed 1)"]
    for r, before in zip(res.rows, result.rows):
        t = r.tasks["single_double_quote"]
        assert t.seeds == [0, 1] and len(t.edges_by_seed) == 2 and len(t.circuit_loss_by_seed) == 2
        assert t.edges_by_seed[0] == before.tasks["single_double_quote"].n_edges
        assert t.n_edges == pytest.approx(geometric_mean([float(e) for e in t.edges_by_seed]))
        assert t.reached == all(t.reached_by_seed)
        saved = Circuit.load(seeded / "runs" / r.run.name / "circuits" / "single_double_quote-s1.json")
        assert saved.metadata["hyperparameters"]["seed"] == 1
    # every model reaching the task makes it a frontier task with one geomean per seed
    rows = copy.deepcopy(res.rows)
    for r in rows:
        r.tasks["single_double_quote"].reached, r.tasks["single_double_quote"].full_accuracy = True, 1.0
    assert summarise(rows, two.tasks, 0.9) == ["single_double_quote"]
    assert rows[0].geomean_common_by_seed == pytest.approx(
        [geometric_mean([float(e)]) for e in rows[0].tasks["single_double_quote"].edges_by_seed])
    write_frontier_report(res)
    md = (seeded / "frontier.md").read_text()
    assert f"| {SPARSE} | single_double_quote | " in md and "| run | task | edges per pruning seed |" in md


@pytest.mark.slow
def test_parallel_sweep_equals_the_serial_one(swept):
    """Two worker processes: the same models (validation losses) and circuits as the serial sweep."""
    cfg, root, result, _ = swept
    events = []
    par = run_sweep(dataclasses.replace(cfg, workers=2), root / "par", root / "cache", on_event=events.append)
    assert par.complete
    assert [r.val_loss for r in par.rows] == [r.val_loss for r in result.rows]
    for a, b in zip(par.rows, result.rows):
        assert a.tasks["single_double_quote"].edges_by_seed == b.tasks["single_double_quote"].edges_by_seed
    assert sorted(e.split(":")[0] for e in events if "training" in e) == sorted([SPARSE, DENSE])


def test_extra_targets_give_the_frontier_at_each_target_without_re_pruning(swept):
    cfg, root, result, _ = swept
    out = root / "targets"  # pruning settings are part of a sweep's identity: a fresh folder
    loose = dataclasses.replace(cfg, prune=dataclasses.replace(cfg.prune, extra_targets=(3.0,)), min_accuracy=0.0)
    events = []
    res = run_sweep(dataclasses.replace(loose, frontier_target=3.0), out, root / "cache", on_event=events.append)
    assert sum("pruning" in e for e in events) == 2  # one prune per model gives both targets
    for r in res.rows:
        t = r.tasks["single_double_quote"]
        assert t.reached_at_targets["3"] and len(t.edges_at_targets["3"]) == 1
        assert t.edges_at_targets["3"][0] <= t.edges_by_seed[0]  # a looser target never needs more
    assert res.common_tasks == ["single_double_quote"]  # every full model is below 3 nats
    assert res.rows[0].geomean_common == pytest.approx(max(1.0, res.rows[0].tasks["single_double_quote"].edges_at_targets["3"][0]))
    # back to the pruning target: only re-summarised
    events.clear()
    main = run_sweep(loose, out, root / "cache", on_event=events.append)
    assert events == [] and main.common_tasks == [t for t in cfg.tasks if all(
        r.tasks[t].reached for r in main.rows)]
    write_frontier_report(main)
    assert "| 3 | single_double_quote |" in (out / "frontier.md").read_text()
    with pytest.raises(ValueError, match="frontier_target"):
        dataclasses.replace(loose, frontier_target=0.7)


@pytest.mark.slow
def test_the_documented_sweep_in_miniature(small_corpus, tmp_path, capsys):
    """docs/frontier.md's command, every flag kept, at toy size: two widths x (two weight sparsities +
    dense) with activation sparsity, per-width learning rates, two pruning seeds, extra targets, two
    workers; then the same command with --frontier-target only re-summarises. Every number the figure
    plots is in sweep.json, and the figure and tables are rewritten by the second command."""
    out = tmp_path / "frontier"
    args = ["sweep", "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--widths", "32", "48",
            "--weight-fracs", "0.25", "0.125", "--act-sparsities", "0.25", "--dense-act-sparsity", "0.25",
            "--n-layers", "1", "--n-ctx", "32", "--steps", "12", "--batch-size", "4", "--val-batches", "1",
            "--preset", "quickstart", "--lr-by-width", "0.03", "0.06", "--tasks", "single_double_quote", "block_colon",
            "--n-examples", "16", "--pruning-seeds", "0", "1", "--workers", "2", "--prune-extra-targets", "3.0",
            "--sources", str(small_corpus), "--vocab-size", "1024", "--tokenizer-sample-mb", "1.0",
            "--prune-steps", "3", "--prune-batch-size", "8", "--prune-max-effect-nodes", "0", "--min-accuracy", "0"]
    assert main(args) == 0
    state = load_state(out)
    assert state["complete"] and len(state["runs"]) == 6
    names = [r["run"]["name"] for r in state["runs"]]
    started = [ln.split(":")[0] for ln in capsys.readouterr().out.splitlines() if ln.endswith(": training")]
    assert sorted(started) == sorted(names) and all(n.startswith("d48") for n in started[:3])  # widest first
    for r in state["runs"]:
        for t in r["tasks"].values():
            assert t["seeds"] == [0, 1] and len(t["edges_by_seed"]) == 2 and len(t["edges_at_targets"]["3"]) == 2
    first = {p: (out / p).stat().st_mtime_ns for p in ("frontier.md", "frontier.html")}

    # the frontier at the loose extra target: no training or pruning, only the summary and figure
    assert main([*args, "--frontier-target", "3.0"]) == 0
    for p, t in first.items():
        assert (out / p).stat().st_mtime_ns > t
    state = load_state(out)
    cfg = SweepConfig(**state["config"])
    assert cfg.frontier_target == 3.0 and state["common_tasks"]  # every full model is below 3 nats
    result = run_sweep(cfg, out, tmp_path / "cache")
    from sparsecircuits.viz.frontier import frontier_points

    saved = {r["run"]["name"]: r for r in state["runs"]}
    points = frontier_points(result)
    assert len(points) == 6
    for row, x, y in points:  # the figure's numbers, as sweep.json holds them
        assert saved[row.run.name]["val_loss"] == x and saved[row.run.name]["geomean_common"] == y
        assert len(saved[row.run.name]["geomean_common_by_seed"]) == 2
    md = (out / "frontier.md").read_text()
    assert "| 3 | " in md and all(n in md for n in names)
    if matplotlib_available():
        assert (out / "frontier.png").stat().st_size > 0


def test_log_lines_of_polled_progress_are_printed_once():
    """With workers the parent polls metrics.jsonl and sees a step again until the next is logged:
    a log without a live bar gets each quarter's line once."""
    import io

    from rich.console import Console

    from sparsecircuits.cli.sweep import SweepProgress
    from sparsecircuits.weight_sparse.run import StepReport

    buf = io.StringIO()
    console = Console(file=buf, force_terminal=False, width=200)
    with SweepProgress(console, 1) as progress:
        for step in (990, 1000, 1000, 1000, 1010, 2000, 2000):
            progress.on_step("d128-dense", StepReport(step, 4000, 3.0, 0.01, 1.0, 9000.0, None))
    lines = [ln for ln in buf.getvalue().splitlines() if ln.startswith("d128-dense: step")]
    assert [ln.split()[2] for ln in lines] == ["1000/4000", "2000/4000"]


def test_paired_ratios_compare_each_sparse_model_with_the_dense_one_of_its_width(swept):
    from sparsecircuits.weight_sparse.sweep_results import paired_ratios

    _, _, result, _ = swept
    rows = copy.deepcopy(result.rows)
    sparse, dense = rows
    for r, edges in ((sparse, [100, 400]), (dense, [800, 800])):
        t = r.tasks["single_double_quote"]
        t.reached, t.full_accuracy, t.edges_by_seed = True, 1.0, edges
        r.tasks["extra"] = dataclasses.replace(t, task="extra", edges_by_seed=[50])
    dense.tasks["extra"].edges_by_seed = [500]
    (p,) = paired_ratios(rows, "", 0.9)
    assert (p.sparse, p.dense) == (SPARSE, DENSE)
    assert p.tasks["single_double_quote"] == pytest.approx((200.0, 800.0))  # geomean over seeds
    assert p.ratio == pytest.approx((4.0 * 10.0) ** 0.5)
    dense.tasks["extra"].reached = False  # a task only one of the pair reaches is left out
    assert paired_ratios(rows, "", 0.9)[0].ratio == pytest.approx(4.0)
    sparse.tasks["single_double_quote"].full_accuracy = 0.5  # as is one a full model does not get right
    assert paired_ratios(rows, "", 0.9)[0].ratio is None
