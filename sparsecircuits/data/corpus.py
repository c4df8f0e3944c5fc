"""Text corpora for training: documents from files, folders, .jsonl files or the Python stdlib.

A corpus is an ordered stream of `Document`s (a stable key and its text). Its order is
deterministic (sources in the order given, files sorted by key), each document goes to the train
or validation split by a hash of its key (`split_of`), and `corpus_fingerprint` names the exact
content so caches built from it (tokenizers, token files) are reused only when nothing changed.

Source rules:
- no sources: every ``*.py`` file of the running interpreter's stdlib (`stdlib_files`);
- a folder: files matching `DataConfig.glob` under it, recursively, skipping hidden folders and
  files (names starting with ".", e.g. ``.git``, ``.venv``) and files that are not valid UTF-8;
- a file: read as UTF-8 (an error if it is not); a ``.jsonl`` file (also inside folders) holds one
  JSON object per line whose `DataConfig.jsonl_field` is the document text;
- documents that are empty or only whitespace are skipped.
Texts are decoded from bytes without newline translation, so ``\\r\\n`` survives.
"""

from __future__ import annotations

import hashlib
import json
import os
import sysconfig
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sparsecircuits.data.config import DataConfig  # torch-free, for the CLI

EOT = "<|endoftext|>"  # end-of-text token, inserted between documents

# Bump when the way documents are read or hashed changes, so old caches are not reused.
_CORPUS_FORMAT = "sparsecircuits-corpus-v1"
_EXCLUDED_STDLIB_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__"})

Progress = Callable[[str, int, int], None]  # progress(stage, done, total)


@dataclass(frozen=True)
class Document:
    """One document: `key` is its path relative to its source root (POSIX separators), or
    ``"file.jsonl:LINE"`` (1-based line) for a line of a .jsonl file."""

    key: str
    text: str


@dataclass(frozen=True)
class _SourceFile:
    path: Path
    key: str
    strict: bool  # True: a file the user named, so bad UTF-8 is an error; False: skip it


def stdlib_dir() -> Path:
    """The standard-library folder of the running interpreter (the base install, not a venv)."""
    return Path(sysconfig.get_paths()["stdlib"])


def _walk(root: Path, pattern: str, skip_dir: Callable[[str], bool]) -> list[Path]:
    """Files under `root` whose path relative to it matches `pattern`, sorted by that path."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not skip_dir(d)]
        for name in filenames:
            path = Path(dirpath, name)
            if not name.startswith(".") and path.relative_to(root).match(pattern):
                found.append(path)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def stdlib_candidates() -> list[Path]:
    """The standard library's `.py` files (test suites and other excluded folders left out), unread."""
    return _walk(stdlib_dir(), "*.py", lambda d: d in _EXCLUDED_STDLIB_DIRS)


def _read_text(path: Path, strict: bool) -> tuple[str | None, int]:
    """(text, size in bytes); text is None for a non-UTF-8 file when not `strict`."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8"), len(raw)
    except UnicodeDecodeError as e:
        if strict:
            raise ValueError(f"{path}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
        return None, len(raw)


def stdlib_files() -> list[Path]:
    """All ``*.py`` files of the stdlib, sorted, without site-/dist-packages or non-UTF-8 files."""
    return [p for p in stdlib_candidates() if _read_text(p, strict=False)[0] is not None]


def _source_files(cfg: DataConfig) -> list[_SourceFile]:
    """The files of every source, in reading order; FileNotFoundError for a missing source."""
    if not cfg.sources:
        root = stdlib_dir()
        return [_SourceFile(p, p.relative_to(root).as_posix(), False) for p in stdlib_candidates()]
    files = []
    for source in cfg.sources:
        root = Path(source).expanduser()
        if root.is_dir():
            paths = _walk(root, cfg.glob, lambda d: d.startswith("."))
            files += [_SourceFile(p, p.relative_to(root).as_posix(), False) for p in paths]
        elif root.is_file():
            files.append(_SourceFile(root, root.name, True))
        else:
            raise FileNotFoundError(f"data source not found: {source}")
    return files


def _iter_jsonl(path: Path, key: str, field: str) -> Iterator[tuple[Document, int]]:
    """(document, bytes of its line) for each non-blank line of a .jsonl file."""
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise ValueError(f"{where}: line is not valid UTF-8") from None
            if not line.strip():
                yield Document(f"{key}:{lineno}", ""), len(raw)
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(record, dict) or field not in record:
                raise ValueError(f"{where}: expected a JSON object with a {field!r} field")
            if not isinstance(record[field], str):
                raise ValueError(f"{where}: field {field!r} must be a string, got {type(record[field]).__name__}")
            yield Document(f"{key}:{lineno}", record[field]), len(raw)


def _iter_with_bytes(cfg: DataConfig) -> Iterator[tuple[Document, int]]:
    """Each non-empty document with the number of source bytes read so far."""
    done = 0
    for src in _source_files(cfg):
        if src.path.suffix == ".jsonl":
            pairs: Iterator[tuple[Document, int]] = _iter_jsonl(src.path, src.key, cfg.jsonl_field)
        else:
            text, size = _read_text(src.path, src.strict)
            pairs = iter([(Document(src.key, text or ""), size)])
        for doc, size in pairs:
            done += size
            if doc.text.strip():
                yield doc, done


def iter_documents(cfg: DataConfig) -> Iterator[Document]:
    """The corpus's documents in a deterministic order (sources as given, files sorted by key)."""
    for doc, _ in _iter_with_bytes(cfg):
        yield doc


def source_bytes(cfg: DataConfig) -> int:
    """Total size in bytes of the source files (the `total` that progress callbacks count to)."""
    return sum(src.path.stat().st_size for src in _source_files(cfg))


def iter_documents_with_progress(
    cfg: DataConfig, stage: str, progress: Progress | None
) -> Iterator[Document]:
    """`iter_documents`, calling ``progress(stage, bytes_read, total_bytes)`` as it goes."""
    if progress is None:
        yield from iter_documents(cfg)
        return
    total = source_bytes(cfg)
    progress(stage, 0, total)
    for doc, done in _iter_with_bytes(cfg):
        yield doc
        progress(stage, done, total)
    progress(stage, total, total)


def _unit_hash(salt: str, key: str) -> float:
    """A number in [0, 1) from sha256(salt + key): stable across runs, machines and Python versions."""
    digest = hashlib.sha256(f"{salt}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_of(key: str, val_percent: float) -> Literal["train", "val"]:
    """The split of the document with this key: "val" for about `val_percent` percent of keys."""
    if not 0 <= val_percent <= 100:
        raise ValueError(f"val_percent must be in [0, 100], got {val_percent}")
    return "val" if _unit_hash("split", key) * 100 < val_percent else "train"


def sample_order(key: str) -> float:
    """Sort key of the deterministic shuffled order used to pick the tokenizer's training sample
    (salted differently from `split_of`, so it is independent of the split)."""
    return _unit_hash("tokenizer-sample", key)


def corpus_fingerprint(cfg: DataConfig, progress: Progress | None = None) -> str:
    """Hex sha256 naming the corpus: every document's key and text, in order, and the split.

    Reads the whole corpus. Changes whenever any document changes, appears or disappears, or
    `val_percent` changes; the paths of the sources do not matter (only keys and texts do).
    """
    h = hashlib.sha256()
    h.update(f"{_CORPUS_FORMAT}\0val_percent={cfg.val_percent!r}\0".encode())
    for doc in iter_documents_with_progress(cfg, "hash corpus", progress):
        for part in (doc.key.encode(), doc.text.encode()):
            h.update(len(part).to_bytes(8, "little"))  # length prefix: no ambiguous concatenation
            h.update(part)
    return h.hexdigest()
