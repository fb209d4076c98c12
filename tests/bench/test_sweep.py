"""bench/sweep.py's pieces that decide what runs: a variant equal to the base recipe is not run twice, every shape
variant is a valid model (only the one at the config's own shape is skipped), the training text cut to a fraction
keeps whole lines from the start, and bad `--train-fraction` / `--only` values are refused before anything runs;
the table's training loss is the mean over the last logged steps."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

spec = importlib.util.spec_from_file_location("sweep", REPO / "bench" / "sweep.py")
sweep = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sweep)

HYBRID = str(REPO / "configs" / "small-hybrid.yaml")


def test_a_variant_that_changes_nothing_is_recognised_as_the_base():
    assert sweep.same_as_base(HYBRID, {"model.tie_word_embeddings": True}, sweep.DEFAULT_TOKENIZER)
    assert sweep.same_as_base(HYBRID, {"warmup_steps": 200}, sweep.DEFAULT_TOKENIZER)
    assert not sweep.same_as_base(HYBRID, {"model.tie_word_embeddings": False}, sweep.DEFAULT_TOKENIZER)
    assert not sweep.same_as_base(HYBRID, {"warmup_steps": 10}, sweep.DEFAULT_TOKENIZER)
    assert not sweep.same_as_base(HYBRID, {}, 4096)


def test_every_shape_variant_is_a_valid_model_and_only_the_configs_own_shape_is_skipped():
    skipped = [name for name, overrides in sweep.AXES["shape"].items()
               if sweep.same_as_base(HYBRID, overrides, sweep.DEFAULT_TOKENIZER)]
    from yuyan.training.pretrain import resolve_config

    config = resolve_config(HYBRID)[0].config
    own_shape = f"{config.hidden_size}x{config.num_hidden_layers}"
    assert skipped == ([own_shape] if own_shape in sweep.AXES["shape"] else [])


def test_a_training_fraction_keeps_whole_lines_from_the_start(tmp_path, monkeypatch):
    data = tmp_path / "wikitext"
    data.mkdir()
    lines = [f"line {i} " + "word " * (i % 7) + "\n" for i in range(200)]
    (data / "train.txt").write_text("".join(lines), encoding="utf-8")
    monkeypatch.setattr(sweep, "DATA", data)
    args = argparse.Namespace(train_fraction=0.25, output=tmp_path)
    cut = sweep.training_text(args).read_text(encoding="utf-8").splitlines(keepends=True)
    assert cut == lines[: len(cut)]
    total = sum(map(len, lines))
    assert 0.25 * total <= sum(map(len, cut)) < 0.25 * total + max(map(len, lines))
    assert sweep.training_text(argparse.Namespace(train_fraction=1.0, output=tmp_path)) == data / "train.txt"


@pytest.mark.parametrize("fraction", [0, 1.5])
def test_a_fraction_outside_zero_to_one_is_refused(fraction, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(sweep, "DATA", tmp_path)
    monkeypatch.setattr("sys.argv", ["sweep.py", "--train-fraction", str(fraction), "--output", str(tmp_path)])
    with pytest.raises(SystemExit):
        sweep.main()
    assert "--train-fraction" in capsys.readouterr().err


def test_only_names_variants_of_the_chosen_axes(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(sweep, "DATA", tmp_path)
    monkeypatch.setattr("sys.argv", ["sweep.py", "--axes", "lr", "--only", "192x8", "--output", str(tmp_path)])
    with pytest.raises(SystemExit):
        sweep.main()
    assert "192x8" in capsys.readouterr().err


def test_the_final_training_loss_is_the_mean_of_the_last_logged_steps():
    history = [[step, 10.0] for step in range(1, 81)] + [[step, 2.0 + step % 2] for step in range(81, 101)]
    assert sweep.final_training_loss(history) == pytest.approx(2.5)  # steps 81-100 only
    assert sweep.final_training_loss(history, last=1) == 2.0
    assert sweep.final_training_loss(history[:3]) == 10.0  # a run shorter than the window
    assert sweep.final_training_loss([]) is None and sweep.final_training_loss(None) is None


def test_a_cached_run_is_reused_only_while_its_config_file_resolves_to_the_same_recipe(tmp_path):
    import json

    config = tmp_path / "recipe.yaml"
    config.write_text("model:\n  preset: tiny-hybrid\ntraining:\n  learning_rate: 0.003\n")
    args = argparse.Namespace(config=str(config), minutes=3.0, mixed_precision="bf16", train_fraction=1.0)
    settings, tokenizer, record = sweep.run_record({"learning_rate": "x2"}, args, sweep.base_settings(str(config)))
    assert settings == {"learning_rate": 0.006} and tokenizer == sweep.DEFAULT_TOKENIZER
    assert json.loads(json.dumps(record)) == record  # what sweep.json stores compares equal when read back
    config.write_text("model:\n  preset: tiny-hybrid\n  num_hidden_layers: 2\ntraining:\n  learning_rate: 0.003\n")
    changed = sweep.run_record({"learning_rate": "x2"}, args, sweep.base_settings(str(config)))[2]
    assert changed != record and changed["config"] == record["config"]
