"""Model cards (`yuyan.cards`, `model_cards/`): the card of a pretraining run and of a fine-tuning run parses back
with its evaluation results in `model-index` exactly as metrics.json holds them, no template placeholder is left,
and `yuyan card --model DIR` re-renders it.

`build_model_folder` and `pretrain_tiny` are also used by test_hub.py."""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

import yuyan  # noqa: F401  (registers the model: save_pretrained writes auto_map and copies the code)
from yuyan.cards import template_path, write_model_card
from yuyan.cli import build_parser
from yuyan.tasks import TASKS, task_for_pipeline

from run_helpers import build_model_folder, pretrain_tiny, train_tiny_tokenizer

PLACEHOLDER = re.compile(r"\{\{|\}\}|\{%|%\}")


def finetune_metrics(task: str, scores: dict, parameters: int, **extra) -> dict:
    """metrics.json as `yuyan finetune` writes it."""
    return {
        "task": task, "base_model": "yuyan-org/tiny-base", "metrics": scores, "dataset": "/data/private/train.jsonl",
        "validation_data": "/data/private/dev.jsonl", "train_seconds": 412.25, "parameters": parameters,
        "layer_types": ["lstm", "full_attention"], "device": "cpu", "hardware": "x86_64", **extra,
    }


FINETUNE_RUN = {
    "training": {"learning_rate": 5e-05, "per_device_train_batch_size": 16, "num_train_epochs": 3, "seed": 7,
                 "max_steps": -1, "output_dir": "/data/private/out", "weight_decay": 0.01},
    "lora": None,
}

TASK_SCORES = {
    "text-classification": {"eval_accuracy": 0.9125, "eval_f1": 0.9031746031746032, "eval_loss": 0.2871,
                            "eval_runtime": 1.5, "eval_samples_per_second": 300.1, "epoch": 3.0},
    "token-classification": {"precision": 0.81, "recall": 0.79, "f1": 0.7998765432, "accuracy": 0.95},
    "question-answering": {"exact_match": 61.5, "f1": 70.12345},
    "text-generation": {"eval_loss": 2.5, "perplexity": 12.182493960703473},
}
EXPECTED = {  # what model-index holds: the numbers under their own names, no bookkeeping
    "text-classification": {"accuracy": 0.9125, "f1": 0.9031746031746032, "loss": 0.2871},
    "token-classification": {"precision": 0.81, "recall": 0.79, "f1": 0.7998765432, "accuracy": 0.95},
    "question-answering": {"exact_match": 61.5, "f1": 70.12345},
    "text-generation": {"loss": 2.5, "perplexity": 12.182493960703473},
}


def model_index(card: ModelCard) -> dict[str, float]:
    return {result.metric_type: result.metric_value for result in card.data.eval_results or []}


def assert_no_placeholder(path: Path) -> str:
    text = path.read_text(encoding="utf-8")
    assert not PLACEHOLDER.search(text), PLACEHOLDER.search(text)
    assert "None" not in text.split("---", 2)[2], "a missing value was rendered as None"
    return text


def card_parser() -> argparse.ArgumentParser:
    return build_parser({"card"})


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tokenizer")
    train_tiny_tokenizer(path)
    return path


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, tokenizer_dir) -> Path:
    folder = tmp_path_factory.mktemp("model")
    build_model_folder(folder, tokenizer_dir)
    return folder


@pytest.fixture
def model_folder(saved_model, tmp_path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(saved_model, folder)
    return folder


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    return pretrain_tiny(tmp_path_factory.mktemp("pretrain"))


# ---------------------------------------------------------------------------------------------------------------
# Pretraining
# ---------------------------------------------------------------------------------------------------------------


def test_pretraining_card_parses_back_with_the_runs_own_numbers(pretrained):
    metrics = json.loads((pretrained / "metrics.json").read_text())
    card = ModelCard.load(pretrained / "README.md")
    text = assert_no_placeholder(pretrained / "README.md")

    assert model_index(card) == {"loss": metrics["validation_loss"], "perplexity": metrics["validation_perplexity"]}
    index = card.data.to_dict()["model-index"][0]
    assert index["name"] == "run" and index["results"][0]["task"]["type"] == "text-generation"
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-generation"
    assert card.data.license == "apache-2.0"
    assert {"yuyan", "hybrid", "lstm", "attention", "custom_code"} <= set(card.data.tags)
    # The text's numbers are the metrics file's.
    assert f"{metrics['validation_perplexity']:.2f}" in text and f"{metrics['validation_loss']:.4f}" in text
    assert f"{metrics['parameters']:,} parameters" in text and f"{metrics['tokens_seen']:,}" in text
    assert "lstm, full_attention" in text and "train.txt" in text
    assert 'AutoModelForCausalLM.from_pretrained("run", trust_remote_code=True)' in text
    assert str(pretrained.parent) not in text, "a local path leaked into the card"
    for heading in ("## Tokenizer", "## Training", "## Evaluation", "## How to use",
                    "## Intended use, limitations and risks", "## Licence"):
        assert heading in text


def test_the_training_line_names_the_optimizer_and_the_chosen_dropout():
    from yuyan.cards import _pretraining_hyperparameters
    from yuyan.records import PretrainMetrics

    training = {"learning_rate": 0.003, "optimizer": "muon", "weight_decay": 0.1, "seed": 1}
    chosen = PretrainMetrics(regularisation={"planned_passes": 9.61, "hidden_dropout": 0.1})
    line = _pretraining_hyperparameters(training, chosen, 256)
    assert "Muon on the hidden matrices, AdamW (weight decay 0.1) on the rest" in line
    assert "hidden dropout 0.1 (chosen for about 9.6 planned passes over the training text)" in line
    plain = _pretraining_hyperparameters({**training, "optimizer": "adamw"}, PretrainMetrics(), 256)
    assert "Muon" not in plain and "dropout" not in plain and "AdamW (weight decay 0.1)" in plain


def test_stack_tags_follow_the_layers(model_folder):
    metrics = {"validation_loss": 3.0, "validation_perplexity": 20.085536923187668, "parameters": 1000,
               "layer_types": ["lstm", "lstm"]}
    card = ModelCard.load(write_model_card(model_folder, metrics, {}))
    assert "lstm" in card.data.tags and "hybrid" not in card.data.tags and "attention" not in card.data.tags
    card = ModelCard.load(write_model_card(model_folder, {**metrics, "layer_types": ["full_attention"] * 2}, {}))
    assert "attention" in card.data.tags and "lstm" not in card.data.tags


def test_a_run_that_recorded_little_still_renders_a_whole_card(model_folder):
    metrics = {"validation_loss": 4.0, "validation_perplexity": 54.598150033144236, "parameters": 31520,
               "layer_types": ["lstm", "full_attention"]}
    path = write_model_card(model_folder, metrics, {}, repo_id="yuyan-org/minimal")
    assert_no_placeholder(path)
    assert model_index(ModelCard.load(path)) == {"loss": 4.0, "perplexity": 54.598150033144236}


def test_recorded_languages_go_into_the_metadata(model_folder):
    metrics = {"validation_loss": 4.0, "validation_perplexity": 54.6, "parameters": 1, "layer_types": ["lstm"],
               "language": ["en", "zh"]}
    card = ModelCard.load(write_model_card(model_folder, metrics, {}))
    assert card.data.language == ["en", "zh"] and "Languages of the training data: en, zh" in card.text
    assert "writing systems: Latin" in card.text  # the tokenizer was trained on English text


# ---------------------------------------------------------------------------------------------------------------
# Fine-tuning
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", sorted(spec.pipeline_task for spec in TASKS.values()))
def test_finetuning_card_holds_the_task_metrics(model_folder, task):
    config = json.loads((model_folder / "config.json").read_text())
    config["id2label"] = {"0": "NEGATIVE", "1": "POSITIVE"}
    (model_folder / "config.json").write_text(json.dumps(config))
    metrics = finetune_metrics(task, TASK_SCORES[task], parameters=31586)
    (model_folder / "metrics.json").write_text(json.dumps(metrics))
    path = write_model_card(model_folder, metrics, FINETUNE_RUN, repo_id="yuyan-org/tiny-" + task)
    text = assert_no_placeholder(path)
    card = ModelCard.load(path)

    assert card.data.pipeline_tag == task
    assert model_index(card) == EXPECTED[task]
    assert {r.task_type for r in card.data.eval_results} == {task}
    assert card.data.base_model == "yuyan-org/tiny-base"
    assert {"yuyan", "hybrid", "fine-tuned", task} <= set(card.data.tags) and "lora" not in card.data.tags
    auto_class = task_for_pipeline(task).auto_class
    assert f'{auto_class}.from_pretrained("yuyan-org/tiny-{task}", trust_remote_code=True)' in text
    assert "`learning_rate`: 5e-05" in text and "`seed`: 7" in text and "max_steps" not in text
    assert "train.jsonl" in text and "/data/private" not in text
    assert "31,586 parameters" in text and "6.9 minutes" in text
    assert ("NEGATIVE, POSITIVE" in text) == (task in ("text-classification", "token-classification"))


def test_lora_and_a_local_base_model(model_folder, tmp_path):
    base = tmp_path / "checkpoints-of-mine" / "base-model"
    base.mkdir(parents=True)
    metrics = finetune_metrics("text-classification", {"accuracy": 0.5}, parameters=10, base_model=str(base))
    lora = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": ["q_proj", "v_proj"]}
    run = {**FINETUNE_RUN, "lora": lora}
    path = write_model_card(model_folder, metrics, run)
    text = assert_no_placeholder(path)
    card = ModelCard.load(path)
    assert card.data.base_model is None, "a local path is not a Hub base model"
    assert "a local model (base-model)" in text and str(tmp_path) not in text
    assert "lora" in card.data.tags and "`r`: 8" in text and "`target_modules`: q_proj, v_proj" in text
    assert model_index(card) == {"accuracy": 0.5}


def test_a_lora_adapter_folder_gets_a_peft_card(saved_model, tokenizer_dir, tmp_path):
    # `yuyan finetune --lora` without --merge saves the adapter alone: no config.json, the base model elsewhere.
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA",
                                                            "base_model_name_or_path": str(saved_model)}))
    (folder / "adapter_model.safetensors").write_bytes(b"")
    for item in tokenizer_dir.iterdir():
        shutil.copy(item, folder / item.name)
    metrics = finetune_metrics("text-classification", {"accuracy": 0.75}, parameters=31586,
                               base_model=str(saved_model))
    run = {**FINETUNE_RUN, "lora": {"r": 4, "lora_alpha": 8, "base_model_path": str(saved_model), "merged": False}}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "run.json").write_text(json.dumps(run))
    args = card_parser().parse_args(["card", "--model", str(folder), "--repo-id", "yuyan-org/adapter"])
    path = args.handler(args)
    text = assert_no_placeholder(path)
    card = ModelCard.load(path)
    assert card.data.library_name == "peft" and {"peft", "lora"} <= set(card.data.tags)
    assert model_index(card) == {"accuracy": 0.75}
    assert 'PeftModel.from_pretrained(base, "yuyan-org/adapter")' in text
    assert "| width | 32 (attention heads 4" in text, "the sizes come from the base model's config"


def test_an_unknown_task_is_refused(model_folder):
    with pytest.raises(ValueError, match="unknown fine-tuning task 'summarization'"):
        write_model_card(model_folder, finetune_metrics("summarization", {}, parameters=1), FINETUNE_RUN)


# ---------------------------------------------------------------------------------------------------------------
# yuyan card
# ---------------------------------------------------------------------------------------------------------------


def test_card_command_rerenders_from_the_folders_files(pretrained, tmp_path, capsys):
    folder = tmp_path / "run"
    shutil.copytree(pretrained, folder, ignore=shutil.ignore_patterns("checkpoints"))
    original = (folder / "README.md").read_text()
    (folder / "README.md").unlink()

    args = card_parser().parse_args(["card", "--model", str(folder)])
    args.handler(args)
    assert (folder / "README.md").read_text() == original
    assert "README.md" in capsys.readouterr().out

    # New numbers in metrics.json give a new card; the repository id given once is kept on later renders.
    metrics = json.loads((folder / "metrics.json").read_text())
    metrics["validation_perplexity"] = 123.456789
    (folder / "metrics.json").write_text(json.dumps(metrics))
    args = card_parser().parse_args(["card", "--model", str(folder), "--repo-id", "yuyan-org/tiny"])
    args.handler(args)
    args = card_parser().parse_args(["card", "--model", str(folder)])
    args.handler(args)
    card = ModelCard.load(folder / "README.md")
    assert model_index(card)["perplexity"] == 123.456789 and "| 123.46 |" in card.text
    assert 'from_pretrained("yuyan-org/tiny", trust_remote_code=True)' in card.text
    assert card.data.to_dict()["model-index"][0]["name"] == "tiny"


def test_card_command_names_the_missing_files(model_folder):
    args = card_parser().parse_args(["card", "--model", str(model_folder)])
    with pytest.raises(FileNotFoundError, match="metrics.json, run.json"):
        args.handler(args)
    args = card_parser().parse_args(["card", "--model", str(model_folder), "--repo-id", "no-slash"])
    with pytest.raises(ValueError, match="ORG/NAME"):
        args.handler(args)


def test_templates_are_found():
    for name in ("yuyan.md", "yuyan-finetuned.md"):
        assert template_path(name).is_file()
