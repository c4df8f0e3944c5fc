"""Training data: corpora (stdlib code, text files, jsonl; `corpus`), byte-level BPE tokenizers
(`tokenizer`), cached token streams with batch sampling and the bigram baseline (`batches`), and
sequence-continuation training corpora in the form of Lan et al. 2024 (`task_corpus`)."""

from typing import TYPE_CHECKING

from sparsecircuits.lazy import lazy_exports

if TYPE_CHECKING:
    from sparsecircuits.data.batches import (
        TokenData,
        bigram_baseline_loss,
        prepare_data,
        sample_batch,
        val_windows,
    )
    from sparsecircuits.data.config import DataConfig
    from sparsecircuits.data.corpus import (
        EOT,
        Document,
        corpus_fingerprint,
        iter_documents,
        split_of,
        stdlib_dir,
        stdlib_files,
    )
    from sparsecircuits.data.tokenizer import (
        eot_id,
        load_tokenizer,
        save_tokenizer,
        tokenizer_fingerprint,
        train_tokenizer,
    )

# Imported on first use: `sparsecircuits.data.config` loads without torch (the CLI's start-up).
__getattr__, __dir__ = lazy_exports(__name__, {
    "batches": ("TokenData", "bigram_baseline_loss", "prepare_data", "sample_batch", "val_windows"),
    "config": ("DataConfig",),
    "corpus": ("EOT", "Document", "corpus_fingerprint", "iter_documents", "split_of", "stdlib_dir", "stdlib_files"),
    "tokenizer": ("eot_id", "load_tokenizer", "save_tokenizer", "tokenizer_fingerprint", "train_tokenizer"),
})

__all__ = [
    "EOT",
    "DataConfig",
    "Document",
    "TokenData",
    "bigram_baseline_loss",
    "corpus_fingerprint",
    "eot_id",
    "iter_documents",
    "load_tokenizer",
    "prepare_data",
    "sample_batch",
    "save_tokenizer",
    "split_of",
    "stdlib_dir",
    "stdlib_files",
    "tokenizer_fingerprint",
    "train_tokenizer",
    "val_windows",
]
