"""Torch's CPU thread count (sparsecircuits/threads.py): one thread by default, the user's choice wins,
and the CLI applies it before a command imports torch."""

import os
import subprocess
import sys

import pytest
import torch

from sparsecircuits import threads

ENVS = (threads.ENV, *threads.TORCH_ENVS)


@pytest.fixture
def clean_env(monkeypatch):
    for name in ENVS:
        monkeypatch.delenv(name, raising=False)
    before = torch.get_num_threads()
    yield monkeypatch
    torch.set_num_threads(before)


@pytest.mark.parametrize("env, want", [
    ({}, 1),
    ({threads.ENV: "3"}, 3),
    ({threads.ENV: " 2 "}, 2),
    ({threads.ENV: "0"}, None),
    ({threads.ENV: "auto"}, None),
    ({"OMP_NUM_THREADS": "2"}, None),
    ({"MKL_NUM_THREADS": "2"}, None),
    ({threads.ENV: "1", "OMP_NUM_THREADS": "2"}, 1),  # ours wins over torch's own variables
])
def test_requested_threads(clean_env, env, want):
    for name, value in env.items():
        clean_env.setenv(name, value)
    assert threads.requested() == want


@pytest.mark.parametrize("bad", ["two", "-1", "1.5"])
def test_malformed_variable_is_a_clear_error(clean_env, bad):
    clean_env.setenv(threads.ENV, bad)
    with pytest.raises(ValueError, match=f"{threads.ENV} must be a whole number"):
        threads.requested()


def test_apply_default_sets_torch_once_it_is_loaded(clean_env):
    torch.set_num_threads(2)
    assert threads.apply_default() == 1 and torch.get_num_threads() == 1
    clean_env.setenv(threads.ENV, "2")
    assert threads.apply_default() == 2 and torch.get_num_threads() == 2
    clean_env.setenv(threads.ENV, "auto")
    torch.set_num_threads(1)
    assert threads.apply_default() is None and torch.get_num_threads() == 1  # left alone


def test_api_default_leaves_a_count_the_user_set_alone(clean_env, monkeypatch):
    monkeypatch.setattr(threads, "torch_default_threads", lambda: 4)
    torch.set_num_threads(4)  # torch's own default: replaced by ours
    assert threads.apply_default_unless_set() == 1 and torch.get_num_threads() == 1
    torch.set_num_threads(3)  # the user's choice
    assert threads.apply_default_unless_set() is None and torch.get_num_threads() == 3
    clean_env.setenv(threads.ENV, "2")  # the variable still rules
    assert threads.apply_default_unless_set() == 2 and torch.get_num_threads() == 2


def test_torch_default_threads_is_a_positive_core_count():
    assert 1 <= threads.torch_default_threads() <= (os.cpu_count() or 1)


# The CLI path in fresh interpreters: `run` acts before the command imports torch.
_CLI = """
import argparse, sys
from sparsecircuits.cli.common import run
def command(args, console):
    import torch
    print("threads", torch.get_num_threads())
    return 0
sys.exit(run(command, argparse.Namespace()))
"""


def _cli_threads(env: dict[str, str]) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ENVS}
    return subprocess.run([sys.executable, "-c", _CLI], env={**base, **env}, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("env, want", [({}, 1), ({threads.ENV: "2"}, 2), ({"OMP_NUM_THREADS": "2"}, 2)])
def test_cli_commands_start_with_the_default(env, want):
    out = _cli_threads(env)
    assert out.returncode == 0, out.stderr
    assert f"threads {want}" in out.stdout


def test_cli_reports_a_malformed_variable_in_one_line():
    out = _cli_threads({threads.ENV: "lots"})
    assert out.returncode == 2
    assert "SPARSECIRCUITS_THREADS must be a whole number" in out.stdout and "Traceback" not in out.stdout + out.stderr
