"""`yuyan pretrain`: configuration, errors before training, a whole tiny run, exact resume after SIGKILL, and
data-parallel training on two CPU processes."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

import yuyan  # noqa: F401
from yuyan.cli import main
from yuyan.corpus import TextSource, load_documents, python_documentation
from yuyan.records import read_metrics, read_run
from yuyan.training.packing import split_validation
from yuyan.training.pretrain import ModelSettings, resolve_config
from yuyan.training.pretrain.loop import EpochShuffleSampler

from run_helpers import TINY, data_flags, free_port, run_cli

REPO = Path(__file__).resolve().parents[2]

# ---------------------------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------------------------


def test_yaml_config_then_flags_then_set_overrides(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("model:\n  preset: small-lstm\n  hidden_size: 128\ntraining:\n  learning_rate: 0.002\n"
                      "  batch_size: 8\n  block_size: 64\n")
    model, training = resolve_config(
        str(config), {"num_hidden_layers": 3, "model.intermediate_size": 0, "block_size": 32}, {"batch_size": 4}
    )
    assert model.requested == {"preset": "small-lstm", "hidden_size": 128, "num_hidden_layers": 3,
                               "intermediate_size": 0}
    # Resolved once into the config the run builds: the preset's kind kept at the new depth.
    assert (model.config.hidden_size, model.config.mixer_types, model.config.intermediate_size) == (
        128, ["lstm"] * 3, 0)
    assert (training.learning_rate, training.batch_size, training.block_size) == (0.002, 4, 32)


def test_the_tokenizer_sets_the_vocabulary_and_ids_on_the_resolved_config(corpus):
    model = ModelSettings.resolve({"preset": "tiny-hybrid", "hidden_size": 32})
    config = model.config
    tokenizer = AutoTokenizer.from_pretrained(corpus["tokenizer"])
    assert model.adopt_tokenizer(tokenizer) is config  # the one config of the run, not a second one
    assert config.vocab_size == len(tokenizer) and config.eos_token_id == tokenizer.eos_token_id
    assert config.bos_token_id == tokenizer.eos_token_id and config.pad_token_id == tokenizer.pad_token_id
    assert model.requested == {"preset": "tiny-hybrid", "hidden_size": 32}
    # Ids beyond the vocabulary are refused, as YuyanConfig refuses them.
    small = ModelSettings.resolve({"preset": "tiny-hybrid"})
    with pytest.raises(ValueError, match="vocab_size"):
        small.adopt_tokenizer(_TruncatedVocabulary())


class _TruncatedVocabulary:
    """A tokenizer whose special ids lie beyond its (claimed) vocabulary."""

    def __init__(self):
        self.pad_token_id, self.bos_token_id, self.eos_token_id = 10, None, 10

    def __len__(self) -> int:
        return 5


def test_an_unknown_preset_is_refused_when_the_config_is_resolved():
    with pytest.raises(ValueError, match="unknown preset 'tiny-transformer'"):
        resolve_config("tiny-hybrid", {"model.preset": "tiny-transformer"})


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "configs").glob("*.yaml")))
def test_shipped_configs_resolve(name):
    model, training = resolve_config(str(REPO / "configs" / f"{name}.yaml"))
    assert model.requested["preset"] == name and model.config.num_hidden_layers > 0
    training.validate()


def test_unknown_training_setting_is_refused(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("training:\n  learning_rte: 0.1\n")
    with pytest.raises(ValueError, match=r"unknown training settings \['learning_rte'\]"):
        resolve_config(str(config))


def test_sampler_order_depends_only_on_seed_and_epoch():
    sampler = EpochShuffleSampler(50, seed=3)
    first = list(sampler)
    sampler.set_epoch(1)
    second = list(sampler)
    assert sorted(first) == list(range(50)) and first != second
    again = EpochShuffleSampler(50, seed=3)
    again.set_epoch(1)
    assert list(again) == second


def test_schedule_warms_up_then_decays_to_the_floor():
    from yuyan.training.pretrain.schedule import new_schedule_plan, schedule_factor

    # A plan fixed from the start (a step budget): linear warm-up, then cosine to the floor.
    plan = {**new_schedule_plan(4), "total_steps": 20, "fixed_by": "max_steps"}
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: schedule_factor(step, plan, 0.1))
    rates = []
    for _ in range(20):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    rates.append(scheduler.get_last_lr()[0])
    assert rates[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in zip(rates[4:], rates[5:]))
    assert math.isclose(rates[-1], 0.1)


@pytest.mark.parametrize("warmup, planned_at, total", [(100, 13, 115), (5, 13, 115), (100, 13, 40), (10, 13, 14)])
def test_a_schedule_fixed_mid_run_never_jumps_and_ends_at_the_floor(warmup, planned_at, total):
    from yuyan.training.pretrain.schedule import fix_schedule, new_schedule_plan, schedule_factor

    plan = new_schedule_plan(warmup)
    before = [schedule_factor(step, plan, 0.1) for step in range(planned_at)]
    fix_schedule(plan, total, planned_at, "max_minutes", 0.1)
    after = [schedule_factor(step, plan, 0.1) for step in range(planned_at, total + 1)]
    rates = before + after
    steepest = max(1 / warmup, 1 / max(1, plan["final_warmup_steps"] - planned_at), math.pi / max(1, total - planned_at))
    assert all(abs(b - a) <= steepest + 1e-9 for a, b in zip(rates, rates[1:])), "the rate jumped"
    assert max(rates) <= 1.0 and math.isclose(rates[-1], 0.1) and rates[-1] == min(rates[planned_at:])
    if total - planned_at >= 20:  # room to warm up: the peak is reached whenever the plan was fixed
        assert max(rates) == 1.0


def test_a_short_time_budget_planned_after_its_warm_up_still_reaches_the_peak():
    """3 minutes at 2 s a step: the step time is known at step 13, when the provisional 200-step warm-up is at
    7% and the run's own warm-up (a tenth of 94 steps) should be over; the rate climbs to the peak at the
    run's warm-up pace, then decays."""
    from yuyan.training.pretrain.schedule import fix_schedule, new_schedule_plan, schedule_factor

    plan = new_schedule_plan(200)
    fix_schedule(plan, 94, 13, "max_minutes", 0.1)
    rates = [schedule_factor(step, plan, 0.1) for step in range(95)]
    peak_at = rates.index(max(rates))
    assert max(rates) == 1.0 and 13 < peak_at <= 13 + 9
    assert all(a <= b for a, b in zip(rates[:peak_at], rates[1 : peak_at + 1]))
    assert all(a >= b for a, b in zip(rates[peak_at:], rates[peak_at + 1 :]))


# ---------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------


def test_embedded_corpus_is_python_documentation():
    documents = python_documentation(max_bytes=300_000)
    assert len(documents) > 50
    assert any("assert" in d and "statement" in d for d in documents)
    assert all(isinstance(d, str) and d.strip() for d in documents)


def test_validation_split_is_deterministic_and_disjoint(corpus):
    documents = load_documents(TextSource(files=[str(corpus["train"])]))
    train, validation = split_validation(documents, 0.1)
    assert len(train) + len(validation) == len(documents) == 60
    assert len(validation) == 6
    assert not set(train["text"]) & set(validation["text"])


# ---------------------------------------------------------------------------------------------------------------
# Errors before training
# ---------------------------------------------------------------------------------------------------------------


def test_errors_are_reported_before_any_training(tmp_path, corpus, capsys):
    out = tmp_path / "out"
    cases = [
        (["--config", "huge-attention", *data_flags(corpus), "--output", str(out)], "'huge-attention' is neither a YAML file nor a preset"),
        ([*TINY, *data_flags(corpus), "--block-size", "128", "--output", str(out)],
         "block_size=128 is beyond the model's max_position_embeddings=64"),
        ([*TINY, "--data", str(tmp_path / "missing.txt"), "--output", str(out)], "missing.txt"),
        ([*TINY, *data_flags(corpus), "--max-steps", "0", "--output", str(out)], "max_steps=0 is not allowed"),
    ]
    for args, message in cases:
        assert main(["pretrain", *args]) == 2
        assert message in capsys.readouterr().err
        assert not out.exists(), f"{message}: the output folder was written"

    no_text = tmp_path / "records.jsonl"
    no_text.write_text('{"content": "a document without a text column"}\n')
    assert main(["pretrain", *TINY, "--data", str(no_text), "--tokenizer", str(corpus["tokenizer"]),
                 "--block-size", "16", "--output", str(out)]) == 2
    assert "'text'" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
def test_output_holding_another_run_is_refused(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    common = [*TINY, *data_flags(corpus), "--block-size", "16", "--batch-size", "4", "--max-steps", "2",
              "--save-steps", "1", "--output", str(out)]
    assert main(["pretrain", *common]) == 0
    before = (out / "model.safetensors").read_bytes()
    assert main(["pretrain", *common]) == 2
    assert "holds another run" in capsys.readouterr().err
    assert (out / "model.safetensors").read_bytes() == before, "the earlier run was touched"


# ---------------------------------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_tiny_run_writes_a_complete_model_folder(tmp_path, corpus):
    out = tmp_path / "run"
    assert main(["pretrain", *TINY, *data_flags(corpus), "--block-size", "16", "--batch-size", "4",
                 "--max-steps", "6", "--save-steps", "2", "--save-total-limit", "2", "--eval-steps", "3",
                 "--logging-steps", "1", "--report-to", "tensorboard", "--output", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert list((out / "logs").rglob("events.out.tfevents.*")), "no TensorBoard event file"
    assert metrics["steps"] == 6 and len(metrics["loss_history"]) == 6 and len(metrics["eval_history"]) == 1
    assert metrics["tokens_seen"] == 6 * 4 * 16
    assert math.isclose(metrics["validation_perplexity"], math.exp(metrics["validation_loss"]), rel_tol=1e-6)
    assert [p.name for p in sorted((out / "checkpoints").iterdir())] == ["step-0000004", "step-0000006"]
    assert not list(out.rglob("*.tmp")), "a temporary file or folder was left behind"
    # Every key of both files is a field of its record, and the records write the files back as they are.
    record, run = read_metrics(out), read_run(out)
    assert not record.is_finetuning and not run.is_finetuning and record.extra == {} == run.extra
    assert record.to_dict() == metrics and list(record.to_dict()) == list(metrics)
    assert run.to_dict() == json.loads((out / "run.json").read_text()) and run.model["preset"] == "tiny-hybrid"

    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.layer_types == ["lstm", "full_attention"]
    assert model.config.vocab_size == len(tokenizer) and model.config.eos_token_id == tokenizer.eos_token_id
    card = (out / "README.md").read_text()
    assert f"{metrics['validation_perplexity']:.2f}" in card and "{{" not in card


@pytest.mark.slow
def test_streaming_run_with_a_step_budget(tmp_path, corpus):
    out = tmp_path / "run"
    assert main(["pretrain", *TINY, *data_flags(corpus), "--streaming", "--block-size", "16", "--batch-size", "4",
                 "--max-steps", "3", "--eval-batches", "2", "--output", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["steps"] == 3


@pytest.mark.slow
def test_time_budget_stops_cleanly_and_saves(tmp_path, corpus):
    out = tmp_path / "run"
    assert main(["pretrain", *TINY, *data_flags(corpus), "--block-size", "16", "--batch-size", "4",
                 "--max-minutes", "0.0001", "--save-steps", "1000", "--output", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["stop_reason"] == "max_minutes" and metrics["steps"] >= 1
    assert (out / "checkpoints" / f"step-{metrics['steps']:07d}").is_dir()


@pytest.mark.slow
def test_sigkill_then_resume_ends_with_the_same_weights(tmp_path, corpus):
    # Dropout on, several epochs (the corpus gives about ten steps an epoch): RNG and data position must both
    # be restored exactly for the weights to match bit for bit.
    common = [*TINY, "--set", "hidden_dropout=0.1", *data_flags(corpus), "--block-size", "16", "--batch-size",
              "4", "--max-steps", "30", "--save-steps", "2", "--eval-steps", "7", "--seed", "5"]
    straight = run_cli(["pretrain", *common, "--output", str(tmp_path / "straight")])
    assert straight.returncode == 0, straight.stderr[-2000:]

    out = tmp_path / "killed"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    process = subprocess.Popen([sys.executable, "-m", "yuyan.cli", "pretrain", *common, "--output", str(out)],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (out / "checkpoints" / "step-0000008").exists():
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "model.safetensors").exists(), "the run finished before the kill"

    resumed = run_cli(["pretrain", *common, "--output", str(out), "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "Resumed from" in resumed.stdout + resumed.stderr
    expected, got = load_file(tmp_path / "straight" / "model.safetensors"), load_file(out / "model.safetensors")
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    straight_metrics = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    resumed_metrics = json.loads((out / "metrics.json").read_text())
    assert resumed_metrics["loss_history"] == straight_metrics["loss_history"]


@pytest.mark.slow
def test_two_processes_follow_one_process_with_twice_the_batch(tmp_path, corpus):
    common = [*TINY, *data_flags(corpus), "--block-size", "16", "--max-steps", "6", "--save-steps", "100",
              "--eval-steps", "100", "--logging-steps", "1"]
    single = run_cli(["pretrain", *common, "--batch-size", "4", "--output", str(tmp_path / "one")])
    assert single.returncode == 0, single.stderr[-2000:]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    launch = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
         str(REPO / "configs" / "accelerate" / "cpu-2-processes.yaml"), "--main_process_port", str(free_port()),
         "-m", "yuyan.cli", "pretrain", *common,
         "--batch-size", "2", "--output", str(tmp_path / "two")],
        env=env, capture_output=True, text=True, timeout=180,
    )
    assert launch.returncode == 0, launch.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert (one["processes"], two["processes"]) == (1, 2)
    assert one["tokens_seen"] == two["tokens_seen"]
    for (step_a, loss_a), (step_b, loss_b) in zip(one["loss_history"], two["loss_history"], strict=True):
        assert step_a == step_b and math.isclose(loss_a, loss_b, abs_tol=1e-4), (step_a, loss_a, loss_b)
    assert math.isclose(one["validation_loss"], two["validation_loss"], abs_tol=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# Time budgets, on a fake clock driven by the model's work
# ---------------------------------------------------------------------------------------------------------------


class Crash(Exception):
    """A simulated kill in the middle of a run."""


class WorkClock:
    """A clock that moves only when the model works: each training forward takes `train` seconds, each
    evaluation forward `evaluate` seconds. Optionally raises `Crash` at the `crash_at`-th training forward, and
    makes training forwards take `later` seconds from the `change_at`-th one on (the machine's speed drifts)."""

    def __init__(self, train: float = 0.5, evaluate: float = 0.1, crash_at: int | None = None,
                 change_at: int | None = None, later: float | None = None):
        self.now, self.train, self.evaluate, self.crash_at, self.training_forwards = 0.0, train, evaluate, crash_at, 0
        self.change_at, self.later = change_at, later

    def __call__(self) -> float:
        return self.now

    def _tick(self, module, args):
        if isinstance(module, yuyan.YuyanForCausalLM):
            if module.training:
                self.training_forwards += 1
                if self.training_forwards == self.crash_at:
                    raise Crash
                if self.training_forwards == self.change_at:
                    self.train = self.later
            self.now += self.train if module.training else self.evaluate

    def __enter__(self):
        self._handle = torch.nn.modules.module.register_module_forward_pre_hook(self._tick)
        return self

    def __exit__(self, *exc):
        self._handle.remove()


def budget_run(corpus, output: Path, clock: WorkClock, dropout: float | None = 0.0, **training) -> dict:
    """A tiny run on the fake clock; `dropout=None` leaves the model's hidden_dropout unasked (the planned passes
    choose it)."""
    from yuyan.training.pretrain import pretrain

    overrides = {**parse_set(TINY), **({} if dropout is None else {"hidden_dropout": dropout})}
    model_values, args = resolve_config(
        "tiny-hybrid", overrides,
        {"data": [str(corpus["train"])], "validation_data": [str(corpus["valid"])], "tokenizer": str(corpus["tokenizer"]),
         "block_size": 16, "batch_size": 4, "eval_steps": 20, "eval_batches": 2, "logging_steps": 5,
         "save_steps": 1000, "output": str(output), "seed": 5, **training},
    )
    with clock:
        return pretrain(args, model_values, clock=clock)


@pytest.mark.slow
@pytest.mark.parametrize("native", [True, False])
def test_bf16_on_a_cpu_without_native_bfloat16_warns_and_still_trains(tmp_path, corpus, capsys, monkeypatch, native):
    """bf16 autocast on an AVX2-only CPU runs ~20x slower than float32: the run says so up front, then trains (its
    LSTM layers in float32 where the CPU has no bf16 LSTM)."""
    from yuyan.training.pretrain import run as pretrain_run

    from accelerate.state import AcceleratorState

    monkeypatch.setattr(pretrain_run, "cpu_has_native_bfloat16", lambda: native)
    # Accelerate keeps one process-wide state, fixed by the first Accelerator (float32 in the other tests).
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        metrics = budget_run(corpus, tmp_path / "run", WorkClock(), mixed_precision="bf16", max_steps=2, eval_steps=2)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert metrics["steps"] == 2 and metrics["mixed_precision"] == "bf16"
    warned = "warning: --mixed-precision bf16 on a CPU without native bfloat16" in capsys.readouterr().out
    assert warned == (not native)


def parse_set(flags: list[str]) -> dict:
    from yuyan.training.pretrain import parse_overrides

    return parse_overrides([flags[i + 1] for i, flag in enumerate(flags) if flag == "--set"])


def final_state(output: Path) -> dict:
    return json.loads((sorted((output / "checkpoints").iterdir())[-1] / "trainer_state.json").read_text())


def final_learning_rate(output: Path) -> float:
    """The learning rate the optimizer holds in the run's last checkpoint (what the schedule set last)."""
    optimizer = torch.load(sorted((output / "checkpoints").iterdir())[-1] / "optimizer.bin", weights_only=False)
    return optimizer["param_groups"][0]["lr"]


@pytest.mark.slow
def test_time_budget_alone_fills_the_budget_over_several_epochs(tmp_path, corpus, one_thread):
    # 0.5 s a step on the fake clock: a 1-minute budget holds about 115 steps, over two epochs of this corpus.
    out = tmp_path / "run"
    metrics = budget_run(corpus, out, WorkClock(), max_minutes=1.0, learning_rate=1e-3, min_learning_rate_ratio=0.1)
    state = final_state(out)
    schedule = state["schedule"]
    assert metrics["stop_reason"] == "max_minutes" and schedule["fixed_by"] == "max_minutes"
    # The step count was fixed early from the measured step time, and the run ended on it, not on the clock.
    assert 0 < schedule["planned_at"] <= 20 and schedule["measured_step_seconds"] == 0.5
    assert metrics["steps"] == schedule["total_steps"] and 0.9 * 60 <= metrics["train_seconds"] <= 60
    assert state["epoch"] >= 2, "a time budget alone must train as many epochs as fit"
    assert math.isclose(final_learning_rate(out), 1e-3 * 0.1, rel_tol=1e-6), "the schedule did not end with the run"


@pytest.mark.slow
@pytest.mark.parametrize("later", [0.6, 0.4], ids=["slower", "faster"])
def test_time_budget_follows_a_step_time_that_drifts(tmp_path, corpus, one_thread, later):
    # Steps take 0.5 s until the 40th training forward, then `later` s. Planned once from the first steps, the
    # slower run would be cut by the clock before its schedule ends, and the faster one would end with time left.
    # Re-planned as it goes, each still ends on its planned step, within the budget, at the schedule's last rate.
    out = tmp_path / "run"
    metrics = budget_run(corpus, out, WorkClock(change_at=40, later=later), max_minutes=1.0,
                         min_learning_rate_ratio=0.1)
    schedule = final_state(out)["schedule"]
    assert schedule["replans"], "the step time changed but the plan was never re-made"
    assert metrics["stop_reason"] == "max_minutes" and metrics["steps"] == schedule["total_steps"]
    assert 0.9 * 60 <= metrics["train_seconds"] <= 60
    assert math.isclose(final_learning_rate(out), 1e-3 * 0.1, rel_tol=1e-6), "the schedule did not end with the run"


@pytest.mark.slow
def test_the_first_budget_reached_ends_the_run_and_the_schedule(tmp_path, corpus, one_thread):
    # A step budget inside the time budget: the run is exactly the run with the step budget alone.
    steps_only = budget_run(corpus, tmp_path / "steps", WorkClock(), max_steps=25)
    both = budget_run(corpus, tmp_path / "both", WorkClock(), max_steps=25, max_minutes=1.0)
    assert both["stop_reason"] == steps_only["stop_reason"] == "max_steps" and both["steps"] == 25
    assert both["loss_history"] == steps_only["loss_history"]
    expected, got = load_file(tmp_path / "steps" / "model.safetensors"), load_file(tmp_path / "both" / "model.safetensors")
    assert all(torch.equal(expected[name], got[name]) for name in expected)

    # A token budget before the step budget: 20 steps of 4 x 16 tokens.
    tokens = budget_run(corpus, tmp_path / "tokens", WorkClock(), max_tokens=20 * 64, max_steps=100)
    assert tokens["stop_reason"] == "max_tokens" and tokens["steps"] == 20 and tokens["tokens_seen"] == 1280

    # A time budget before the step budget: the schedule is shortened to what the time allows and ends on time.
    out = tmp_path / "time"
    timed = budget_run(corpus, out, WorkClock(), max_steps=1000, max_minutes=0.5, min_learning_rate_ratio=0.1)
    schedule = final_state(out)["schedule"]
    assert timed["stop_reason"] == "max_minutes" and timed["steps"] == schedule["total_steps"] < 60
    assert timed["train_seconds"] <= 30
    assert math.isclose(final_learning_rate(out), 1e-3 * 0.1, rel_tol=1e-6)


def saved_dropout(output: Path) -> float:
    return json.loads((output / "config.json").read_text())["hidden_dropout"]


@pytest.mark.slow
def test_the_planned_passes_choose_the_dropout(tmp_path, corpus, one_thread):
    # A time budget: the step time is measured first (no dropout yet), then the plan (0.5 s a step: about 115
    # steps, over two epochs of this corpus) turns dropout on for the rest of the run.
    timed = budget_run(corpus, tmp_path / "timed", WorkClock(), dropout=None, max_minutes=1.0,
                       multi_pass_dropout=0.2, multi_pass_threshold=1.5)
    chosen = timed["regularisation"]
    state = final_state(tmp_path / "timed")
    assert chosen["hidden_dropout"] == 0.2 and chosen["planned_passes"] > 1.5 and state["epoch"] >= 2
    assert saved_dropout(tmp_path / "timed") == 0.2
    # Against the same run with no dropout: the same losses until the plan (made after step planned_at - 1;
    # dropout is on from the next step, the new schedule from the one after), other losses from there on.
    plain = budget_run(corpus, tmp_path / "plain", WorkClock(), dropout=0.0, max_minutes=1.0)
    planned_at = final_state(tmp_path / "plain")["schedule"]["planned_at"]
    assert "regularisation" not in plain and planned_at == state["schedule"]["planned_at"]
    assert [loss for step, loss in timed["loss_history"] if step < planned_at] == [
        loss for step, loss in plain["loss_history"] if step < planned_at]
    assert all(a != b for (step, a), (_, b) in zip(timed["loss_history"], plain["loss_history"]) if step >= planned_at)
    # The same budget under a higher threshold: no dropout, the plain run's losses throughout.
    under = budget_run(corpus, tmp_path / "under", WorkClock(), dropout=None, max_minutes=1.0,
                       multi_pass_threshold=chosen["planned_passes"] + 0.5)
    assert under["regularisation"]["hidden_dropout"] == 0.0 and under["loss_history"] == plain["loss_history"]

    # A step budget fixes the plan, and the dropout, from the first step on.
    many = budget_run(corpus, tmp_path / "many", WorkClock(), dropout=None, max_steps=20, multi_pass_threshold=0.01)
    without = budget_run(corpus, tmp_path / "without", WorkClock(), dropout=0.0, max_steps=20)
    assert many["regularisation"]["hidden_dropout"] == 0.1  # the default multi_pass_dropout
    assert saved_dropout(tmp_path / "many") == 0.1
    assert all(a != b for (_, a), (_, b) in zip(many["loss_history"], without["loss_history"], strict=True))
    # A dropout asked for holds whatever the budget.
    asked = budget_run(corpus, tmp_path / "asked", WorkClock(), dropout=0.05, max_steps=20, multi_pass_threshold=0.01)
    assert "regularisation" not in asked and saved_dropout(tmp_path / "asked") == 0.05


@pytest.mark.parametrize("field, value", [("multi_pass_dropout", 1.0), ("multi_pass_dropout", -0.1),
                                          ("multi_pass_threshold", 0)])
def test_the_multi_pass_settings_are_checked(field, value):
    from yuyan.training.pretrain import PretrainArguments

    with pytest.raises(ValueError, match=f"{field}={value} is not allowed"):
        PretrainArguments(**{field: value}).validate()


@pytest.mark.slow
@pytest.mark.parametrize("dropout", [{"dropout": 0.1}, {"dropout": None, "multi_pass_threshold": 0.5}],
                         ids=["asked-for", "chosen-by-the-plan"])
def test_resume_with_a_time_budget_is_exact(tmp_path, corpus, one_thread, dropout):
    # Dropout on (asked for, or chosen by the plan made before the crash), and steps slower from the 30th on:
    # after a crash at step 47 (after the plan, a re-plan and the checkpoint at step 40), the resumed run (as
    # slow) follows the plans made before the crash, re-plans as the uninterrupted run did, and ends with its
    # weights, bit for bit.
    training = {"max_minutes": 1.0, "save_steps": 10, **dropout}
    straight = budget_run(corpus, tmp_path / "straight", WorkClock(change_at=30, later=0.6), **training)
    out = tmp_path / "crashed"
    with pytest.raises(Crash):
        budget_run(corpus, out, WorkClock(change_at=30, later=0.6, crash_at=47), **training)
    assert (out / "checkpoints" / "step-0000040").is_dir() and not (out / "model.safetensors").exists()
    resumed = budget_run(corpus, out, WorkClock(train=0.6), resume="latest", **training)
    assert resumed["steps"] == straight["steps"] and resumed["loss_history"] == straight["loss_history"]
    schedule = final_state(tmp_path / "straight")["schedule"]
    assert any(step < 40 for step, _ in schedule["replans"]) and any(step > 47 for step, _ in schedule["replans"])
    assert final_state(out)["schedule"] == schedule
    expected, got = load_file(tmp_path / "straight" / "model.safetensors"), load_file(out / "model.safetensors")
    for name in expected:
        assert torch.equal(expected[name], got[name]), name


@pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="this torch has no torch.optim.Muon")
def test_cpu_muon_takes_torchs_step_with_a_float32_orthogonalisation():
    """CpuMuon against torch.optim.Muon from the same weights and gradients: the same step up to torch's bfloat16
    rounding (which CpuMuon avoids), for a tall and a wide matrix, with momentum carried over a second step."""
    from yuyan.training.pretrain.optimizers import CpuMuon, newton_schulz_float32

    torch.manual_seed(0)
    weights = [torch.randn(48, 16), torch.randn(16, 40)]
    grads = [[torch.randn_like(w) for w in weights] for _ in range(2)]
    moved = []
    for optimizer_class in (torch.optim.Muon, CpuMuon):
        params = [torch.nn.Parameter(w.clone()) for w in weights]
        extra = {"float32": True} if optimizer_class is CpuMuon else {}
        optimizer = optimizer_class(params, lr=0.02, weight_decay=0.1, adjust_lr_fn="match_rms_adamw", **extra)
        for step_grads in grads:
            for param, grad in zip(params, step_grads):
                param.grad = grad.clone()
            optimizer.step()
        moved.append([param.detach() - w for param, w in zip(params, weights)])
        if optimizer_class is CpuMuon:
            assert optimizer.state_dict()["state"].keys() == reference_state.keys()
        reference_state = optimizer.state_dict()["state"]
    for torch_delta, cpu_delta in zip(*moved):
        assert cpu_delta.abs().max() > 0.01
        torch.testing.assert_close(cpu_delta, torch_delta, atol=0.02 * torch_delta.abs().max().item(), rtol=0.05)
    # The iteration flattens the spectrum towards 1 (Muon's coefficients leave it within about 0.5-1.5).
    singular = torch.linalg.svdvals(newton_schulz_float32(torch.randn(64, 24), (3.4445, -4.7750, 2.0315), 5, 1e-7))
    assert singular.min() > 0.4 and singular.max() < 1.6


@pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="this torch has no torch.optim.Muon")
def test_cpu_muon_orthogonalises_in_float32_only_without_native_bfloat16(monkeypatch):
    """float32 is the AVX2 path; where bf16 is native torch's own (bf16) step is the faster one."""
    from yuyan.training.pretrain import optimizers

    torch.manual_seed(0)
    weight = torch.randn(32, 24)
    grad = torch.randn_like(weight)
    calls = []
    monkeypatch.setattr(optimizers, "newton_schulz_float32",
                        lambda *a, **k: calls.append(1) or torch.zeros_like(a[0]))
    for native, float32 in ((True, False), (False, True)):
        monkeypatch.setattr(optimizers, "cpu_has_native_bfloat16", lambda native=native: native)
        param = torch.nn.Parameter(weight.clone())
        optimizer = optimizers.CpuMuon([param], lr=0.02, weight_decay=0.0)
        assert optimizer.float32 is float32
        param.grad = grad.clone()
        optimizer.step()
        assert bool(calls) is float32
        assert torch.equal(param, weight) is float32  # the stand-in float32 update is zero; torch's is not
        calls.clear()


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="this torch has no torch.optim.Muon")
def test_muon_optimizer_trains_the_hidden_matrices_and_resumes_exactly(tmp_path, corpus, one_thread):
    from yuyan.training.pretrain import make_optimizer

    _, args = resolve_config("tiny-hybrid", {}, {"optimizer": "muon"})
    model = yuyan.YuyanForCausalLM(yuyan.YuyanConfig.from_preset("tiny-hybrid", vocab_size=320))
    muon = make_optimizer(model, args).optimizers[1]
    assert isinstance(muon, torch.optim.Muon)
    names = {id(p): name for name, p in model.named_parameters()}
    in_muon = {names[id(p)] for group in muon.param_groups for p in group["params"]}
    assert "model.layers.1.self_attn.qkv_proj.weight" in in_muon and "model.layers.0.recurrent.lstm.weight_hh_l0" in in_muon
    assert not any("embed" in n or "norm" in n or "bias" in n for n in in_muon)

    training = {"optimizer": "muon", "max_steps": 12, "save_steps": 4, "dropout": 0.1}
    straight = budget_run(corpus, tmp_path / "straight", WorkClock(), **training)
    assert straight["loss_history"][-1][1] < straight["loss_history"][0][1]
    with pytest.raises(Crash):
        budget_run(corpus, tmp_path / "crashed", WorkClock(crash_at=10), **training)
    resumed = budget_run(corpus, tmp_path / "crashed", WorkClock(), resume="latest", **training)
    assert resumed["loss_history"] == straight["loss_history"]
    expected, got = load_file(tmp_path / "straight" / "model.safetensors"), load_file(tmp_path / "crashed" / "model.safetensors")
    assert all(torch.equal(expected[name], got[name]) for name in expected)
