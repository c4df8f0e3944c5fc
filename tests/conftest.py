"""Shared fixtures: tiny models built from configs and a small corpus of real stdlib files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from sparsecircuits.data.corpus import stdlib_dir
from sparsecircuits.model import ModelConfig, Transformer

TINY = dict(d_model=32, n_layers=2, n_heads=4, d_head=8, d_mlp=64, d_vocab=97, n_ctx=24)


def tiny_model(seed: int = 0, **overrides) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(ModelConfig(**{**TINY, **overrides}))
    with torch.no_grad():  # non-trivial biases, gains and sinks so tests exercise them
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


def tokens(batch: int = 3, pos: int = 16, vocab: int = 97, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, pos), generator=g)


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory) -> Path:
    """About 40 real Python files (~400 KB) copied from the stdlib: a corpus that trains in seconds."""
    root = tmp_path_factory.mktemp("corpus")
    src = stdlib_dir()
    names = ["json", "email", "http"]
    for pkg in names:
        for f in sorted((src / pkg).glob("*.py"))[:14]:
            dest = root / pkg / f.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, dest)
    return root


@pytest.fixture(scope="session")
def stdlib_tokenizers():
    """Byte-level BPEs of 2048 and 1024 tokens trained on the first ~4 MB of stdlib files in the
    pipeline's deterministic `sample_order` (as `data.batches` samples tokenizer text): real-looking
    tokenizers for the task tests, trained in about two seconds."""
    from sparsecircuits.data.corpus import sample_order, stdlib_files
    from sparsecircuits.data.tokenizer import train_tokenizer

    root = stdlib_dir()
    texts, total = [], 0
    for path in sorted(stdlib_files(), key=lambda p: sample_order(p.relative_to(root).as_posix())):
        if total >= 4_000_000:
            break
        texts.append(path.read_text(encoding="utf-8"))
        total += len(texts[-1].encode())
    return {vocab: train_tokenizer(texts, vocab) for vocab in (2048, 1024)}
