"""SHIFT (Marks et al. 2025): the quote-style dataset, a planted spurious feature that ablation removes
(and random ablation does not), the probe's circuit, ablate-file errors and the CLI's early checks."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from conftest import tiny_model
from sparsecircuits.data.tokenizer import load_tokenizer
from sparsecircuits.dictionaries import DictConfig, make_dictionary
from sparsecircuits.feature_circuits.dictionary_graph import make_sites
from sparsecircuits.feature_circuits.edit import accuracy, parse_ablate_file
from sparsecircuits.feature_circuits.shift import (
    ShiftConfig,
    auto_select,
    feature_responses,
    probe_circuit,
    shift_rows,
    train_probe,
)
from sparsecircuits.feature_circuits.shift_data import (
    ShiftDataConfig,
    ShiftDataset,
    ShiftSplit,
    build_shift_dataset,
    requote,
)

QS = Path(__file__).resolve().parents[2] / "sparsecircuits" / "assets" / "quickstart" / "sparse" / "tokenizer.json"
HOOK = "blocks.0.hook_resid_post"
D = 32


@pytest.fixture(scope="module")
def dataset():
    cfg = ShiftDataConfig(length=32, n_ambiguous=16, n_balanced_train=16, n_balanced_test=16, seed=3)
    return build_shift_dataset(load_tokenizer(QS), cfg), cfg


def test_dataset_splits_and_determinism(dataset):
    ds, cfg = dataset
    amb, bal = ds.splits["ambiguous"], ds.splits["balanced_test"]
    assert torch.equal(amb.label, amb.quote)  # the spurious attribute predicts the label perfectly
    groups = torch.bincount(2 * bal.label + bal.quote, minlength=4)
    assert groups.tolist() == [4, 4, 4, 4]
    assert groups.tolist() == torch.bincount(2 * ds.splits["balanced_train"].label
                                             + ds.splits["balanced_train"].quote, minlength=4).tolist()
    tok = load_tokenizer(QS)
    for split in ds.splits.values():
        for t, cf, q in zip(split.tokens, split.cf_tokens, split.quote):
            text, other = tok.decode(t.tolist()), tok.decode(cf.tolist())
            mine, theirs = ("'", '"') if q else ('"', "'")
            assert mine in text and theirs not in text and theirs in other and mine not in other
    files = [set(s.source) for s in ds.splits.values()]
    assert not (files[0] & files[1]) and not (files[0] & files[2]) and not (files[1] & files[2])
    again = build_shift_dataset(tok, cfg)
    assert all(torch.equal(again.splits[k].tokens, ds.splits[k].tokens) for k in ds.splits)


def test_requote_keeps_the_program():
    src = "a = 'x'\nb = \"it's\"\nc = '''doc'''\nd = f'{a}'\ne = r'\\d'\n"
    out = requote(src, '"')
    assert ast.dump(ast.parse(out)) == ast.dump(ast.parse(src))
    assert out == "a = \"x\"\nb = \"it's\"\nc = \"\"\"doc\"\"\"\nd = f'{a}'\ne = r\"\\d\"\n"
    assert requote("x = (", "'") is None


def _planted():
    """Block 0 adds nothing (resid_post 0 = the token embedding); an exact SAE there with features
    ±q_i of an orthonormal basis; tokens 1/2 move the stream along ±q_0 strongly (the spurious cue),
    tokens 3/4 along ±q_1 weakly and noisily (the label), the rest are noise."""
    model = tiny_model(act_sparsity=1.0).eval()
    g = torch.Generator().manual_seed(0)
    Q = torch.linalg.qr(torch.randn(D, D, generator=g))[0]
    with torch.no_grad():
        b0 = model.blocks[0]
        for p in (b0.attn.W_O, b0.attn.b_O, b0.mlp.W_out, b0.mlp.b_out):
            p.zero_()
        model.W_E.copy_(0.3 * torch.randn(model.W_E.shape, generator=g) @ Q[:, 2:] @ Q[:, 2:].T)
        model.W_E[1], model.W_E[2] = 3 * Q[:, 0], -3 * Q[:, 0]
        model.W_E[3], model.W_E[4] = 1.5 * Q[:, 1], -1.5 * Q[:, 1]
    sae = make_dictionary(DictConfig(arch="relu", hook=HOOK, d_in=D, width=2 * D))
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([Q, -Q], 1))
        sae.W_dec.copy_(torch.cat([Q.T, -Q.T], 0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return model, make_sites(model, [sae], embed=False)


def _split(n: int, ambiguous: bool, seed: int) -> ShiftSplit:
    g = torch.Generator().manual_seed(seed)
    label = torch.arange(n) % 2
    quote = label.clone() if ambiguous else (torch.arange(n) // 2) % 2
    tok = torch.randint(5, 97, (n, 12), generator=g)
    cf = tok.clone()
    for i in range(n):
        pos = torch.randperm(12, generator=g)
        tok[i, pos[:3]] = 1 if quote[i] else 2
        cf[i, pos[:3]] = 2 if quote[i] else 1
        lab_pos = pos[3:4 + int(torch.randint(0, 3, (1,), generator=g))]
        tok[i, lab_pos] = cf[i, lab_pos] = 3 if label[i] else 4
    return ShiftSplit(tok, cf, label, quote, ["x"] * n)


@pytest.fixture(scope="module")
def planted():
    model, sites = _planted()
    data = ShiftDataset({"ambiguous": _split(64, True, 1), "balanced_train": _split(64, False, 2),
                         "balanced_test": _split(64, False, 3)}, ShiftDataConfig())
    cfg = ShiftConfig(probe_hook=HOOK, circuit_examples=32, ig_steps=4, circuit_size=6, random_seeds=3, batch=32)
    return model, sites, data, cfg


def test_planted_spurious_feature_is_found_and_ablation_fixes_worst_group(planted):
    model, sites, data, cfg = planted
    amb = data.splits["ambiguous"]
    probe = train_probe(model, amb, HOOK, cfg.l2)
    circ = probe_circuit(model, sites, probe, amb.tokens[:32], amb.label[:32], cfg.circuit_size, cfg.ig_steps)
    spurious = {(HOOK, 0), (HOOK, D)}
    assert set(circ.features[:2]) == spurious  # the cue's two features carry the probe
    marked = auto_select(feature_responses(model, sites, amb, circ.features), cfg.auto_quote_min, cfg.auto_ratio)
    assert set(marked) == spurious
    rows = shift_rows(model, sites, data, probe, marked, cfg)
    assert rows["original probe"].worst_group < 0.5 and rows["original probe"].spurious > 0.7
    assert rows["ablated + retrained head"].worst_group > 0.9
    assert rows["ablated + retrained head"].spurious == pytest.approx(0.5, abs=0.15)
    assert rows["random ablation + retrained head"].worst_group < 0.5
    assert rows["oracle (balanced training data)"].worst_group > 0.9


def test_accuracy_groups():
    pred, label, spur = torch.tensor([1, 1, 0, 0]), torch.tensor([1, 0, 1, 0]), torch.tensor([1, 1, 0, 0])
    a = accuracy(pred, label, spur)
    assert (a.label, a.spurious, a.worst_group) == (0.5, 1.0, 0.0)


def test_ablate_file_errors(planted, tmp_path):
    _, sites, _, _ = planted
    f = tmp_path / "ablate.txt"
    f.write_text(f"# comment\n\n{HOOK}[3]  # why\n{HOOK}[3]\n")
    assert parse_ablate_file(f, sites) == [(HOOK, 3)]
    for bad, msg in ((f"{HOOK}[3]\nnonsense\n", ":2: expected a feature"),
                     ("blocks.1.hook_resid_post[0]\n", ":1: no dictionary at"),
                     (f"{HOOK}[{2 * D}]\n", ":1: feature 64 out of range")):
        f.write_text(bad)
        with pytest.raises(ValueError, match=msg):
            parse_ablate_file(f, sites)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        parse_ablate_file(tmp_path / "missing.txt", sites)


def test_probe_circuit_rejects_sites_after_the_probe(planted):
    model, sites, data, _ = planted
    amb = data.splits["ambiguous"]
    probe = train_probe(model, amb, "blocks.0.hook_resid_mid")
    with pytest.raises(ValueError, match="at or after the probe's hook"):
        probe_circuit(model, sites, probe, amb.tokens[:4], amb.label[:4], 3, 2)


def test_cli_reports_a_missing_ablate_file(tmp_path, capsys):
    from sparsecircuits.cli import main
    from sparsecircuits.dictionaries import save_dictionary

    save_dictionary(make_dictionary(DictConfig(arch="relu", hook="blocks.0.hook_resid_post", d_in=128, width=8)),
                    tmp_path / "sae")
    rc = main(["shift", "--model", str(QS.parent), "--dicts", str(tmp_path / "sae"), "--out", str(tmp_path / "o"),
               "--ablate", str(tmp_path / "nope.txt")])
    assert rc == 2 and "does not exist" in " ".join(capsys.readouterr().out.split())


def _strict_json(path: Path):
    """The JSON in `path`; NaN and infinities (which `json.dumps` writes but JSON forbids) raise."""
    import json

    def refuse(name: str):
        raise ValueError(f"{path.name}: non-finite number {name}")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


def test_cli_shift_auto_then_the_edited_ablate_file(tmp_path, monkeypatch):
    """The documented workflow on the shipped model with random dictionaries (one of them after the
    probe's hook, left out): `--auto` writes the review, circuit and results; then the person's edit of
    the review's ablate.txt is run with `--ablate` into the same folder. Hostile context text stays
    inside the review's quoted code lines; the listed features (and only they) are zero-ablated, and
    the ablation changes the pooled activation the probe reads; the edited file is left as it was."""
    import math

    import sparsecircuits.cli.shift as cli_shift
    import sparsecircuits.feature_circuits.shift as shift_mod
    from sparsecircuits.cli import main
    from sparsecircuits.dictionaries import save_dictionary
    from sparsecircuits.graph import Circuit

    torch.manual_seed(0)
    hooks = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post", "blocks.2.hook_resid_post"]
    for i, hook in enumerate(hooks):
        save_dictionary(make_dictionary(DictConfig(arch="relu", hook=hook, d_in=128, width=16)), tmp_path / "d" / str(i))
    evil = "</script><script>alert(1)</script>\n## injected <img src=x onerror=alert(2)>"
    context_text = cli_shift._context_text
    monkeypatch.setattr(cli_shift, "_context_text", lambda *a, **k: context_text(*a, **k) + evil)
    out = tmp_path / "o"
    small = ["--data-length", "16", "--data-n-ambiguous", "12", "--data-n-balanced-train", "8",
             "--data-n-balanced-test", "8", "--circuit-examples", "8", "--ig-steps", "2", "--circuit-size", "5",
             "--random-seeds", "1", "--batch", "8", "--contexts", "2"]
    base = ["shift", "--model", str(QS.parent), "--dicts", str(tmp_path / "d"), "--out", str(out), *small]
    # quote-min 0 and ratio 0: the rule marks every circuit feature
    assert main([*base, "--auto", "--auto-quote-min", "0", "--auto-ratio", "0"]) == 0

    review, results = _strict_json(out / "review.json"), _strict_json(out / "results.json")
    feats = review["features"]
    assert len(feats) == 5 and review["probe_hook"] == "blocks.1.hook_resid_post"
    assert all(math.isfinite(f[k]) for f in feats for k in ("effect", "quote_response", "label_response"))
    assert [abs(f["effect"]) for f in feats] == sorted((abs(f["effect"]) for f in feats), reverse=True)
    assert all(f["auto_ablate"] for f in feats)
    ablate_lines = [ln.split("#")[0].strip() for ln in (out / "ablate.txt").read_text().splitlines()]
    assert [ln for ln in ablate_lines if ln] == [f["feature"] for f in feats]  # all uncommented
    assert results["mode"] == "auto" and results["ablated"] == [f["feature"] for f in feats]
    assert results["sites"] == hooks[:2] and results["circuit_features"] == 5
    assert results["config"]["auto_ratio"] == 0 and results["data"]["n_ambiguous"] == 12
    assert set(results["rows"]) == {"original probe", "ablated", "ablated + retrained head", "random ablation",
                                    "random ablation + retrained head", "oracle (balanced training data)"}
    for row in results["rows"].values():
        assert all(0 <= row[k] <= 1 for k in ("label", "spurious", "worst_group"))
        assert len(row["groups"]) == 4 and all(0 <= g <= 1 for g in row["groups"])  # the balanced split has all four
    circuit = Circuit.load(out / "circuit.json")
    assert {f["feature"] for f in feats} <= circuit.node_ids
    # data only inside indented (code) lines, JSON-quoted: it cannot open a tag or a heading
    md = (out / "review.md").read_text(encoding="utf-8").splitlines()
    assert any("<script>" in ln for ln in md)  # the hostile text reached the review ...
    assert all(ln.startswith("    ") for ln in md if "<script" in ln or "injected" in ln)  # ... only in code lines
    assert not any(ln.startswith("## injected") for ln in md)
    assert not any(ln.startswith("#") and ln != ln.rstrip() for ln in md)  # no trailing space on headings

    # the person keeps two features that fire on the ambiguous split and comments out the rest
    active = [f["feature"] for f in feats if f["contexts"]]
    assert len(active) >= 3
    keep = active[:2]
    edited = ("# hand-edited\n\n" + "".join(f"{x}  # tracks quotes\n" for x in keep)
              + "".join(f"# {x}\n" for x in active[2:]))
    (out / "ablate.txt").write_text(edited)
    pooled = shift_mod.pooled_activations
    changes: list[float] = []

    def spy(model, tokens, hook, sites=None, ablate=None, batch=64):  # noqa: ANN001, ANN202
        x = pooled(model, tokens, hook, sites, ablate, batch)
        if ablate and [f"{s}[{i}]" for s, i in ablate] == keep:
            changes.append(float((x - pooled(model, tokens, hook, batch=batch)).abs().max()))
        return x

    monkeypatch.setattr(shift_mod, "pooled_activations", spy)
    assert main([*base, "--ablate", str(out / "ablate.txt")]) == 0
    results = _strict_json(out / "results.json")
    assert results["mode"] == "file" and results["ablated"] == keep
    assert len(changes) >= 2 and max(changes) > 1e-6  # balanced test + ambiguous split; the features fire
    assert (out / "ablate.txt").read_text() == edited
