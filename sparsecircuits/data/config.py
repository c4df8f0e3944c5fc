"""The data package's configs, importable without torch (the CLI builds its flags from them):
`DataConfig` (the training corpus and tokenizer; used by `corpus`, `tokenizer`, `batches`) and
`TaskCorpusConfig` (sequence-continuation training corpora, `task_corpus`)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from sparsecircuits.config_utils import opt

DEFAULT_TASKS = ("seqcont_numerals", "seqcont_number_words", "seqcont_months")


@dataclass
class DataConfig:
    """Where the training text comes from and how it is split and tokenized."""

    sources: tuple[str, ...] = opt(
        (), "files, folders or .jsonl files to read; empty = the running Python's stdlib (*.py)"
    )
    glob: str = opt("*.py", "pattern of the files to read inside folder sources (recursive)")
    jsonl_field: str = opt("text", "field holding the document text in .jsonl sources")
    val_percent: float = opt(2.0, "percent of documents held out for validation (by key hash); 0 < x < 50")
    vocab_size: int = opt(2048, "BPE vocabulary size including special tokens; 258 <= x <= 65535")
    tokenizer_sample_mb: float = opt(8.0, "MB (10^6 bytes) of training text used to train the BPE; > 0")

    def __post_init__(self) -> None:
        if isinstance(self.sources, (str, os.PathLike)):
            raise ValueError(f"sources must be a sequence of paths, got the single path {self.sources!r}")
        self.sources = tuple(str(s) for s in self.sources)
        if not self.glob:
            raise ValueError("glob must be a non-empty file pattern such as '*.py'")
        if not self.jsonl_field:
            raise ValueError("jsonl_field must be a non-empty field name")
        if not 0 < self.val_percent < 50:
            raise ValueError(f"val_percent must be in (0, 50), got {self.val_percent}")
        if not 258 <= self.vocab_size <= 65535:
            raise ValueError(f"vocab_size must be in [258, 65535] (tokens are uint16), got {self.vocab_size}")
        if not self.tokenizer_sample_mb > 0:
            raise ValueError(f"tokenizer_sample_mb must be > 0, got {self.tokenizer_sample_mb}")


@dataclass
class TaskCorpusConfig:
    tasks: tuple[str, ...] = opt(DEFAULT_TASKS, "sequence tasks whose domains are written (seqcont_*)")
    docs: int = opt(20000, "sequence documents; >= 1")
    max_members: int = opt(8, "most members in one document; >= 5 (4 shown + the answer)")
    mix_stdlib: float = opt(0.0, "fraction of all characters that are Python stdlib code; [0, 1)")
    chunk_chars: int = opt(2000, "most characters of one stdlib chunk; >= 100")
    seed: int = opt(0, "seed of the documents, the stdlib sample and the shuffle")

    def __post_init__(self) -> None:
        from sparsecircuits.tasks.sequences import MEMBERS  # here, not at the top: the tasks import torch

        self.tasks = tuple(self.tasks)
        unknown = [t for t in self.tasks if t not in MEMBERS]
        if not self.tasks or unknown:
            raise ValueError(f"TaskCorpusConfig.tasks must be sequence tasks among {sorted(MEMBERS)}, got {unknown or 'none'}")
        if self.docs < 1:
            raise ValueError(f"TaskCorpusConfig.docs must be >= 1, got {self.docs}")
        if self.max_members < 5:
            raise ValueError(f"TaskCorpusConfig.max_members must be >= 5 (4 shown + the answer), got {self.max_members}")
        if not 0.0 <= self.mix_stdlib < 1.0:
            raise ValueError(f"TaskCorpusConfig.mix_stdlib must be in [0, 1), got {self.mix_stdlib}")
        if self.chunk_chars < 100:
            raise ValueError(f"TaskCorpusConfig.chunk_chars must be >= 100, got {self.chunk_chars}")
