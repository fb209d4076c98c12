"""Fixtures shared by several test files. Helpers that tests import live beside this file: `model_helpers` (tiny
models, one per stack) and `run_helpers` (a tiny corpus and training runs through the CLI).

Two tiers: `pytest -m "not slow"` is the inner loop (minutes); `pytest` (what CI runs) runs every test. A test is
marked `slow` (setup.cfg) when it trains, launches a process, or takes more than about 2 seconds on its own.
Launching a Python process costs seconds of imports, so a test that is not marked slow may not: the hooks below
fail it, with the reason, in both tiers (tests/test_markers.py checks them)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from run_helpers import write_corpus

_INTERPRETER = os.path.realpath(sys.executable)


def _runs_python(program, env) -> bool:
    """Whether `program` (a path, or a name looked up on the child's PATH) is a Python interpreter or a script one
    runs (a console script such as `yuyan`, `accelerate`, `torchrun`: a `#!...python` first line)."""
    program = os.fsdecode(program)
    path = shutil.which(program, path=(env or os.environ).get("PATH")) or program
    if not os.path.isfile(path):
        return False
    real = os.path.realpath(path)
    if real == _INTERPRETER or os.path.basename(real).startswith("python"):
        return True
    try:
        with open(real, "rb") as file:
            first = file.readline(256)
    except OSError:
        return False
    return first.startswith(b"#!") and b"python" in first


def _program(args, executable, shell) -> str | None:
    """The program a `subprocess.Popen(args, executable=..., shell=...)` call runs (for a shell command line, its
    first word)."""
    if executable is not None and not shell:
        return executable
    if isinstance(args, (str, bytes, os.PathLike)):
        line = os.fsdecode(args)
        return (line.split() or [None])[0] if shell else line
    return os.fspath(args[0]) if args else None


_running: list[pytest.Item] = []  # the test whose setup, call or teardown is under way (module fixtures included)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _running.append(item)
    try:
        return (yield)
    finally:
        _running.pop()


def _guarded_popen_init(original):
    def guarded(self, args, *rest, **kwargs):
        # Popen's positional order is args, bufsize, executable, ...; shell and env are passed by keyword.
        executable = kwargs.get("executable", rest[1] if len(rest) > 1 else None)
        program = _program(args, executable, kwargs.get("shell", False))
        test = _running[-1] if _running else None
        if (test is not None and test.get_closest_marker("slow") is None and program is not None
                and _runs_python(program, kwargs.get("env"))):
            pytest.fail(f"{test.nodeid}: this test launches a process ({program} ...): mark it slow "
                        "(@pytest.mark.slow, or `pytestmark = pytest.mark.slow` for the whole file); "
                        "`pytest -m 'not slow'` runs no Python process", pytrace=False)
        original(self, args, *rest, **kwargs)

    guarded.original = original
    return guarded


def pytest_configure(config):
    """Every Popen (subprocess.run, check_output and call build one) of a test not marked slow, in its setup, call or
    teardown, fails the test if it would start a Python process: that costs seconds of imports, so the fast tier
    stays fast. Other programs (git, uname, a compiler) are allowed: libraries start them on their own. Collection
    is not a test: a module may fetch what it needs while it is imported."""
    subprocess.Popen.__init__ = _guarded_popen_init(subprocess.Popen.__init__)


def pytest_unconfigure(config):
    subprocess.Popen.__init__ = getattr(subprocess.Popen.__init__, "original", subprocess.Popen.__init__)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on one torch thread: their small matmuls run far slower on two threads when another job holds
    the second core of a shared machine. Restores the thread count afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    """A made-up text corpus (train.txt, valid.txt) with its own tokenizer: see `run_helpers.write_corpus`."""
    return write_corpus(tmp_path_factory.mktemp("corpus"))
