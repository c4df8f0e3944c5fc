"""Python-code tasks decided by the kind of statement or display being written.

Each generator's docstring says why the code determines the answer. These are local patterns (the
deciding token is a few tokens back on the same or the previous line) that occur thousands of times
in the standard library: a compound statement's header ends in `:`, and a `{` display whose first
item has a `key:` is a dict.
"""

from __future__ import annotations

import random

from sparsecircuits.tasks.base import Example, register_task
from sparsecircuits.tasks.python_code import (
    METHOD_NAMES,
    SEQ_NAMES,
    SHORT_NAMES,
    filler,
    pick,
    small_int,
)

# Conditions / expressions that can follow both a compound keyword and a simple one; each ends in a
# word or a closing bracket of its own, so the prompt stops before the statement's last token.
_EXPRS = (
    "self._check({a}",
    "isinstance({a}, str",
    "{a} in self.{s}",
    "{a} is None",
    "not {a}",
    "self.{s}",
    "{a} == {n}",
    "len({s}) > {n}",
    "{a}.startswith(prefix",
    "callable({a}",
)


@register_task("block_colon", "end of a line: `:` after an `if` header, a newline after a `return` statement")
def block_colon(rng: random.Random) -> Example:
    """A line that starts with a compound-statement keyword (here `if`) is a block header and must end
    with `:`; a simple statement (here `return`) must not (a `:` after `return x` is a syntax error).
    The prompt stops right before the end of the line; the answer is the first token of `:` + newline
    + deeper indentation versus newline + same indentation (BPEs merge `)` with `:`, so the
    tokens are e.g. `):` vs `)`). The counterfactual swaps `if` and `return` (one token each)."""
    a = pick(rng, SHORT_NAMES)
    expr = rng.choice(_EXPRS).format(a=a, s=pick(rng, SEQ_NAMES, avoid=[a]), n=small_int(rng))
    closes = ")" if expr.count("(") > expr.count(")") else ""
    # `if` and `return` are one token in small stdlib BPEs (`while`/`assert` can be two, which would
    # make the task partly about assembling the keyword; see python_code's rule for name pools)
    compound, simple = "if", "return"
    ind = rng.choice(["    ", "        "])
    pre = f"def {pick(rng, METHOD_NAMES).lstrip('_')}(self, {a}):\n" if ind == "    " else \
        f"    def {pick(rng, METHOD_NAMES).lstrip('_')}(self, {a}):\n"
    pre += ind + filler(rng, [a]) + "\n" + ind
    body = ind + "    " + rng.choice(["return True", "pass", f"{a} = None", "raise ValueError", "return"])
    after = ind + rng.choice(["return None", "pass", "self._done = True"])
    header_end = closes + ":\n" + body
    simple_end = closes + "\n" + after
    if rng.random() < 0.5:
        return Example(pre + compound + " " + expr, header_end, simple_end, pre + simple + " " + expr)
    return Example(pre + simple + " " + expr, simple_end, header_end, pre + compound + " " + expr)


@register_task("dict_or_set_display", "after an item of a `{...}` display: `:` in a dict, `,` in a set")
def dict_or_set_display(rng: random.Random) -> Example:
    """Inside braces, the first item fixes the display's kind: in `{a: 1, b` the next key `b` must be
    followed by `:` (dict), in `{a, 1, b` by `,` or `}` (set; `b:` would be a syntax error). The
    prompt stops after a key; the contrast is `:` vs `,`. The counterfactual writes the same tokens
    with every `: ` turned into `, ` (or back), which keeps the token count and flips the kind."""
    plain = ["name", "key", "path", "value", "mode", "size", "kind", "data", "line", "text", "1", "2", "3", "0"]
    first = rng.sample(plain + ["'a'", "'b'", "'x'", "'name'"], 3)  # items before the key; [2]: a set's next
    # the key before the answer is never a string: BPEs merge a closing quote with `,` or `:`
    key = rng.choice([k for k in plain if k not in first])
    values = [rng.choice(["None", "0", "1", "True", "False", "-1", small_int(rng)]) for _ in range(3)]
    v = pick(rng, SHORT_NAMES, avoid=[k.strip("'") for k in [*first, key]])
    n_first = rng.randint(1, 2)
    lead = rng.choice(["    ", "        ", ""]) + f"{v} = {{"
    as_dict = ", ".join(f"{k}: {val}" for k, val in zip(first[:n_first], values, strict=False))
    as_set = ", ".join(f"{k}, {val}" for k, val in zip(first[:n_first], values, strict=False))
    dict_end, set_end = f": {values[2]}}}\n", f", {first[2]}}}\n"
    if rng.random() < 0.5:
        return Example(lead + as_dict + ", " + key, dict_end, set_end, lead + as_set + ", " + key)
    return Example(lead + as_set + ", " + key, set_end, dict_end, lead + as_dict + ", " + key)
