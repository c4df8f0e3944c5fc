"""Head roles' OV copy/successor scores on any tokenizer (`component_circuits/head_roles.py`): the
tokens are looked up in the vocabulary (the shipped code tokenizer, a tiny word-level one), too few
are reported instead of skipped, and the scores equal a brute-force count over each head's OV output
measured in the model (one head attending one token, norm scales held at 1)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers

from conftest import tiny_model
from sparsecircuits.component_circuits.head_roles import (
    MIN_PAIRS,
    SEQUENCES,
    OVTokens,
    ov_scores,
    ov_tokens,
)

SHIPPED = Path(__file__).resolve().parents[2] / "sparsecircuits" / "assets" / "quickstart" / "sparse" / "tokenizer.json"


def _lookup(tok: Tokenizer) -> OVTokens:
    return ov_tokens(lambda s: tok.encode(s, add_special_tokens=False).ids, lambda ids: tok.decode(ids))


def test_shipped_code_tokenizer_uses_the_tokens_its_vocabulary_has():
    tok = Tokenizer.from_file(str(SHIPPED))
    ov = _lookup(tok)
    vocab = tok.get_vocab()  # byte-level BPE: a leading space is the byte 'Ġ'
    for name, cands in ov.candidates.items():
        for text, i in zip(cands, ov.ids[name]):
            piece = text.replace(" ", "Ġ")
            assert (i is not None) == (piece in vocab), (name, text)
            assert i is None or i == vocab[piece]
    assert ov.used("numbers")[:13] == [str(i) for i in range(13)]  # 0..12 are tokens, 13 is not
    assert ov.used("months") == [] and ov.used("days, leading space") == []
    assert len(ov.used("letters")) == 26
    # pairs: consecutive candidates that both are tokens; 12 -> 22 is no pair
    nums = dict(zip(ov.candidates["numbers"], ov.ids["numbers"]))
    assert (nums["11"], nums["12"]) in ov.pairs and (nums["12"], nums["22"]) not in ov.pairs
    assert len(ov.pairs) >= MIN_PAIRS and ov.notes() == []


def _word_level(words: list[str]) -> Tokenizer:
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["[UNK]", *words])}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok


def test_tiny_tokenizer_and_too_few_tokens_are_reported():
    tok = _word_level(["1", "2", "4", "March", "April", "May", "a", "b", "x"])
    ov = _lookup(tok)
    ids = tok.get_vocab()
    assert ov.used("numbers") == ["1", "2", "4"] and ov.used("months") == ["March", "April", "May"]
    assert ov.used("numbers, leading space") == [" 1", " 2", " 4"]  # a word-level token decodes without the space
    assert ov.used("number words") == []  # "one" is the unknown token, not a single token
    assert set(ov.tokens) == {ids[w] for w in ["1", "2", "4", "March", "April", "May", "a", "b", "x"]}
    assert set(ov.pairs) == {(ids["1"], ids["2"]), (ids["March"], ids["April"]), (ids["April"], ids["May"]),
                             (ids["a"], ids["b"])}
    few = _lookup(_word_level(["1", "2", "7"]))
    assert few.tokens and few.notes() == ["OV copy not computed: 3 single tokens (need 4)",
                                          "OV successor not computed: 1 successor pairs (need 4)"]
    model = tiny_model(d_vocab=4).double()
    assert ov_scores(model, few.tokens, few.pairs) == (None, None)


def _brute_force(model, tokens, pairs, k):  # noqa: ANN001, ANN202
    """Per head: run each token alone through the model with head h attending it with weight 1 (all
    other heads 0), every norm scale 1, and read that head's share of the logits as the change of
    W_U ln_final(attn_out) against the same run with the value input zeroed; then count ranks."""
    cfg = model.cfg
    vocab = list(dict.fromkeys(tokens + [a for a, _ in pairs]))
    E = model.W_E[vocab] * cfg.embed_scale
    W_U = model.W_E if model.W_U is None else model.W_U
    succ, copy = torch.zeros(cfg.n_layers, cfg.n_heads), torch.zeros(cfg.n_layers, cfg.n_heads)
    for L in range(cfg.n_layers):
        for h in range(cfg.n_heads):
            def run(v, L=L, h=h):  # noqa: ANN001, ANN202
                got = {}

                def pattern(x, hook):  # noqa: ANN001, ANN202
                    x = torch.zeros_like(x)
                    x[:, h, 0, 0] = 1.0
                    return x

                def v_in(x, hook):  # noqa: ANN001, ANN202
                    return v[:, None, None, :].expand_as(x).clone()

                def grab(x, hook):  # noqa: ANN001, ANN202
                    got["o"] = x

                hooks = [(lambda n: n.endswith("hook_scale"), lambda x, hook: torch.ones_like(x)),
                         (f"blocks.{L}.attn.hook_pattern", pattern), (f"blocks.{L}.hook_v_input", v_in),
                         (f"blocks.{L}.hook_attn_out", grab)]
                with torch.no_grad(), model.hooks(hooks):
                    model(torch.zeros(len(v), 1, dtype=torch.long))
                    return model.ln_final(got["o"])[:, 0] @ W_U.T  # [token, vocab]

            logits = run(E) - run(torch.zeros_like(E))
            rank = {t: int((logits[vocab.index(t)] > logits[vocab.index(t), t]).sum()) for t in vocab}
            copy[L, h] = sum(rank[t] < k for t in tokens) / len(tokens)
            succ[L, h] = sum(int((logits[vocab.index(a)] > logits[vocab.index(a), b]).sum()) < k for a, b in pairs) / len(pairs)
    return succ, copy


@pytest.mark.parametrize("overrides", [dict(n_kv_heads=2), dict(norm="layer", post_norms=True, embed_scale=1.5)],
                         ids=["rms-gqa", "layernorm-postnorm"])
def test_ov_scores_equal_the_brute_force_count(overrides):
    model = tiny_model(3, act_sparsity=1.0, d_vocab=40, **overrides).double().eval()
    tokens = list(range(3, 23))
    pairs = [(t, t + 1) for t in range(3, 22)] + [(30, 5)]
    for k in (1, 5):
        succ, copy = ov_scores(model, tokens, pairs, k)
        bs, bc = _brute_force(model, tokens, pairs, k)
        assert succ is not None and copy is not None
        assert torch.allclose(succ, bs) and torch.allclose(copy, bc)
    assert (bc > 0).any() and (bc < 1).any()  # the check sees both outcomes


def test_sequences_cover_the_promised_kinds():
    assert {"numbers", "number words", "months", "days", "letters"} <= set(SEQUENCES)
    assert SEQUENCES["numbers"][:3] == ("0", "1", "2") and len(SEQUENCES["numbers"]) == 100


def test_heads_cli_prints_the_tokens_used(tmp_path, capsys):
    from sparsecircuits.cli import main
    from sparsecircuits.model.checkpoint import save_checkpoint

    model = tiny_model(act_sparsity=1.0, d_vocab=1024, n_ctx=64)
    ck = save_checkpoint(tmp_path / "m", model, meta={"step": 0}, tokenizer_json=SHIPPED.read_text())
    assert main(["heads", "--model", str(ck), "--task", "bracket_type", "--n-examples", "4"]) == 0
    out = capsys.readouterr().out
    assert "OV tokens, numbers: 18 of 100 are single tokens: '0' '1'" in out
    assert "OV tokens, months: 0 of 12 are single tokens" in out
    assert "OV successor (top-5 share)" in out and "OV copy (top-5 share)" in out
    few = _word_level(["1", "2"])  # too few tokens: the scores are not computed, and the output says so
    ck2 = save_checkpoint(tmp_path / "m2", tiny_model(act_sparsity=1.0, d_vocab=few.get_vocab_size(), n_ctx=64),
                          meta={"step": 0}, tokenizer_json=few.to_str())
    task = tmp_path / "task.jsonl"
    task.write_text(json.dumps({"prompt": "1 2 1", "correct": " 2", "incorrect": " 1"}) + "\n")
    assert main(["heads", "--model", str(ck2), "--task-file", str(task)]) == 0
    out = capsys.readouterr().out
    assert "OV tokens, numbers: 2 of 100 are single tokens: '1' '2'" in out
    assert "OV copy not computed: 2 single tokens (need 4)" in out
    assert "OV successor not computed: 1 successor pairs (need 4)" in out
    assert "OV successor (top-5" not in out and "OV copy (top-5" not in out
