"""`sparsecircuits tasks CKPT --task-file F`: a user's own task evaluated like the built-in ones, checked
against the model's logits computed here; and the task-file reader's line cap at its boundary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import sparsecircuits.tasks  # noqa: F401  (registers the built-in tasks)
from conftest import tiny_model
from sparsecircuits.cli.main import main
from sparsecircuits.model.checkpoint import save_checkpoint
from sparsecircuits.tasks.base import TASKS, TaskError, get_task, max_line_bytes, read_jsonl_task

TOKENIZER = Path(__file__).resolve().parents[2] / "sparsecircuits" / "assets" / "quickstart" / "dense" / "tokenizer.json"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(TOKENIZER))
    model = tiny_model(d_vocab=tok.get_vocab_size(), n_ctx=64)
    root = tmp_path_factory.mktemp("tasks-cli")
    ck = save_checkpoint(root / "ck", model, meta={"step": 0}, tokenizer_json=TOKENIZER.read_text())
    rows = []
    examples = [e for name in sorted(TASKS) for e in get_task(name).examples(16)]
    for e in examples:
        p = tok.encode(e.prompt, add_special_tokens=False).ids
        if len(p) > 64:
            continue
        ids = [tok.encode(e.prompt + c, add_special_tokens=False).ids for c in (e.correct, e.incorrect)]
        if all(len(i) == len(p) + 1 and i[: len(p)] == p for i in ids):  # single-token answers in context
            rows.append((e, p, ids[0][-1], ids[1][-1]))
    task = root / "my_task.jsonl"
    task.write_text("\n".join(json.dumps({"prompt": e.prompt, "correct": e.correct, "incorrect": e.incorrect})
                              for e, *_ in rows) + "\n\n")
    return model, ck, task, rows


def test_task_file_is_evaluated_like_a_builtin_task(setup, tmp_path, capsys):
    model, ck, task, rows = setup
    out = tmp_path / "res.json"
    assert main(["tasks", str(ck), "--task-file", str(task), "--json", str(out)]) == 0
    assert "my_task" in capsys.readouterr().out
    rec = json.loads(out.read_text())
    assert rec["task_file"] == str(task) and list(rec["tasks"]) == ["my_task"]
    got = rec["tasks"]["my_task"]
    # ground truth: each prompt alone through the model, logit(correct) - logit(incorrect) at its last token
    with torch.no_grad():
        diffs = torch.stack([model(torch.tensor([p]))[0, -1, c] - model(torch.tensor([p]))[0, -1, i]
                             for _, p, c, i in rows])
    assert got["n_examples"] == len(rows) >= 4
    assert got["logit_diff"] == pytest.approx(diffs.mean().item(), abs=1e-4)
    assert got["loss"] == pytest.approx(F.softplus(-diffs).mean().item(), abs=1e-4)
    assert got["accuracy"] == pytest.approx((diffs > 0).float().mean().item())


def test_tasks_without_a_tokenizer_fails(setup, tmp_path, capsys):
    model = setup[0]
    bare = save_checkpoint(tmp_path / "bare", model, meta={"step": 0})
    out = tmp_path / "res.json"
    assert main(["tasks", str(bare), "--json", str(out)]) == 2  # it used to exit 0 with "tasks": {}
    assert "no tokenizer.json" in capsys.readouterr().out
    assert not out.exists()


def test_line_cap_boundary(tmp_path):
    """A line of exactly the cap is read; one byte more is refused, naming file and line."""
    cap = max_line_bytes(8)
    head = '{"prompt": "'
    tail = '", "correct": "a", "incorrect": "b"}'
    fits = head + "x" * (cap - len(head) - len(tail)) + tail
    path = tmp_path / "t.jsonl"
    path.write_text('{"prompt": "p", "correct": "a", "incorrect": "b"}\r\n' + fits + "\r\n")
    assert len(read_jsonl_task(path, cap)) == 2
    path.write_text('{"prompt": "p", "correct": "a", "incorrect": "b"}\n' + fits.replace("xx", "xxx", 1) + "\n")
    with pytest.raises(TaskError, match=r"t\.jsonl:2: line longer than"):
        read_jsonl_task(path, cap)


def test_a_50mb_line_is_refused_before_torch_is_imported(setup, tmp_path):
    """The whole CLI refuses a 50 MB task line without importing torch or loading the model: the cap
    comes from the checkpoint's config.json (`cli.loading.precheck_task_file`)."""
    import os
    import subprocess
    import sys

    ck, big = setup[1], tmp_path / "big.jsonl"
    with big.open("w") as f:
        f.write('{"prompt": "' + "x" * 50_000_000 + '", "correct": "a", "incorrect": "b"}\n')
    code = ("import re, sys; from pathlib import Path; from sparsecircuits.cli.main import main; rc = main(sys.argv[1:]); "
            "print('torch imported:', 'torch' in sys.modules); "  # VmHWM: this process's peak RSS (reset at exec)
            "print('peak MB:', int(re.search(r'VmHWM:\\s+(\\d+)', Path('/proc/self/status').read_text())[1]) // 1024); "
            "sys.exit(rc)")
    for argv in (["tasks", str(ck), "--task-file", str(big)],
                 ["prune", str(ck), "--task-file", str(big), "--out", str(tmp_path / "c.json")]):
        r = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "COLUMNS": "1000"})
        assert r.returncode == 2, r.stdout + r.stderr
        assert "big.jsonl:1: line longer than" in r.stdout
        assert "torch imported: False" in r.stdout
        assert int(r.stdout.split("peak MB:")[1].split()[0]) < 100  # the 50 MB line is never held in memory
        assert not (tmp_path / "c.json").exists()
