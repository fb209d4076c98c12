"""bench/finetune_report.py's pieces that can break: the SST-2, Tatoeba and SciTLDR splits of the shared data, the
selection slice kept apart from the training rows, each task's decoding defaults, and the from-scratch twin of a
model."""

from __future__ import annotations

import importlib.util
import json
import os
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

from yuyan import YuyanConfig, YuyanForCausalLM
from yuyan.tokenization import train_tokenizer

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not (SHARED / "sst2" / "train.tsv").is_file(), reason="../shared/data absent")


def _bench_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


report = _bench_script("finetune_report")


def _tsv(path: Path) -> list[tuple[str, str]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "sentence\tlabel"
    return [tuple(line.split("\t")) for line in lines[1:]]


def test_sst2_split_keeps_repeated_sentences_together():
    rows = [(f"s{i % 40}", str(i % 2)) for i in range(100)]  # 40 sentences, most repeated
    train, selection = report.split_sst2(rows, 10, seed=0)
    assert len(train) + len(selection) == 100 and Counter(train + selection) == Counter(rows)
    assert len({s for s, _ in selection}) == 10
    assert not {s for s, _ in train} & {s for s, _ in selection}
    assert report.split_sst2(rows, 10, seed=0) == (train, selection)  # seeded
    assert report.split_sst2(rows, 10, seed=1)[1] != selection
    with pytest.raises(ValueError, match="selection slice"):
        report.split_sst2(rows, 40, seed=0)


@needs_shared
def test_shared_data_splits(tmp_path):
    tasks = report.prepare_data(tmp_path, eval_articles=10, selection_size=2000, seed=42)
    sst2 = tasks["sst2"]
    train, selection, test = _tsv(sst2["train"]), _tsv(sst2["validation"]), _tsv(sst2["test"])
    # GLUE SST-2: 67,349 training examples (all used, none twice), 872 scored (GLUE dev).
    assert len(train) + len(selection) == report.SST2_SIZE and len(test) == 872
    original = _tsv(SHARED / "sst2" / "train.tsv") + _tsv(SHARED / "sst2" / "dev.tsv")
    assert Counter(train + selection) == Counter(original)
    assert len({s for s, _ in selection}) == 2000
    assert not {s for s, _ in train} & {s for s, _ in selection}
    assert not {s for s, _ in train + selection} & {s for s, _ in test}
    assert sst2["test"] == SHARED / "sst2" / "test.tsv"
    # Both splits hold both classes, near the set's 56% positive.
    for rows in (train, selection):
        positive = sum(label == "1" for _, label in rows) / len(rows)
        assert 0.50 < positive < 0.62

    # Tatoeba: 29,155 pairs, every 10th (lines 10, 20, ...) held out; the tokenizer text is the training split,
    # English then Chinese.
    lines = (SHARED / "tatoeba-cmn-eng" / "cmn.txt").read_text(encoding="utf-8-sig").splitlines()
    pairs = [line.split("\t")[:2] for line in lines if line]
    assert len(pairs) == 29_155

    def jsonl(path):
        return [[row["prompt"], row["completion"]] for row in jsonl_rows(path)]

    tatoeba_train, tatoeba_eval = jsonl(tasks["tatoeba"]["train"]), jsonl(tasks["tatoeba"]["validation"])
    assert tatoeba_eval == pairs[9::10] and len(tatoeba_eval) == 2_915
    assert tatoeba_train == [pair for i, pair in enumerate(pairs, 1) if i % 10]
    text = (tmp_path / "tatoeba-train.txt").read_text(encoding="utf-8").splitlines()
    assert text == [side for pair in tatoeba_train for side in pair] and text[0] == "Hi."

    # SciTLDR: decoding chosen on dev, scored on test (SciTLDR-A's 618 abstracts), no abstract in both.
    scitldr = tasks["scitldr"]
    dev, test = (jsonl_rows(scitldr[split]) for split in ("validation", "test"))
    assert len(test) == 618 and not {r["paper_id"] for r in dev} & {r["paper_id"] for r in test}
    assert all(isinstance(r["source"], list) and r["target"] for r in test)


def jsonl_rows(path):
    return [json.loads(line) for line in Path(path).read_text("utf-8").splitlines() if line]


def test_each_generation_task_keeps_its_decoding_unless_the_command_line_sets_one(tmp_path):
    tasks = {"summary": {"task": "text-generation", "data_args": {"no_repeat_ngram_size": 3}},
             "translation": {"task": "text-generation", "data_args": {"max_new_tokens": 32}},
             "sentiment": {"task": "classification", "data_args": {"text_column": "sentence"}}}
    default = report.build_parser().parse_args(["model"])
    assert report.task_data_args(tasks["summary"], default)["no_repeat_ngram_size"] == 3
    translation = report.task_data_args(tasks["translation"], default)
    assert "no_repeat_ngram_size" not in translation and translation["max_new_tokens"] == 32
    assert "num_beams" not in report.task_data_args(tasks["sentiment"], default)
    off = report.build_parser().parse_args(["model", "--no-repeat-ngram-size", "0", "--num-beams", "4"])
    for name in ("summary", "translation"):
        assert report.task_data_args(tasks[name], off)["no_repeat_ngram_size"] == 0
        assert report.task_data_args(tasks[name], off)["num_beams"] == 4
    assert tasks["summary"]["data_args"] == {"no_repeat_ngram_size": 3}  # the task's own options are not changed


TEXTS = [f"the {word} is here." for word in "cat dog bird fish tree house river".split()] * 20


def _tiny_model(folder: Path):
    """A tiny hybrid and its tokenizer saved to `folder`; its weights shifted from any fresh initialisation."""
    tokenizer = train_tokenizer(texts=TEXTS, vocab_size=280)
    config = YuyanConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                         layer_types=["lstm", "full_attention"], num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=48, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = YuyanForCausalLM(config)
    with torch.no_grad():  # stands in for pretraining: weights no fresh initialisation gives
        for parameter in model.parameters():
            parameter.add_(0.5)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model, tokenizer


def test_scratch_twin_has_the_config_and_tokenizer_but_not_the_weights(tmp_path):
    pretrained, tokenizer = _tiny_model(tmp_path / "model")

    twin = report.make_scratch_model(tmp_path / "model", tmp_path / "scratch" / "model", seed=42)
    assert YuyanConfig.from_pretrained(twin).to_dict() == YuyanConfig.from_pretrained(tmp_path / "model").to_dict()
    loaded = YuyanForCausalLM.from_pretrained(twin)
    original = pretrained.state_dict()
    for name, tensor in loaded.state_dict().items():
        assert tensor.shape == original[name].shape
        if tensor.numel() > 1 and not name.endswith("norm.weight"):
            assert not torch.equal(tensor, original[name]), name
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(twin).get_vocab() == tokenizer.get_vocab()
    # Seeded: the same twin again; and it is written whole (no staging folder left).
    again = report.make_scratch_model(tmp_path / "model", tmp_path / "scratch" / "model", seed=42)
    for name, tensor in YuyanForCausalLM.from_pretrained(again).state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    assert sorted(p.name for p in (tmp_path / "scratch").iterdir()) == ["model"]


@pytest.mark.parametrize("decay", ["0", "-0.5", "1.5"])
def test_layer_lr_decay_out_of_range_stops_the_report(decay, capsys):
    with pytest.raises(SystemExit):
        report.main(["model", "--layer-lr-decay", decay])
    assert "--layer-lr-decay must be in (0, 1]" in capsys.readouterr().err


def test_unpaired_tatoeba_text_keeps_every_sentence_and_no_pair_together():
    pairs = [{"prompt": f"sentence {i}.", "completion": f"句子{i}。"} for i in range(200)]
    lines = report.unpaired_tatoeba_lines(pairs, seed=42)
    sentences = [row["prompt"] + "\n" for row in pairs] + [row["completion"] + "\n" for row in pairs]
    assert Counter(lines) == Counter(sentences)
    english, chinese = lines[:200], lines[200:]
    assert all(line.startswith("sentence") for line in english) and all(line.startswith("句子") for line in chinese)
    # Each side shuffled on its own: the i-th English and the i-th Chinese line are (almost) never one pair.
    same_pair = sum(e.split()[1].rstrip(".\n") == c[2:].rstrip("。\n") for e, c in zip(english, chinese))
    assert same_pair <= 5 and english != [row["prompt"] + "\n" for row in pairs]
    assert report.unpaired_tatoeba_lines(pairs, seed=42) == lines


def test_pretraining_files_come_from_the_models_run_record(tmp_path):
    """--reset-unseen-tokens reads the pretraining text from run.json: the `--data` files of the training settings
    (not `data.train`, a description); a model without them is an error that says why."""
    (tmp_path / "run.json").write_text(json.dumps({"data": {"train": "/d/a.txt, /d/b.txt"},
                                                   "training": {"data": ["/d/a.txt", "/d/b.txt"]}}))
    assert report.pretraining_files(tmp_path) == ["/d/a.txt", "/d/b.txt"]
    (tmp_path / "run.json").write_text(json.dumps({"data": {"train": "wikitext"},
                                                   "training": {"data": None, "dataset": "wikitext"}}))
    with pytest.raises(ValueError, match="does not name the pretraining text"):
        report.pretraining_files(tmp_path)
    with pytest.raises(ValueError, match="does not name the pretraining text"):
        report.pretraining_files(tmp_path / "elsewhere")


def test_group_by_length_reaches_the_trainer(tmp_path):
    """`--group-by-length` names a TrainingArguments field of the installed transformers (it was renamed once)."""
    from yuyan.training.finetune import make_training_arguments

    for flag in (False, True):
        args = report.build_parser().parse_args(["model"] + ["--group-by-length"] * flag)
        values = report.training_arguments("sst2", report.budget_of("sst2", args), args)
        training_args = make_training_arguments(tmp_path, **values)
        assert training_args.train_sampling_strategy == ("group_by_length" if flag else "random")
        assert training_args.max_steps == report.BUDGETS["sst2"]["max_steps"]
        budget = report.BUDGETS["sst2"]
        assert report.budget_of("sst2", args)["length"] == budget["grouped_length" if flag else "length"]


def test_pooling_and_dropout_flags_become_config_overrides_that_finetune_accepts():
    """`--classifier-pooling` reaches SST-2's classification head only; `--dropout` every task; both pass
    `yuyan finetune`'s own check of config_overrides."""
    from yuyan.training.finetune import parse_config_overrides

    args = report.build_parser().parse_args(["model", "--classifier-pooling", "mean", "--dropout", "0.1"])
    sst2 = {"hidden_dropout": 0.1, "classifier_pooling": "mean"}
    assert report.config_overrides("sst2", args) == sst2
    assert report.config_overrides("xquad", args) == {"hidden_dropout": 0.1}
    assert parse_config_overrides(report.config_overrides("sst2", args)) == sst2
    assert report.config_overrides("sst2", report.build_parser().parse_args(["model"])) == {}
