"""Tasks: the registry, the built-in Python-code tasks on real stdlib tokenizers, and validation.

Ground truth for the built-in tasks is the code itself: per task, the answer is re-derived from the
prompt (the quote that opened the literal, the unclosed brackets, the name a binding introduced,
...), and for the syntax tasks Python's own compiler confirms that the correct continuation is
valid (or incomplete) and, where the task claims it, that the incorrect one is a syntax error.
"""

from __future__ import annotations

import codeop
import json
import re
import textwrap
import warnings

import pytest
import torch

from sparsecircuits.tasks import (
    TASKS,
    Example,
    TaskError,
    get_task,
    load_jsonl_task,
    load_task,
    logit_diff,
    task_loss,
    tokenize_task,
)
from sparsecircuits.tasks.base import prompt_texts

GAO_TASKS = ("single_double_quote", "bracket_counting", "set_or_string", "set_or_string_fixedvarname")
N, MAX_SKIPPED, MIN_VALID, MAX_PROMPT_TOKENS = 256, 0.10, 200, 60
MAX_SAME_CORRECT = 0.7  # share of examples one correct token may have (bracket_counting once had all)


def test_registry_holds_the_python_tasks():
    get_task(GAO_TASKS[0])  # imports the package, registering the built-in tasks
    assert len(TASKS) >= 12
    assert set(GAO_TASKS) <= set(TASKS)
    with pytest.raises(TaskError, match="unknown task 'nope'.*bracket_counting"):
        get_task("nope")


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_says_why_its_answer_is_determined(name):
    spec = TASKS[name]
    assert spec.summary.strip() and "\n" not in spec.summary
    doc = spec.generate_one.__doc__ or ""
    assert len(doc.split()) >= 20, f"{name}: the generator's docstring must explain why the answer is determined"


@pytest.mark.parametrize("name", sorted(TASKS))
def test_examples_are_deterministic_in_the_seed(name):
    spec = TASKS[name]
    assert spec.examples(30, seed=0) == spec.examples(30, seed=0)
    assert spec.examples(30, seed=0) != spec.examples(30, seed=1)
    assert len(set(spec.examples(30, seed=3))) == 30


@pytest.mark.parametrize("name", sorted(n for n in TASKS if n.startswith("seqcont_")))
def test_sequence_counterfactuals_differ_from_their_prompt(name):
    """Lan et al.'s corruption replaces the four members by random ones of the same length; a draw
    that repeats the prompt (likely for months: few share a length) would corrupt nothing."""
    assert all(ex.counterfactual != ex.prompt for ex in TASKS[name].examples(200, seed=0))


@pytest.mark.parametrize("vocab", [2048, 1024])
@pytest.mark.parametrize("name", sorted(n for n, spec in TASKS.items() if spec.domain == "python"))
def test_task_fits_a_stdlib_tokenizer(name, vocab, stdlib_tokenizers):
    tok = stdlib_tokenizers[vocab]
    data = load_task(name, tok, n_ctx=128, n=N)
    assert data.skipped <= MAX_SKIPPED * N, f"{name}: {data.skipped}/{N} examples skipped with vocab {vocab}"
    assert len(set(data.examples)) == len(data) >= MIN_VALID
    assert data.cf_tokens is not None, f"{name}: some example has no counterfactual"
    assert (data.correct != data.incorrect).all()
    assert data.answer_strings[0] != data.answer_strings[1]  # the most common pair, not two modes
    # Both ways round: no token is the correct answer of most examples, so a model that always
    # prefers one answer scores near chance, not 0 or 1.
    top = int(torch.bincount(data.correct).max())
    assert top <= MAX_SAME_CORRECT * len(data), f"{name}: one token is the correct answer of {top}/{len(data)}"
    assert int(data.lengths.max()) <= MAX_PROMPT_TOKENS
    for j, ex in enumerate(data.examples):
        # the answer token is the first token of the continuation text, and the prompt is unchanged
        assert ex.correct.startswith(tok.decode([int(data.correct[j])]))
        assert ex.incorrect.startswith(tok.decode([int(data.incorrect[j])]))
        assert data.tokens[j, : data.lengths[j]].tolist() == tok.encode(ex.prompt).ids


# Answer tokens expected with both stdlib tokenizers: (correct, incorrect) first tokens, per example.
def _expect_tokens(name: str, ex: Example, c: str, i: str) -> bool:
    if name == "single_double_quote":
        q = ex.correct[0]
        other = "'" if q == '"' else '"'
        return q in c and other not in c and other in i and q not in i
    if name == "bracket_counting":  # `]]` and `])` where the BPE has them, else `]` vs `])`
        deep, shallow = (c, i) if ex.correct.startswith("]]") else (i, c)
        return deep.startswith("]") and ")" not in deep and shallow.startswith("])")
    if name == "paren_counting":
        return {c, i} == {"))", ")"}
    if name == "bracket_type":
        return c[0] == ex.correct[0] and i[0] == ex.incorrect[0] and c[0] in ")]" and i[0] in ")]"
    if name == "triple_quote_close":
        return {c, i} == {'"""', '"'} and c == ex.correct.rstrip("\n")
    if name == "indent_after_block":
        return c.startswith("\n") and i.startswith("\n") and not c.strip() and not i.strip() and len(c) != len(i)
    if name in ("set_or_string", "set_or_string_fixedvarname"):
        return {c[:2], i[:2]} == {".", " +"}
    if name == "dict_or_list":
        return {c, i} == {"[", "."}
    if name == "dict_or_set_display":
        return (c, i) == ((":", ",") if ex.correct.startswith(":") else (",", ":"))
    if name == "block_colon":  # `:` (or `):`) against a newline (or `)`)
        colon = ex.correct.lstrip(")").startswith(":")
        return (":" in c) == colon and (":" in i) != colon
    # recall tasks: the answer token starts the bound name (after an optional space)
    return ex.correct.lstrip().startswith(c.lstrip()) and c.strip() and i.strip()


@pytest.mark.parametrize("vocab", [2048, 1024])
@pytest.mark.parametrize("name", sorted(n for n, spec in TASKS.items() if spec.domain == "python"))
def test_answer_tokens_are_the_intended_ones(name, vocab, stdlib_tokenizers):
    tok = stdlib_tokenizers[vocab]
    data = load_task(name, tok, n_ctx=128, n=64)
    for j, ex in enumerate(data.examples):
        c, i = tok.decode([int(data.correct[j])]), tok.decode([int(data.incorrect[j])])
        assert _expect_tokens(name, ex, c, i), (ex, c, i)


def _open_brackets(text: str) -> list[str]:
    """The unclosed brackets of `text`, outermost first (string literals skipped; no triple quotes)."""
    stack: list[str] = []
    quote = None
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "([{":
            stack.append(ch)
        elif ch in ")]}":
            assert stack and "([{"[")]}".index(ch)] == stack.pop(), text
    return stack


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _name(continuation: str) -> str:
    return re.match(r"\s*(\w+)", continuation).group(1)


def _bound(pattern: str):
    return lambda prompt, answer: re.findall(pattern, prompt)[-1] == _name(answer)


def _accumulator(prompt: str, answer: str) -> bool:
    var = prompt.rsplit("\n", 1)[-1].strip()
    init = re.search(rf"^ *{var} = (.*)$", prompt, re.M).group(1)
    want = {"set()": ".add(", '""': " +=", "''": " +=", "{}": "[", "[]": ".append("}[init]
    return answer.startswith(want)


def _comprehension(prompt: str, answer: str) -> bool:
    last, name = prompt.rsplit("\n", 1)[-1], _name(answer)
    return name in re.findall(r"\w+", last.rsplit(" for", 1)[0]) and last.endswith(" for")


# Per task: does `answer` (a continuation) follow from `prompt` by the rule the docstring states?
RULES = {
    "single_double_quote": lambda p, a: a[0] == [ch for ch in p if ch in "\"'"][-1],
    "bracket_counting": lambda p, a: a.startswith("]" * _open_brackets(p).count("[") + ")"),
    "paren_counting": lambda p, a: a.rstrip("\n") == ")" * len(_open_brackets(p)),
    "bracket_type": lambda p, a: a[0] == {"(": ")", "[": "]"}[_open_brackets(p)[-1]],
    "triple_quote_close": lambda p, a: a.rstrip("\n") == re.findall('"+', p)[-1],
    "indent_after_block": lambda p, a: p.endswith(":") and _indent(a[1:]) == _indent(p.rsplit("\n", 1)[-1]) + 4,
    "set_or_string": _accumulator,
    "set_or_string_fixedvarname": lambda p, a: p.rsplit("\n", 1)[-1].strip() == "x" and _accumulator(p, a),
    "dict_or_list": _accumulator,
    "loop_var_recall": _bound(r"for (\w+) in"),
    "except_as_recall": _bound(r"except .* as (\w+):"),
    "with_as_recall": _bound(r"with .* as (\w+):"),
    "comprehension_var": _comprehension,
    "kwarg_name_recall": _bound(r"\*, (\w+)="),
    "block_colon": lambda p, a: a.lstrip(")").startswith(":") == (p.rsplit("\n", 1)[-1].split()[0] == "if"),
    "dict_or_set_display": lambda p, a: a.startswith(":") == (":" in p.rsplit("{", 1)[-1].split(",")[0]),
}


def test_every_task_has_a_semantic_rule():
    assert set(RULES) == {n for n, spec in TASKS.items() if spec.domain == "python"}  # language tasks: test_cli_discover.py


@pytest.mark.parametrize("name", sorted(n for n, spec in TASKS.items() if spec.domain == "python"))
def test_answers_follow_from_the_code(name):
    rule = RULES[name]
    for ex in TASKS[name].examples(100, seed=5):
        assert rule(ex.prompt, ex.correct), ex
        assert rule(ex.counterfactual, ex.incorrect), ex
        assert not rule(ex.prompt, ex.incorrect), ex


def _compiles(code: str) -> str:
    """"ok", "incomplete" (valid so far) or "error", by Python's own compiler."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return "ok" if codeop.compile_command(textwrap.dedent(code), "<task>", "exec") else "incomplete"
        except SyntaxError:
            return "error"


def _incorrect_is_a_syntax_error(name: str, ex: Example) -> bool:
    """Where the task's docstring says the incorrect continuation is a syntax error."""
    if name in ("single_double_quote", "bracket_counting", "bracket_type", "block_colon", "dict_or_set_display"):
        return True
    if name == "paren_counting":
        return ex.correct == ")\n"  # `))` with one call open
    if name == "indent_after_block":
        return len(ex.incorrect) < len(ex.correct)  # the block's first line not indented deeper
    return False


@pytest.mark.parametrize("name", sorted(n for n, spec in TASKS.items() if spec.domain == "python"))
def test_correct_continuations_compile(name):
    for ex in TASKS[name].examples(60, seed=7):
        assert _compiles(ex.prompt + ex.correct) != "error", ex.prompt + ex.correct
        assert _compiles(ex.counterfactual + ex.incorrect) != "error", ex.counterfactual + ex.incorrect
        if _incorrect_is_a_syntax_error(name, ex):
            assert _compiles(ex.prompt + ex.incorrect) == "error", ex.prompt + ex.incorrect


# --- validation of user tasks -----------------------------------------------------------------

GOOD = {"prompt": "def f(x):\n    return x", "correct": "\n", "incorrect": "."}  # one token each


def _strict(tok, *examples: Example, n_ctx: int = 128, single: bool = False):
    return tokenize_task("user", list(examples), tok, n_ctx, strict=True, single_token=single)


@pytest.mark.parametrize(
    "bad, single, match",
    [
        (Example("def f(x):\n    return x.strip(", "x)", "x]"), False, "start with the same token"),
        (Example("values = ", "1\n", "2\n"), False, "does not end at a token boundary"),
        (Example("def f(x):\n    return x", "\n", ".startswith('#')\n"), True, "tokens in context, not one"),
        (Example('x = "abc', '"\n', "'\n", 'x = "abc def ghi'), False, "counterfactual prompt is"),
        (Example('x = "abc', '"', "'", "x = f("), False, "counterfactual: the prompt does not end at a token"),
        (Example("x = 1\n" * 40 + "y", " =", "."), False, "longer than the model's context"),
    ],
)
def test_strict_validation_names_the_example(bad, single, match, stdlib_tokenizers):
    tok = stdlib_tokenizers[2048]
    good = Example(GOOD["prompt"], GOOD["correct"], GOOD["incorrect"])
    _strict(tok, good, single=single)
    with pytest.raises(TaskError, match=rf"task 'user', example 1 \(prompt .*\): .*{match}"):
        _strict(tok, good, bad, n_ctx=64, single=single)
    lenient = tokenize_task("user", [good, good, good, bad], tok, 64, strict=False, single_token=single)
    assert (len(lenient), lenient.skipped) == (3, 1)


def test_lenient_tokenize_fails_when_most_examples_do_not_fit(stdlib_tokenizers):
    bad = Example("values = ", "1\n", "2\n")
    good = Example(GOOD["prompt"], GOOD["correct"], GOOD["incorrect"])
    with pytest.raises(TaskError, match="only 1 of 3 examples fit"):
        tokenize_task("user", [good, bad, bad], stdlib_tokenizers[2048], 64, strict=False)


def _write(tmp_path, *lines: str):
    path = tmp_path / "mytask.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "line, match",
    [
        ('{"prompt": "x", "correct": "y"', r"mytask.jsonl:3: not valid JSON"),
        ('["prompt", "correct"]', r"mytask.jsonl:3: expected a JSON object"),
        (json.dumps({"prompt": "x = 1", "correct": "\n"}), r"mytask.jsonl:3: missing .*'incorrect'"),
        (json.dumps({**GOOD, "correct": ""}), r"mytask.jsonl:3: missing .*'correct'"),
        (json.dumps({**GOOD, "answer": "x"}), r"mytask.jsonl:3: unknown field\(s\) \['answer'\]"),
    ],
)
def test_jsonl_read_errors_name_the_line(line, match, tmp_path, stdlib_tokenizers):
    path = _write(tmp_path, json.dumps(GOOD), "", line)
    with pytest.raises(TaskError, match=match):
        load_jsonl_task(path, stdlib_tokenizers[2048], n_ctx=128)


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"correct": "\n", "incorrect": ".startswith('#')\n"}, "tokens in context, not one"),
        ({"correct": ".", "incorrect": "."}, "start with the same token"),
        ({"counterfactual": "def f(x):\n    return x + 1"}, "counterfactual prompt is"),
        ({"prompt": "def f(x):\n    return "}, "does not end at a token boundary"),
    ],
)
def test_jsonl_token_errors_name_the_line(fields, match, tmp_path, stdlib_tokenizers):
    path = _write(tmp_path, json.dumps(GOOD), json.dumps({**GOOD, **fields}))
    with pytest.raises(TaskError, match=rf"mytask\.jsonl:2 .*{match}"):
        load_jsonl_task(path, stdlib_tokenizers[2048], n_ctx=128)


def test_jsonl_task_loads(tmp_path, stdlib_tokenizers):
    tok = stdlib_tokenizers[2048]
    cf = "def f(x):\n    return y"
    path = _write(tmp_path, json.dumps(GOOD), json.dumps({**GOOD, "counterfactual": cf}))
    data = load_jsonl_task(path, tok, n_ctx=128)
    assert len(data) == 2 and data.skipped == 0 and data.cf_tokens is None  # one example lacks a cf
    assert data.answer_strings == ("\n", ".")
    with pytest.raises(TaskError, match="does not exist"):
        load_jsonl_task(tmp_path / "missing.jsonl", tok, n_ctx=128)
    with pytest.raises(TaskError, match="holds no examples"):
        load_jsonl_task(_write(tmp_path, "", "  "), tok, n_ctx=128)


def test_loss_and_metric_on_a_task(stdlib_tokenizers):
    data = load_task("bracket_counting", stdlib_tokenizers[1024], n_ctx=128, n=16)
    logits = torch.zeros(len(data), int(data.lengths.max()), 1100)
    assert torch.allclose(task_loss(logit_diff(logits[:, -1], data)), torch.log(torch.tensor(2.0)))
    last = torch.zeros(len(data), 1100)
    last[torch.arange(len(data)), data.correct] = 3.0
    assert torch.equal(logit_diff(last, data), torch.full((len(data),), 3.0))
    assert task_loss(logit_diff(last, data)) < task_loss(-logit_diff(last, data))


def _texts(data):
    return {e.prompt for e in data.examples} | {e.counterfactual for e in data.examples}


@pytest.mark.parametrize("name", ["indent_after_block", "with_as_recall", "bracket_type"])
def test_a_validation_set_can_be_disjoint_from_the_evaluation_set(name, stdlib_tokenizers):
    """`exclude=prompt_texts(...)` keeps a second sample free of every prompt and counterfactual of
    the default evaluation set (indent_after_block and with_as_recall draw the same prompt at
    different seeds ~100 times in 768 candidates), so a checkpoint chosen on it is not chosen on the
    evaluation examples."""
    tok = stdlib_tokenizers[1024]
    test = load_task(name, tok, n_ctx=128, n=N)
    banned = prompt_texts(name, N)
    assert _texts(test) <= banned
    plain = load_task(name, tok, n_ctx=128, n=N, seed=1)
    val = load_task(name, tok, n_ctx=128, n=N, seed=1, exclude=banned)
    assert not _texts(val) & _texts(test) and len(val) == N
    if name != "bracket_type":  # these two overlap at seed 1 unless excluded
        assert _texts(plain) & _texts(test)
    with pytest.raises(TaskError, match="every example"):
        load_task(name, tok, n_ctx=128, n=8, exclude=prompt_texts(name, 8))
