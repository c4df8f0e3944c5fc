"""Every CLI command refuses bad input early and clearly: a table of malformed inputs per command.

HOW TO ADD A COMMAND: give it at least `MIN_ROWS` rows in `ROWS` (`test_every_command_has_rows` fails
otherwise). A row is

    Row("command", "argv after the command, {placeholders} allowed", "substring of the error message")

and asserts, running `sparsecircuits.cli.main.main([command, *argv])` in-process:
  - exit status 2 (`run`'s error path, or argparse's for a bad flag value);
  - one output line holding "error:" and the substring (case-insensitive), and no traceback;
  - no model forward pass (Transformer.forward raises while a row runs);
  - bounded memory: at most `MEMORY_CAP` bytes of Python allocations at peak (tracemalloc; a 50 MB task
    line read whole would exceed it);
  - nothing written: no new, changed or temporary file anywhere under the fixture folder (outputs, the
    cache, the inputs themselves).
Placeholders (see `files`): {ck} a tiny checkpoint of ours with tokenizer.json, {ck_notok} one without,
{ck_trunc} one with a truncated model.safetensors, {ck_badcfg} / {ck_utf8cfg} one whose config.json is cut short / not UTF-8,
{dict} a tiny SAE folder and {dict_trunc} one with truncated weights, {tcs} a transcoder set of one layer, {tasks} a valid JSONL task,
{task_huge} a task whose second line is 50 MB, {task_utf8} / {task_json} / {task_deep} / {task_list} a
task with a non-UTF-8 / truncated JSON / too deeply nested / non-object line 2, {circuit} a valid circuit
JSON, {circuit_trunc} / {circuit_list} / {circuit_utf8} broken ones, {pickle_evil} a pickle that would run
code, {pickle_garbage} random bytes, {file} an existing regular file, {foreign} a non-empty folder of
someone else's, {ro} a folder that cannot be written, {out} an empty folder for outputs, {missing} a path
that does not exist, {hostile} a missing path named like rich markup, {empty} an empty file. Rows whose --out is unwritable prove the check runs before the work: they pass valid
inputs, and the command would otherwise train, prune or load for minutes.
"""

from __future__ import annotations

import os
import pickle
import signal
import stat
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import tiny_model
from sparsecircuits.cli.main import COMMANDS, command_module, main
from sparsecircuits.model.transformer import Transformer

MIN_ROWS = 3
GUARD_S = 20  # a row still running after this long did real work (a guard against hangs, not a timing test)
MEMORY_CAP = 24 * 2**20  # bytes of Python allocations at peak while a row runs
HUGE_LINE = 50 * 2**20  # the 50 MB task line
TOKENIZER = Path(__file__).resolve().parents[1] / "sparsecircuits" / "assets" / "quickstart" / "dense" / "tokenizer.json"


@dataclass(frozen=True)
class Row:
    command: str
    argv: str  # split on spaces after formatting the placeholders (fixture paths have no spaces)
    match: str  # a substring of the one error line, case-insensitive

    @property
    def id(self) -> str:
        return f"{self.command} {self.argv}"


ROWS = [
    # --- models
    Row("train", "--out {file} --steps 1", "is a file; a folder is needed"),
    Row("train", "--out {ro}/run --steps 1", "cannot write"),
    Row("train", "--out {out}/run --steps 0", "steps"),
    Row("train", "--out {out}/run --preset huge", "invalid choice"),
    Row("info", "{missing}", "does not exist"),
    Row("info", "{ck_trunc}", "truncated"),
    Row("info", "{ck_badcfg}", "not valid JSON"),
    Row("info", "{file}", "neither a checkpoint folder"),
    Row("info", "{ck_utf8cfg}", "config.json' is not UTF-8"),
    Row("export", "{ck} --out {file}", "is a file; a folder is needed"),
    Row("export", "{ck} --out {ro}/x", "cannot write"),
    Row("export", "{ck} --out {foreign}", "would be replaced"),
    Row("export", "{ck_trunc} --out {out}/x", "truncated"),
    Row("average", "{ck} {ck} --out {ro}/avg --no-val", "cannot write"),
    Row("average", "{ck} {ck} --out {foreign} --no-val", "would be replaced"),
    Row("average", "{ck} --out {out}/avg --no-val", "two or more"),
    Row("average", "{ck} {ck_notok} --out {out}/avg --no-val", "not a checkpoint written by `sparsecircuits train`"),
    # --- weight-sparse circuits
    Row("quickstart", "--out {file}", "is a file; a folder is needed"),
    Row("quickstart", "--out {ro}/report", "cannot write"),
    Row("quickstart", "--out {out}/r --tasks no_such_task", "unknown task"),
    Row("quickstart", "--out {out}/r --n-examples 1", "must be >= 2"),
    Row("quickstart", "--out {out}/r --workers -1", "must be >= 0"),
    Row("prune", "{ck} --task bracket_type --out {ro}/c.json", "cannot write"),
    Row("prune", "{ck} --task bracket_type --extra-targets abc --out {out}/c.json", "extra_targets must be float numbers"),
    Row("prune", "{ck} --task bracket_type --out {foreign}", "is a folder; a file path is needed"),
    Row("prune", "{ck} --task-file {task_huge} --out {out}/c.json", "line longer than"),
    Row("prune", "{ck} --task-file {task_utf8} --out {out}/c.json", "task_utf8.jsonl:2: not UTF-8"),
    Row("prune", "{ck_notok} --task bracket_type --out {out}/c.json", "no tokenizer.json"),
    Row("prune", "{ck} --task bracket_type --n-examples 0 --out {out}/c.json", "must be >= 1"),
    Row("prune", "{ck} --task bracket_type --n-examples many --out {out}/c.json", "expected an integer, got 'many'"),
    Row("compare", "{missing} {out}", "does not exist"),
    Row("compare", "{out} {out}", "no task has a circuit"),
    Row("compare", "{circuits_bad} {out}", "not valid JSON"),
    Row("tasks", "{ck_notok}", "no tokenizer.json"),
    Row("tasks", "{ck} --task-file {task_huge}", "line longer than"),
    Row("tasks", "{ck} --task-file {task_utf8}", "task_utf8.jsonl:2: not UTF-8 text (byte 0xff"),
    Row("tasks", "{ck} --task-file {task_json}", "task_json.jsonl:2: not valid JSON"),
    Row("tasks", "{ck} --task-file {task_deep}", "task_deep.jsonl:2: not a task example (JSON nested too deeply)"),
    Row("tasks", "{ck} --task-file {task_list}", "task_list.jsonl:2: expected a JSON object"),
    Row("tasks", "{ck} --task-file {missing}", "does not exist"),
    Row("tasks", "{ck} --task-file {empty}", "holds no examples"),
    Row("tasks", "{ck} --task-file {hostile}", "[bold]not-markup:-1:"),  # printed as written, not as rich markup
    Row("tasks", "{ck} --json {ro}/t.json", "cannot write"),
    Row("tasks", "--task-file {tasks}", "needs a checkpoint"),
    Row("tasks", "{ck} --n-examples 0", "must be >= 1"),
    # --- pages
    Row("view", "{missing}", "does not exist"),
    Row("view", "{circuit_trunc}", "not valid JSON"),
    Row("view", "{circuit_list}", "not a circuit object"),
    Row("view", "{circuit_utf8}", "not UTF-8"),
    Row("view", "{empty}", "not valid JSON"),
    Row("view", "{circuit} -o {ro}/c.html", "cannot write"),
    Row("view", "{circuit} -o {foreign}", "is a folder; a file path is needed"),
    # --- dictionaries
    Row("train-dict", "--model {ck} --hook blocks.0.hook_resid_post --out {file}", "is a file; a folder is needed"),
    Row("train-dict", "--model {ck} --hook blocks.0.hook_resid_post --out {ro}/d", "cannot write"),
    Row("train-dict", "--model {ck} --hook blocks.0.hook_resid_post --width 0 --out {out}/d", "must be >= 1"),
    Row("train-dict", "--model {ck_trunc} --hook blocks.0.hook_resid_post --out {out}/d", "truncated"),
    Row("eval-dict", "{missing} --model {ck}", "does not exist"),
    Row("eval-dict", "{dict_trunc} --model {ck}", "truncated"),
    Row("eval-dict", "{dict} --model {ck} --json {ro}/e.json", "cannot write"),
    Row("eval-dict", "{dict} --model {ck} --batches 0", "must be >= 1"),
    Row("features", "--model {ck} --dictionary {dict}", "nothing to write"),
    Row("features", "--model {ck} --dictionary {dict} --html {ro}/f.html", "cannot write"),
    Row("features", "--model {ck} --dictionary {dict} --out {file}", "is a file; a folder is needed"),
    Row("features", "--model {ck} --dictionary {missing} --out {out}/f", "does not exist"),
    Row("features", "--model {ck} --dictionary {dict} --out {out}/f --top 0", "must be >= 1"),
    Row("convert-dict", "{pickle_evil} --out {out}/d", "cannot load"),
    Row("convert-dict", "{pickle_garbage} --out {out}/d", "cannot read"),
    Row("convert-dict", "{missing} --out {out}/d", "does not exist"),
    Row("convert-dict", "{pickle_garbage} --out {file}", "is a file; a folder is needed"),
    Row("convert-dict", "{pickle_garbage} --out {ro}/d", "cannot write"),
    Row("dicts", "list {missing}", "does not exist"),
    Row("dicts", "list {file}", "no dictionary layout has a file like this"),
    Row("dicts", "list {pickle_garbage}", "cannot read"),
    Row("dicts", "list {dict} --max-depth -1", "must be >= 0"),
    # --- component circuits
    Row("discover", "--model {ck} --task bracket_type --out {ro}/c.json", "cannot write"),
    Row("discover", "--model {ck} --task no_such_task --out {out}/c.json", "unknown task"),
    Row("discover", "--model {ck} --task-file {task_huge} --out {out}/c.json", "line longer than"),
    Row("discover", "--model {ck} --task bracket_type --n-examples 0 --out {out}/c.json", "must be >= 1"),
    Row("discover", "--model {missing} --task bracket_type --out {out}/c.json", "no such folder"),
    Row("compare-circuits", "{circuit}", "two or more"),
    Row("compare-circuits", "{circuit} {circuit_trunc}", "not valid JSON"),
    Row("compare-circuits", "{circuit} {circuit} --out {ro}/core.json", "cannot write"),
    Row("compare-circuits", "{circuit} {circuit} --ablation nope", "unknown ablation"),
    Row("heads", "--model {ck} --task no_such_task", "unknown task"),
    Row("heads", "--model {ck} --task-file {task_utf8}", "not UTF-8"),
    Row("heads", "--model {ck} --task bracket_type --top 0", "must be >= 1"),
    Row("heads", "--model {ck_badcfg} --task bracket_type", "not valid JSON"),
    Row("check", "{missing} --model {ck} --task bracket_type", "does not exist"),
    Row("check", "{circuit_trunc} --model {ck} --task bracket_type", "not valid JSON"),
    Row("check", "{circuit} --model {ck} --task bracket_type --n 0", "must be >= 1"),
    Row("check", "{circuit} --model {ck} --task-file {task_huge}", "line longer than"),
    # --- grids and bridges
    Row("sweep", "--out {file}", "is a file; a folder is needed"),
    Row("sweep", "--out {ro}/sweep", "cannot write"),
    Row("sweep", "--out {out}/s --tasks no_such_task", "no_such_task"),
    Row("sweep", "--out {out}/s --widths 32 64 --lr-by-width 0.01", "one learning rate > 0 per width"),
    Row("sweep", "--out {out}/s --pruning-seeds 1 1", "pruning_seeds holds duplicates"),
    Row("sweep", "--out {out}/s --workers -1", "workers"),
    Row("sweep", "--out {out}/s --pruning-seeds one", "pruning_seeds must be int numbers"),
    Row("sweep", "--out {out}/s --prune-extra-targets 0.3 --frontier-target 0.7", "frontier_target 0.7 must be"),
    Row("train-bridges", "--dense {missing} --preset tiny --out {out}/b", "does not exist"),
    Row("train-bridges", "--dense {ck} --preset tiny --out {file}", "is a file; a folder is needed"),
    Row("train-bridges", "--dense {ck} --preset tiny --out {ro}/b", "cannot write"),
    Row("bridge-intervene", "--bridges {missing} --task bracket_type --site blocks.0.hook_resid_mid --channels 1",
        "does not exist"),
    Row("bridge-intervene", "--bridges {ck} --task no_such_task --site blocks.0.hook_resid_mid --channels 1",
        "unknown task"),
    Row("bridge-intervene", "--bridges {ck} --task bracket_type --site blocks.0.hook_resid_mid --channels 1 "
        "--json {ro}/b.json", "cannot write"),
    Row("bridge-intervene", "--bridges {ck} --task bracket_type --site blocks.0.hook_resid_mid --channels 1 "
        "--n-examples 0", "must be >= 2"),
    # --- feature circuits
    Row("feature-circuit", "--model {ck} --task bracket_type --dicts {dict} --out {ro}/c.json", "cannot write"),
    Row("feature-circuit", "--model {ck} --task bracket_type --dicts {missing} --out {out}/c.json", "does not exist"),
    Row("feature-circuit", "--model {ck} --task no_such_task --dicts {dict} --out {out}/c.json", "unknown task"),
    Row("feature-circuit", "--model {ck} --task-file {task_json} --dicts {dict} --out {out}/c.json",
        "task_json.jsonl:2: not valid JSON"),
    Row("shift", "--model {ck} --dicts {dict} --out {file}", "is a file; a folder is needed"),
    Row("shift", "--model {ck} --dicts {dict} --out {ro}/s", "cannot write"),
    Row("shift", "--model {ck} --dicts {missing} --out {out}/s", "does not exist"),
    Row("shift", "--model {ck} --dicts {dict} --out {out}/s --ablate {missing}", "does not exist"),
    Row("clusters", "--model {ck} --dicts {dict} --out {file}", "is a file; a folder is needed"),
    Row("clusters", "--model {ck} --dicts {dict} --out {ro}/c", "cannot write"),
    Row("clusters", "--model {ck_notok} --dicts {dict} --out {out}/c", "no tokenizer.json"),
    Row("clusters", "--model {ck} --dicts {missing} --out {out}/c", "does not exist"),
    # --- transcoder circuits
    Row("graph", "--model {ck} --transcoders {dict} --prompt {blank} --out {out}/g.json", "--prompt is empty"),
    Row("graph", "--model {ck} --transcoders {missing} --prompt x --out {out}/g.json", "does not exist"),
    Row("graph", "--model {ck} --transcoders {dict} --prompt x --out {ro}/g.json", "cannot write"),
    Row("graph", "--model {ck} --transcoders {tcs} --prompt {huge_prompt} --out {out}/g.json",
        "more than any prompt that fits"),
    Row("transcoder-paths", "--model {ck} --transcoders {dict} --prompt {blank} --logit-diff a b", "--prompt is empty"),
    Row("transcoder-paths", "--model {ck} --transcoders {missing} --prompt x --logit-diff a b", "does not exist"),
    Row("transcoder-paths", "--model {ck} --transcoders {dict} --prompt x --logit-diff a b --out {ro}/p.json",
        "cannot write"),
    Row("transcoder-paths", "--model {ck} --transcoders {dict} --prompt x --logit-diff a b --steps 0", "must be >= 1"),
    Row("de-embed", "--model {ck} --transcoders {missing} --layer 0 --feature 0", "does not exist"),
    Row("de-embed", "--model {ck} --transcoders {dict} --layer 0 --feature 0 --top 0", "must be >= 1"),
    Row("de-embed", "--model {missing} --transcoders {dict} --layer 0 --feature 0", "no such folder"),
    Row("connections", "--model {ck} --transcoders {missing} --layer 0 --feature 0", "does not exist"),
    Row("connections", "--model {ck} --transcoders {dict} --layer 0 --feature 0 --top 0", "must be >= 1"),
    Row("connections", "--model {ck} --transcoders {dict} --layer 0 --feature 0 --out {ro}/c.json", "cannot write"),
    Row("connections", "--model {ck} --transcoders {dict} --layer 0 --feature 0", "neither config.yaml nor"),
    Row("ov-de-embed", "--model {ck} --transcoders {missing} --layer 0 --feature 0", "does not exist"),
    Row("ov-de-embed", "--model {ck} --transcoders {dict} --layer 0 --feature 0 --heads 0", "must be >= 1"),
    Row("ov-de-embed", "--model {ck} --transcoders {dict} --layer 0 --feature 0 --head x", "expected LAYER.HEAD"),
    Row("ov-de-embed", "--model {ck} --transcoders {dict} --layer 0 --feature 0 --out {ro}/o.json", "cannot write"),
    # --- corpora
    Row("task-corpus", "--out {ro}/c.jsonl", "cannot write"),
    Row("task-corpus", "--out {foreign}", "is a folder; a file path is needed"),
    Row("task-corpus", "--out {file}/c.jsonl", "is a file, not a folder"),
]


@pytest.fixture(scope="session")
def files(tmp_path_factory) -> dict[str, str]:
    """The fixture folder: every placeholder of `ROWS` (see the module docstring)."""
    from sparsecircuits.dictionaries.base import DictConfig, make_dictionary
    from sparsecircuits.dictionaries.formats import save_dictionary
    from sparsecircuits.graph import Circuit, Node
    from sparsecircuits.model.checkpoint import save_checkpoint
    from sparsecircuits.tasks.base import get_task

    root = tmp_path_factory.mktemp("bad-inputs")
    tok_json = TOKENIZER.read_text()
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_str(tok_json).get_vocab_size()
    model = tiny_model(d_vocab=vocab, n_ctx=64)
    ck = save_checkpoint(root / "ck", model, meta={"step": 0}, tokenizer_json=tok_json)
    ck_notok = save_checkpoint(root / "ck_notok", model, meta={"step": 0})
    ck_trunc = save_checkpoint(root / "ck_trunc", model, meta={"step": 0}, tokenizer_json=tok_json)
    (ck_trunc / "model.safetensors").write_bytes((ck_trunc / "model.safetensors").read_bytes()[:100])
    ck_badcfg = save_checkpoint(root / "ck_badcfg", model, meta={"step": 0}, tokenizer_json=tok_json)
    (ck_badcfg / "config.json").write_text((ck_badcfg / "config.json").read_text()[:20])
    ck_utf8cfg = save_checkpoint(root / "ck_utf8cfg", model, meta={"step": 0}, tokenizer_json=tok_json)
    (ck_utf8cfg / "config.json").write_bytes(b'{"d_model": "\xff"}')
    (root / "empty.json").write_text("")

    d = make_dictionary(DictConfig(arch="relu", hook="blocks.0.hook_resid_post", d_in=32, width=16))
    dict_ok = save_dictionary(d, root / "dict")
    dict_trunc = save_dictionary(d, root / "dict_trunc")
    tc = make_dictionary(DictConfig(arch="relu", hook="blocks.0.hook_resid_mid", out_hook="blocks.0.hook_mlp_out",
                                    d_in=32, width=16))
    save_dictionary(tc, root / "tcs" / "L0")
    (dict_trunc / "sae_weights.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":")

    ex = get_task("bracket_type").examples(4)
    line = '{{"prompt": {p}, "correct": {c}, "incorrect": {i}}}'
    import json

    good = "\n".join(line.format(p=json.dumps(e.prompt), c=json.dumps(e.correct), i=json.dumps(e.incorrect))
                     for e in ex) + "\n"
    first = good.splitlines()[0] + "\n"
    (root / "tasks.jsonl").write_text(good)
    (root / "task_utf8.jsonl").write_bytes(first.encode() + b'{"prompt": "\xff\xfe", "correct": "a", "incorrect": "b"}\n')
    (root / "task_json.jsonl").write_text(first + '{"prompt": "x", "correct": \n')
    (root / "task_deep.jsonl").write_text(first + "[" * 15000 + "]" * 15000 + "\n")
    (root / "task_list.jsonl").write_text(first + "[1, 2]\n")
    with open(root / "task_huge.jsonl", "wb") as f:
        f.write(first.encode() + b'{"prompt": "' + b"x = 1\\n" * (HUGE_LINE // 7) + b'", "correct": "a", "incorrect": "b"}\n')

    c = Circuit([Node("blocks.0.attn.hook_z", 0, "head", 0)],
                metadata={"task": "bracket_type", "granularity": "component", "method": "eap"})
    c.save(root / "circuit.json")
    (root / "circuit_trunc.json").write_text((root / "circuit.json").read_text()[:30])
    (root / "circuit_list.json").write_text("[1, 2, 3]")
    (root / "circuit_utf8.json").write_bytes(b'{"schema": "\xff"}')
    (root / "circuits_bad").mkdir()
    (root / "circuits_bad" / "a.json").write_text("{")

    class Evil:
        def __reduce__(self):  # would run os.system("echo pwned") if unpickled unsafely
            return (os.system, ("echo pwned > " + str(root / "PWNED"),))

    (root / "pickle_evil.pt").write_bytes(pickle.dumps({"state_dict": Evil()}))
    (root / "pickle_garbage.pt").write_bytes(bytes(range(256)) * 4)
    (root / "file.txt").write_text("not a folder\n")
    (root / "foreign").mkdir()
    (root / "foreign" / "precious.txt").write_text("someone's work\n")
    (root / "out").mkdir()
    return {"ck": str(ck), "ck_notok": str(ck_notok), "ck_trunc": str(ck_trunc), "ck_badcfg": str(ck_badcfg),
            "ck_utf8cfg": str(ck_utf8cfg), "empty": str(root / "empty.json"),
            "hostile": str(root / "[bold]not-markup:-1:"),
            "dict": str(dict_ok), "dict_trunc": str(dict_trunc), "tcs": str(root / "tcs"), "circuit": str(root / "circuit.json"),
            **{k: str(root / f"{k}.json") for k in ("circuit_trunc", "circuit_list", "circuit_utf8")},
            "circuits_bad": str(root / "circuits_bad"),
            **{k: str(root / f"{k}.jsonl") for k in ("tasks", "task_utf8", "task_json", "task_deep", "task_list",
                                                      "task_huge")},
            "pickle_evil": str(root / "pickle_evil.pt"), "pickle_garbage": str(root / "pickle_garbage.pt"),
            "file": str(root / "file.txt"), "foreign": str(root / "foreign"), "out": str(root / "out"),
            "missing": str(root / "no-such-path"), "ro": str(_unwritable(root)), "root": str(root)}


def _unwritable(root: Path) -> Path:
    """A folder this process cannot write in: a read-only one, or (as root, whom modes do not stop)
    /sys, which refuses new files even to root."""
    ro = root / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    for folder in (ro, Path("/sys")):
        probe = folder / ".probe"
        try:
            probe.touch()
        except OSError:
            return folder
        probe.unlink()
    pytest.skip("no unwritable folder on this machine")


class RowRanOn(BaseException):  # not an Exception: the CLI's error path must not turn it into exit 2
    pass


def _past_guard(signum, frame):  # noqa: ANN001, ANN202
    raise RowRanOn(f"still running after {GUARD_S} s: the command did real work before refusing its input")


def _no_forward(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
    raise RowRanOn("the model ran a forward pass before the bad input was refused")


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under `root` with its size and modification time (files only: a folder's changes
    show as its entries, and probing a folder for writability touches its time)."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else (0, 0)
            for p in root.rglob("*")}


@pytest.fixture(scope="session")
def warm(files):
    """Import every command module and the libraries rows load, so the memory cap measures the rows."""
    import sparsecircuits.tasks  # noqa: F401
    from sparsecircuits.cli.loading import load_model

    for name in COMMANDS:
        command_module(name)
    load_model(files["ck"])
    return files


def _argv(row: Row, files: dict[str, str]) -> list[str]:
    values = {**files, "blank": "\x00", "huge_prompt": "x" * 2_000_000}
    argv = [part.format(**values) for part in row.argv.split(" ")]
    return [a if a != "\x00" else " " for a in argv]


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_bad_input_fails_early_and_clearly(row, warm, capsys, monkeypatch):
    files = warm
    root = Path(files["root"])
    monkeypatch.setenv("SPARSECIRCUITS_CACHE", str(root / "cache"))
    monkeypatch.setenv("COLUMNS", "4096")  # one message, one line
    monkeypatch.setattr(Transformer, "forward", _no_forward)
    before = _snapshot(root)
    tracemalloc.start()
    previous = signal.signal(signal.SIGALRM, _past_guard)
    signal.alarm(GUARD_S)
    try:
        try:
            code = main([row.command, *_argv(row, files)])
        except SystemExit as e:  # argparse: a bad flag value
            code = e.code
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        tracemalloc.stop()
    out = capsys.readouterr()
    text = out.out + out.err
    assert code == 2, text
    assert "Traceback" not in text
    lines = [line for line in text.splitlines() if "error:" in line]
    assert any(row.match.lower() in line.lower() for line in lines), text
    assert "weights_only=False" not in text  # no advice, anywhere, to unpickle
    assert peak < MEMORY_CAP, f"{peak / 2**20:.1f} MiB of Python allocations"
    assert _snapshot(root) == before, "the command wrote or changed files"


def test_every_command_has_rows():
    """A new command must come with bad-input rows (see the module docstring for the format)."""
    counts = {name: sum(r.command == name for r in ROWS) for name in COMMANDS}
    thin = {name: n for name, n in counts.items() if n < MIN_ROWS}
    assert not thin, f"commands with fewer than {MIN_ROWS} bad-input rows in tests/test_bad_inputs.py: {thin}"
    unknown = {r.command for r in ROWS} - set(COMMANDS)
    assert not unknown, f"rows for commands that do not exist: {unknown}"


def test_evil_pickle_never_runs(warm):
    """The pickle row above fails; here: and no code from the pickle ran."""
    assert not (Path(warm["root"]) / "PWNED").exists()
