"""What the CLI prints and writes: data strings print as written (no rich markup, no emoji codes),
tables are not cut to 80 columns when piped, files follow the user's umask, and a misspelt name
(task, method, hook, command) fails at once with a "did you mean" before any slow work."""

from __future__ import annotations

import io
import os
import stat
import time
from pathlib import Path

import pytest

from sparsecircuits.atomic import atomic_dir, atomic_write_text
from sparsecircuits.cli import main
from sparsecircuits.cli.common import PlainConsole, check_names, did_you_mean

ASSETS = Path(__file__).parents[2] / "sparsecircuits" / "assets" / "quickstart"


def test_data_strings_print_as_written_and_tables_are_full_width_when_piped(capsys):
    import sparsecircuits.tasks  # noqa: F401
    from sparsecircuits.tasks.base import TASKS

    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    assert "`[key] =`" in out  # rich markup would have eaten "[key]"
    for name, spec in TASKS.items():  # every summary whole, on one line: no wrapping, no "…"
        assert any(name in line and spec.summary in line for line in out.splitlines()), name
    assert max(len(line) for line in out.splitlines()) > 80


def test_markup_and_emoji_codes_in_errors_and_logs_stay_text(capsys, tmp_path):
    hostile = tmp_path / "e:-1: [bold]x[/] [key].json"
    assert main(["view", str(hostile)]) == 2
    out = capsys.readouterr().out
    assert "e:-1: [bold]x[/] [key].json" in out and "error:" in out
    buf = io.StringIO()
    console = PlainConsole(file=buf)
    console.log("stage [red]one[/] :thumbs_up:")
    console.print("[bold]two[/] :-1:")
    lines = buf.getvalue().splitlines()
    assert lines[0].endswith("stage [red]one[/] :thumbs_up:")  # no padding to the width, no file:line column
    assert lines[1] == "[bold]two[/] :-1:"
    status = console.status("loading [b]x[/b]")
    status.update("step [i]2[/i]")
    assert status.status.plain == "step [i]2[/i]"  # spinner texts are not markup either


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_writes_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "report.html", "x")
        with atomic_dir(tmp_path / "folder") as tmp:
            (tmp / "a.json").write_text("{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "report.html").stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE((tmp_path / "folder").stat().st_mode) == 0o777 & ~umask
    assert stat.S_IMODE((tmp_path / "folder" / "a.json").stat().st_mode) == 0o666 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "report.html"]  # no temp files left


def test_atomic_write_replaces_and_cleans_up_on_error(tmp_path):
    atomic_write_text(tmp_path / "f.txt", "old")
    atomic_write_text(tmp_path / "f.txt", "new")
    assert (tmp_path / "f.txt").read_text() == "new"
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "d") as tmp:
        (tmp / "half.json").write_text("{")
        raise RuntimeError("killed mid-write")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]


def test_did_you_mean():
    assert did_you_mean("single_dobule_quote", ["single_double_quote", "bracket_type"]) == \
        "; did you mean 'single_double_quote'?"
    assert did_you_mean("zzz", ["abc"]) == ""
    with pytest.raises(ValueError, match=r"unknown method 'eap-gi'; did you mean 'eap-ig'"):
        check_names("method", ["eap-gi"], ["eap", "eap-ig", "acdc"])


def test_misspelt_names_fail_fast_with_suggestions(capsys, tmp_path):
    t0 = time.perf_counter()
    # quickstart: the task list is checked before the models load and the corpus is tokenized
    assert main(["quickstart", "--tasks", "single_dobule_quote", "--out", str(tmp_path / "qs")]) == 2
    assert "did you mean 'single_double_quote'" in capsys.readouterr().out
    assert not (tmp_path / "qs").exists()
    # commands taking --task check it before loading the model (the checkpoint does not even exist)
    missing = str(tmp_path / "no-such-checkpoint")
    for argv in (["prune", missing, "--task", "bracket_tipe", "--out", str(tmp_path / "c.json")],
                 ["discover", "--model", missing, "--task", "bracket_tipe", "--out", str(tmp_path / "c.json")],
                 ["heads", "--model", missing, "--task", "bracket_tipe"]):
        assert main(argv) == 2, argv
        assert "did you mean 'bracket_type'" in capsys.readouterr().out, argv
    # names inside configs (baselines, methods, sites) get the suggestion from the config's own check
    for argv, hint in ((["discover", "--model", missing, "--task", "ioi", "--out", "c.json", "--ablation", "zeros"], "'zero'"),
                       (["train", "--act-sparsity-sites", "attn_inn", "--out", str(tmp_path / "run")], "'attn_in'")):
        assert main(argv) == 2, argv
        assert f"did you mean {hint}" in capsys.readouterr().out, argv
    assert not (tmp_path / "run").exists()
    # hooks: checked on the loaded model, before the corpus is tokenized
    assert main(["features", "--model", str(ASSETS / "sparse"), "--neurons", "blocks.0.mlp.hook_pots",
                 "--out", str(tmp_path / "f"), "--cache-dir", str(tmp_path / "cache")]) == 2
    assert "did you mean 'blocks.0.mlp.hook_post'" in capsys.readouterr().out
    assert main(["train-dict", "--model", str(ASSETS / "sparse"), "--hook", "blocks.1.hook_resid_pots",
                 "--out", str(tmp_path / "d"), "--cache-dir", str(tmp_path / "cache")]) == 2
    assert "did you mean 'blocks.1.hook_resid_post'" in capsys.readouterr().out
    assert not (tmp_path / "cache").exists() and not (tmp_path / "d").exists()
    # choices (methods, commands): argparse's error names the close match
    for argv, hint in ((["discover", "--method", "eap-gi", "--model", "m", "--task", "t", "--out", "o"], "'eap-ig'"),
                       (["quickstat"], "'quickstart'")):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2 and f"did you mean {hint}" in capsys.readouterr().err
    assert time.perf_counter() - t0 < 30  # no corpus was tokenized, no model trained


def test_cli_modules_style_with_text_not_markup():
    """The console renders no markup (so data cannot be eaten as tags): a `[bold]...[/]` in a CLI module
    would print as written, and `rich.markup.escape` would add visible backslashes. Style with
    `rich.text.Text` (`Text.assemble(("note:", "yellow"), " ...")`) or `print(..., style=...)`."""
    import re

    import sparsecircuits.cli as cli

    bad = []
    for path in sorted(Path(cli.__file__).parent.glob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\[/\]|\[(bold|red|yellow|green|cyan|dim|blue|magenta)[\] ]|markup import escape|escape\(", line):
                bad.append(f"{path.name}:{n}: {line.strip()}")
    assert not bad, "rich markup in CLI output (the console has markup off):\n" + "\n".join(bad)
