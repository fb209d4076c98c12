"""The fast tier stays fast: a test not marked slow that launches a Python process fails with the reason
(tests/conftest.py), and the `slow` marker is registered, so that `-m "not slow"` selects by it."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest


def test_an_unmarked_test_cannot_launch_python(tmp_path):
    with pytest.raises(pytest.fail.Exception, match="launches a process .*: mark it slow"):
        subprocess.run([sys.executable, "-c", "pass"])
    with pytest.raises(pytest.fail.Exception, match="mark it slow"):
        subprocess.check_output(f"{sys.executable} -c pass", shell=True)
    # A console script (`yuyan`, `accelerate`) is a Python process too: its first line names the interpreter.
    script = tmp_path / "tool"
    script.write_text(f"#!{sys.executable}\nprint('hi')\n")
    script.chmod(0o755)
    with pytest.raises(pytest.fail.Exception, match="mark it slow"):
        subprocess.Popen([str(script)])


@pytest.mark.skipif(shutil.which("true") is None, reason="no `true` program")
def test_an_unmarked_test_may_run_other_programs():
    """Libraries start small programs of their own (uname, git, a compiler): those are not refused."""
    assert subprocess.run(["true"]).returncode == 0


@pytest.mark.slow
def test_a_slow_test_may_launch_python():
    done = subprocess.run([sys.executable, "-c", "print('ok')"], capture_output=True, text=True, timeout=60)
    assert done.stdout == "ok\n"


def test_the_slow_marker_is_registered(pytestconfig):
    assert any(line.split(":")[0].strip() == "slow" for line in pytestconfig.getini("markers"))
