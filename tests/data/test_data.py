"""Tests for sparsecircuits.data: corpora, splits, tokenizer, token cache, batches, bigram baseline."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from sparsecircuits.config_utils import opt
from sparsecircuits.data import (
    EOT,
    DataConfig,
    batches,
    bigram_baseline_loss,
    corpus_fingerprint,
    eot_id,
    iter_documents,
    load_tokenizer,
    prepare_data,
    sample_batch,
    save_tokenizer,
    split_of,
    stdlib_dir,
    stdlib_files,
    tokenizer_fingerprint,
    train_tokenizer,
    val_windows,
)

ODD_STRINGS = [
    "",
    "plain ascii",
    "tabs\tand\ttabs\n\twith\r\nCRLF\rCR",
    "unicode: héllo wörld, Ελληνικά, 日本語, emoji 😀🧪, combining e\u0301",
    f"text with {EOT} inside and at the end{EOT}",
    "\x00\x01\x7f control bytes and a BOM \ufeff",
    "    leading spaces and trailing   ",
    "def f(x):\n    return x ** 2  # ünïcödé comment\n",
]


def _write_code_corpus(root: Path, n_files: int = 60) -> Path:
    """A small folder of Python-like files in nested packages (deterministic content)."""
    for i in range(n_files):
        path = root / f"pkg{i % 4}" / f"mod_{i:03d}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        body = "".join(f"def func_{i}_{j}(x, y):\n    return x * {j} + y - {i}\n\n" for j in range(20))
        path.write_text(f'"""Module {i}."""\n\nimport os\n\n{body}', encoding="utf-8")
    return root


def _cfg(root: Path, **kw: object) -> DataConfig:
    base: dict = {"sources": (str(root),), "val_percent": 20.0, "vocab_size": 300, "tokenizer_sample_mb": 1.0}
    return DataConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def small_tokenizer():
    texts = ["the quick brown fox jumps over the lazy dog\n" * 20, "def f(x):\n    return x + 1\n" * 20]
    return train_tokenizer(texts, 300)


# --- config -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [("val_percent", 0.0), ("val_percent", 50.0), ("vocab_size", 257), ("vocab_size", 65536),
     ("tokenizer_sample_mb", 0.0), ("glob", ""), ("jsonl_field", "")],
)
def test_config_rejects_out_of_range(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        DataConfig(**{field: value})


def test_config_fields_have_help_and_sources_become_tuple(tmp_path: Path) -> None:
    cfg = DataConfig(sources=[tmp_path])  # type: ignore[arg-type]
    assert cfg.sources == (str(tmp_path),)
    assert all(f.metadata.get("help") for f in dataclasses.fields(DataConfig))
    with pytest.raises(ValueError, match="sources"):
        DataConfig(sources=str(tmp_path))  # type: ignore[arg-type]


def test_opt_mutable_default_is_not_shared() -> None:
    @dataclasses.dataclass
    class C:
        xs: list = opt([1], "a list")
        n: int = opt(3, "a number")

    a, b = C(), C()
    a.xs.append(2)
    assert b.xs == [1] and a.n == 3
    assert dataclasses.fields(C)[1].metadata["help"] == "a number"


# --- corpus -------------------------------------------------------------------------------------


def test_split_is_deterministic_and_proportional() -> None:
    keys = [f"dir/file_{i}.py" for i in range(20_000)]
    splits = [split_of(k, 10.0) for k in keys]
    assert splits == [split_of(k, 10.0) for k in keys]
    frac = splits.count("val") / len(keys)
    assert 0.09 < frac < 0.11
    # Raising val_percent only moves documents from train to val.
    wider = [split_of(k, 30.0) for k in keys]
    assert all(w == "val" for s, w in zip(splits, wider) if s == "val")
    assert 0.28 < wider.count("val") / len(keys) < 0.32


def test_folder_documents_sorted_posix_keys_and_skips(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "deep").mkdir(parents=True)
    (tmp_path / ".venv").mkdir()
    (tmp_path / "b" / "x.py").write_text("bx", encoding="utf-8")
    (tmp_path / "a" / "deep" / "y.py").write_text("ay", encoding="utf-8")
    (tmp_path / "a" / "z.py").write_text("az\r\n", encoding="utf-8")
    (tmp_path / "a" / "empty.py").write_text("  \n", encoding="utf-8")
    (tmp_path / "a" / "notes.txt").write_text("not matched", encoding="utf-8")
    (tmp_path / "a" / "latin1.py").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / ".venv" / "hidden.py").write_text("hidden", encoding="utf-8")
    docs = list(iter_documents(DataConfig(sources=(str(tmp_path),))))
    assert [(d.key, d.text) for d in docs] == [("a/deep/y.py", "ay"), ("a/z.py", "az\r\n"), ("b/x.py", "bx")]
    txt = list(iter_documents(DataConfig(sources=(str(tmp_path),), glob="*.txt")))
    assert [d.key for d in txt] == ["a/notes.txt"]


def test_named_file_that_is_not_utf8_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.py"
    path.write_bytes(b"ok\xff\xfe")
    with pytest.raises(ValueError, match="bad.py"):
        list(iter_documents(DataConfig(sources=(str(path),))))


def test_missing_source_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope"):
        list(iter_documents(DataConfig(sources=(str(missing),))))


def test_jsonl_documents_and_keys(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    lines = [{"text": "first"}, {"text": ""}, {"body": "x", "text": "third"}]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n", encoding="utf-8")
    docs = list(iter_documents(DataConfig(sources=(str(path),))))
    assert [(d.key, d.text) for d in docs] == [("d.jsonl:1", "first"), ("d.jsonl:3", "third")]


@pytest.mark.parametrize(
    ("line", "message"),
    [("{not json", "not valid JSON"), ('{"other": "x"}', "'text' field"), ('{"text": 3}', "must be a string"),
     ("[1, 2]", "'text' field")],
)
def test_jsonl_errors_name_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "broken.jsonl"
    path.write_text('{"text": "a"}\n\n' + line + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"broken\.jsonl:3: .*{message}"):
        list(iter_documents(DataConfig(sources=(str(path),))))


def test_stdlib_files_listing() -> None:
    files = stdlib_files()
    assert len(files) > 500
    assert all(p.suffix == ".py" for p in files)
    assert not any(part in ("site-packages", "dist-packages") for p in files for part in p.parts)
    assert stdlib_dir() / "os.py" in files
    rel = [p.relative_to(stdlib_dir()).as_posix() for p in files]
    assert rel == sorted(rel)


def test_corpus_fingerprint_tracks_content(tmp_path: Path) -> None:
    root = _write_code_corpus(tmp_path / "c", n_files=5)
    cfg = _cfg(root)
    fp = corpus_fingerprint(cfg)
    assert fp == corpus_fingerprint(cfg)
    assert fp != corpus_fingerprint(_cfg(root, val_percent=10.0))
    (root / "pkg0" / "mod_000.py").write_text("changed", encoding="utf-8")
    assert corpus_fingerprint(cfg) != fp


# --- tokenizer ----------------------------------------------------------------------------------


def test_tokenizer_round_trips_odd_strings(small_tokenizer) -> None:
    tok = small_tokenizer
    assert tok.get_vocab_size() == 300
    for s in ODD_STRINGS + [bytes(range(256)).decode("latin-1")]:
        ids = tok.encode(s).ids
        assert all(0 <= i < tok.get_vocab_size() for i in ids)
        assert tok.decode(ids, skip_special_tokens=False) == s
    assert tok.encode(f"a{EOT}b").ids.count(eot_id(tok)) == 1


def test_tokenizer_is_deterministic_and_saves(tmp_path: Path, small_tokenizer) -> None:
    texts = ["the quick brown fox jumps over the lazy dog\n" * 20, "def f(x):\n    return x + 1\n" * 20]
    again = train_tokenizer(texts, 300)
    assert tokenizer_fingerprint(again) == tokenizer_fingerprint(small_tokenizer)
    path = tmp_path / "sub" / "tok.json"
    save_tokenizer(small_tokenizer, path)
    assert tokenizer_fingerprint(load_tokenizer(path)) == tokenizer_fingerprint(small_tokenizer)
    assert [p.name for p in path.parent.iterdir()] == ["tok.json"]  # no temp file left behind
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_tokenizer(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{oops", encoding="utf-8")
    with pytest.raises(ValueError, match="bad.json"):
        load_tokenizer(tmp_path / "bad.json")


# --- prepare_data -------------------------------------------------------------------------------


def _split_on(tokens: np.ndarray, eot: int) -> list[list[int]]:
    ends = np.flatnonzero(tokens == eot)
    assert len(ends) and ends[-1] == len(tokens) - 1  # every document ends with EOT
    return [seg[:-1].tolist() for seg in np.split(np.asarray(tokens), ends + 1)[:-1]]


def test_prepare_data_tokenizes_every_document(tmp_path: Path) -> None:
    root = _write_code_corpus(tmp_path / "c")
    (root / "quote.py").write_text(f"s = '{EOT}'  # not a document boundary\n", encoding="utf-8")
    cfg = _cfg(root)
    data = prepare_data(cfg, tmp_path / "cache")
    assert data.train.dtype == np.uint16 and data.val.dtype == np.uint16
    tok, eot = data.tokenizer, eot_id(data.tokenizer)
    for split, tokens in (("train", data.train), ("val", data.val)):
        expected = [d.text for d in iter_documents(cfg) if split_of(d.key, cfg.val_percent) == split]
        segments = _split_on(tokens, eot)
        assert [tok.decode(s, skip_special_tokens=False) for s in segments] == expected
    n_docs = sum(1 for _ in iter_documents(cfg))
    assert len(list(tmp_path.joinpath("cache", "tokenizers").iterdir())) == 1
    assert int((data.train == eot).sum() + (data.val == eot).sum()) == n_docs


def test_prepare_data_reuses_cache_and_tracks_changes(tmp_path: Path, monkeypatch) -> None:
    root = _write_code_corpus(tmp_path / "c")
    cfg, cache = _cfg(root), tmp_path / "cache"
    stages: list[str] = []
    first = prepare_data(cfg, cache, progress=lambda stage, done, total: stages.append(stage))
    assert {"hash corpus", "train tokenizer", "tokenize"} <= set(stages)
    files = sorted(p.name for p in (cache / "tokens").iterdir())
    assert files == sorted(f"{first.fingerprint}.{ext}" for ext in ("json", "train.u16", "val.u16"))

    def no_rebuild(*args: object, **kw: object) -> None:
        raise AssertionError("token cache was rebuilt")

    monkeypatch.setattr(batches, "_write_tokens", no_rebuild)
    monkeypatch.setattr(batches, "train_tokenizer", no_rebuild)
    second = prepare_data(cfg, cache)
    assert second.fingerprint == first.fingerprint
    assert np.array_equal(second.train, first.train) and np.array_equal(second.val, first.val)
    monkeypatch.undo()

    (root / "pkg1" / "mod_001.py").write_text("x = 1\n", encoding="utf-8")
    third = prepare_data(cfg, cache)
    assert third.fingerprint != first.fingerprint


def test_prepare_data_uses_given_tokenizer(tmp_path: Path, small_tokenizer) -> None:
    cfg = _cfg(_write_code_corpus(tmp_path / "c", n_files=10))
    trained = prepare_data(cfg, tmp_path / "cache")
    given = prepare_data(cfg, tmp_path / "cache", tokenizer=small_tokenizer)
    assert given.tokenizer is small_tokenizer and given.fingerprint != trained.fingerprint
    assert len(list((tmp_path / "cache" / "tokenizers").iterdir())) == 1  # the given one is not cached
    first_doc = next(d.text for d in iter_documents(cfg) if split_of(d.key, cfg.val_percent) == "train")
    n = len(small_tokenizer.encode(first_doc).ids)
    assert given.train[:n].tolist() == small_tokenizer.encode(first_doc).ids


def test_prepare_data_empty_val_split_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "one.py"
    path.write_text("x = 1\n", encoding="utf-8")
    pct = 1.0 if split_of("one.py", 1.0) == "train" else 49.0
    with pytest.raises(ValueError, match="no documents"):
        prepare_data(DataConfig(sources=(str(path),), val_percent=pct, vocab_size=300), tmp_path / "cache")


# --- batches ------------------------------------------------------------------------------------


def test_sample_batch_is_pure_in_seed_and_step() -> None:
    tokens = np.arange(5000, dtype=np.uint16)
    a = sample_batch(tokens, 8, 16, seed=1, step=7)
    assert a.dtype == torch.long and a.shape == (8, 17)
    assert torch.equal(a, sample_batch(tokens, 8, 16, seed=1, step=7))
    assert not torch.equal(a, sample_batch(tokens, 8, 16, seed=1, step=8))
    assert not torch.equal(a, sample_batch(tokens, 8, 16, seed=2, step=7))
    # Each row is a contiguous window of the stream.
    assert torch.equal(a - a[:, :1], torch.arange(17).expand(8, 17))
    starts = torch.cat([sample_batch(tokens, 64, 16, 0, s)[:, 0] for s in range(20)])
    assert starts.max() <= 5000 - 17 and starts.unique().numel() > 500
    with pytest.raises(ValueError, match="n_ctx"):
        sample_batch(np.arange(17, dtype=np.uint16), 2, 16, 0, 0)


def test_val_windows_even_and_non_overlapping() -> None:
    tokens = np.arange(1000, dtype=np.uint16)
    wins = val_windows(tokens, n_batches=3, batch_size=4, n_ctx=9)
    assert len(wins) == 3 and all(w.shape == (4, 10) and w.dtype == torch.long for w in wins)
    starts = torch.cat([w[:, 0] for w in wins])
    assert starts[0] == 0 and starts[-1] == 990 and bool((starts.diff() >= 10).all())
    assert all(torch.equal(a, b) for a, b in zip(wins, val_windows(tokens, 3, 4, 9)))
    # Only as many non-overlapping batches as fit: 1000 // 10 = 100 windows = 25 batches of 4.
    assert len(val_windows(tokens, 1000, 4, 9)) == 25
    short = val_windows(np.arange(25, dtype=np.uint16), 5, 4, 9)  # 2 windows fit: 1 overlapping batch
    assert len(short) == 1 and short[0][:, 0].tolist() == [0, 5, 10, 15]
    with pytest.raises(ValueError, match="n_ctx"):
        val_windows(np.arange(5, dtype=np.uint16), 1, 1, 9)


def test_bigram_baseline_matches_hand_computation() -> None:
    train = np.array([0, 1, 0, 1, 1], dtype=np.uint16)  # pairs 01 10 01 11: c(0)=2, c(1)=2
    val = np.array([0, 1, 2], dtype=np.uint16)  # pairs 01 (count 2) and 12 (count 0)
    alpha, v = 0.1, 3
    expected = -(math.log((2 + alpha) / (2 + alpha * v)) + math.log(alpha / (2 + alpha * v))) / 2
    assert bigram_baseline_loss(train, val, v, alpha) == pytest.approx(expected, rel=1e-12)


def test_bigram_sparse_path_matches_dense(monkeypatch) -> None:
    rng = np.random.default_rng(0)
    train, val = rng.integers(0, 50, 3000).astype(np.uint16), rng.integers(0, 50, 500).astype(np.uint16)
    dense = bigram_baseline_loss(train, val, 50)
    monkeypatch.setattr(batches, "_DENSE_BIGRAM_MAX_BINS", 0)
    assert bigram_baseline_loss(train, val, 50) == pytest.approx(dense, rel=1e-12)
    with pytest.raises(ValueError, match="vocab_size"):
        bigram_baseline_loss(train, val, 40)


def test_bigram_baseline_beats_uniform_on_repetitive_corpus(tmp_path: Path) -> None:
    root = _write_code_corpus(tmp_path / "c", n_files=30)
    data = prepare_data(_cfg(root), tmp_path / "cache")
    v = data.tokenizer.get_vocab_size()
    loss = bigram_baseline_loss(data.train, data.val, v)
    assert 0 < loss < 0.5 * math.log(v)
