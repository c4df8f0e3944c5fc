"""Training data: corpora (stdlib code, text files, jsonl), byte-level BPE tokenizers, and
cached token streams with batch sampling and the bigram baseline."""

from sparsecircuits.data.batches import (
    TokenData,
    bigram_baseline_loss,
    prepare_data,
    sample_batch,
    val_windows,
)
from sparsecircuits.data.corpus import (
    EOT,
    DataConfig,
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
