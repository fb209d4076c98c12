"""The `yuyan` command itself: the subcommand table, the entry points, lazy parsers, the dataclass-to-flags bridge.

Each subcommand's behaviour is tested beside its library (cli/test_generate_command.py, training/test_evaluation.py,
...); `yuyan demo`, which has no library of its own to test, is run here end to end.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest

from yuyan import __version__
from yuyan.cli import COMMANDS, build_parser, main
from yuyan.cli.flags import dataclass_flags
from yuyan.modeling import PRESETS

ENV = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


def test_info_prints_the_version_and_every_preset(capsys):
    assert main(["info"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"yuyan {__version__}"
    assert [line.split()[0] for line in lines[1:]] == list(PRESETS)


@pytest.mark.slow
@pytest.mark.parametrize("module", ["yuyan", "yuyan.cli"])
def test_python_dash_m_runs_the_command(module):
    result = subprocess.run([sys.executable, "-m", module, "info"], env=ENV, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"yuyan {__version__}\n")


@pytest.mark.slow
def test_info_builds_no_other_parser():
    # Only the parser of the command being run is built: `yuyan info` imports nothing beyond `import yuyan` but
    # the command line itself (no training stack, no datasets, no peft).
    code = ("import sys, yuyan; before = set(sys.modules); from yuyan.cli import main; main(['info']); "
            "print(sorted(m for m in set(sys.modules) - before if m.startswith(('yuyan', 'accelerate', 'peft', "
            "'datasets'))))")
    result = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "['yuyan.cli', 'yuyan.cli.info', 'yuyan.errors']"


def test_no_command_prints_the_table_and_fails(capsys):
    assert main([]) == 1
    listing = " ".join(capsys.readouterr().out.split())  # argparse wraps the help column
    for name, command in COMMANDS.items():
        assert f"{name} {command.help}" in listing


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_has_its_parser_and_a_handler(name, capsys):
    # The full parser of each command builds, and its help exits 0 (the smoke test of the command's flags).
    parser = build_parser({name})
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args([name, "--help"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: yuyan {name}")


def test_user_errors_are_one_line_with_exit_status_2(tmp_path, capsys):
    code = main(["export", "--format", "llama", "--model", str(tmp_path / "missing"), "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("yuyan export: error: ") and len(err.strip().splitlines()) == 1


@dataclasses.dataclass
class _Example:
    count: int = 3
    names: list[str] = dataclasses.field(default_factory=list, metadata={"help": "some names"})
    rate: float | None = None
    verbose: bool = False
    keep: bool = True


def test_unset_flags_stay_none_so_config_files_keep_their_values():
    import argparse

    parser = argparse.ArgumentParser(parents=[dataclass_flags(_Example, skip={"keep"}, unset=True)])
    assert vars(parser.parse_args([])) == {"count": None, "names": None, "rate": None, "verbose": None}
    args = parser.parse_args(["--count", "5", "--names", "a", "b", "--rate", "0.5", "--verbose"])
    assert (args.count, args.names, args.rate, args.verbose) == (5, ["a", "b"], 0.5, True)
    with pytest.raises(SystemExit):
        parser.parse_args(["--keep"])


def test_transformers_style_flags_have_defaults_both_spellings_and_a_group():
    import argparse

    parser = argparse.ArgumentParser(parents=[dataclass_flags(_Example, title="example")])
    assert vars(parser.parse_args([])) == {"count": 3, "names": [], "rate": None, "verbose": False, "keep": True}
    args = parser.parse_args(["--count", "4", "--verbose", "--no_keep"])
    assert (args.count, args.verbose, args.keep) == (4, True, False)
    assert parser.parse_args(["--verbose", "false"]).verbose is False
    assert "example:" in parser.format_help()
    with pytest.raises(ValueError, match="skip"):
        dataclass_flags(_Example, skip={"count"})


@pytest.mark.slow
def test_demo_trains_saves_reloads_and_samples(tmp_path):
    """The README's first command, on a budget of three seconds: a tokenizer and a model trained on Python's own
    documentation, saved, reloaded and sampled."""
    from yuyan.training.demo import DEMO_PROMPT
    from yuyan.records import read_metrics

    output = tmp_path / "demo"
    result = subprocess.run([sys.executable, "-m", "yuyan", "demo", "--minutes", "0.05", "--output", str(output)],
                            env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"model saved to {output}" in result.stdout
    assert (output / "model.safetensors").is_file() and (output / "tokenizer.json").is_file()
    metrics = read_metrics(output)
    assert metrics.stop_reason == "max_minutes" and metrics.steps > 0
    assert f"validation perplexity {metrics.validation_perplexity:.2f}" in result.stdout
    sample = result.stdout.split("a sample:", 1)[1].strip()
    assert sample.startswith(DEMO_PROMPT) and len(sample) > len(DEMO_PROMPT)
