"""Shared building blocks of the Python-code tasks (`python_syntax`, `python_names`).

The tasks draw prompts that look like standard-library code: names, call targets, filler statements
and string contents below are common in CPython's `Lib/`. Two tokenizer footguns shape them (the
GPT-2 style pre-tokenizer splits letters/digits, punctuation runs and whitespace runs apart, and a
byte-level BPE trained on Python merges within each piece):
  - a prompt ends right after a word, a digit or a bracket that cannot merge with the answer, never
    after whitespace (``\\n`` + indentation is one token in a BPE trained on code) and never after
    punctuation that the answer would extend (``.`` + ``\"\"\"`` is one token);
  - string contents start with a letter (``("`` is one token but ``("--`` may be split differently
    from ``('--``) and end with a letter or digit.
Pools hold names that are short and common, so that most of them are single tokens in a small
stdlib BPE. A counterfactual that renames a binding must keep the prompt's token count, so recall
tasks draw their two names from one *group*: names that tokenize alike (one token each, or two
each) in stdlib BPEs of 1024 and 2048 tokens, in the contexts ` name`, `(name` and `.name`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

# Names of local variables and parameters that are frequent in the stdlib and (mostly) one token.
SHORT_NAMES = ("name", "key", "line", "path", "value", "data", "item", "text", "module", "node",
               "obj", "arg", "word", "part", "field", "child", "attr", "row", "char", "user", "size")
# Containers / iterables a loop runs over.
SEQ_NAMES = ("names", "lines", "items", "paths", "entries", "args", "values", "keys", "parts", "files",
             "nodes", "rows", "records", "fields", "words", "modules", "children", "tokens", "chunks")
# Names of an accumulator whose type is not given away by the name.
NEUTRAL_NAMES = ("result", "out", "res", "acc", "found", "collected", "output", "buf", "ret", "rv",
                 "seen", "extra", "pending", "parts", "data", "info", "value", "tmp", "r", "s")
FUNC_NAMES = ("parse_header", "read_config", "format_entry", "load_data", "split_path", "get_value",
              "normalize", "collect_names", "build_index", "update_cache", "process_lines",
              "decode_value", "encode_header", "check_args", "walk_tree", "find_modules", "iter_lines",
              "make_key", "render", "write_lines", "expand_vars", "strip_comments", "quote_args",
              "resolve_name", "merge_options", "validate", "convert", "_parse", "_format", "_walk",
              "_collect", "_get_names", "_normalize_path", "_read_header", "_unquote", "_split")
METHOD_NAMES = ("close", "flush", "reset", "update", "run", "handle", "process", "parse", "load",
                "_setup", "_cleanup", "_read_chunk", "_write", "_check", "get_names", "add_entry")
CLASS_NAMES = ("Parser", "Reader", "Writer", "Handler", "Server", "Client", "Entry", "Header",
               "Message", "Formatter", "Loader", "Finder", "Record", "Request", "Response", "Config")
# Words and short phrases found inside string literals; start with a letter, end with a letter/digit.
STRING_WORDS = ("utf-8", "ascii", "strict", "replace", "latin-1", "surrogateescape", "ignore",
                "Content-Type", "text/plain", "no such file", "invalid mode", "expected a string",
                "cannot pickle", "HOME", "PATH", "wb", "rb", "r", "w", "name", "value", "default",
                "localhost", "GET", "POST", "index.html", "unknown encoding", "file not found",
                "bad request", "not supported", "timed out", "closed file", "Error", "None", "key",
                "item", "x", "abc", "spam", "eggs", "hello world", "test", "foo", "bar", "data")
# Summary lines of docstrings; start with a letter, end with a letter.
DOC_SUMMARIES = ("Return the {0} of the {1}", "Return a list of {0}s", "Read the {0} from the {1}",
                 "Write the {0} to the {1}", "Close the {1}", "Set the {0}", "Parse a {0}",
                 "Helper for {0} lookup", "Base class for {0} handlers", "Return True if the {0} is valid",
                 "Remove the {0} from the {1}", "Create a new {0}", "Internal helper", "Reset the {1}",
                 "Format the {0} for output", "Convert a {0} to a {1}", "Represent a {0} entry")
DOC_NOUNS = ("name", "path", "value", "header", "file", "line", "string", "list", "key", "module",
             "object", "message", "buffer", "stream", "socket", "node", "entry", "section", "option")
EXCEPTIONS = ("ValueError", "OSError", "KeyError", "TypeError", "IndexError", "AttributeError",
              "ImportError", "LookupError", "UnicodeError", "RuntimeError", "EOFError")


# Names that are one token in stdlib BPEs of 1024 and 2048 tokens, after a space, `(` or `.`:
# recall tasks rename a binding from one to another of a group, keeping the token count, and the
# answer (the name) is then a single token with a distinct first token in either tokenizer.
VAR_GROUPS = (
    ("name", "path", "data", "value", "key", "line", "module", "string", "code", "test", "file"),
    ("x", "s", "n", "c", "p", "d", "m", "v", "t", "i", "a", "b", "y", "f", "r", "w"),
)


def pick_pair(rng: random.Random, groups: Sequence[Sequence[str]]) -> tuple[str, str]:
    """Two distinct names from one group, the group chosen with probability proportional to its size."""
    group = rng.choices(groups, weights=[len(g) for g in groups])[0]
    a, b = rng.sample(list(group), 2)
    return a, b


def pick(rng: random.Random, pool: Sequence[str], avoid: Sequence[str] = ()) -> str:
    """One element of `pool` that is not in `avoid` and is not a prefix or extension of one."""
    choices = [p for p in pool if not any(p.startswith(a) or a.startswith(p) for a in avoid)]
    return rng.choice(choices)


def small_int(rng: random.Random) -> str:
    return str(rng.choice([0, 1, 2, 3, 4, 5, 8, 10, 16, 32, 64, 100, 255, 1024, rng.randrange(100)]))


def fillers(rng: random.Random, k: int, avoid: Sequence[str] = ()) -> list[str]:
    """`k` distinct unrelated one-line statements (no block openers) mentioning none of `avoid`."""
    ok = [f for f in _FILLERS if not any(a in f.replace("(", " ").replace(".", " ").split() for a in avoid)]
    return [f.format(n=small_int(rng), s=rng.choice(STRING_WORDS)) for f in rng.sample(ok, k)]


def filler(rng: random.Random, avoid: Sequence[str] = ()) -> str:
    """One unrelated one-line statement mentioning none of `avoid`."""
    return fillers(rng, 1, avoid)[0]


_FILLERS = (
    "count = {n}",
    "count += 1",
    "pos = 0",
    "i += 1",
    "size = {n}",
    "flags = 0",
    "sep = os.sep",
    "encoding = \"{s}\"",
    "errors = '{s}'",
    "self._check()",
    "self._pos = {n}",
    "start = time.monotonic()",
    "log.debug(\"{s}\")",
    "assert self._lock is not None",
    "limit = self.maxsize",
    "width = max(width, {n})",
    "n = len(self._buffer)",
    "lineno = {n}",
    "kind = type(self).__name__",
    "depth = {n}",
    "self.count += 1",
    "mode = 'r'",
    "strict = True",
    "done = False",
    "level = {n}",
    "offset = {n}",
    "index = 0",
)
