"""Python-code tasks decided by what a name is bound to: its type, or the name a binding introduced.

Each generator's docstring says why the code determines the answer. "set_or_string" and its
fixed-name variant follow Gao et al. (2025); the others are binding patterns common in the stdlib
(loop variables, `except ... as`, `with ... as`, comprehension variables, keyword-only parameters).
The counterfactual of a recall task renames the binding (every occurrence), so only the one
determining detail changes.
"""

from __future__ import annotations

import random

from sparsecircuits.tasks.base import Example, register_task
from sparsecircuits.tasks.python_code import (
    EXCEPTIONS,
    FUNC_NAMES,
    METHOD_NAMES,
    NEUTRAL_NAMES,
    SEQ_NAMES,
    SHORT_NAMES,
    STRING_WORDS,
    VAR_GROUPS,
    filler,
    fillers,
    pick,
    pick_pair,
    small_int,
)

# Loop openers at indentation 4 for the accumulator tasks: (opener lines, indentation of the use)
_LOOPS = (
    ("    for {item} in {seq}:", "        "),
    ("    for {item} in {seq}:\n        if not {item}:\n            continue", "        "),
    ("    for {item} in {seq}:\n        if {item}:", "            "),
    ("    for i, {item} in enumerate({seq}):", "        "),
    ("    for {item} in sorted({seq}):", "        "),
)


def _accumulate(rng: random.Random, var: str, inits: tuple[str, str], uses: tuple[str, str]) -> Example:
    """A function that binds `var` to one of `inits`, loops, and stops at `var` where it is used:
    the correct continuation is the use that fits the initialiser; the counterfactual swaps it."""
    mine = rng.randrange(2)
    item = pick(rng, SHORT_NAMES, avoid=[var])
    seq = pick(rng, SEQ_NAMES, avoid=[var, item])
    loop, ind = rng.choice(_LOOPS)
    fill = fillers(rng, rng.randint(0, 1), [var, item, seq])
    before = [f"    {f}" for f in fill[: rng.randint(0, len(fill))]]
    inside = [f"{ind}{f}" for f in fill[len(before):]]

    def render(init: str) -> str:
        lines = [f"def {pick(rng, FUNC_NAMES)}({seq}):", f"    {var} = {init}", *before,
                 loop.format(item=item, seq=seq), *inside, f"{ind}{var}"]
        return "\n".join(lines)

    state = rng.getstate()
    prompt = render(inits[mine])
    rng.setstate(state)  # same function name in the counterfactual
    cf = render(inits[1 - mine])
    use = [u.format(item=item) + "\n" for u in uses]
    return Example(prompt, use[mine], use[1 - mine], cf)


_SET_STR_DOC = """A variable bound to `set()` is grown with `.add(...)` (a set has no `+=` with a string), one
    bound to `""` with `+= ...` (a str has no `.add`). The prompt binds the variable, runs a loop with
    unrelated statements around it, and stops at the variable at the start of a line; the answers are
    `.add(` vs ` +=`. The counterfactual binds it to the other type."""


def _string_init(rng: random.Random) -> str:
    return rng.choice(['""', "''"])


@register_task("set_or_string", "`.add(` after `x = set()`, `+=` after `x = \"\"` (variable name varies)")
def set_or_string(rng: random.Random) -> Example:
    var = rng.choice(NEUTRAL_NAMES)
    return _accumulate(rng, var, ("set()", _string_init(rng)), (".add({item})", " += {item}"))


@register_task("set_or_string_fixedvarname", "`.add(` after `x = set()`, `+=` after `x = \"\"` (always named x)")
def set_or_string_fixedvarname(rng: random.Random) -> Example:
    return _accumulate(rng, "x", ("set()", _string_init(rng)), (".add({item})", " += {item}"))


set_or_string.__doc__ = _SET_STR_DOC
set_or_string_fixedvarname.__doc__ = _SET_STR_DOC + " The variable is always called `x`."


# Accumulator names that do not hint at a type and are one token each (see python_code.VAR_GROUPS)
_ACC_NAMES = ("result", "out", "res", "data", "value")


@register_task("dict_or_list", "`[key] =` for the name bound to `{}`, `.append(` for the one bound to `[]`")
def dict_or_list(rng: random.Random) -> Example:
    """Two accumulators are bound, one to `{}` and one to `[]`; a dict is filled by item assignment
    (`d[key] = value`; it has no `.append`) and a list by `.append(...)` (indexing it with a key
    fails). The prompt stops at one of the two names at the start of a line inside the loop; the
    answers are `[` vs `.`. The counterfactual names the other accumulator there."""
    d, lst = rng.sample(_ACC_NAMES, 2)
    item = pick(rng, SHORT_NAMES, avoid=[d, lst])
    seq = pick(rng, SEQ_NAMES, avoid=[d, lst, item])
    inits = [f"    {d} = {{}}", f"    {lst} = []"]
    rng.shuffle(inits)
    key = rng.choice([item, f"{item}.name", f"{item}[0]", f"id({item})", f"str({item})"])
    loop, ind = rng.choice(_LOOPS)
    head = "\n".join([f"def {pick(rng, FUNC_NAMES)}({seq}):", *inits, loop.format(item=item, seq=seq)])
    use_dict, use_list = f"[{key}] = {item}\n", f".append({item})\n"
    if rng.random() < 0.5:
        return Example(f"{head}\n{ind}{d}", use_dict, use_list, f"{head}\n{ind}{lst}")
    return Example(f"{head}\n{ind}{lst}", use_list, use_dict, f"{head}\n{ind}{d}")


# (statement up to the loop variable, what follows it)
_LOOP_USES = (
    ("{acc}.append(", ")"),
    ("{acc}.append(str(", "))"),
    ("yield", ""),
    ("total +=", ".size"),
    ("print(", ", file=sys.stderr)"),
    ("if not", ":"),
    ("self._process(", ")"),
    ("return", ""),
)


@register_task("loop_var_recall", "the loop variable's name where the loop body uses it")
def loop_var_recall(rng: random.Random) -> Example:
    """Inside `for name in names:` the current element is bound to `name`; any other name (here one
    bound nowhere in the function) would be a NameError. The prompt stops in the loop body where the
    element is used (`result.append(`, `yield`, ...); the answers are the loop variable and another
    plausible name. The counterfactual renames the loop variable to that other name."""
    var, other = pick_pair(rng, VAR_GROUPS)
    seq = pick(rng, SEQ_NAMES, avoid=[var, other])
    acc = pick(rng, NEUTRAL_NAMES, avoid=[var, other, seq])
    start, tail = rng.choice(_LOOP_USES)
    start = start.format(acc=acc)
    sep = " " if start[-1].isalpha() else ""
    fill = [f"        {filler(rng, [var, other, acc])}" for _ in range(rng.randint(0, 1))]

    def render(name: str) -> str:
        return "\n".join([f"def {pick(rng, FUNC_NAMES)}({seq}):", f"    {acc} = []",
                          f"    for {name} in {seq}:", *fill, f"        {start}"])

    state = rng.getstate()
    prompt = render(var)
    rng.setstate(state)
    return Example(prompt, sep + var + tail + "\n", sep + other + tail + "\n", render(other))


# `err` and `exc` are as common, but tokenize differently from these in small BPEs
_EXC_NAMES = ("e", "ex", "error", "exception")
_TRY_BODIES = ("{v} = int({a})", "os.remove({a})", "{v} = json.loads({a})", "return self._cache[{a}]",
               "{v} = open({a}, 'rb')", "{v} = {a}.decode('ascii')", "{v} = self._parse({a})",
               "import {a}", "{v} = getattr(self, {a})", "{v} = float({a})")
# (statement up to the exception variable, what follows it)
_EXC_USES = (
    ("raise {exc2}('{s}') from", ""),
    ("raise {exc2}(str(", ")) from None"),
    ("log.warning('%s: %s', {a},", ")"),
    ("errors.append(", ")"),
    ("print('error:',", ", file=sys.stderr)"),
    ("return None,", ""),
    ("self.fail(str(", "))"),
    ("{v} = str(", ")"),
    ("if", ".errno == errno.ENOENT:"),
    ("self._error =", ""),
)


@register_task("except_as_recall", "the name bound by `except ... as name` where the handler uses it")
def except_as_recall(rng: random.Random) -> Example:
    """`except OSError as err:` binds the caught exception to `err` inside the handler; another name
    (bound nowhere here) would be a NameError. The prompt stops in the handler where the exception
    is used (`raise ... from`, `log.warning(...,`, ...); the answers are the bound name and another
    common exception name. The counterfactual binds the exception to that other name."""
    e, other = rng.sample(_EXC_NAMES, 2)
    a = pick(rng, SHORT_NAMES, avoid=[e, other])
    v = pick(rng, SHORT_NAMES, avoid=[e, other, a])
    start, tail = rng.choice(_EXC_USES)
    start = start.format(a=a, v=v, exc2=rng.choice(EXCEPTIONS), s=rng.choice(STRING_WORDS))
    sep = " " if start[-1].isalpha() or start[-1] == "," else ""
    body = rng.choice(_TRY_BODIES).format(a=a, v=v)
    exc = rng.choice(EXCEPTIONS + ("(OSError, ValueError)", "Exception"))

    def render(name: str) -> str:
        return "\n".join([f"def {pick(rng, FUNC_NAMES)}({a}):", "    try:", f"        {body}",
                          f"    except {exc} as {name}:", f"        {start}"])

    state = rng.getstate()
    prompt = render(e)
    rng.setstate(state)
    return Example(prompt, sep + e + tail + "\n", sep + other + tail + "\n", render(other))


# (context manager with {p} the path, statement up to the bound name, what follows it, names to bind):
# the names are one token each (python_code.VAR_GROUPS), so renaming keeps the token count
_READ, _WRITE, _DIR = ("f", "file"), ("f", "out", "file"), ("d", "path", "p")
_WITH = (
    ("open({p})", "return", ".read()", _READ),
    ("open({p}, 'rb')", "data =", ".read()", _READ),
    ("open({p}, encoding='utf-8')", "for line in", ":", _READ),
    ("open({p}, 'w')", "json.dump(self.data,", ", indent=2)", _WRITE),
    ("open({p}, 'w')", "print(self.name, file=", ")", _WRITE),
    ("open({p}, 'rb')", "return pickle.load(", ")", _READ),
    ("open({p})", "lines =", ".readlines()", _READ),
    ("open({p}, 'wb')", "pickle.dump(obj,", ")", _WRITE),
    ("tokenize.open({p})", "return", ".read()", _READ),
    ("gzip.open({p})", "return", ".read()", _READ),
    ("io.open({p}, 'rb')", "header =", ".read(4)", _READ),
    ("open({p}, 'a')", "self._write(", ", record)", _WRITE),
    ("tempfile.TemporaryDirectory()", "target = os.path.join(", ", {b})", _DIR),
    ("tempfile.TemporaryDirectory()", "self.addCleanup(shutil.rmtree,", ")", _DIR),
    ("os.scandir({p})", "for entry in", ":", ("it", "d")),
    ("warnings.catch_warnings(record=True)", "self.assertEqual(len(", "), 1)", ("w", "r", "c")),
    ("subprocess.Popen(cmd, stdout=PIPE)", "out, err =", ".communicate()", ("p", "s", "c")),
    ("socket.create_connection(({p}, 80))", "return", ".recv(1024)", ("s", "c")),
)


@register_task("with_as_recall", "the name bound by `with ... as name` where the block uses it")
def with_as_recall(rng: random.Random) -> Example:
    """`with open(path) as fp:` binds the opened file to `fp` inside the block; another name (bound
    nowhere here) would be a NameError. The prompt stops in the block where the file is used
    (`return`, `data =`, `json.dump(obj,` ...); the answers are the bound name and another common
    file-object name. The counterfactual binds the file to that other name."""
    cm, start, tail, names = rng.choice(_WITH)
    f, other = rng.sample(names, 2)
    p = rng.choice(["path", "filename", "self.path", "fn", "name", "file_path", "self._filename", "host"])
    tail = tail.format(b=rng.choice(["name", "'setup.cfg'", "'data'", "base"]))
    sep = "" if start.endswith(("(", "=")) and not start.endswith(" =") else " "
    if p.startswith("self.") or "self." in start:
        args = "self" if p.startswith("self.") else f"self, {p}"
        head, ind = f"    def {pick(rng, METHOD_NAMES).lstrip('_')}({args}):", "        "
    else:
        head, ind = f"def {pick(rng, FUNC_NAMES)}({p}):", "    "

    def render(name: str) -> str:
        return "\n".join([head, f"{ind}with {cm.format(p=p)} as {name}:", f"{ind}    {start}"])

    return Example(render(f), sep + f + tail + "\n", sep + other + tail + "\n", render(other))


# (comprehension up to the iteration variable, the expression uses {x}, what follows the for-target)
_COMPREHENSIONS = (
    ("{v} = [{x}.strip() for", " in {seq}]"),
    ("{v} = [{x}.name for", " in {seq}]"),
    ("{v} = [{x} for", " in {seq} if {x}]"),
    ("{v} = {{{x}.name: {x} for", " in {seq}}}"),
    ("{v} = {{{x}.lower() for", " in {seq}}}"),
    ("return sum({x}.size for", " in {seq})"),
    ("return any({x}.startswith(prefix) for", " in {seq})"),
    ("return ', '.join(str({x}) for", " in {seq})"),
    ("{v} = sorted({x}[0] for", " in {seq})"),
    ("return [{x} for", " in self.{seq} if {x} is not None]"),
    ("if all(isinstance({x}, str) for", " in {seq}):"),
    ("{v} = [int({x}) for", " in {seq}.split(',')]"),
)


@register_task("comprehension_var", "the variable a comprehension's `for` binds: the one its expression uses")
def comprehension_var(rng: random.Random) -> Example:
    """In `[name.strip() for name in names]` the element expression, written first, uses the
    variable that the `for` clause then binds; with any other target the expression's name would be
    unbound (NameError; nothing else here defines it). The prompt stops after `for`; the answers
    are the name the expression uses and another plausible name. The counterfactual uses that
    other name in the expression."""
    x, other = pick_pair(rng, VAR_GROUPS)
    seq = pick(rng, SEQ_NAMES, avoid=[x, other])
    v = pick(rng, NEUTRAL_NAMES, avoid=[x, other, seq])
    comp, tail = rng.choice(_COMPREHENSIONS)
    head = f"def {pick(rng, FUNC_NAMES)}({seq}):"
    fill = [f"    {filler(rng, [x, other, seq, v])}" for _ in range(rng.randint(0, 1))]

    def render(name: str) -> str:
        return "\n".join([head, *fill, "    " + comp.format(v=v, x=name, seq=seq)])

    return Example(render(x), " " + x + tail.format(x=x, seq=seq) + "\n",
                   " " + other + tail.format(x=other, seq=seq) + "\n", render(other))


# Keyword-only parameter names, grouped by token length (see python_code.VAR_GROUPS)
_KEYWORD_GROUPS = (
    ("key", "name", "path", "check", "type", "data", "value", "file", "module", "code", "string"),
    ("encoding", "target"),
    ("timeout", "msg"),
)
_DEFAULTS = ("None", "True", "False", "0", "1", "-1", "10", "100", "()", "''")


@register_task("kwarg_name_recall", "the keyword-only parameter's name when calling a function defined above")
def kwarg_name_recall(rng: random.Random) -> Example:
    """`def f(path, *, timeout=None)` takes one positional argument and one keyword-only parameter,
    so a call `f(x,` can only continue with `timeout=`: passing any other keyword is a TypeError
    (and a second positional one too). The prompt defines the function, then calls it with its
    positional argument and stops after the comma; the answers are the declared keyword and another
    common one. The counterfactual declares (and uses) the other keyword instead."""
    kw, other = pick_pair(rng, _KEYWORD_GROUPS)
    func = pick(rng, FUNC_NAMES)
    p, a = rng.sample([n for n in SHORT_NAMES if n not in (kw, other)], 2)
    default = rng.choice(_DEFAULTS)
    val = rng.choice(["True", "False", "None", small_int(rng), "self." + kw.lstrip("_")])
    caller = f"def {rng.choice(['main', 'run', 'test', pick(rng, FUNC_NAMES, avoid=[func])])}({a}):"
    call = rng.choice(["{v} = {f}({a},", "return {f}({a},", "{f}({a},"])
    call = call.format(v=pick(rng, NEUTRAL_NAMES, avoid=[a, p]), f=func, a=a)

    def render(name: str) -> str:
        body = rng.choice([f"return _impl({p}, {name})", f"{name} = _resolve({name})",
                           f"{p}.{name} = {name}", f"return {p}.get({name})"])
        return "\n".join([f"def {func}({p}, *, {name}={default}):", f"    {body}", "", "",
                          caller, f"    {call}"])

    state = rng.getstate()
    prompt = render(kw)
    rng.setstate(state)
    return Example(prompt, f" {kw}={val})\n", f" {other}={val})\n", render(other))
