"""Tokenized training data: a cached token stream per split, random training batches, fixed
validation windows and the bigram baseline loss.

`prepare_data` steps:
1. fingerprint the corpus (reads every document; see `corpus_fingerprint`);
2. take the tokenizer given, or the cached one for this corpus and vocabulary, or train one on a
   deterministic sample: the training-split documents in the order of a salted hash of their key,
   up to the first `tokenizer_sample_mb` MB;
3. reuse ``tokens/<fingerprint>.{train,val}.u16`` if present, else tokenize every document
   (special-token text inside documents stays plain text), append EOT after each, and write both
   files and a ``<fingerprint>.json`` with the counts, each atomically; the JSON is written last,
   so its presence means the cache is complete.
Token files are raw little-endian uint16 and are opened as read-only memmaps.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Int64
from tokenizers import Tokenizer

from sparsecircuits.atomic import atomic_write_text
from sparsecircuits.data.corpus import (
    DataConfig,
    Document,
    Progress,
    corpus_fingerprint,
    iter_documents_with_progress,
    sample_order,
    split_of,
)
from sparsecircuits.data.tokenizer import (
    eot_id,
    load_tokenizer,
    plain_text_encoder,
    save_tokenizer,
    tokenizer_fingerprint,
    train_tokenizer,
)

# Bump when the token files' layout or content rules change, so old caches are not reused.
_TOKENS_FORMAT = "sparsecircuits-tokens-v1"
_SPLITS = ("train", "val")
_DTYPE = np.dtype("<u2")
_ENCODE_BATCH_BYTES = 4_000_000  # text per encode_batch call: enough to keep all cores busy
_DENSE_BIGRAM_MAX_BINS = 1 << 24  # above this, count bigrams sparsely (V > 4096)


@dataclass
class TokenData:
    """The tokenized corpus: one token stream per split, each document followed by EOT."""

    train: np.ndarray  # [n_train_tokens] uint16, read-only memmap
    val: np.ndarray  # [n_val_tokens] uint16, read-only memmap
    tokenizer: Tokenizer
    fingerprint: str  # hash of the corpus fingerprint and the tokenizer fingerprint


def prepare_data(
    cfg: DataConfig,
    cache_dir: Path,
    tokenizer: Tokenizer | None = None,
    progress: Progress | None = None,
) -> TokenData:
    """Tokenize the corpus of `cfg` (or reuse the cache in `cache_dir`); see the module docstring.

    `progress(stage, done, total)` is called while reading; `done`/`total` count source bytes,
    except in stage "train tokenizer" (0 of 1, then 1 of 1).
    """
    cache_dir = Path(cache_dir)
    corpus_fp = corpus_fingerprint(cfg, progress)
    tok = tokenizer if tokenizer is not None else _corpus_tokenizer(cfg, cache_dir, corpus_fp, progress)
    n_vocab = tok.get_vocab_size(with_added_tokens=True)
    if n_vocab > 65535:
        raise ValueError(f"tokenizer has {n_vocab} tokens; at most 65535 fit the uint16 token files")
    eot_id(tok)  # fail early if there is no EOT token
    key = f"{_TOKENS_FORMAT}\0{corpus_fp}\0{tokenizer_fingerprint(tok)}"
    fingerprint = hashlib.sha256(key.encode()).hexdigest()
    tokens_dir = cache_dir / "tokens"
    meta = _read_meta(tokens_dir, fingerprint)
    if meta is None:
        meta = _write_tokens(cfg, tok, tokens_dir, fingerprint, progress)
    for split in _SPLITS:
        if meta["n_docs"][split] == 0:
            raise ValueError(
                f"the {split} split has no documents ({meta['n_docs']['train']} train, "
                f"{meta['n_docs']['val']} val); add documents or change val_percent"
            )
    train, val = (np.memmap(tokens_dir / f"{fingerprint}.{s}.u16", dtype=_DTYPE, mode="r") for s in _SPLITS)
    return TokenData(train=train, val=val, tokenizer=tok, fingerprint=fingerprint)


def checkpoint_corpus(meta: dict, tokenizer: Tokenizer, cache_dir: Path, progress: Progress | None = None) -> TokenData:
    """The token streams of a checkpoint's own pretraining corpus (the data spec in its metadata; the
    stdlib when it has none), tokenized with its tokenizer; cached under `cache_dir`."""
    spec = meta.get("spec", {}).get("data")
    cfg = DataConfig(**spec) if spec else DataConfig(vocab_size=tokenizer.get_vocab_size())
    return prepare_data(cfg, Path(cache_dir), tokenizer=tokenizer, progress=progress)


def _corpus_tokenizer(cfg: DataConfig, cache_dir: Path, corpus_fp: str, progress: Progress | None) -> Tokenizer:
    """The cached tokenizer for this corpus and vocabulary, or a freshly trained (and cached) one."""
    path = cache_dir / "tokenizers" / f"{corpus_fp}-{cfg.vocab_size}-{cfg.tokenizer_sample_mb:g}mb.json"
    if path.is_file():
        return load_tokenizer(path)
    texts = _tokenizer_sample(cfg, progress)
    if progress is not None:
        progress("train tokenizer", 0, 1)
    tok = train_tokenizer(texts, cfg.vocab_size)
    if progress is not None:
        progress("train tokenizer", 1, 1)
    save_tokenizer(tok, path)
    return tok


def _tokenizer_sample(cfg: DataConfig, progress: Progress | None) -> list[str]:
    """The first `tokenizer_sample_mb` MB of training documents in `sample_order`.

    Streams the corpus keeping only the sample: a max-heap (by order) of the smallest-order
    documents seen so far, trimmed while the rest still reaches the size limit.
    """
    limit = cfg.tokenizer_sample_mb * 1e6
    heap: list[tuple[float, str, str, int]] = []  # (-order, key, text, n_bytes)
    total = 0
    for doc in iter_documents_with_progress(cfg, "sample tokenizer text", progress):
        if split_of(doc.key, cfg.val_percent) != "train":
            continue
        n_bytes = len(doc.text.encode())
        heapq.heappush(heap, (-sample_order(doc.key), doc.key, doc.text, n_bytes))
        total += n_bytes
        while total - heap[0][3] >= limit:
            total -= heapq.heappop(heap)[3]
    return [text for _, _, text, _ in sorted(heap, reverse=True)]


def _read_meta(tokens_dir: Path, fingerprint: str) -> dict | None:
    """The cache's metadata if the cache for `fingerprint` is complete and consistent, else None."""
    try:
        meta = json.loads((tokens_dir / f"{fingerprint}.json").read_text(encoding="utf-8"))
        for split in _SPLITS:
            size = (tokens_dir / f"{fingerprint}.{split}.u16").stat().st_size
            if size != meta["n_tokens"][split] * _DTYPE.itemsize:
                return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return meta if meta.get("fingerprint") == fingerprint else None


def _doc_batches(docs: Iterable[Document]) -> Iterator[list[Document]]:
    """Consecutive documents grouped into lists of about `_ENCODE_BATCH_BYTES` of text."""
    batch: list[Document] = []
    size = 0
    for doc in docs:
        batch.append(doc)
        size += len(doc.text)
        if size >= _ENCODE_BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _write_tokens(
    cfg: DataConfig, tok: Tokenizer, tokens_dir: Path, fingerprint: str, progress: Progress | None
) -> dict:
    """Tokenize the corpus into the two token files and the metadata JSON; returns the metadata."""
    tokens_dir.mkdir(parents=True, exist_ok=True)
    encoder, eot = plain_text_encoder(tok), eot_id(tok)
    final = {s: tokens_dir / f"{fingerprint}.{s}.u16" for s in _SPLITS}
    tmp = {s: p.with_name(f"{p.name}.tmp-{os.getpid()}") for s, p in final.items()}
    n_tokens, n_docs = dict.fromkeys(_SPLITS, 0), dict.fromkeys(_SPLITS, 0)
    try:
        with tmp["train"].open("wb") as f_train, tmp["val"].open("wb") as f_val:
            out = {"train": f_train, "val": f_val}
            for batch in _doc_batches(iter_documents_with_progress(cfg, "tokenize", progress)):
                encodings = encoder.encode_batch([d.text for d in batch], add_special_tokens=False)
                for doc, enc in zip(batch, encodings):
                    split = split_of(doc.key, cfg.val_percent)
                    ids = np.array([*enc.ids, eot], dtype=_DTYPE)
                    out[split].write(ids.tobytes())
                    n_tokens[split] += len(ids)
                    n_docs[split] += 1
        for s in _SPLITS:
            os.replace(tmp[s], final[s])
    finally:
        for path in tmp.values():
            path.unlink(missing_ok=True)
    meta = {
        "format": _TOKENS_FORMAT,
        "fingerprint": fingerprint,
        "tokenizer_fingerprint": tokenizer_fingerprint(tok),
        "vocab_size": tok.get_vocab_size(with_added_tokens=True),
        "eot_id": eot,
        "n_tokens": n_tokens,
        "n_docs": n_docs,
    }
    meta_path = tokens_dir / f"{fingerprint}.json"
    atomic_write_text(meta_path, json.dumps(meta, indent=2))
    return meta


def _check_stream(tokens: np.ndarray, name: str) -> None:
    if tokens.ndim != 1:
        raise ValueError(f"{name} must be a 1-D token array, got shape {tokens.shape}")


def sample_batch(
    tokens: np.ndarray, batch_size: int, n_ctx: int, seed: int, step: int
) -> Int64[torch.Tensor, "batch n_ctx_plus_1"]:
    """`batch_size` random windows of ``n_ctx + 1`` consecutive tokens (inputs and next-token
    targets), as a LongTensor. A pure function of (seed, step): a resumed run sees the same batches.
    """
    _check_stream(tokens, "tokens")
    if batch_size < 1 or n_ctx < 1:
        raise ValueError(f"batch_size and n_ctx must be >= 1, got {batch_size} and {n_ctx}")
    if len(tokens) <= n_ctx + 1:
        raise ValueError(f"need more than n_ctx + 1 = {n_ctx + 1} tokens to sample windows, got {len(tokens)}")
    # Seed from a hash of both numbers: distinct (seed, step) pairs never share a stream.
    digest = hashlib.sha256(f"sample_batch\0{int(seed)}\0{int(step)}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:16], "little"))
    starts_B = rng.integers(0, len(tokens) - n_ctx, size=batch_size)  # window fits: start + n_ctx < len
    idx_BT = starts_B[:, None] + np.arange(n_ctx + 1)
    return torch.from_numpy(np.array(tokens[idx_BT], dtype=np.int64))


def val_windows(
    tokens: np.ndarray, n_batches: int, batch_size: int, n_ctx: int
) -> list[Int64[torch.Tensor, "batch n_ctx_plus_1"]]:
    """Up to `n_batches` batches of ``n_ctx + 1``-token windows, evenly spaced over `tokens`.

    Windows do not overlap when the stream holds at least `batch_size` of them; then there are as
    many batches as fit (at most `n_batches`). A shorter stream gives one batch of overlapping windows.
    """
    _check_stream(tokens, "tokens")
    if n_batches < 1 or batch_size < 1 or n_ctx < 1:
        raise ValueError(f"n_batches, batch_size, n_ctx must be >= 1, got {n_batches}, {batch_size}, {n_ctx}")
    width, n = n_ctx + 1, len(tokens)
    if n < width:
        raise ValueError(f"need at least n_ctx + 1 = {width} tokens for one validation window, got {n}")
    n_out = max(1, min(n_batches, (n // width) // batch_size))
    k = n_out * batch_size
    # Integer spacing: consecutive starts differ by >= (n - width) // (k - 1), which is >= width
    # whenever k windows fit without overlap.
    starts = np.array([i * (n - width) // max(k - 1, 1) for i in range(k)], dtype=np.int64)
    windows = np.array(tokens[starts[:, None] + np.arange(width)], dtype=np.int64)
    return [torch.from_numpy(w) for w in windows.reshape(n_out, batch_size, width)]


def _pair_codes(tokens: np.ndarray, vocab_size: int, start: int, stop: int) -> np.ndarray:
    """prev * V + next for the bigrams starting at positions [start, stop)."""
    t = np.asarray(tokens[start : stop + 1], dtype=np.int64)
    return t[:-1] * vocab_size + t[1:]


def _bigram_counts(train: np.ndarray, queries: np.ndarray, vocab_size: int, chunk: int = 1 << 22) -> np.ndarray:
    """How often each bigram code in `queries` occurs in `train` (dense bincount for small
    vocabularies, sorted unique codes otherwise)."""
    n_pairs = len(train) - 1
    if vocab_size * vocab_size <= _DENSE_BIGRAM_MAX_BINS:
        counts = np.zeros(vocab_size * vocab_size, dtype=np.int64)
        for start in range(0, n_pairs, chunk):
            codes = _pair_codes(train, vocab_size, start, min(start + chunk, n_pairs))
            counts += np.bincount(codes, minlength=vocab_size * vocab_size)
        return counts[queries]
    codes, counts = np.unique(_pair_codes(train, vocab_size, 0, n_pairs), return_counts=True)
    pos = np.minimum(np.searchsorted(codes, queries), len(codes) - 1)
    return np.where(codes[pos] == queries, counts[pos], 0)


def bigram_baseline_loss(train: np.ndarray, val: np.ndarray, vocab_size: int, alpha: float = 0.1) -> float:
    """Cross-entropy (nats/token) on `val` of an add-`alpha` bigram model counted on `train`:
    ``p(b | a) = (count(a, b) + alpha) / (count(a) + alpha * V)``. The loss a model that only
    looks at the previous token can reach; a trained transformer must beat it.
    """
    _check_stream(train, "train")
    _check_stream(val, "val")
    if len(train) < 2 or len(val) < 2:
        raise ValueError(f"train and val need >= 2 tokens, got {len(train)} and {len(val)}")
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    top = max(int(train.max()), int(val.max()))
    if top >= vocab_size:
        raise ValueError(f"token id {top} is outside vocab_size {vocab_size}")
    prev_counts = np.bincount(np.asarray(train[:-1], dtype=np.int64), minlength=vocab_size)
    val_prev = np.asarray(val[:-1], dtype=np.int64)
    pair_counts = _bigram_counts(train, _pair_codes(val, vocab_size, 0, len(val) - 1), vocab_size)
    log_p = np.log(pair_counts + alpha) - np.log(prev_counts[val_prev] + alpha * vocab_size)
    return float(-log_p.mean())

