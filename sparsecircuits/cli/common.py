"""What every command module of the CLI shares: the rich `console`, flags generated from config
dataclasses (`add_config_flags`, `collect`), the cache folder, the error handling around a command
(`run`, `error_line`), checks of name arguments with suggestions (`check_names`, `check_tasks`,
`check_hooks`), checks of paths and numbers before any slow work (`check_output_path`, `check_input_file`,
`at_least`) and the training run that `train` and `quickstart --retrain` both do (`train_model`).

Output never garbles data (`PlainConsole`): rich markup and emoji codes are off, so a task summary
holding `[key]` or a name holding `:-1:` prints as written (style our own words with `rich.text.Text`,
not markup); piped output is not cut to 80 columns; `console.log` is a timestamped line.

Flags generated from a config: every field is a kebab-case flag with its help text and default,
booleans are negatable (`--bigram-table / --no-bigram-table`), tuples take several values. A preset
(or a command's own defaults) sets values; explicit flags override them.

This module loads at start-up (`sparsecircuits --help`), so it imports neither torch nor anything
that does; library code is imported inside the functions that use it.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console, ConsoleDimensions
from rich.text import Text

if TYPE_CHECKING:
    from rich.status import Status

PIPE_WIDTH = 4096  # columns of output that is not a terminal (a file, a pipe, CI logs): tables are never cut


class PlainConsole(Console):
    """The CLI's console: no markup, no emoji codes, no highlighting of data, full width when piped.

    Markup off means every string is printed as text, so data (task summaries, node ids, file names)
    cannot be eaten as `[style]` tags; our own emphasis is a `Text` with a style. Rich parses markup
    in two places the console setting does not reach: spinner texts (`status`, handled here) and
    `TextColumn`s of progress bars (create them with `markup=False`)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs = {"markup": False, "emoji": False, "highlight": False, **kwargs}
        super().__init__(**kwargs)

    @property
    def size(self) -> ConsoleDimensions:
        dims = super().size
        if self._width is None and not self.is_terminal and not os.environ.get("COLUMNS"):
            return ConsoleDimensions(PIPE_WIDTH, dims.height)
        return dims

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        self._width, self._height = new_size

    def status(self, status: Any, **kwargs: Any) -> Status:  # type: ignore[override]
        from rich.status import Status

        class _PlainStatus(Status):
            def update(self, status: Any = None, **kw: Any) -> None:
                super().update(Text(status) if isinstance(status, str) else status, **kw)

        return _PlainStatus(Text(status) if isinstance(status, str) else status, console=self, **kwargs)

    def log(self, *objects: Any, sep: str = " ", end: str = "\n", **_: Any) -> None:  # type: ignore[override]
        """One line, `[HH:MM:SS] message` (rich's own log pads every line to the console's width)."""
        stamp = Text(time.strftime("[%H:%M:%S] "), style="log.time")
        if all(isinstance(o, (str, Text)) for o in objects):
            self.print(Text.assemble(stamp, sep.join(str(o) for o in objects)), end=end)
        else:
            self.print(stamp, *objects, sep=sep, end=end)


console = PlainConsole()

Command = Callable[[argparse.Namespace, Console], int]  # runs a command; returns the exit code
ParserBuilder = Callable[[argparse._SubParsersAction, str, str], None]  # adds a command's sub-parser

# ModelConfig fields that are not flags: the vocabulary comes from the tokenizer (--vocab-size).
HIDDEN_FIELDS = {"d_vocab"}


def command_parser(sub: argparse._SubParsersAction, name: str, help: str, **kw: Any) -> argparse.ArgumentParser:
    """The sub-parser of command `name`; its one-line help (from the command table) is also the
    description that `sparsecircuits <name> --help` shows."""
    return sub.add_parser(name, help=help, description=help, **kw)


def default_cache_dir() -> Path:
    """Cache for tokenizers and token files: $SPARSECIRCUITS_CACHE or ~/.cache/sparsecircuits."""
    env = os.environ.get("SPARSECIRCUITS_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "sparsecircuits"


def cache_dir(args: argparse.Namespace) -> Path:
    """The command's --cache-dir, else the default cache."""
    return args.cache_dir or default_cache_dir()


def add_config_flags(parser: argparse.ArgumentParser, cls: type, title: str, prefix: str = "",
                     defaults: dict[str, Any] | None = None) -> None:
    """One flag per dataclass field (`--{prefix}{field}`); defaults are SUPPRESSed so we can tell what
    the user set. Nested config dataclasses are not flags: give them their own call (with a prefix).
    `defaults` overrides the help's default of some fields (a command's own preset, see `collect`).
    Placeholders are the field's name in capitals (`--steps STEPS`, `--widths [WIDTHS ...]`)."""
    group = parser.add_argument_group(title)
    for f in dataclasses.fields(cls):
        if f.name in HIDDEN_FIELDS:
            continue
        flag = "--" + prefix + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        default = (defaults or {}).get(f.name, default)
        if dataclasses.is_dataclass(default):
            continue
        help_text = f"{f.metadata.get('help', '')} (default: {_show(default)})"
        kind = str(f.type)
        kw: dict[str, Any] = dict(dest=f"{cls.__name__}.{f.name}", default=argparse.SUPPRESS, help=help_text)
        if kind == "bool":
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif kind.startswith("tuple"):
            group.add_argument(flag, nargs="*", metavar=f.name.upper(), **kw)
        else:
            group.add_argument(flag, type={"int": int, "float": float}.get(kind, str), metavar=f.name.upper(), **kw)


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return " ".join(map(str, value)) or "none"
    return str(value)


def collect(args: argparse.Namespace, cls: type, preset: dict[str, Any]) -> Any:
    """Build a config: dataclass defaults < preset < explicit flags. A config that rejects a name
    (its message lists the allowed ones) gets a "did you mean" for the names given as flags."""
    values = dict(preset)
    prefix = cls.__name__ + "."
    given: list[str] = []
    for key, value in vars(args).items():
        if key.startswith(prefix):
            values[key[len(prefix) :]] = tuple(value) if isinstance(value, list) else value
            given += [v for v in (value if isinstance(value, (list, tuple)) else [value]) if isinstance(v, str)]
    try:
        return cls(**values)
    except ValueError as e:
        hint = _suggest_from_message(str(e), given)
        if hint:
            raise ValueError(f"{e}{hint}") from None
        raise


def _suggest_from_message(message: str, given: list[str]) -> str:
    """"; did you mean ..." for the first given name that is not among the names a message lists as
    allowed (its longest tuple or list literal of strings: a shorter one is what was got), else ""."""
    import ast
    import re

    known: list[str] = []
    for literal in re.findall(r"[(\[]'[^()\[\]]*[)\]]", message):
        try:
            names = [str(x) for x in ast.literal_eval(literal)]
        except (ValueError, SyntaxError):
            continue
        known = names if len(names) > len(known) else known
    for name in given:
        if known and name not in known:
            hint = did_you_mean(name, known)
            if hint:
                return hint
    return ""


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """"; did you mean 'a' or 'b'?" for the known names close to `name` (difflib), else ""."""
    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def check_names(what: str, given: Iterable[str], known: Iterable[str], show: int = 40) -> None:
    """Raise a ValueError naming the first of `given` that is not in `known`, with close matches and
    (up to `show` of) the known names. Call it before any expensive work."""
    known = sorted(str(k) for k in known)
    for name in given:
        if name not in known:
            listed = ", ".join(known[:show]) + (f", ... ({len(known)} in all)" if len(known) > show else "")
            raise ValueError(f"unknown {what} {name!r}{did_you_mean(name, known)} (known: {listed})")


def check_tasks(names: Iterable[str | None]) -> None:
    """Check built-in task names against the registry (imports the tasks, not a model; nothing when
    no name is given, e.g. with --task-file)."""
    given = [n for n in names if n is not None]
    if not given:
        return
    import sparsecircuits.tasks  # noqa: F401  (registers the built-in tasks)
    from sparsecircuits.tasks.base import TASKS

    check_names("task", given, TASKS)


def check_hooks(names: Iterable[str | None], model: Any) -> None:
    """Check hook names against a loaded model's hook points (its own message names close matches)."""
    for name in names:
        if name:
            model.resolve_hook_names(name)


def error_line(e: BaseException) -> str:
    """The one-line message of an error a user caused: an OSError names its file (`permission denied:
    'runs/x'`), any other error is its message with line breaks folded."""
    if isinstance(e, OSError) and e.filename is not None:
        msg = f"{(e.strerror or type(e).__name__).lower()}: {str(e.filename)!r}"
        msg += f" -> {str(e.filename2)!r}" if e.filename2 is not None else ""
    else:
        msg = str(e) or type(e).__name__
    return " ".join(msg.splitlines())


def at_least(low: int) -> Callable[[str], int]:
    """An argparse `type`: an integer >= `low` (`--top 0` is refused with the flag, before any work)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"  # what argparse names in its own messages
    return parse


def check_output_path(path: Path | str | None, kind: str = "file", flag: str = "--out",
                      replaces: Iterable[str] | None = None) -> None:
    """Refuse an output location before any slow work: `kind` "file" must not be a folder, "dir" must
    not be a file; the nearest existing folder on the way must be a folder and writable (tested by
    creating and removing an empty hidden file, which also catches read-only file systems and root
    on /sys). `replaces`: a folder output written whole (atomic_dir replaces the old folder) may only
    replace an empty folder or one holding one of these names (a previous output of the same kind),
    never a user's unrelated folder. Raises ValueError naming `flag` and the path."""
    if path is None:
        return
    p = Path(path)
    where = f"{flag} {str(p)!r}"
    if str(path) == "":
        raise ValueError(f"{flag}: the path is empty")
    if kind == "file":
        if p.is_dir():
            raise ValueError(f"{where} is a folder; a file path is needed")
        if p.exists() and not p.is_file():
            raise ValueError(f"{where} exists and is not a regular file")
    elif kind == "dir":
        if p.exists() and not p.is_dir():
            raise ValueError(f"{where} is a file; a folder is needed")
        if replaces is not None and p.is_dir() and any(p.iterdir()) and not any((p / n).exists() for n in replaces):
            raise ValueError(f"{where} is a non-empty folder that is not an earlier output of this command "
                             f"(it holds none of {', '.join(sorted(replaces))}); it would be replaced: give a new "
                             "or empty folder")
    else:
        raise ValueError(f"check_output_path: kind must be 'file' or 'dir', got {kind!r}")
    folder = p if kind == "dir" else p.parent
    folder = folder if str(folder) else Path(".")
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise ValueError(f"{where}: {str(folder)!r} is a file, not a folder")
    _probe_writable(folder, where)


def _probe_writable(folder: Path, where: str) -> None:
    import secrets

    probe = folder / f".sparsecircuits-probe-{secrets.token_hex(6)}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as e:
        raise ValueError(f"{where}: cannot write in {str(folder)!r} ({(e.strerror or str(e)).lower()})") from None
    os.close(fd)
    os.unlink(probe)


def check_input_file(path: Path | str | None, flag: str, kind: str = "file") -> None:
    """Refuse an input that is missing or of the wrong kind (a folder for a file, or the reverse),
    naming `flag`, before any slow work."""
    if path is None:
        return
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{flag} {str(p)!r} does not exist")
    if kind == "file" and not p.is_file():
        raise ValueError(f"{flag} {str(p)!r} is not a file")
    if kind == "dir" and not p.is_dir():
        raise ValueError(f"{flag} {str(p)!r} is not a folder")


class ArgumentParser(argparse.ArgumentParser):
    """argparse with "did you mean" for a value outside `choices` (a command name, --method, --arch ...)."""

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        if action.choices is not None and value not in action.choices:
            choices = ", ".join(map(str, action.choices))
            raise argparse.ArgumentError(action, f"invalid choice: {value!r}{did_you_mean(value, action.choices)} "
                                                 f"(choose from {choices})")


def run(command: Command, args: argparse.Namespace) -> int:
    """Run a command: bad input (a ValueError, which CheckpointError and TaskError are, or an OSError:
    a file missing, unreadable, unwritable, of the wrong kind) is one red line and exit code 2 (a
    traceback with SPARSECIRCUITS_DEBUG=1); Ctrl-C is 130."""
    # Under torchrun only rank 0 talks; training commands start the process group themselves.
    console.quiet = os.environ.get("RANK", "0") != "0" or console.quiet
    try:
        # --- torch threads (issue 25): one per process unless SPARSECIRCUITS_THREADS / OMP_NUM_THREADS say otherwise
        from sparsecircuits.threads import apply_default

        apply_default()
        # --- end torch threads
        return command(args, console)
    except (ValueError, OSError) as e:  # every OS error a user can cause: missing, unreadable, unwritable ...
        if os.environ.get("SPARSECIRCUITS_DEBUG"):
            raise
        console.print(Text.assemble(("error:", "bold red"), f" {error_line(e)}"))
        return 2
    except KeyboardInterrupt:
        console.print(Text.assemble(("interrupted", "yellow"),
                                    ": the newest checkpoint is intact; rerun with --resume to continue"))
        return 130
    finally:
        if "torch" in sys.modules:  # without torch there is no process group (and no need to load it to see)
            from sparsecircuits import distributed

            distributed.shutdown()


def train_model(args: argparse.Namespace, console: Console) -> int:
    """The `train` command, also run by `quickstart --retrain`: a model from a preset and the config
    flags in `args` (preset, out, resume, cache_dir, `TrainConfig.*` ...), with a progress bar and a
    result table."""
    from rich.table import Table

    from sparsecircuits.cli.console import TrainProgress
    from sparsecircuits.data.config import DataConfig
    from sparsecircuits.model.config import ModelConfig
    from sparsecircuits.weight_sparse.config import TrainConfig
    from sparsecircuits.weight_sparse.presets import get_preset
    from sparsecircuits.weight_sparse.run import RunSpec, train_run

    preset = get_preset(args.preset)
    data = collect(args, DataConfig, preset.data)
    model = collect(args, ModelConfig, {**preset.model, "d_vocab": data.vocab_size})
    train = collect(args, TrainConfig, preset.train)
    out = args.out or Path("runs") / (args.preset + ("-dense" if train.dense else ""))
    check_output_path(out, "dir")  # before tokenizing and training, not at the first checkpoint
    spec = RunSpec(model, train, data)
    kind = "dense twin" if train.dense else "weight-sparse model"
    console.print(Text.assemble((f"Training a {kind}", "bold"), f" ({args.preset}: {model.n_layers} layers, d_model "
                                f"{model.d_model}, {train.steps} steps of {train.batch_size}x{model.n_ctx} tokens) -> {out}"))
    t0 = time.perf_counter()
    with TrainProgress(console) as progress:
        result = train_run(spec, out, cache_dir(args), resume=args.resume, on_step=progress.on_step,
                           on_data=progress.on_data)
    table = Table(title=f"{kind} trained in {time.perf_counter() - t0:.0f} s")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("steps", str(result.step))
    table.add_row("train loss (last step)", f"{result.train_loss:.3f}" if result.train_loss is not None else "-")
    table.add_row("validation loss", f"{result.val_loss:.3f}" if result.val_loss is not None else "-")
    table.add_row("bigram-only baseline (val)", f"{result.bigram_baseline:.3f}")
    table.add_row("checkpoint", str(result.checkpoint))
    console.print(table)
    return 0
