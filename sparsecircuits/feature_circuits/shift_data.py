"""The on-machine SHIFT dataset: Python snippets whose quote style is a spurious cue for their kind
(the stand-in for Bias in Bios' gender confound; Marks et al. 2025, "Sparse feature circuits",
arXiv 2403.19647, section 4).

Label: 1 = a snippet of a stdlib *test module* (`test_*.py` under a `test`/`tests` folder), 0 = of a
library module (no test folder, no `test` in the name). The kind of file is a property of the whole
file that a code model plausibly represents (assert calls, fixtures, `self.` patterns), and it is
independent of quoting. Spurious attribute: the quote style of the snippet's string literals,
1 = single quotes ('), 0 = double quotes (").

Steps of `build_shift_dataset(tok, cfg)`:
  1. files of both kinds are listed, shuffled by `seed` and split by file between the splits, so no
     file contributes to two splits;
  2. each file is rewritten twice, every string literal in one quote style (`requote`: Python's
     `tokenize` finds the literals; a literal is rewritten only when `ast.literal_eval` gives the same
     value before and after, so the rewrite never changes the program; f-strings and literals holding
     the other quote stay as they are);
  3. snippets are runs of whole lines starting at a random line, tokenized and cut to `length` tokens;
     a snippet is kept only when, in the chosen style, its decoded text holds at least `min_quotes`
     quote characters of that style and none of the other (so the attribute is unambiguous);
  4. the quote style of each snippet: in the ambiguous splits it is the label's (test = ', library = "),
     in the balanced splits each (label, quote) group gets a quarter of the snippets;
  5. every snippet also carries its quote-swapped counterfactual (same lines, other style).
"""

from __future__ import annotations

import ast
import io
import random
import tokenize
from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Int
from tokenizers import Tokenizer
from torch import Tensor

from sparsecircuits.feature_circuits.config import ShiftDataConfig  # torch-free, for the CLI

QUOTES = ("\"", "'")  # quote attribute 0, 1
SPLITS = ("ambiguous", "balanced_train", "balanced_test")


@dataclass
class ShiftSplit:
    tokens: Tensor  # [n, length]
    cf_tokens: Tensor  # [n, length] the same lines in the other quote style
    label: Tensor  # [n] 1 = test module, 0 = library module
    quote: Tensor  # [n] 1 = single quotes, 0 = double quotes
    source: list[str]  # file of each snippet (relative path)

    def __len__(self) -> int:
        return len(self.label)


@dataclass
class ShiftDataset:
    splits: dict[str, ShiftSplit]  # SPLITS -> split
    cfg: ShiftDataConfig


def is_test_file(rel: str) -> bool:
    parts = Path(rel).parts
    return Path(rel).name.startswith("test_") and any(p in ("test", "tests") for p in parts[:-1])


def is_library_file(rel: str) -> bool:
    return not any("test" in p.lower() for p in Path(rel).parts) and "idle_test" not in rel


def requote(source: str, quote: str) -> str | None:
    """`source` with every string literal that can be rewritten in `quote` style rewritten (module
    docstring, step 2); None when the file does not tokenize."""
    try:
        toks = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return None
    lines = source.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))
    out, last = [], 0
    for t in toks:
        if t.type != tokenize.STRING:
            continue
        new = _requote_literal(t.string, quote)
        if new is None:
            continue
        start = offsets[t.start[0] - 1] + t.start[1]
        end = offsets[t.end[0] - 1] + t.end[1]
        out += [source[last:start], new]
        last = end
    return "".join(out) + source[last:]


def _requote_literal(lit: str, quote: str) -> str | None:
    i = 0
    while i < len(lit) and lit[i] not in "'\"":
        i += 1
    prefix, body = lit[:i], lit[i:]
    if "f" in prefix.lower():
        return None
    q = body[:3] if body[:3] in ("'''", '"""') else body[:1]
    inner = body[len(q):-len(q)]
    new = prefix + quote * len(q) + inner + quote * len(q)
    if new == lit:
        return None
    try:
        return new if ast.literal_eval(new) == ast.literal_eval(lit) else None
    except (SyntaxError, ValueError):
        return None


def _files(rng: random.Random) -> tuple[list[tuple[Path, str]], list[tuple[Path, str]]]:
    from sparsecircuits.data.corpus import stdlib_candidates, stdlib_dir

    root = stdlib_dir()  # files are read lazily (non-UTF-8 ones are skipped in `_snippets`)
    rel = [(p, p.relative_to(root).as_posix()) for p in stdlib_candidates()]
    tests = [x for x in rel if is_test_file(x[1])]
    libs = [x for x in rel if is_library_file(x[1])]
    rng.shuffle(tests)
    rng.shuffle(libs)
    return tests, libs


def _snippets(path: Path, tok: Tokenizer, cfg: ShiftDataConfig, rng: random.Random):  # noqa: ANN202
    """Up to `per_file` (tokens in ', tokens in ") pairs of one file that pass step 3 in both styles."""
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return []
    versions = [requote(text, q) for q in QUOTES]
    if versions[0] is None or versions[1] is None:
        return []
    lines = [v.splitlines(keepends=True) for v in versions]
    if len(lines[0]) != len(lines[1]) or len(lines[0]) < 4:
        return []
    out = []
    for _ in range(cfg.per_file):
        start = rng.randrange(len(lines[0]))
        pair = []
        for q, ls in zip(QUOTES, lines):
            ids = tok.encode("".join(ls[start:start + cfg.length])).ids[: cfg.length]
            txt = tok.decode(ids)
            other = QUOTES[1 - QUOTES.index(q)]
            if len(ids) < cfg.length or txt.count(q) < cfg.min_quotes or other in txt:
                break
            pair.append(ids)
        if len(pair) == 2:
            out.append((pair[0], pair[1]))  # (double-quoted, single-quoted)
    return out


def _collect(files: list[tuple[Path, str]], n: int, tok: Tokenizer, cfg: ShiftDataConfig, rng: random.Random):  # noqa: ANN202
    got: list[tuple[list[int], list[int], str]] = []
    while files and len(got) < n:
        path, rel = files.pop()
        got += [(a, b, rel) for a, b in _snippets(path, tok, cfg, rng)]
    if len(got) < n:
        raise ValueError(f"the stdlib gave only {len(got)} usable snippets, {n} needed; lower the split sizes")
    return got[:n]


def _split(items_by_label: dict[int, list], quotes_by_label: dict[int, list[int]]) -> ShiftSplit:
    toks, cfs, labels, quotes, src = [], [], [], [], []
    for label, items in items_by_label.items():
        for (dq, sq, rel), q in zip(items, quotes_by_label[label]):
            toks.append(sq if q else dq)
            cfs.append(dq if q else sq)
            labels.append(label)
            quotes.append(q)
            src.append(rel)
    return ShiftSplit(torch.tensor(toks), torch.tensor(cfs), torch.tensor(labels), torch.tensor(quotes), src)


def build_shift_dataset(tok: Tokenizer, cfg: ShiftDataConfig | None = None) -> ShiftDataset:
    """The three splits (module docstring); deterministic for a seed."""
    cfg = cfg or ShiftDataConfig()
    rng = random.Random(cfg.seed)
    tests, libs = _files(rng)
    sizes = {"ambiguous": cfg.n_ambiguous, "balanced_train": cfg.n_balanced_train,
             "balanced_test": cfg.n_balanced_test}
    splits = {}
    for name in SPLITS:
        half = sizes[name] // 2
        items = {1: _collect(tests, half, tok, cfg, rng), 0: _collect(libs, half, tok, cfg, rng)}
        if name == "ambiguous":  # test modules in single quotes, library modules in double quotes
            quotes = {1: [1] * half, 0: [0] * half}
        else:
            quotes = {lab: [1] * (half // 2) + [0] * (half // 2) for lab in (0, 1)}
        splits[name] = _split(items, quotes)
    return ShiftDataset(splits, cfg)


def group_index(label: Int[Tensor, " n"], quote: Int[Tensor, " n"]) -> Int[Tensor, " n"]:
    """Group id 2 * label + quote (0..3)."""
    return 2 * label + quote


__all__ = ["QUOTES", "SPLITS", "ShiftDataConfig", "ShiftDataset", "ShiftSplit", "build_shift_dataset",
           "group_index", "is_library_file", "is_test_file", "requote"]
