"""yuyan.records: run.json and metrics.json read and written as they have always been."""

from __future__ import annotations

import json

import pytest

from yuyan.records import (
    FinetuneMetrics,
    FinetuneRun,
    PretrainMetrics,
    metrics_from_dict,
    read_metrics,
    read_run,
    run_from_dict,
)

FINETUNE_METRICS = {"task": "text-classification", "base_model": "org/base", "metrics": {"accuracy": 75.0},
                    "dataset": "train.jsonl", "validation_data": "valid.jsonl", "train_seconds": 1.5,
                    "parameters": 100, "layer_types": ["lstm"], "device": "cpu", "hardware": "x86_64"}


def test_the_kind_of_run_is_a_property_of_its_records():
    assert isinstance(metrics_from_dict(FINETUNE_METRICS), FinetuneMetrics)
    assert metrics_from_dict(FINETUNE_METRICS).is_finetuning
    assert not metrics_from_dict({"steps": 3, "validation_loss": 2.0}).is_finetuning
    assert run_from_dict({"task": "classification", "training": {}}).is_finetuning
    # A partial run record that does not name its task takes the kind its metrics told.
    assert isinstance(run_from_dict({"training": {"seed": 1}}, finetuning=True), FinetuneRun)


def test_fine_tuning_json_round_trips_in_its_order_with_optional_and_unknown_keys(tmp_path):
    record = metrics_from_dict(FINETUNE_METRICS)
    assert record.to_dict() == FINETUNE_METRICS and list(record.to_dict()) == list(FINETUNE_METRICS)
    assert "test_metrics" not in record.to_dict(), "no test data: no test keys"
    with_test = {**FINETUNE_METRICS, "language": "zh"}
    with_test = dict(list(with_test.items())[:5] + [("test_metrics", {"accuracy": 70.0}), ("test_data", "t.jsonl")]
                     + list(with_test.items())[5:])
    record = metrics_from_dict(with_test)
    assert record.test_metrics == {"accuracy": 70.0} and record.extra == {"language": "zh"}
    record.write(tmp_path)
    assert json.loads((tmp_path / "metrics.json").read_text()) == with_test
    run = FinetuneRun(training={"seed": 1}, lora=None, task="classification", data={"labels": ["a", "b"]})
    run.write(tmp_path)
    assert list(json.loads((tmp_path / "run.json").read_text()).items()) == [
        ("training", {"seed": 1}), ("lora", None), ("task", "classification"), ("data", {"labels": ["a", "b"]})]
    assert read_run(tmp_path) == run


def test_pretraining_metrics_keep_their_key_order():
    names = ["validation_loss", "validation_perplexity", "steps", "tokens_seen", "train_seconds", "tokens_per_second",
             "stop_reason", "parameters", "layer_types", "processes", "mixed_precision", "device", "hardware",
             "loss_history", "eval_history", "time_history", "train_data", "validation_data"]
    values = {name: index for index, name in enumerate(names)}
    record = PretrainMetrics(**values)
    assert list(record.to_dict()) == names and record.to_dict() == values
    # The dropout chosen from the planned passes is written only when the run chose one.
    chosen = {"planned_passes": 9.6, "hidden_dropout": 0.1}
    assert PretrainMetrics(**values, regularisation=chosen).to_dict() == {**values, "regularisation": chosen}


def test_broken_files_are_named_in_the_error(tmp_path):
    (tmp_path / "metrics.json").write_text("{not json")
    with pytest.raises(ValueError, match="metrics.json is not valid JSON"):
        read_metrics(tmp_path)
    (tmp_path / "run.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="run.json should hold a JSON object"):
        read_run(tmp_path)
    with pytest.raises(FileNotFoundError):
        read_metrics(tmp_path / "missing")
