"""The models shipped for the quickstart still do what their training record says.

`sparsecircuits/assets/quickstart/tasks-{sparse,dense}.json` are the output of
`sparsecircuits tasks <model> --json ...` at the time the pair was trained (TRAINING.md). Re-measuring
the tasks the sparse model solves, on both models, checks that the weights, the tokenizer, the model
code and the task generators still fit together: a change to any of them that moves an accuracy or
a task loss shows up here (and the record, TRAINING.md and the README must then be updated with it).
The tolerance allows a few examples to flip on another CPU's float rounding, not a real change.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sparsecircuits.data.tokenizer import load_tokenizer
from sparsecircuits.evaluate import evaluate_task
from sparsecircuits.model.checkpoint import load_checkpoint
from sparsecircuits.tasks.base import TASKS, load_task
from sparsecircuits.weight_sparse.quickstart import ASSETS


def _record(kind: str) -> dict:
    return json.loads((ASSETS / f"tasks-{kind}.json").read_text())


def _solved() -> list[str]:
    tasks = _record("sparse")["tasks"]
    return sorted(n for n, r in tasks.items() if TASKS[n].domain == "python" and r.get("accuracy", 0) >= 0.9)


def test_the_record_is_of_the_shipped_models():
    for kind in ("sparse", "dense"):
        rec = _record(kind)
        assert Path(rec["model"]).name == kind, rec["model"]
        assert rec["n_examples"] == 256  # what the quickstart evaluates on
    assert _solved(), "the record says the shipped sparse model solves no task"


@pytest.mark.parametrize("kind", ["sparse", "dense"])
def test_shipped_models_still_score_what_the_record_says(kind):
    rec = _record(kind)
    ck = load_checkpoint(ASSETS / kind)
    tok = load_tokenizer(ck.tokenizer_path)
    for name in _solved():
        want = rec["tasks"][name]
        data = load_task(name, tok, ck.model.cfg.n_ctx, rec["n_examples"])
        ev = evaluate_task(ck.model, data)
        assert abs(ev.accuracy - want["accuracy"]) <= 3 / len(data) + 1e-9, (kind, name, ev.accuracy, want)
        assert abs(ev.loss - want["loss"]) <= 0.02, (kind, name, ev.loss, want)
