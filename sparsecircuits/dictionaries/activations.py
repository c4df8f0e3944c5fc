"""Activation streams for dictionary training: from a model + token stream, or from a disk store.

A source yields *chunks*: for chunk index r, the activations at every requested hook of
`seqs_per_chunk` random `n_ctx`-token windows (`data.sample_batch(tokens, ..., seed, r)`), flattened
to `[tokens, d]`. `ShuffledBatches` turns chunks into training batches:
  1. chunk r = step // steps_per_chunk is computed (or read) once and kept;
  2. its rows are permuted by a generator seeded with (seed, r), so each batch mixes tokens from
     the whole chunk (a large buffer: `buffer_tokens`);
  3. batch i of the chunk is rows perm[i·B : (i+1)·B] at every hook (the same tokens for all hooks,
     so transcoders see matching input/target pairs).
Everything is a pure function of (seed, step), so a resumed run sees exactly the same batches.

`store_activations` runs the model once and writes `n_chunks` chunks to float memmaps
(`<hook>.f32` / `.f16` + `store.json`, JSON written last so its presence means complete);
`StoredActivations` serves chunks from it, cycling when training runs longer than the store.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from sparsecircuits.atomic import atomic_write_text
from sparsecircuits.data.batches import sample_batch
from sparsecircuits.model.cache import cache_until
from sparsecircuits.model.checkpoint import Checkpoint
from sparsecircuits.model.transformer import Transformer

STORE_FORMAT = "sparsecircuits-activations-v1"
_DTYPES = {"float32": (np.float32, "f32"), "float16": (np.float16, "f16")}


def hook_widths(model: Transformer, hooks: Sequence[str]) -> dict[str, int]:
    """The last-dimension width of each hook's activation (one tiny forward pass).

    Raises ValueError for an unknown hook (with close matches) and for hooks whose activation is
    not `[batch, pos, d]` (attention patterns, per-head q/k/v/z): dictionaries read flat vectors.
    """
    for h in hooks:
        model.resolve_hook_names(h)
    device = next(model.parameters()).device
    with torch.no_grad():
        _, cache = model.run_with_cache(torch.zeros(1, 2, dtype=torch.long, device=device), names_filter=list(hooks))
    out = {}
    for h in hooks:
        shape = tuple(cache[h].shape)
        if len(shape) != 3:
            raise ValueError(f"hook {h!r} has activations of shape {shape}; dictionaries need [batch, pos, d] hooks")
        out[h] = shape[-1]
    return out


def hook_order(model: Transformer, hook: str, out_hook: str) -> None:
    """A transcoder's input hook must run before its output hook in the forward pass."""
    names = model.execution_order()
    if names.index(hook) > names.index(out_hook):
        raise ValueError(f"transcoder input hook {hook!r} runs after its output hook {out_hook!r}")


class ModelActivations:
    """Chunks computed on the fly from a model and a token stream (see the module docstring)."""

    def __init__(
        self,
        model: Transformer,
        tokens: np.ndarray,
        hooks: Sequence[str],
        seqs_per_chunk: int,
        seed: int,
        model_batch: int = 32,
    ) -> None:
        self.model, self.tokens, self.hooks = model, tokens, list(dict.fromkeys(hooks))
        self.seqs, self.seed, self.model_batch = seqs_per_chunk, seed, model_batch
        self.n_ctx = model.cfg.n_ctx
        self.widths = hook_widths(model, self.hooks)

    @property
    def chunk_tokens(self) -> int:
        return self.seqs * self.n_ctx

    @torch.no_grad()
    def chunk(self, index: int) -> dict[str, Tensor]:
        device = next(self.model.parameters()).device
        tokens_BT = sample_batch(self.tokens, self.seqs, self.n_ctx, self.seed, index)[:, :-1]
        parts: dict[str, list[Tensor]] = {h: [] for h in self.hooks}
        was_training = self.model.training
        self.model.eval()
        for i in range(0, self.seqs, self.model_batch):
            cache = cache_until(self.model, tokens_BT[i : i + self.model_batch].to(device), self.hooks)
            for h in self.hooks:
                parts[h].append(cache[h].reshape(-1, self.widths[h]).float())
        self.model.train(was_training)
        return {h: torch.cat(v) for h, v in parts.items()}


class StoredActivations:
    """Chunks read from an activation store written by `store_activations`."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        meta_path = self.folder / "store.json"
        if not meta_path.exists():
            raise ValueError(f"{str(self.folder)!r} is not a complete activation store (no store.json)")
        self.meta = json.loads(meta_path.read_text())
        if self.meta.get("format") != STORE_FORMAT:
            raise ValueError(f"{str(meta_path)!r}: unknown activation store format {self.meta.get('format')!r}")
        self.hooks = list(self.meta["widths"])
        self.widths = {h: int(w) for h, w in self.meta["widths"].items()}
        np_dtype, ext = _DTYPES[self.meta["dtype"]]
        n = int(self.meta["n_tokens"])
        self.arrays = {}
        for h in self.hooks:
            path = self.folder / f"{h}.{ext}"
            expected = n * self.widths[h] * np.dtype(np_dtype).itemsize
            if not path.exists() or path.stat().st_size != expected:
                raise ValueError(f"activation store file {str(path)!r} is missing or truncated")
            self.arrays[h] = np.memmap(path, dtype=np_dtype, mode="r", shape=(n, self.widths[h]))
        self.chunk_tokens = int(self.meta["chunk_tokens"])
        self.n_chunks = n // self.chunk_tokens

    def chunk(self, index: int) -> dict[str, Tensor]:
        r = index % self.n_chunks  # cycle when training outlasts the store
        sl = slice(r * self.chunk_tokens, (r + 1) * self.chunk_tokens)
        return {h: torch.from_numpy(np.array(a[sl], dtype=np.float32)) for h, a in self.arrays.items()}


def store_key(model_fingerprint: str, data_fingerprint: str, hooks: Sequence[str], seqs: int, seed: int, n: int) -> str:
    """Identifies a store's content; `store_activations` refuses to mix different ones."""
    text = f"{model_fingerprint}\0{data_fingerprint}\0{sorted(hooks)}\0{seqs}\0{seed}\0{n}"
    return hashlib.sha256(text.encode()).hexdigest()


def store_activations(
    source: ModelActivations,
    folder: Path,
    n_chunks: int,
    key: str,
    dtype: str = "float32",
    progress: Callable[[int, int], None] | None = None,
) -> StoredActivations:
    """Write `n_chunks` chunks of `source` to `folder` once; reuse it when `key` matches."""
    folder = Path(folder)
    meta_path = folder / "store.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("key") == key:
            return StoredActivations(folder)
        raise ValueError(f"{str(folder)!r} holds an activation store of other activations; choose another folder")
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {list(_DTYPES)}, got {dtype!r}")
    np_dtype, ext = _DTYPES[dtype]
    folder.mkdir(parents=True, exist_ok=True)
    n = n_chunks * source.chunk_tokens
    arrays = {
        h: np.memmap(folder / f"{h}.{ext}", dtype=np_dtype, mode="w+", shape=(n, w)) for h, w in source.widths.items()
    }
    for r in range(n_chunks):
        chunk = source.chunk(r)
        for h, a in arrays.items():
            a[r * source.chunk_tokens : (r + 1) * source.chunk_tokens] = chunk[h].numpy().astype(np_dtype)
        if progress is not None:
            progress(r + 1, n_chunks)
    for a in arrays.values():
        a.flush()
    meta = {"format": STORE_FORMAT, "key": key, "dtype": dtype, "n_tokens": n, "chunk_tokens": source.chunk_tokens,
            "widths": source.widths}
    atomic_write_text(meta_path, json.dumps(meta, indent=2))
    return StoredActivations(folder)


class ShuffledBatches:
    """Training batches as a pure function of the step (see the module docstring)."""

    def __init__(self, source: ModelActivations | StoredActivations, batch_size: int, seed: int) -> None:
        if source.chunk_tokens < batch_size:
            raise ValueError(f"buffer of {source.chunk_tokens} tokens is smaller than one batch of {batch_size}")
        self.source, self.batch_size, self.seed = source, batch_size, seed
        self.steps_per_chunk = source.chunk_tokens // batch_size
        self._index: int | None = None
        self._chunk: dict[str, Tensor] = {}
        self._perm = torch.empty(0, dtype=torch.long)

    def batch(self, step: int) -> dict[str, Tensor]:
        r, i = divmod(step, self.steps_per_chunk)
        if r != self._index:
            self._chunk = self.source.chunk(r)
            digest = hashlib.sha256(f"shuffle\0{self.seed}\0{r}".encode()).digest()
            g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
            self._perm = torch.randperm(self.source.chunk_tokens, generator=g)
            self._index = r
        rows = self._perm[i * self.batch_size : (i + 1) * self.batch_size]
        return {h: a[rows] for h, a in self._chunk.items()}


def checkpoint_tokens(ck: Checkpoint, cache_dir: Path, progress: Callable[[str, int, int], None] | None = None):  # noqa: ANN201
    """The token streams (`TokenData`) of a checkpoint's own pretraining corpus, tokenized with its
    tokenizer (the stdlib when its metadata names none); cached under `cache_dir`."""
    from sparsecircuits.data.batches import checkpoint_corpus
    from sparsecircuits.data.tokenizer import load_tokenizer

    if ck.tokenizer_path is None:
        raise ValueError(f"checkpoint {str(ck.path)!r} has no tokenizer.json; dictionaries need its corpus tokens")
    return checkpoint_corpus(ck.meta, load_tokenizer(ck.tokenizer_path), Path(cache_dir), progress)
