"""Binary next-token contrast tasks: examples, a registry, tokenizer validation, loss and metric.

A task (DESIGN.md "Tasks") is a stream of `Example`s: a prompt, the text that correctly continues it,
a plausible but wrong continuation, and optionally a counterfactual prompt whose correct continuation
is the wrong one. The **answer tokens** are the first token of each continuation *in context*, so a
task written as text adapts itself to whatever BPE the model has (e.g. a closing quote followed by a
newline may be one token `"\\n` in a tokenizer trained on Python). `tokenize_task` checks, per
example, that:
  1. the prompt ends at a token boundary: tokens(prompt) is a prefix of tokens(prompt + continuation),
     for both continuations (otherwise the model never sees this prompt/answer split in training);
  2. the two answer tokens differ;
  3. with `single_token=True` (user JSONL tasks), each continuation is exactly one token;
  4. the counterfactual prompt has as many tokens as the prompt and its answer is the incorrect token;
  5. the prompt fits the model's context (a prompt over `max_prompt_chars(n_ctx)` characters is
     refused before BPE; a task file's line over `max_line_bytes(n_ctx)` before it is read whole).
Multi-token answers (`multi_token=True`, e.g. ` 12` vs ` 11` split as ` 1`+`2` / ` 1`+`1`): when the
two continuations start with the same tokens, that shared prefix is appended to the prompt (and to
the counterfactual prompt) and the answers are the first tokens where they differ, so the contrast is
still one next-token decision. Prompts then differ in length; they are right-padded and every
metric reads each prompt's own last position (aligned on the answer position).
Built-in generated tasks skip examples that fail (and fail only if most do); user tasks raise a
`TaskError` naming the example. Task loss is the binary cross-entropy over the two answer tokens at
the last prompt position (Gao et al. 2025): softplus(-(logit_correct - logit_incorrect)); the metric
is the logit difference (higher = task done better).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from tokenizers import Tokenizer
from torch import Tensor

# torch-free, so the CLI validates task files before importing torch; re-exported here
from sparsecircuits.task_files import (  # noqa: F401
    CHARS_PER_TOKEN,
    Example,
    TaskError,
    max_line_bytes,
    max_prompt_chars,
    read_jsonl_lines,
    read_jsonl_task,
)

Generator = Callable[[random.Random], Example]


@dataclass(frozen=True)
class TaskSpec:
    name: str
    summary: str  # one line: what is predicted and why it is determined
    generate_one: Generator  # draws one example from an RNG
    single_token: bool = False  # require each continuation to be exactly one token
    multi_token: bool = False  # move a shared first-token prefix of the answers into the prompt
    domain: str = "python"  # "python" (code tasks, for our models) or "language" (pretrained LMs)

    def examples(self, n: int, seed: int = 0, max_tries_factor: int = 50) -> list[Example]:
        """`n` distinct examples, deterministic in `seed`."""
        rng = random.Random(f"{self.name}:{seed}")
        seen: dict[Example, None] = {}
        for _ in range(n * max_tries_factor):
            seen.setdefault(self.generate_one(rng), None)
            if len(seen) == n:
                return list(seen)
        raise TaskError(f"task {self.name!r} produced only {len(seen)} distinct examples, {n} requested")


TASKS: dict[str, TaskSpec] = {}


def register_task(name: str, summary: str, single_token: bool = False,
                  multi_token: bool = False, domain: str = "python") -> Callable[[Generator], Generator]:
    """Decorator adding a generator function to the task registry."""

    def wrap(fn: Generator) -> Generator:
        if name in TASKS:
            raise ValueError(f"task {name!r} is registered twice")
        TASKS[name] = TaskSpec(name, summary, fn, single_token, multi_token, domain)
        return fn

    return wrap


def get_task(name: str) -> TaskSpec:
    import sparsecircuits.tasks  # noqa: F401  (registers the built-in tasks)

    if name not in TASKS:
        raise TaskError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name]


@dataclass
class TaskData:
    """A task's examples as tensors. Prompts are right-padded: with causal attention the logits at
    each prompt's last position do not depend on the padding."""

    name: str
    examples: list[Example]
    tokens: Int[Tensor, "n pos"]  # prompts, right-padded with the pad id
    lengths: Int[Tensor, " n"]  # prompt lengths in tokens
    correct: Int[Tensor, " n"]  # answer token ids
    incorrect: Int[Tensor, " n"]
    cf_tokens: Int[Tensor, "n pos"] | None  # counterfactual prompts, same lengths as the prompts
    answer_strings: tuple[str, str]  # the most common (correct, incorrect) answer tokens, decoded
    skipped: int  # examples dropped because they do not fit the tokenizer

    def __len__(self) -> int:
        return len(self.examples)

    def subset(self, idx: Tensor | slice) -> TaskData:
        ex = [self.examples[i] for i in torch.arange(len(self))[idx].tolist()]
        cf = None if self.cf_tokens is None else self.cf_tokens[idx]
        return TaskData(self.name, ex, self.tokens[idx], self.lengths[idx], self.correct[idx],
                        self.incorrect[idx], cf, self.answer_strings, self.skipped)


def _answer_id(tok: Tokenizer, prompt_ids: list[int], prompt: str, cont: str, single: bool) -> int:
    ids = tok.encode(prompt + cont, add_special_tokens=False).ids
    if ids[: len(prompt_ids)] != prompt_ids or len(ids) == len(prompt_ids):
        raise TaskError(f"the prompt does not end at a token boundary before {cont!r} (tokens merge across it)")
    if single and len(ids) != len(prompt_ids) + 1:
        pieces = [tok.id_to_token(i) for i in ids[len(prompt_ids):]]
        raise TaskError(f"answer {cont!r} is {len(pieces)} tokens in context, not one: {pieces}")
    return ids[len(prompt_ids)]


def _shared_prefix(tok: Tokenizer, p_ids: list[int], ex: Example) -> list[int]:
    """Tokens both continuations start with in context (empty if they differ at once or misalign)."""
    a = tok.encode(ex.prompt + ex.correct, add_special_tokens=False).ids
    b = tok.encode(ex.prompt + ex.incorrect, add_special_tokens=False).ids
    if a[: len(p_ids)] != p_ids or b[: len(p_ids)] != p_ids:
        return []
    j = len(p_ids)
    while j < min(len(a), len(b)) - 1 and a[j] == b[j]:
        j += 1
    return a[len(p_ids): j]


def _check_example(ex: Example, tok: Tokenizer, n_ctx: int, single: bool,
                   multi: bool = False) -> tuple[list[int], int, int, list[int] | None]:
    longest = max(len(ex.prompt), len(ex.counterfactual or ""))
    if longest > max_prompt_chars(n_ctx):  # before BPE: encoding megabytes to find they do not fit takes minutes
        raise TaskError(f"a prompt is {longest:,} characters, more than any prompt that fits the model's context "
                        f"of {n_ctx} tokens can have ({max_prompt_chars(n_ctx):,})")
    p_ids = tok.encode(ex.prompt, add_special_tokens=False).ids
    if not p_ids:
        raise TaskError("the prompt is empty")
    prefix = _shared_prefix(tok, p_ids, ex) if multi else []
    if prefix:
        text = tok.decode(prefix)
        if not ex.correct.startswith(text) or not ex.incorrect.startswith(text):
            raise TaskError(f"the shared answer prefix {text!r} does not decode to the continuations' start")
        cf = None if ex.counterfactual is None else ex.counterfactual + text
        ex = Example(ex.prompt + text, ex.correct[len(text):], ex.incorrect[len(text):], cf)
        p_ids = p_ids + prefix
        if tok.encode(ex.prompt, add_special_tokens=False).ids != p_ids:
            raise TaskError("the prompt with the shared answer prefix tokenizes differently")
    if len(p_ids) > n_ctx:
        raise TaskError(f"the prompt is {len(p_ids)} tokens, longer than the model's context {n_ctx}")
    c = _answer_id(tok, p_ids, ex.prompt, ex.correct, single)
    i = _answer_id(tok, p_ids, ex.prompt, ex.incorrect, single)
    if c == i:
        raise TaskError(f"correct {ex.correct!r} and incorrect {ex.incorrect!r} start with the same token")
    cf_ids = None
    if ex.counterfactual is not None:
        cf_ids = tok.encode(ex.counterfactual, add_special_tokens=False).ids
        if len(cf_ids) != len(p_ids):
            raise TaskError(f"the counterfactual prompt is {len(cf_ids)} tokens, the prompt {len(p_ids)}")
        try:
            cf_answer = _answer_id(tok, cf_ids, ex.counterfactual, ex.incorrect, single)
        except TaskError as e:  # say that it is the counterfactual that does not fit
            raise TaskError(f"counterfactual: {e}") from None
        if cf_answer != i:
            raise TaskError("the counterfactual prompt's answer token differs from the incorrect answer token")
    return p_ids, c, i, cf_ids


def tokenize_task(
    name: str, examples: list[Example], tok: Tokenizer, n_ctx: int, *, strict: bool, single_token: bool = False,
    pad_id: int = 0, min_valid: int | None = None, multi_token: bool = False,
) -> TaskData:
    """Validate and tokenize examples (see the module docstring). `strict` raises on the first bad
    example; otherwise bad examples are skipped and an error is raised only if fewer than
    `min_valid` (default: half of them) fit."""
    rows, kept = [], []
    for n, ex in enumerate(examples):
        try:
            rows.append(_check_example(ex, tok, n_ctx, single_token, multi_token))
            kept.append(ex)
        except TaskError as e:
            if strict:
                raise TaskError(f"task {name!r}, example {n} (prompt {ex.prompt[-60:]!r}): {e}") from None
    need = (len(examples) + 1) // 2 if min_valid is None else min_valid
    if not rows or len(rows) < need:
        raise TaskError(f"task {name!r}: only {len(rows)} of {len(examples)} examples fit this tokenizer (need {need})")
    has_cf = all(r[3] is not None for r in rows)
    width = max(len(r[0]) for r in rows)
    tokens = torch.full((len(rows), width), pad_id, dtype=torch.long)
    cf = torch.full((len(rows), width), pad_id, dtype=torch.long) if has_cf else None
    for j, (p, _, _, c) in enumerate(rows):
        tokens[j, : len(p)] = torch.tensor(p)
        if cf is not None and c is not None:
            cf[j, : len(c)] = torch.tensor(c)
    correct = torch.tensor([r[1] for r in rows])
    incorrect = torch.tensor([r[2] for r in rows])
    # the most common *pair*: separate modes can show the same token twice (e.g. ' e' vs ' e')
    (c_id, i_id), _ = Counter(zip(correct.tolist(), incorrect.tolist())).most_common(1)[0]
    common = (tok.decode([c_id]), tok.decode([i_id]))
    return TaskData(name, kept, tokens, torch.tensor([len(r[0]) for r in rows]), correct, incorrect, cf,
                    common, len(examples) - len(rows))


def load_task(name: str, tok: Tokenizer, n_ctx: int, n: int = 256, seed: int = 0,
              exclude: Collection[str] = ()) -> TaskData:
    """`n` examples of a built-in task that fit this tokenizer, deterministic in `seed`.

    Generators do not see the tokenizer (a name may be one token in one BPE and two in another), so
    up to 3n distinct candidates are drawn and the first n that pass validation are kept; fewer than
    n/2 valid is an error. `exclude`: prompt texts no kept example may use, as its prompt or as its
    counterfactual (a validation set disjoint from an evaluation set: `prompt_texts` of that set).
    """
    spec = get_task(name)
    candidates = _candidates(spec, n, seed)
    if exclude:
        banned = set(exclude)
        candidates = [e for e in candidates if e.prompt not in banned and e.counterfactual not in banned]
        if not candidates:
            raise TaskError(f"task {name!r}: every example at seed {seed} is excluded (all {len(banned)} "
                            "prompts of the excluded set)")
    data = tokenize_task(name, candidates, tok, n_ctx, strict=False, single_token=spec.single_token,
                         min_valid=max(1, n // 2), multi_token=spec.multi_token)
    if len(data) > n:
        data = data.subset(slice(0, n))
    return data


def prompt_texts(name: str, n: int = 256, seed: int = 0) -> set[str]:
    """Every prompt and counterfactual prompt among the candidates `load_task(name, ..., n, seed)`
    draws its examples from (a superset of the examples it keeps, whatever the tokenizer): what a
    set disjoint from that one must `exclude`."""
    texts: set[str] = set()
    for e in _candidates(get_task(name), n, seed):
        texts.add(e.prompt)
        if e.counterfactual is not None:
            texts.add(e.counterfactual)
    return texts


def _candidates(spec: TaskSpec, n: int, seed: int) -> list[Example]:
    try:
        return spec.examples(3 * n, seed)
    except TaskError:  # a task with fewer distinct examples: use what n gives
        return spec.examples(n, seed)


def load_jsonl_task(path: Path, tok: Tokenizer, n_ctx: int) -> TaskData:
    """A user task from JSONL, validated strictly: answers must be single tokens in context. Errors
    name the file and line of the bad example. The file is read once; lines longer than any prompt
    that fits `n_ctx` could be (`max_line_bytes`) are refused before BPE."""
    rows = read_jsonl_lines(path, max_line_bytes(n_ctx))
    for line, ex in rows:
        try:
            _check_example(ex, tok, n_ctx, single=True)
        except TaskError as e:
            raise TaskError(f"{path}:{line} (prompt {ex.prompt[-60:]!r}): {e}") from None
    return tokenize_task(Path(path).stem, [ex for _, ex in rows], tok, n_ctx, strict=True, single_token=True)


def last_logits(logits: Float[Tensor, "n pos vocab"], lengths: Int[Tensor, " n"]) -> Float[Tensor, "n vocab"]:
    """Logits at each prompt's last real position."""
    return logits[torch.arange(len(lengths), device=logits.device), lengths.to(logits.device) - 1]


def logit_diff(last: Float[Tensor, "n vocab"], data: TaskData) -> Float[Tensor, " n"]:
    """logit(correct) - logit(incorrect) per example: the task metric (higher = better)."""
    idx = torch.arange(len(last), device=last.device)
    return last[idx, data.correct.to(last.device)] - last[idx, data.incorrect.to(last.device)]


def task_loss(diff: Float[Tensor, " n"]) -> Float[Tensor, ""]:
    """Binary cross-entropy over the two answer tokens, from logit differences: mean softplus(-diff)."""
    return F.softplus(-diff).mean()
