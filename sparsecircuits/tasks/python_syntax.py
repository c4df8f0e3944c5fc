"""Python-code tasks decided by syntax: quotes, brackets and indentation.

Each generator's docstring says why the code determines the answer. Bracket and quote tasks follow
Gao et al. (2025) ("single_double_quote", "bracket_counting"); the others are patterns equally common
in the stdlib. Prompts end inside the construct, right before the token that closes or opens it.
"""

from __future__ import annotations

import random

from sparsecircuits.tasks.base import Example, register_task
from sparsecircuits.tasks.python_code import (
    CLASS_NAMES,
    DOC_NOUNS,
    DOC_SUMMARIES,
    EXCEPTIONS,
    FUNC_NAMES,
    METHOD_NAMES,
    SEQ_NAMES,
    SHORT_NAMES,
    STRING_WORDS,
    filler,
    pick,
    small_int,
)

# (statement up to the opening quote, what follows the closing quote in real code)
_QUOTE_LINES = (
    ("{v} = ", "\n"),
    ("return ", "\n"),
    ("raise {exc}(", ")\n"),
    ("{v} = {w}.get(", ")\n"),
    ("if {v} == ", ":\n"),
    ("self.assertEqual({v}, ", ")\n"),
    ("{w}.write(", ")\n"),
    ("print(", ")\n"),
    ("{v} = os.environ.get(", ")\n"),
    ("if not {w}.startswith(", "):\n"),
    ("{v} = {w}.encode(", ")\n"),
    ("{v}.append(", ")\n"),
    ("{v} = {w}.split(", ")\n"),
)


def _header(rng: random.Random, args: str) -> tuple[str, str]:
    """A function or method header line and the indentation of its body."""
    if rng.random() < 0.5:
        return f"def {pick(rng, FUNC_NAMES)}({args}):", "    "
    return f"    def {pick(rng, METHOD_NAMES)}(self, {args}):", "        "


@register_task("single_double_quote", "closing quote of a string literal: the quote character that opened it")
def single_double_quote(rng: random.Random) -> Example:
    """A string literal ends at the same quote character that opened it (inside "..." a ' is an ordinary
    character, and vice versa), so after `x = "abc` the closing token is `"`, not `'`. The prompt stops
    inside the literal after a word; the counterfactual opens the same literal with the other quote."""
    q, other = rng.sample(['"', "'"], 2)
    w = pick(rng, SHORT_NAMES)
    v = pick(rng, SHORT_NAMES, avoid=[w])
    head, ind = _header(rng, w)
    start, tail = rng.choice(_QUOTE_LINES)
    start = start.format(v=v, w=w, exc=rng.choice(EXCEPTIONS))
    lines = [head] + [ind + filler(rng, [v, w]) for _ in range(rng.randint(0, 1))]
    body = "\n".join(lines) + "\n" + ind + start
    text = rng.choice(STRING_WORDS)
    return Example(body + q + text, q + tail, other + tail, body + other + text)


def _elements(rng: random.Random, n: int) -> list[str]:
    kind = rng.choice(["int", "int", "name", "float", "neg"])
    if kind == "name":
        return [rng.choice(["a", "b", "c", "x", "y", "z", "n", "i", "j"]) for _ in range(n)]
    if kind == "float":
        return [f"{rng.randrange(10)}.{rng.randrange(10)}" for _ in range(n)]
    if kind == "neg":
        return [rng.choice(["", "-"]) + str(rng.randrange(1, 20)) for _ in range(n)]
    return [str(rng.randrange(100)) for _ in range(n)]


# (lines before, the call that takes the nested list); the list is the call's last argument
_NESTED_CALLS = (
    ("    def test_{t}(self):\n        {v} = {f}({w})\n", "        self.assertEqual({v}, "),
    ("    def test_{t}(self):\n        {v} = {f}({w})\n", "        self.assertEqual(list({v}), "),
    ("    def test_{t}(self):\n", "        self.assertEqual({f}({w}), "),
    ("def {f}({w}):\n    writer = csv.writer({w})\n", "    writer.writerows("),
    ("def {f}({w}):\n    {v} = []\n", "    {v}.extend("),
    ("def {f}({w}):\n    {v} = []\n", "    {v}.append("),
)


@register_task("bracket_counting", "closers after a nested list in a call: `]])` at depth 2, `])` at depth 1")
def bracket_counting(rng: random.Random) -> Example:
    """Brackets close innermost first, so the literal in `f(x, [[1, 2], [5, 3, 11` (two `[` open
    inside the call) must close with `]]` before the call's `)`; at depth 1 (`f(x, [[1, 2], -5, 3, 11`)
    it closes with `])`. The continuations are `]])` and `])`, each a syntax error at the other depth.
    Where a tokenizer has no `]]` token the answer tokens are `]` vs `])`: the depth decides whether
    the list closes together with the call. The prompt is at depth 2 or 1 at random, and the
    counterfactual turns the last row's opening ` [` into a minus sign ` -` (one token for one, in any
    BPE) or back. Gao et al. score each prompt together with its contrast prompt, so both depths count
    there too; with depth 2 only, a model that always prefers `])` would score 0 and one that always
    prefers `]` would score 1, whatever it knows about depth."""
    v, w = rng.sample(SHORT_NAMES, 2)
    before, call = rng.choice(_NESTED_CALLS)
    fmt = dict(t=pick(rng, DOC_NOUNS), v=v, w=w, f=pick(rng, FUNC_NAMES).lstrip("_"))
    head = before.format(**fmt) + call.format(**fmt) + "["
    last = _elements(rng, rng.randint(2, 4))
    last[0] = last[0].lstrip("-")
    row = _elements(rng, rng.randint(1, 5 - len(last)))
    done = head + f"[{', '.join(row)}], "
    rest = ", ".join(last)
    deep, shallow = done + "[" + rest, done + "-" + rest
    if rng.random() < 0.5:
        return Example(deep, "]])\n", "])\n", shallow)
    return Example(shallow, "])\n", "]])\n", deep)


# (outer call up to its first argument, inner call); both take several positional arguments
_OUTER = ("self.assertEqual(", "print(", "max(", "min(", "os.path.join({w}, ", "log.debug('%s %s', ",
          "{v} = max(", "{v} = os.path.join(", "return min(", "self.assertEqual({w}, ")
_INNER = ("max(", "min(", "os.path.join(", "zip(", "map(str, ", "os.path.join(self.root, ", "max(0, ",
          "min(self.limit, ")


@register_task("paren_counting", "closers after nested calls: `))` when two calls are open, `)` when one is")
def paren_counting(rng: random.Random) -> Example:
    """In `print(max(a, b` two calls are open, so the statement ends with `))`; in `print(max(a), b`
    the inner call is already closed and it ends with `)`. Continuations `))` + newline vs `)` +
    newline (`)` then a newline leaves a bracket open: legal only as an unusual line continuation,
    and `))` at depth 1 is a syntax error). The prompt is at depth 1 or 2 at random; the
    counterfactual moves the inner call's `)` to just after its first argument or removes it."""
    w = pick(rng, SHORT_NAMES)
    v = pick(rng, SHORT_NAMES, avoid=[w])
    head, ind = _header(rng, w)
    outer = rng.choice(_OUTER).format(v=v, w=w)
    inner = rng.choice(_INNER)
    pool = [x for x in SHORT_NAMES if x not in (v, w)] + ["self.count", "self.size", "0", "1", "n", "i"]
    args = [rng.choice(pool) if rng.random() < 0.8 else small_int(rng) for _ in range(rng.randint(2, 4))]
    k = rng.randint(1, len(args) - 1)
    pre = head + "\n" + ind + outer + inner
    deep = pre + ", ".join(args)
    shallow = pre + ", ".join(args[:k]) + "), " + ", ".join(args[k:])
    if rng.random() < 0.5:
        return Example(deep, "))\n", ")\n", shallow)
    return Example(shallow, ")\n", "))\n", deep)


# (statement up to the opening bracket, what follows the closing bracket)
_BRACKET_LINES = (
    ("{v} = ", "\n"),
    ("for {x} in ", ":\n"),
    ("if {x} in ", ":\n"),
    ("return ", "\n"),
    ("{v} = {f}({w}, ", ")\n"),
    ("{v}.extend(", ")\n"),
    ("self.assertEqual({v}, ", ")\n"),
    ("{v} = sorted(", ")\n"),
    ("if {x} not in ", ":\n"),
    ("{v} = {w} + ", "\n"),
)


@register_task("bracket_type", "closing bracket of a display: `)` after `(`, `]` after `[`")
def bracket_type(rng: random.Random) -> Example:
    """The innermost open bracket decides the closer: `x = (a, b` ends with `)`, `x = [a, b` with `]`
    (a mismatched closer is a syntax error). The prompt stops after the last element of a tuple or
    list; the counterfactual opens the same display with the other bracket."""
    opener, closer, other_opener, other_closer = rng.choice([("(", ")", "[", "]"), ("[", "]", "(", ")")])
    w = pick(rng, SEQ_NAMES)
    x, v = rng.sample([n for n in SHORT_NAMES if not w.startswith(n)], 2)
    head, ind = _header(rng, w)
    start, tail = rng.choice(_BRACKET_LINES)
    start = start.format(v=v, w=w, x=x, f=pick(rng, FUNC_NAMES))
    pool = [n for n in SHORT_NAMES if n not in (v, x, w)] + ["None", "self.name", "os.sep", "sys.argv"]
    elems = [rng.choice(pool) if rng.random() < 0.7 else small_int(rng) for _ in range(rng.randint(2, 4))]
    pre = head + "\n" + ind + start
    content = ", ".join(elems)
    return Example(pre + opener + content, closer + tail, other_closer + tail, pre + other_opener + content)


_DOC_CONTEXTS = (
    "def {f}({w}):\n    ",
    "    def {m}(self, {w}):\n        ",
    "    def {m}(self):\n        ",
    "class {c}({b}):\n    ",
    "class {c}:\n    ",
    "{u} = ",
    "    @property\n    def {w}(self):\n        ",
)


@register_task("triple_quote_close", "closing a docstring or string: `\"\"\"` after `\"\"\"`, `\"` after `\"`")
def triple_quote_close(rng: random.Random) -> Example:
    """A string opened with triple quotes ends only at triple quotes (a lone `"` inside it is an
    ordinary character); one opened with a single `"` ends at the next `"`. So after
    `\"\"\"Return the name` the closer is `\"\"\"`, after `"Return the name` it is `"`. The prompt stops
    after the last word of a one-line docstring or string; the counterfactual swaps the opener."""
    triple = rng.random() < 0.5
    ctx = rng.choice(_DOC_CONTEXTS).format(
        f=pick(rng, FUNC_NAMES), m=pick(rng, METHOD_NAMES), w=pick(rng, SHORT_NAMES),
        c=pick(rng, CLASS_NAMES), b=rng.choice(["object", "Exception", "dict", "Base"] + list(CLASS_NAMES)),
        u=rng.choice(["__doc__", "_USAGE", "_HELP", "DESCRIPTION", "msg", "usage", "_DOC"]))
    nouns = rng.sample(DOC_NOUNS, 2)
    text = rng.choice(DOC_SUMMARIES).format(*nouns)
    mine, theirs = ('"""', '"') if triple else ('"', '"""')
    return Example(ctx + mine + text, mine + "\n", theirs + "\n", ctx + theirs + text)


# Scenes for indent_after_block: lines at relative levels, the last a block opener, and a body line.
_SCENES = (
    ((0, "def {m}(self, {a}):"), (1, "if {a} is None:"), "return None"),
    ((0, "def {m}(self):"), (1, "for {x} in self.{s}:"), "{x}.close()"),
    ((0, "def {m}(self, {a}):"), (1, "{fill}"), (1, "while {a}:"), "{a} = self._read({a})"),
    ((0, "def {m}(self, path):"), (1, "with open(path) as f:"), "return f.read()"),
    ((0, "def {m}(self, {a}):"), (1, "try:"), "return self._cache[{a}]"),
    ((0, "@property"), (0, "def {m}(self):"), "return self._{m}"),
    ((0, "def {m}(self, {s}):"), (1, "for {x} in {s}:"), (2, "if not {x}:"), "continue"),
    ((0, "class {c}({b}):"), (1, "def {m}(self):"), "pass"),
    ((0, "def {m}(self, {a}):"), (1, "{fill}"), (1, "if {a}:"), "self._{m}({a})"),
    ((0, "def {m}(self, {s}):"), (1, "for {x} in {s}:"), (2, "try:"), "{x}.close()"),
    ((0, "def __iter__(self):"), (1, "for {x} in self.{s}:"), "yield {x}"),
    ((0, "try:"), (1, "{fill}"), (0, "except {e}:"), "pass"),
    ((0, "def {m}(self):"), (1, "if not self.{s}:"), (2, "{fill}"), (1, "else:"), "return self.{s}"),
)


@register_task("indent_after_block", "indentation after a block opener ending in `:`: one level (4 spaces) deeper")
def indent_after_block(rng: random.Random) -> Example:
    """A line ending in `:` (def, if, for, while, with, try, else, ...) opens a block whose first line
    must be indented deeper than the opener (at the same depth it is a syntax error), and code that
    indents in steps of 4 spaces indents it by exactly 4 more. The prompt stops after the `:`; the
    answer is the newline + indentation token. The counterfactual shifts the whole snippet (a method
    body vs a function nested in a method) by 4 spaces, so its answer is 4 spaces deeper or shallower."""
    *lines, body = rng.choice(_SCENES)
    a, x = rng.sample(SHORT_NAMES, 2)
    fmt = dict(m=pick(rng, METHOD_NAMES).lstrip("_"), a=a, x=x, s=pick(rng, SEQ_NAMES, avoid=[a, x]),
               c=pick(rng, CLASS_NAMES), b=rng.choice(["object", "Exception"] + list(CLASS_NAMES)),
               e=rng.choice(EXCEPTIONS), fill=filler(rng, [a, x]))
    base, other = rng.sample([4, 8], 2)

    def render(b: int) -> str:
        return "\n".join(" " * (b + 4 * lvl) + text.format(**fmt) for lvl, text in lines)

    deeper = lines[-1][0] + 1
    stmt = body.format(**fmt)
    return Example(render(base), "\n" + " " * (base + 4 * deeper) + stmt,
                   "\n" + " " * (other + 4 * deeper) + stmt, render(other))
