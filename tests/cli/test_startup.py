"""The CLI starts without torch: importing it, `--help` of the top level and of every command (the list
comes from the command table, so a new command is covered), and `--version` load neither torch, numpy
nor the other heavy libraries. Each check runs in a fresh interpreter, whose `sys.modules` tells."""

from __future__ import annotations

import json
import subprocess
import sys

import sparsecircuits
from sparsecircuits.cli import main

HEAVY = ("torch", "numpy", "tokenizers", "safetensors", "jaxtyping", "matplotlib")


def _fresh(code: str) -> str:
    """stdout of `code` run by a fresh interpreter (which must exit 0)."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _heavy_loaded() -> str:
    return f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))))"


def test_importing_the_cli_loads_no_torch():
    out = _fresh(f"import json, sys\nimport sparsecircuits.cli\n{_heavy_loaded()}")
    assert json.loads(out) == []


def test_help_of_the_top_level_and_of_every_command_loads_no_torch():
    code = f"""
import io, json, sys
from contextlib import redirect_stdout
from sparsecircuits.cli import main
from sparsecircuits.cli.main import COMMANDS

helps = {{}}
for argv in (["--help"], *([name, "--help"] for name in COMMANDS)):
    buf = io.StringIO()
    try:
        with redirect_stdout(buf):
            main(argv)
        code = None
    except SystemExit as e:
        code = e.code
    helps[" ".join(argv)] = (code, buf.getvalue())
print(json.dumps(helps))
{_heavy_loaded()}
"""
    from sparsecircuits.cli.main import COMMANDS

    helps_line, heavy_line = _fresh(code).splitlines()[-2:]
    helps = json.loads(helps_line)
    assert json.loads(heavy_line) == []
    assert len(helps) == len(COMMANDS) + 1
    for argv, (code, text) in helps.items():
        assert code == 0, f"`sparsecircuits {argv}` exited with {code}"
        assert text.startswith("usage: sparsecircuits"), argv
    top = helps["--help"][1]
    assert all(name in top for name in COMMANDS)
    for name, command in COMMANDS.items():  # the table's line is the command's description
        assert " ".join(command.help.split()) in " ".join(helps[f"{name} --help"][1].split()), name


def test_version():
    out = _fresh(f"import json, sys\nfrom sparsecircuits.cli import main\ntry:\n    main(['--version'])\n"
                 f"except SystemExit as e:\n    assert e.code == 0\n{_heavy_loaded()}")
    version, heavy = out.splitlines()
    assert version == f"sparsecircuits {sparsecircuits.__version__}" and json.loads(heavy) == []
    done = subprocess.run([sys.executable, "-m", "sparsecircuits", "--version"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == f"sparsecircuits {sparsecircuits.__version__}"


def test_flag_placeholders_are_plain_words(capsys):
    for argv in (["train", "--help"], ["sweep", "--help"]):
        try:
            main(argv)
        except SystemExit as e:
            assert e.code == 0
    text = capsys.readouterr().out
    assert "CONFIG." not in text  # not `--steps TRAINCONFIG.STEPS`
    assert "--steps STEPS" in text and "--lr LR" in text and "--widths [WIDTHS ...]" in text
    assert "--dense, --no-dense" in text and "--prune-target-loss TARGET_LOSS" in text
    assert "(default: 1500)" in text and "(default: 32 64)" in text  # defaults shown


def test_a_command_gets_only_its_own_arguments():
    """The other commands are a name and a help line: parsing runs only the invoked command's parser."""
    from sparsecircuits.cli.main import build_parser

    args = build_parser("prune").parse_args(["prune", "ck", "--task", "bracket_type", "--out", "c.json", "--steps", "7"])
    assert args.command == "prune" and vars(args)["PruneConfig.steps"] == 7
    sub = next(a for a in build_parser("prune")._actions if a.dest == "command")
    assert len(sub.choices["train"]._actions) == 1  # only -h


def test_missing_or_unknown_command_is_a_usage_error(capsys):
    for argv in ([], ["no-such-command"]):
        try:
            main(argv)
        except SystemExit as e:
            assert e.code == 2
        else:
            raise AssertionError(f"{argv} did not exit")
    assert "invalid choice" in capsys.readouterr().err
