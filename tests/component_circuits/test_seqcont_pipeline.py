"""Sequence-continuation corpora (`data/task_corpus.py`, `sparsecircuits task-corpus`) and the Lan et al.
pipeline end to end from the CLI on a model our own code trains: task-corpus -> train -> discover
(iterative) -> compare-circuits -> heads (docs/seqcont.md)."""

from __future__ import annotations

import json
import random
import sys

import pytest

from sparsecircuits.cli import main
from sparsecircuits.data.task_corpus import (
    TRAIN_NAMES,
    TRAIN_OBJECTS,
    TaskCorpusConfig,
    build_task_corpus,
    sequence_document,
)
from sparsecircuits.graph import Circuit
from sparsecircuits.tasks.base import get_task
from sparsecircuits.tasks.sequences import MEMBERS, NAMES, OBJECTS, TEMPLATES

TASKS = ("seqcont_numerals", "seqcont_number_words", "seqcont_months")


def test_corpus_is_deterministic_by_seed():
    cfg = TaskCorpusConfig(docs=200, seed=3)
    assert build_task_corpus(cfg)[0] == build_task_corpus(TaskCorpusConfig(docs=200, seed=3))[0]
    assert build_task_corpus(cfg)[0] != build_task_corpus(TaskCorpusConfig(docs=200, seed=4))[0]


@pytest.mark.parametrize("task", sorted(MEMBERS))
def test_documents_are_consecutive_members_in_one_template(task):
    rng = random.Random(0)
    domain, step = MEMBERS[task], {"seqcont_interval2": 2, "seqcont_interval3": 3}.get(task, 1)
    for _ in range(50):
        doc = sequence_document(rng, task, max_members=8)
        sentences = doc.split(". ")
        assert doc.endswith(".") and 3 <= len(sentences) <= 8
        heads = {s.rsplit(" ", 1)[0] for s in sentences}
        assert len(heads) == 1  # one subject, one template
        subject, verb = next(iter(heads)).split(" ")[:2]
        assert f"{{x}} {verb} in {{m}}." in TEMPLATES
        assert subject in (TRAIN_NAMES if verb == "born" else TRAIN_OBJECTS) or subject not in OBJECTS + NAMES
        members = [s.rsplit(" ", 1)[1].rstrip(".") for s in sentences]
        idx = [domain.index(m) for m in members]
        assert all(b - a == step for a, b in zip(idx, idx[1:]))


def test_evaluation_prompts_are_held_out():
    docs, stats = build_task_corpus(TaskCorpusConfig(tasks=TASKS, docs=3000))
    assert stats.sequence_docs == 3000 and stats.stdlib_docs == 0
    text = "\n".join(docs)
    for name in TASKS:
        for seed in range(3):
            for ex in get_task(name).examples(150, seed=seed):
                assert ex.prompt not in text
                assert (ex.counterfactual or "") not in text
    # the mechanism: no evaluation subject appears in any sequence document
    words = set(text.replace(".", " ").split())
    assert not words & (set(OBJECTS) | set(NAMES))


def test_mix_stdlib_fraction():
    docs, stats = build_task_corpus(TaskCorpusConfig(docs=500, mix_stdlib=0.5, chunk_chars=500))
    share = stats.stdlib_chars / (stats.stdlib_chars + stats.sequence_chars)
    assert 0.45 < share < 0.6 and len(docs) == 500 + stats.stdlib_docs
    assert all(len(d) <= 500 for d in docs)


def test_config_validation():
    with pytest.raises(ValueError, match="tasks"):
        TaskCorpusConfig(tasks=("ioi",))
    with pytest.raises(ValueError, match="mix_stdlib"):
        TaskCorpusConfig(mix_stdlib=1.0)
    with pytest.raises(ValueError, match="max_members"):
        TaskCorpusConfig(max_members=4)


def test_pipeline_from_the_cli(tmp_path, capsys):
    """task-corpus -> train a tiny dense model for a few dozen steps -> discover (iterative, eap-ig) ->
    compare-circuits -> heads. The model need not learn; every command must run and write loadable
    circuits."""
    corpus = tmp_path / "seq.jsonl"
    assert main(["task-corpus", "--docs", "600", "--tasks", *TASKS, "--out", str(corpus)]) == 0
    lines = corpus.read_text().splitlines()
    assert len(lines) == 600 and all(json.loads(ln)["text"] for ln in lines)
    run = tmp_path / "run"
    assert main(["train", "--preset", "tiny", "--dense", "--act-sparsity", "1.0", "--no-bigram-table",
                 "--positions", "learned", "--n-layers", "2", "--d-model", "32", "--n-heads", "2", "--d-head", "8",
                 "--d-mlp", "64", "--n-ctx", "64", "--vocab-size", "512", "--steps", "30", "--batch-size", "8",
                 "--val-every", "0", "--ckpt-every", "0", "--sources", str(corpus), "--out", str(run),
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    paths = []
    for task in TASKS:
        paths.append(tmp_path / f"{task}.json")
        assert main(["discover", "--model", str(run), "--task", task, "--method", "iterative", "--n-examples", "12",
                     "--no-filter", "--no-curve", "--bootstrap", "0", "--out", str(paths[-1])]) == 0
        c = Circuit.load(paths[-1])
        assert c.metadata["task"] == task and c.metadata["method"] == "iterative"
    ig = tmp_path / "eap-ig.json"
    assert main(["discover", "--model", str(run), "--task", TASKS[0], "--method", "eap-ig", "--n-examples", "12",
                 "--no-filter", "--bootstrap", "0", "--top-edges", "20", "--out", str(ig)]) == 0
    assert sum(e.kind == "residual" for e in Circuit.load(ig).edges) == 20
    core = tmp_path / "core.json"
    rc = main(["compare-circuits", *map(str, paths), "--model", str(run), "--n-examples", "12", "--out", str(core)])
    # an untrained model may solve none of a task's prompts: the faithfulness matrix then stops with an error
    assert rc in (0, 2)
    capsys.readouterr()
    assert main(["compare-circuits", *map(str, paths), "--out", str(core)]) == 0
    shared = Circuit.load(core)
    assert shared.metadata["method"] == "intersection"
    # regression: the shared core's heads/MLPs are named, not only counted
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("shared core:"))
    assert all((f"{n.layer}.{n.index}" if n.kind == "head" else f"MLP{n.layer}") in line
               for n in shared.nodes if n.kind in ("head", "mlp"))
    # regression: circuits found under different ablations were all scored under the first one's
    mixed = tmp_path / "mixed.json"
    c = Circuit.load(paths[0])
    c.metadata["ablation"] = "position-mean"
    c.save(mixed)
    assert main(["compare-circuits", str(mixed), str(ig), "--model", str(run), "--n-examples", "12"]) == 2
    assert "different ablations" in capsys.readouterr().out
    assert main(["heads", "--model", str(run), "--task", TASKS[0], "--n-examples", "12"]) == 0
    assert "logit lens" in capsys.readouterr().out


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
