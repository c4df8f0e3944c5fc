"""`sparsecircuits discover / compare-circuits / heads` end to end on a tiny checkpoint of ours, and the
natural-language tasks (sequence continuation, intervals, IOI, greater-than)."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
import torch

from conftest import tiny_model
from sparsecircuits.cli import main
from sparsecircuits.graph import Circuit
from sparsecircuits.model.checkpoint import save_checkpoint
from sparsecircuits.tasks.base import get_task, tokenize_task
from sparsecircuits.tasks.sequences import MEMBERS

TOKENIZER = Path(__file__).resolve().parents[2] / "sparsecircuits" / "assets" / "quickstart" / "dense" / "tokenizer.json"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(TOKENIZER)).get_vocab_size()
    model = tiny_model(act_sparsity=1.0, d_vocab=vocab, n_ctx=64, init_std=0.1, n_kv_heads=2)
    return save_checkpoint(tmp_path_factory.mktemp("ck") / "model", model, meta={"step": 0},
                           tokenizer_json=TOKENIZER.read_text())


@pytest.mark.parametrize("method", ["eap", "eap-ig", "iterative", "exact"])
def test_discover_cli_writes_circuits(checkpoint, tmp_path, method):
    out = tmp_path / f"{method}.json"
    rc = main(["discover", "--model", str(checkpoint), "--task", "bracket_type", "--method", method,
               "--n-examples", "8", "--no-filter", "--bootstrap", "2" if method == "eap" else "0",
               "--out", str(out), "--ablation", "counterfactual"])
    assert rc == 0
    c = Circuit.load(out)
    assert c.metadata["method"] == method and c.metadata["granularity"] == "component"
    if method == "eap":
        assert len(c.metadata["curve"]["fractions"]) == 10 and 0 <= c.metadata["bootstrap_jaccard"] <= 1


def test_compare_circuits_and_heads(checkpoint, tmp_path, capsys):
    paths = []
    for task in ("bracket_type", "single_double_quote"):
        paths.append(tmp_path / f"{task}.json")
        assert main(["discover", "--model", str(checkpoint), "--task", task, "--method", "eap", "--n-examples", "8",
                     "--no-filter", "--no-curve", "--bootstrap", "0", "--top-edges", "20", "--out", str(paths[-1])]) == 0
    rc = main(["compare-circuits", *map(str, paths), "--model", str(checkpoint), "--n-examples", "8",
               "--out", str(tmp_path / "core.json")])
    # a random model solves few prompts: the faithfulness matrix may find none solved, which is an error
    assert rc in (0, 2)
    assert main(["compare-circuits", *map(str, paths), "--out", str(tmp_path / "core.json")]) == 0
    core = Circuit.load(tmp_path / "core.json")
    assert core.metadata["method"] == "intersection"
    assert main(["heads", "--model", str(checkpoint), "--task", "bracket_type", "--n-examples", "8"]) == 0
    assert "logit lens" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["seqcont_numerals", "seqcont_number_words", "seqcont_months", "seqcont_spanish",
                                  "seqcont_interval2", "seqcont_interval3", "seqcont_interval10",
                                  "seqcont_interval100", "ioi", "greater_than"])
def test_language_tasks_generate_and_tokenize(name):
    spec = get_task(name)
    ex = spec.examples(20, seed=0)
    assert all(e.prompt and e.correct != e.incorrect and e.counterfactual for e in ex)
    if name.startswith("seqcont"):
        e = spec.generate_one(random.Random(0))
        # Lan et al.: the incorrect answer is the last member shown
        assert e.prompt.rstrip().split(". ")[-2].endswith(e.incorrect.strip())
        if name in MEMBERS:
            members = MEMBERS[name]
            assert e.correct.strip() in members
    data = tokenize_task(name, ex, english_tokenizer(), 256, strict=False, min_valid=1,
                         multi_token=spec.multi_token)
    assert len(data) >= 1 and data.cf_tokens is not None


_ENGLISH: list = []


def english_tokenizer():
    """A byte-level BPE trained on the language tasks' own prompts (an English-ish tokenizer in ~0.1 s)."""
    if not _ENGLISH:
        from sparsecircuits.data.tokenizer import train_tokenizer
        from sparsecircuits.tasks.sequences import MEMBERS

        names = [*MEMBERS, "ioi", "greater_than"]
        texts = [e.prompt + e.correct + " " + (e.counterfactual or "") for n in names
                 for e in get_task(n).examples(60, seed=1)]
        _ENGLISH.append(train_tokenizer(texts, 400))
    return _ENGLISH[0]


def test_filter_solved_keeps_examples_with_probability_ratio():
    from sparsecircuits.evaluate import filter_solved
    from sparsecircuits.tasks.base import Example, TaskData

    model = tiny_model(act_sparsity=1.0, init_std=0.5)  # logits spread well beyond ln 2
    toks = torch.randint(0, 97, (8, 6))
    with torch.no_grad():
        last = model(toks)[:, -1]
    correct = last.argmax(-1)
    incorrect = last.argmin(-1)
    data = TaskData("t", [Example("p", "c", "i")] * 8, toks, torch.full((8,), 6), correct, incorrect, None, ("c", "i"), 0)
    assert len(filter_solved(model, data)) == 8
    swapped = TaskData("t", data.examples, toks, data.lengths, incorrect, correct, None, ("c", "i"), 0)
    with pytest.raises(ValueError, match="solves none"):
        filter_solved(model, swapped)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
