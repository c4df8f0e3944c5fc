"""Training corpora of sequence-continuation text in the form of Lan, Torr & Barez (2024), optionally
mixed with Python stdlib code, so that a model we train ourselves can be studied with the Lan et al.
pipeline (`discover --method iterative`, `compare-circuits`, `heads`; see docs/seqcont.md).

A **sequence document** is one run of consecutive members of a domain (numerals 1-12, number words,
months, ... the domains of `tasks/sequences.py`) written in one of Lan et al.'s three templates, e.g.
"Book done in 2. Book done in 3. Book done in 4. Book done in 5. Book done in 6." Steps of
`sequence_document`:
  1. pick a domain from the requested tasks and a template (uniformly);
  2. pick a length of 3 to `max_members` members and a start such that the run fits in the domain
     (no wrap-around: December is not followed by January, as in the tasks);
  3. pick a subject: half the time from `TRAIN_OBJECTS` ("done"/"lost" templates) or `TRAIN_NAMES`
     ("born"), else a random capitalised pseudo-word of 2-3 syllables (`pseudo_word`), so that the
     model learns to ignore the subject (with 20 fixed subjects a small model continues sequences of
     those subjects perfectly but of unseen ones only ~70% of the time);
  4. write every member in the template, each sentence ending with ".".
Every evaluation prompt of a sequence task is then a prefix of some possible document *shape*, so
the model can only solve the task by continuing the sequence, not by memorising prompts.

**Held-out evaluation prompts.** The tasks draw their subjects from `sequences.OBJECTS` and
`sequences.NAMES`; the corpus draws them from the disjoint `TRAIN_OBJECTS` and `TRAIN_NAMES`. No
evaluation prompt (any seed) therefore occurs in the corpus (pseudo-words equal to an evaluation
subject are redrawn): it contains no sentence with an evaluation subject at all, so accuracy on the tasks measures generalisation to unseen subjects.

**Mixing code.** With `mix_stdlib = f > 0`, stdlib files (read in a deterministic hash order,
split at line boundaries into chunks of at most `chunk_chars` characters) are added until they hold
about a fraction f of all characters; then all documents are shuffled by `seed`.
Output: one JSON object per line, ``{"text": ...}`` — a ``.jsonl`` `DataConfig` source, so every
line is its own document and goes to the train or validation split by its own key (a plain text
file would be one document, wholly in one split).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sparsecircuits.atomic import atomic_write_text
from sparsecircuits.data.config import DEFAULT_TASKS, TaskCorpusConfig
from sparsecircuits.data.corpus import sample_order, stdlib_files
from sparsecircuits.tasks.sequences import MEMBERS, NAMES, OBJECTS, TEMPLATES

# Subjects of the training documents: disjoint from the evaluation subjects (`sequences.OBJECTS`,
# `sequences.NAMES`), which is how the evaluation prompts are held out.
TRAIN_OBJECTS = ("Book", "Letter", "Ticket", "Order", "Invoice", "Chapter", "Lesson", "Exam", "Game",
                 "Match", "Song", "Film", "Road", "Tower", "Wall", "Door", "Engine", "Model", "Batch", "Test")
TRAIN_NAMES = ("Peter", "Susan", "Robert", "Alice", "George", "Helen", "Frank", "Laura", "Henry", "Julia",
               "Oscar", "Nina", "Victor", "Clara", "Walter", "Rose", "Arthur", "Ella", "Simon", "Grace")
assert not set(TRAIN_OBJECTS) & set(OBJECTS) and not set(TRAIN_NAMES) & set(NAMES)

# Step between consecutive members (the interval tasks over numerals); 1 for every other domain.
STEPS = {"seqcont_interval2": 2, "seqcont_interval3": 3}
_HELD_OUT = frozenset(OBJECTS) | frozenset(NAMES)
_ONSETS = ("b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z", "br", "st", "tr")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ea", "o")


def pseudo_word(rng: random.Random) -> str:
    """A capitalised pseudo-word of 2-3 consonant-vowel syllables that is no evaluation subject."""
    while True:
        word = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(rng.randint(2, 3)))
        word = word.capitalize() + rng.choice(("", "n", "r", "s", "l"))
        if word not in _HELD_OUT:
            return word


@dataclass
class TaskCorpusStats:
    sequence_docs: int
    stdlib_docs: int
    sequence_chars: int
    stdlib_chars: int
    docs_per_task: dict[str, int]


def sequence_document(rng: random.Random, task: str, max_members: int = 8) -> str:
    """One document of consecutive members of `task`'s domain in one of Lan et al.'s templates."""
    domain, step = MEMBERS[task], STEPS.get(task, 1)
    longest = (len(domain) - 1) // step + 1  # members of the longest run that fits the domain
    n = rng.randint(min(3, longest), min(max_members, longest))
    start = rng.randrange(0, len(domain) - (n - 1) * step)
    template = TEMPLATES[rng.randrange(len(TEMPLATES))]
    if rng.random() < 0.5:
        subject = rng.choice(TRAIN_NAMES if "born" in template else TRAIN_OBJECTS)
    else:
        subject = pseudo_word(rng)
    return " ".join(template.format(x=subject, m=domain[start + i * step]) for i in range(n))


def _stdlib_chunks(chunk_chars: int) -> Iterator[str]:
    """Stdlib files in a deterministic hash order, split at line boundaries into chunks."""
    for path in sorted(stdlib_files(), key=lambda p: sample_order(p.name + str(p.stat().st_size))):
        chunk = ""
        for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
            if chunk and len(chunk) + len(line) > chunk_chars:
                yield chunk
                chunk = ""
            chunk += line[:chunk_chars]
        if chunk.strip():
            yield chunk


def build_task_corpus(cfg: TaskCorpusConfig) -> tuple[list[str], TaskCorpusStats]:
    """The documents (shuffled, deterministic in `cfg.seed`) and counts; see the module docstring."""
    rng = random.Random(f"task-corpus:{cfg.seed}")
    per_task = dict.fromkeys(cfg.tasks, 0)
    seqs = []
    for _ in range(cfg.docs):
        task = cfg.tasks[rng.randrange(len(cfg.tasks))]
        per_task[task] += 1
        seqs.append(sequence_document(rng, task, cfg.max_members))
    seq_chars = sum(len(d) for d in seqs)
    code: list[str] = []
    if cfg.mix_stdlib > 0:
        budget = seq_chars * cfg.mix_stdlib / (1 - cfg.mix_stdlib)
        got = 0
        for chunk in _stdlib_chunks(cfg.chunk_chars):
            if got >= budget:
                break
            code.append(chunk)
            got += len(chunk)
    docs = seqs + code
    rng.shuffle(docs)
    stats = TaskCorpusStats(len(seqs), len(code), seq_chars, sum(len(c) for c in code), per_task)
    return docs, stats


def write_task_corpus(cfg: TaskCorpusConfig, out: Path) -> TaskCorpusStats:
    """Write the corpus as JSONL (``{"text": ...}`` per line) to `out`, atomically."""
    out = Path(out)
    if out.suffix != ".jsonl":
        raise ValueError(f"the corpus is written as JSON lines; name the file *.jsonl, got {str(out)!r}")
    docs, stats = build_task_corpus(cfg)
    atomic_write_text(out, "".join(json.dumps({"text": d}) + "\n" for d in docs))
    return stats


__all__ = ["DEFAULT_TASKS", "STEPS", "TRAIN_NAMES", "TRAIN_OBJECTS", "TaskCorpusConfig", "TaskCorpusStats",
           "build_task_corpus", "pseudo_word", "sequence_document", "write_task_corpus"]
