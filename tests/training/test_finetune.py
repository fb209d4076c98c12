"""Tests of yuyan.training.finetune and yuyan.training.recipes: data, alignment, post-processing, metrics, masking,
errors, the command line, and short real fine-tuning runs of a tiny model for each task (+ LoRA), each checked
through `transformers.pipeline` on the output folder."""

from __future__ import annotations

import argparse
import json
import os
import random
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import pytest
import torch

import yuyan  # noqa: F401  (registers the Auto classes)
from yuyan import YuyanConfig, YuyanForCausalLM
from yuyan.cli import build_parser
from yuyan.cli.finetune import split_namespace
from yuyan.loading import load_finetuned
from yuyan.tokenization import train_tokenizer
from yuyan.training import finetune as ft
from yuyan.training.recipes import base as task_base
from yuyan.training.recipes import classification, generation, question_answering as qa, tagging
from yuyan.training.recipes.tables import load_table

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"

FRUIT = "apple banana cherry grape lemon mango".split()
PLACES = "river mountain ocean forest desert valley".split()
# Quick runs: no checkpoints, no per-epoch evaluation, no progress bars.
QUICK = {"save_strategy": "no", "eval_strategy": "no", "disable_tqdm": True, "per_device_train_batch_size": 16,
         "learning_rate": 3e-3}


def _corpus() -> list[str]:
    rng = random.Random(0)
    words = FRUIT + PLACES + "the answer is what where who".split()
    texts = [" ".join(rng.choice(words) for _ in range(10)) + "." for _ in range(300)]
    texts += ["What is the answer? The answer is a fruit.", "Paris is the capital of France."] * 10
    return texts


# Every test here runs on one torch thread (the `one_thread` fixture in conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def base_model(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("base")
    tokenizer = train_tokenizer(texts=_corpus(), vocab_size=300)
    config = YuyanConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, layer_types=["lstm", "full_attention"],
        num_attention_heads=4, num_key_value_heads=2, intermediate_size=48, max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    YuyanForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def tokenizer(base_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base_model)


def _write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def _sentiment_rows(count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        positive = rng.random() < 0.5
        words = FRUIT if positive else PLACES
        rows.append({"sentence": " ".join(rng.choice(words) for _ in range(5)), "label": int(positive)})
    return rows


# ----------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------


def test_tsv_is_read_without_quoting_and_squad_json_is_flattened(tmp_path):
    tsv = tmp_path / "data.tsv"
    tsv.write_text('sentence\tlabel\n"quoted" start\t1\nNA\t0\n', encoding="utf-8")
    rows = load_table(tsv)
    assert rows["sentence"] == ['"quoted" start', "NA"] and rows["label"] == [1, 0]

    squad = {"version": "1.1", "data": [{"title": "T", "paragraphs": [{"context": "Paris is in France.", "qas": [
        {"id": "q1", "question": "Where is Paris?", "answers": [{"text": "France", "answer_start": 12}]},
        {"id": "q2", "question": "What is in France?", "answers": [{"text": "Paris", "answer_start": 0},
                                                                     {"text": "Paris", "answer_start": 0}]},
    ]}]}]}
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(squad), encoding="utf-8")
    rows = load_table(path)
    assert len(rows) == 2 and rows[0]["context"] == "Paris is in France." and rows[0]["id"] == "q1"
    assert rows[1]["answers"] == {"text": ["Paris", "Paris"], "answer_start": [0, 0]}

    with pytest.raises(ValueError, match="unsupported data file type"):
        (tmp_path / "data.xml").write_text("<a/>")
        load_table(tmp_path / "data.xml")


@pytest.mark.skipif(not (SHARED / "xquad" / "xquad.en.json").is_file(), reason="shared/data/xquad absent")
def test_shared_xquad_and_sst2_load():
    rows = load_table(SHARED / "xquad" / "xquad.en.json")
    assert len(rows) == 1190
    for row in rows.select(range(50)):
        for text, start in zip(row["answers"]["text"], row["answers"]["answer_start"]):
            assert not qa.answer_mismatch(row["context"], text, start)
    if (SHARED / "sst2" / "test.tsv").is_file():
        sst2 = load_table(SHARED / "sst2" / "test.tsv")
        assert len(sst2) == 872 and set(sst2.column_names) == {"sentence", "label"}


# ----------------------------------------------------------------------------------------------------------------
# Classification
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("side", ["right", "left"])
def test_classifier_reads_each_rows_last_real_token_with_either_padding(base_model, side):
    """The batch a collator pads (right by default, left if the tokenizer says so) classifies every row as the row
    alone: pooling takes the last non-pad token, and the LSTM layer never reads padding into its state."""
    from transformers import AutoTokenizer

    from yuyan.modeling import YuyanForSequenceClassification

    tok = AutoTokenizer.from_pretrained(base_model, padding_side=side)
    torch.manual_seed(0)
    model = YuyanForSequenceClassification.from_pretrained(base_model, num_labels=2).eval()
    texts = ["apple banana cherry grape lemon mango river", "the answer", "ocean forest desert valley"]
    batch = tok(texts, padding=True, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any()  # padded, on the chosen side
    assert batch["attention_mask"][1, 0 if side == "left" else -1] == 0
    with torch.no_grad():
        batched = model(**batch).logits
        alone = torch.cat([model(**tok(text, return_tensors="pt")).logits for text in texts])
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)


def test_label_order_names_and_metrics():
    assert task_base.ordered_labels({"10", "2", "1"}, None) == ["1", "2", "10"]
    assert task_base.ordered_labels({"pos", "neg"}, None) == ["neg", "pos"]
    assert task_base.ordered_labels({"B-X", "O", "I-X"}, None, outside_first=True) == ["O", "B-X", "I-X"]
    assert task_base.label_name(1, ["negative", "positive"], "f") == "positive"
    assert task_base.label_name(1.0, None, "f") == "1"
    with pytest.raises(ValueError, match="no label"):
        task_base.label_name("", None, "f")
    # Class 0: tp 1, 2 predicted, 1 actual -> F1 2/3. Class 1: tp 1, 1 predicted, 2 actual -> 2/3. Class 2: 1.
    scores = classification.classification_metrics([0, 0, 1, 2], [0, 1, 1, 2])
    assert scores["accuracy"] == pytest.approx(75.0)
    assert scores["macro_f1"] == pytest.approx(100 * (2 / 3 + 2 / 3 + 1) / 3)


# ----------------------------------------------------------------------------------------------------------------
# Tagging
# ----------------------------------------------------------------------------------------------------------------


def test_first_sub_token_alignment_hand_made():
    words = ["New", "York", "rocks"]
    text, char_to_word = tagging.join_words(words)
    assert text == "New York rocks"
    # "Ne" "w" " " "York" " ro" "cks": a lone space token belongs to no word; " ro" belongs to "rocks".
    offsets = [(0, 2), (2, 3), (3, 4), (4, 8), (8, 11), (11, 14)]
    words_of_tokens = tagging.token_words(offsets, char_to_word)
    assert words_of_tokens == [0, 0, None, 1, 2, 2]
    labels, first = tagging.first_token_labels(words_of_tokens, [5, 6, 7], len(words))
    assert labels == [5, -100, -100, 6, 7, -100]
    assert first == [0, 3, 4]
    # A word whose tokens were truncated away has no first token.
    labels, first = tagging.first_token_labels(words_of_tokens[:4], [5, 6, 7], len(words))
    assert first == [0, 3, -1]


def test_alignment_with_the_real_tokenizer(tokenizer):
    words = ["mango", "river", "apple", "x"]
    row = tagging.align_labels(tokenizer, words, [1, 0, 1, 2])
    labelled = [i for i, label in enumerate(row["labels"]) if label != -100]
    assert [row["labels"][i] for i in labelled] == [1, 0, 1, 2]
    encoded = tokenizer(" ".join(words), return_offsets_mapping=True)
    assert row["input_ids"] == encoded["input_ids"]  # the pipeline's own tokenisation of the sentence
    for word, position in zip(words, labelled):
        start, end = encoded["offset_mapping"][position]
        assert word.startswith(" ".join(words)[start:end].strip())


def test_entity_chunks_and_scores():
    assert tagging.entity_chunks(["B-PER", "I-PER", "O", "B-LOC"]) == {("PER", 0, 1), ("LOC", 3, 3)}
    assert tagging.entity_chunks(["I-PER", "I-PER", "I-LOC"]) == {("PER", 0, 1), ("LOC", 2, 2)}  # IOB1
    assert tagging.entity_chunks(["B-PER", "B-PER"]) == {("PER", 0, 0), ("PER", 1, 1)}
    assert tagging.entity_chunks(["S-X", "B-Y", "E-Y", "O"]) == {("X", 0, 0), ("Y", 1, 2)}
    assert tagging.entity_chunks(["O", "O"]) == set()
    scores = tagging.entity_scores([["B-PER", "I-PER", "O", "B-LOC"]], [["B-PER", "O", "O", "B-LOC"]])
    assert scores["precision"] == pytest.approx(50.0) and scores["recall"] == pytest.approx(50.0)
    assert scores["f1"] == pytest.approx(50.0) and scores["accuracy"] == pytest.approx(75.0)
    assert tagging.word_predictions(np.array([2, 0, 1]), [0, 2, -1], ["O", "B-X", "I-X"], "O") == ["I-X", "B-X", "O"]


# ----------------------------------------------------------------------------------------------------------------
# Question answering
# ----------------------------------------------------------------------------------------------------------------


def test_squad_normalisation_and_scores():
    assert qa.normalize_answer("  The Eiffel-Tower, an icon!") == "eiffeltower icon"
    assert qa.exact_match("the Eiffel Tower", "Eiffel tower.") == 1.0
    assert qa.token_f1("the cat sat", "a cat sat down") == pytest.approx(0.8)
    assert qa.token_f1("", "cat") == 0.0
    scores = qa.squad_scores(["Paris", "in France"], [["Paris", "the city"], ["France", "Lyon"]])
    assert scores["exact_match"] == pytest.approx(50.0)
    assert scores["f1"] == pytest.approx(100 * (1 + 2 * 0.5 * 1 / 1.5) / 2)


def test_answer_token_span():
    # context "Paris is in France." as tokens "Paris" " is" " in" " France" "." (leading spaces in the offsets),
    # after two question tokens (None).
    offsets = [None, None, (0, 5), (5, 8), (8, 11), (11, 18), (18, 19)]
    assert qa.answer_token_span(offsets, 12, 18) == (5, 5)  # "France"
    assert qa.answer_token_span(offsets, 0, 8) == (2, 3)  # "Paris is"
    assert qa.answer_token_span(offsets[:5], 12, 18) is None  # the window ends before the answer
    assert qa.answer_token_span([None, (9, 12), (12, 18)], 0, 5) is None  # the window starts after it


def test_qa_post_processing_hand_made():
    context = "Paris is in France."
    first_window = [None, None, (0, 5), (5, 8), (8, 11)]
    second_window = [None, None, (8, 11), (11, 18), (18, 19)]  # " in" " France" "."
    # Window 1: "Paris" scores 2 + 2; the question tokens (None) score higher but are not context.
    start_1 = [9.0, 9.0, 2.0, 0.0, 0.0]
    end_1 = [9.0, 9.0, 2.0, 0.0, 0.0]
    start_2 = [0.0, 0.0, 3.0, 3.0, 5.0]
    end_2 = [0.0, 0.0, 4.0, 3.0, 3.5]
    best = qa.best_answers([start_1, start_2], [end_1, end_2], [first_window, second_window], context,
                           n_best_size=5, max_answer_length=2, top_k=3)
    # Spans: "." 5 + 3.5, "in" 3 + 4, "France." 3 + 3.5, "France" 6, "in France" 6, "Paris" 4 (window 1). The
    # answer text is stripped of the leading space its tokens carry; a span found twice keeps its best score.
    assert [answer["answer"] for answer in best] == [".", "in", "France."]
    assert best[0]["start"] == 18 and best[0]["score"] == pytest.approx(8.5)
    assert best[1] == {"answer": "in", "start": 9, "end": 11, "score": pytest.approx(7.0)}
    # max_answer_length: "in France." (3 tokens, 10) wins only when 3 tokens are allowed.
    start_3, end_3 = [0, 0, 5.0, 1.0, 0], [0, 0, 1.0, 0, 5.0]
    assert qa.best_answers([start_3], [end_3], [second_window], context, 5, 3)[0]["answer"] == "in France."
    assert qa.best_answers([start_3], [end_3], [second_window], context, 5, 2)[0]["answer"] == "in"
    only = qa.best_answers([start_2], [[0, 0, 0, 9.0, 0]], [second_window], context, n_best_size=1)
    assert only[0]["answer"] == ""  # best start "." is after the best end "France": no valid pair
    assert qa.best_answers([], [], [], context)[0]["answer"] == ""
    answers = qa.predict_answers(
        np.array([start_1, start_2, [0, 0, 1.0, 0, 0]]), np.array([end_1, end_2, [0, 0, 1.0, 0, 0]]),
        [0, 0, 1], [first_window, second_window, [None, None, (0, 3), None, None]], [context, "Yes it is."],
        n_best_size=5, max_answer_length=1,
    )
    assert answers == [".", "Yes"]


# ----------------------------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chat", [False, True])
def test_prompt_tokens_carry_no_loss(tokenizer, chat):
    prompt_format = generation.PromptFormat(tokenizer, chat_template=chat)
    rows = [
        generation.encode_example(prompt_format, "apple mango", "river ocean", max_length=64, max_target_length=32),
        generation.encode_example(prompt_format, "cherry", "desert forest valley", max_length=64, max_target_length=32),
    ]
    for row, (prompt, completion) in zip(rows, [("apple mango", "river ocean"), ("cherry", "desert forest valley")]):
        prompt_ids = tokenizer(prompt_format.text(prompt))["input_ids"]  # what pipeline("text-generation") feeds
        completion_ids = tokenizer(completion)["input_ids"] + [tokenizer.eos_token_id]
        assert row["input_ids"] == prompt_ids + completion_ids
        assert row["labels"] == [-100] * len(prompt_ids) + completion_ids
    if chat:
        text = tokenizer.decode(rows[0]["input_ids"])
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": "apple mango"}, {"role": "assistant", "content": "river ocean"}],
            tokenize=False,
        )
        assert text == rendered
    batch = generation.CompletionCollator(tokenizer.pad_token_id)(rows)
    prompt_lengths = [row["labels"].count(-100) for row in rows]
    for index, row in enumerate(rows):
        length = len(row["input_ids"])
        is_prompt = torch.arange(batch["labels"].shape[1]) < prompt_lengths[index]
        is_padding = torch.arange(batch["labels"].shape[1]) >= length
        assert torch.equal(batch["labels"][index] == -100, is_prompt | is_padding)
        assert torch.equal(batch["attention_mask"][index] == 0, is_padding)
        assert (batch["input_ids"][index][is_padding] == tokenizer.pad_token_id).all()


def test_long_prompt_keeps_its_format(tokenizer):
    prompt_format = generation.PromptFormat(tokenizer, chat_template=True)
    tail = tokenizer("<|endoftext|><|assistant|>\n")["input_ids"]
    row = generation.encode_example(prompt_format, "apple " * 100, "mango", max_length=40, max_target_length=8)
    assert len(row["input_ids"]) == 40
    prompt = row["input_ids"][: row["labels"].count(-100)]
    assert prompt[-len(tail):] == tail and prompt[0] == tokenizer.eos_token_id
    with pytest.raises(ValueError, match="too few"):
        prompt_format.prompt_ids("apple " * 100, 3)


def test_text_metrics():
    perfect = generation.text_metrics(["the cat sat on the mat"], [["the cat sat on the mat"]])
    assert perfect["rougeL"] == pytest.approx(100.0) and perfect["chrf"] == pytest.approx(100.0)
    assert perfect["bleu"] == pytest.approx(100.0)
    several = generation.text_metrics(["a dog"], [["the cat", "a dog"]])
    assert several["rougeL"] == pytest.approx(100.0)
    chinese = generation.text_metrics(["我爱你"], [["我爱他"]])
    assert chinese["rougeL"] == pytest.approx(100 * 2 / 3)
    assert generation.text_metrics(["x"], [["completely different"]])["rougeL"] == 0.0


# ----------------------------------------------------------------------------------------------------------------
# Errors before training
# ----------------------------------------------------------------------------------------------------------------


def test_errors_are_found_before_training(tmp_path, base_model):
    train = _write_jsonl(tmp_path / "train.jsonl", _sentiment_rows(20, 0))
    validation = _write_jsonl(tmp_path / "validation.jsonl", _sentiment_rows(10, 1))
    out = str(tmp_path / "out")
    with pytest.raises(ValueError, match="label column 'polarity' is missing"):
        ft.finetune(ft.FinetuneArguments("classification", base_model, train, validation), {"output_dir": out},
                    data_args={"label_column": "polarity"})
    with pytest.raises(ValueError, match="text column"):
        ft.finetune(ft.FinetuneArguments("classification", base_model, train, validation), {"output_dir": out},
                    data_args={"text_column": "body"})
    odd = _write_jsonl(tmp_path / "odd.jsonl", _sentiment_rows(5, 2) + [{"sentence": "apple", "label": 7}])
    with pytest.raises(ValueError, match=r"label\(s\) '7' not among the training labels"):
        ft.finetune(ft.FinetuneArguments("classification", base_model, train, odd), {"output_dir": out})

    rows = [{"id": "a", "question": "What?", "context": "The answer is mango.",
             "answers": {"text": ["mango"], "answer_start": [14]}},
            {"id": "b", "question": "What?", "context": "The answer is mango.",
             "answers": {"text": ["mango"], "answer_start": [3]}}]
    qa_file = _write_jsonl(tmp_path / "qa.jsonl", rows)
    with pytest.raises(ValueError, match="example b: the answer 'mango' is not inside its context"):
        ft.finetune(ft.FinetuneArguments("question-answering", base_model, qa_file, qa_file), {"output_dir": out})

    tag_file = _write_jsonl(tmp_path / "tags.jsonl", [{"tokens": ["a", "b"], "tags": ["O"]}])
    with pytest.raises(ValueError, match="2 tokens but 1 tags"):
        ft.finetune(ft.FinetuneArguments("token-classification", base_model, tag_file, tag_file), {"output_dir": out})

    other = tmp_path / "gpt2"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="not a Yuyan model .model_type 'gpt2'"):
        ft.finetune(ft.FinetuneArguments("classification", str(other), train, validation), {"output_dir": out})
    with pytest.raises(ValueError, match="no config.json"):
        ft.finetune(ft.FinetuneArguments("classification", str(tmp_path), train, validation), {"output_dir": out})
    with pytest.raises(FileNotFoundError, match="model folder not found"):
        ft.finetune(ft.FinetuneArguments("classification", str(tmp_path / "missing-model"), train, validation),
                    {"output_dir": out})
    with pytest.raises(ValueError, match="cannot find the model"):
        ft.finetune(ft.FinetuneArguments("classification", "no-such-owner/no-such-model", train, validation),
                    {"output_dir": out})
    with pytest.raises(ValueError, match="unknown training arguments"):
        ft.finetune(ft.FinetuneArguments("classification", base_model, train, validation),
                    {"learning_rat": 1e-3, "output_dir": out})
    gen_file = _write_jsonl(tmp_path / "gen.jsonl", [{"prompt": "apple", "completion": "mango"}])
    with pytest.raises(ValueError, match="no_repeat_ngram_size=-1 must be 0"):
        ft.finetune(ft.FinetuneArguments("text-generation", base_model, gen_file, gen_file), {"output_dir": out},
                    data_args={"no_repeat_ngram_size": -1})
    with pytest.raises(ValueError, match="unknown task"):
        ft.finetune(ft.FinetuneArguments("summarise", base_model, train, validation), {"output_dir": out})
    with pytest.raises(FileNotFoundError):
        ft.finetune(ft.FinetuneArguments("classification", base_model, str(tmp_path / "none.csv"), validation),
                    {"output_dir": out})
    with pytest.raises(ValueError, match="not empty"):
        ft.finetune(ft.FinetuneArguments("classification", base_model, train, validation),
                    {"output_dir": str(tmp_path)})
    with pytest.raises(ValueError, match="cannot wrap nn.LSTM"):
        ft.finetune(ft.FinetuneArguments("classification", base_model, train, validation), {**QUICK, "output_dir": out},
                    lora_args={"lora": True, "lora_target_modules": ["lstm", "o_proj"]})
    assert not Path(out).exists() or not (Path(out) / "metrics.json").exists()


@pytest.mark.slow
def test_config_overrides_set_dropout_for_the_run_and_bad_ones_stop_it(tmp_path, base_model):
    """Dropout for fine-tuning (the base model was pretrained without): it reaches the trained modules, run.json
    and the saved config (with use_cache as the base model had it); a field that would change the weights, or a
    value out of range, stops the run first."""
    train = _write_jsonl(tmp_path / "train.jsonl", _sentiment_rows(32, 0))
    validation = _write_jsonl(tmp_path / "validation.jsonl", _sentiment_rows(8, 1))
    from transformers import TrainerCallback

    seen = {}

    class Spy(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            seen["dropouts"] = sorted({m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)})
            seen["use_cache"] = model.config.use_cache
            seen["attention_dropout"] = {
                m.attention_dropout for m in model.modules() if hasattr(m, "attention_dropout")
            }

    def classification(config_overrides):
        return ft.FinetuneArguments("classification", base_model, train, validation, config_overrides=config_overrides)

    out = tmp_path / "out"
    ft.finetune(classification("hidden_dropout=0.2, attention_dropout=0.3, classifier_pooling=mean"),
                {**QUICK, "max_steps": 2, "output_dir": str(out)}, callbacks=[Spy()])
    assert seen["dropouts"] == [0.2]  # every layer's and the head's (attention's is a functional dropout)
    assert seen["attention_dropout"] == {0.3}
    assert YuyanConfig.from_pretrained(base_model).hidden_dropout == 0.0
    saved = YuyanConfig.from_pretrained(out)
    assert saved.hidden_dropout == 0.2 and saved.attention_dropout == 0.3 and saved.classifier_pooling == "mean"
    # The Trainer trains without a cache; the saved model keeps the base model's use_cache.
    assert seen["use_cache"] is False and saved.use_cache is True
    assert YuyanConfig.from_pretrained(base_model).classifier_pooling == "last"
    run = json.loads((out / "run.json").read_text())
    assert run["training"]["config_overrides"] == {"hidden_dropout": 0.2, "attention_dropout": 0.3,
                                                   "classifier_pooling": "mean"}

    bad = str(tmp_path / "bad")
    with pytest.raises(ValueError, match=r"cannot set \['hidden_size'\].*allowed"):
        ft.finetune(classification({"hidden_size": 64}), {"output_dir": bad})
    with pytest.raises(ValueError, match="must be in"):
        ft.finetune(classification("hidden_dropout=1.5"), {"output_dir": bad})
    with pytest.raises(ValueError, match="expected key=value"):
        ft.finetune(classification("hidden_dropout"), {"output_dir": bad})
    with pytest.raises(ValueError, match=r"classifier_pooling='max' is unknown; allowed: \['last', 'mean'\]"):
        ft.finetune(classification("classifier_pooling=max"), {"output_dir": bad})
    with pytest.raises(ValueError, match=r"cannot set \['classifier_reading'\]"):
        ft.finetune(classification({"classifier_reading": "twice"}), {"output_dir": bad})
    with pytest.raises(ValueError, match=r"max_seq_length=256 exceeds the model's max_position_embeddings=128"):
        ft.finetune(classification(""), {"output_dir": bad}, data_args={"max_seq_length": 256})
    assert not Path(bad).exists()


@pytest.mark.slow
def test_layer_lr_decay_gives_each_layer_its_rate_and_resumes(tmp_path, base_model):
    """--layer-lr-decay: the head and final norm start at the full rate, each layer below at `decay` times the one
    above, the embeddings lowest; weight decay still skips norms; run.json records it; a run resumed from its
    checkpoint rebuilds the same groups and ends on the same weights; a decay out of (0, 1] stops the run first."""
    from transformers import TrainerCallback

    train = _write_jsonl(tmp_path / "train.jsonl", _sentiment_rows(64, 0))
    validation = _write_jsonl(tmp_path / "validation.jsonl", _sentiment_rows(8, 1))
    rates = {}

    class Spy(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
            rates.clear()
            for group in optimizer.param_groups:
                for parameter in group["params"]:
                    rates[parameter] = (group["initial_lr"], group["weight_decay"])
            rates["names"] = {name: rates[p] for name, p in model.named_parameters()}

    steps = {**QUICK, "max_steps": 4, "weight_decay": 0.01, "warmup_steps": 0, "seed": 3}
    full = tmp_path / "full"
    ft.finetune(ft.FinetuneArguments("classification", base_model, train, validation, layer_lr_decay=0.5),
                {**steps, "output_dir": str(full)}, callbacks=[Spy()])
    lr = QUICK["learning_rate"]
    by_name = rates["names"]
    assert by_name["score.weight"] == (lr, 0.01) and by_name["model.norm.weight"] == (lr, 0.0)
    assert by_name["model.layers.1.self_attn.qkv_proj.weight"] == (lr * 0.5, 0.01)
    assert by_name["model.layers.1.input_layernorm.weight"] == (lr * 0.5, 0.0)
    assert by_name["model.layers.0.recurrent.lstm.weight_hh_l0"] == (lr * 0.25, 0.01)
    assert by_name["model.embed_tokens.weight"] == (lr * 0.125, 0.01)
    assert json.loads((full / "run.json").read_text())["training"]["layer_lr_decay"] == 0.5

    # Stopped after 2 of the 4 steps, then resumed: the optimizer state loads into the same groups.
    class StopAfterTwo(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            control.should_training_stop = state.global_step == 2

    half = tmp_path / "half"
    ft.finetune(ft.FinetuneArguments("classification", base_model, train, validation, layer_lr_decay=0.5),
                {**steps, "save_strategy": "steps", "save_steps": 2, "output_dir": str(half)},
                callbacks=[StopAfterTwo()])
    checkpoint = half / "checkpoint-2"
    ft.finetune(ft.FinetuneArguments("classification", base_model, train, validation, layer_lr_decay=0.5),
                {**steps, "save_strategy": "steps", "save_steps": 2, "resume_from_checkpoint": str(checkpoint),
                 "output_dir": str(half)}, callbacks=[Spy()])
    assert rates["names"]["model.embed_tokens.weight"] == (lr * 0.125, 0.01)
    from safetensors.torch import load_file

    resumed, straight = load_file(half / "model.safetensors"), load_file(full / "model.safetensors")
    for name, value in straight.items():
        torch.testing.assert_close(resumed[name], value, msg=name)
    # One rate for all (the default) trains a different model from the same seed.
    plain = tmp_path / "plain"
    ft.finetune(ft.FinetuneArguments("classification", base_model, train, validation),
                {**steps, "output_dir": str(plain)})
    assert not torch.equal(load_file(plain / "model.safetensors")["model.embed_tokens.weight"],
                           straight["model.embed_tokens.weight"])

    for decay in (0.0, 1.5):
        with pytest.raises(ValueError, match=r"layer_lr_decay must be in \(0, 1\]"):
            ft.finetune(ft.FinetuneArguments("classification", base_model, train, validation, layer_lr_decay=decay),
                        {"output_dir": str(tmp_path / "bad")})
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_leading_space_is_trained_with_and_saved_for_pipelines(tmp_path, base_model, tokenizer):
    """--leading-space: the examples are encoded as if each started with a space, run.json says so, and the saved
    tokenizer keeps doing it, so a pipeline on the fine-tuned model reads `text` as the training read ` text`."""
    from transformers import AutoTokenizer, TrainerCallback, pipeline

    train = _write_jsonl(tmp_path / "train.jsonl", _sentiment_rows(32, 0))
    validation = _write_jsonl(tmp_path / "validation.jsonl", _sentiment_rows(8, 1))
    seen = {}

    class Spy(TrainerCallback):
        def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
            seen["ids"] = train_dataloader.dataset[0]["input_ids"]

    out = tmp_path / "out"
    ft.finetune(ft.FinetuneArguments("classification", base_model, train, validation, leading_space=True),
                {**QUICK, "max_steps": 2, "output_dir": str(out)}, callbacks=[Spy()])
    first = json.loads(Path(train).read_text().splitlines()[0])["sentence"]
    assert list(seen["ids"]) == tokenizer(" " + first)["input_ids"] != tokenizer(first)["input_ids"]
    assert json.loads((out / "run.json").read_text())["training"]["leading_space"] is True
    saved = AutoTokenizer.from_pretrained(out)
    assert saved(first)["input_ids"] == tokenizer(" " + first)["input_ids"]
    classifier = pipeline("text-classification", model=str(out), device="cpu")
    assert classifier(first, top_k=None) == classifier(" " + first, top_k=None)
    # Without the flag the tokenizer is saved as it came.
    plain = tmp_path / "plain"
    ft.finetune(ft.FinetuneArguments("classification", base_model, train, validation),
                {**QUICK, "max_steps": 1, "output_dir": str(plain)})
    assert AutoTokenizer.from_pretrained(plain)(first)["input_ids"] == tokenizer(first)["input_ids"]
    assert "leading_space" not in json.loads((plain / "run.json").read_text())["training"]


@pytest.mark.slow
def test_tokens_unseen_in_pretraining_start_with_fresh_embeddings(tmp_path, base_model, tokenizer):
    """--reset-unseen-tokens: the rows of the tokens absent from the given text are redrawn before training starts
    (the special tokens and every seen row as pretrained); run.json says how many; a missing file stops the run
    before any model is loaded."""
    from transformers import TrainerCallback

    train = _write_jsonl(tmp_path / "train.jsonl", _sentiment_rows(32, 0))
    validation = _write_jsonl(tmp_path / "validation.jsonl", _sentiment_rows(8, 1))
    pretraining = tmp_path / "pretraining.txt"
    pretraining.write_text(" ".join(FRUIT) + "\n", encoding="utf-8")
    start = {}

    class Spy(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            start["embeddings"] = model.get_input_embeddings().weight.detach().clone()

    out = tmp_path / "out"
    ft.finetune(ft.FinetuneArguments("classification", base_model, train, validation,
                                     reset_unseen_tokens=[pretraining]),
                {**QUICK, "max_steps": 1, "output_dir": str(out)}, callbacks=[Spy()])
    pretrained = YuyanForCausalLM.from_pretrained(base_model).get_input_embeddings().weight.detach()
    seen = torch.zeros(len(pretrained), dtype=torch.bool)
    seen[tokenizer(" ".join(FRUIT) + "\n", add_special_tokens=False)["input_ids"]] = True
    seen[tokenizer.all_special_ids] = True
    moved = (start["embeddings"] != pretrained).any(dim=1)
    assert torch.equal(moved, ~seen)
    run = json.loads((out / "run.json").read_text())
    assert run["training"]["reset_unseen_tokens"] == {"files": [str(pretraining)], "tokens": int((~seen).sum())}
    bad = tmp_path / "bad"
    with pytest.raises(ValueError, match="not a file"):
        ft.finetune(ft.FinetuneArguments("classification", base_model, train, validation,
                                         reset_unseen_tokens=[tmp_path / "missing.txt"]), {"output_dir": str(bad)})
    assert not bad.exists()


# ----------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    return build_parser({"finetune"})


def test_every_training_argument_is_a_flag():
    parser = _parser()
    args = parser.parse_args([
        "finetune", "--task", "classification", "--model", "m", "--train", "t.csv", "--validation", "v.csv",
        "--output", "out", "--learning_rate", "1e-3", "--num-train-epochs", "2", "--per_device_train_batch_size",
        "8", "--warmup-steps", "3", "--text-column", "sentence", "--class_names", "neg", "pos", "--lora",
        "--lora-r", "4", "--lora-target-modules", "qkv_proj", "out_proj", "--delimiter", "\\t", "--seed", "7",
        "--config-overrides", "hidden_dropout=0.1", "--reset-unseen-tokens", "a.txt", "b.txt",
        "--layer-lr-decay", "0.5", "--leading-space",
    ])
    finetune_args, data_args, lora_args, training_args = split_namespace(args)
    assert finetune_args.task == "classification" and finetune_args.model_name_or_path == "m"
    assert finetune_args.train_file == "t.csv" and finetune_args.validation_file == "v.csv"
    assert finetune_args.config_overrides == "hidden_dropout=0.1"
    assert finetune_args.reset_unseen_tokens == ["a.txt", "b.txt"] and finetune_args.layer_lr_decay == 0.5
    assert finetune_args.leading_space
    assert training_args.output_dir == "out" and training_args.learning_rate == 1e-3
    assert training_args.num_train_epochs == 2 and training_args.per_device_train_batch_size == 8
    assert training_args.warmup_steps == 3 and training_args.seed == 7
    # Yuyan's defaults, overridable like any other flag.
    assert training_args.report_to == [] or training_args.report_to in ("none", ["none"])
    assert str(training_args.save_strategy.value) == "epoch" and str(training_args.eval_strategy.value) == "epoch"
    assert training_args.use_cpu == (not torch.cuda.is_available())
    assert data_args.text_column == "sentence" and data_args.class_names == ["neg", "pos"]
    assert data_args.delimiter == "\t"
    assert lora_args.lora and lora_args.lora_r == 4 and lora_args.lora_target_modules == ["qkv_proj", "out_proj"]
    args = parser.parse_args(["finetune", "--task", "question-answering", "--model_name_or_path", "m",
                              "--train_file", "t", "--validation_file", "v", "--output_dir", "o", "--eval_strategy",
                              "no", "--save-strategy", "steps", "--save_steps", "5"])
    _, _, lora_args, training_args = split_namespace(args)
    assert str(training_args.eval_strategy.value) == "no" and training_args.save_steps == 5 and not lora_args.lora
    finetune_help = parser._subparsers._group_actions[0].choices["finetune"].format_help()
    assert "--learning-rate" in finetune_help and "--reset-unseen-tokens FILE [FILE ...]" in finetune_help
    with pytest.raises(SystemExit):
        parser.parse_args(["finetune", "--task", "classification", "--model", "m", "--train", "t",
                           "--validation", "v", "--learn", "1"])  # no abbreviations


@pytest.mark.slow
def test_command_line_run_and_error_exit(tmp_path, base_model, capsys):
    """`yuyan finetune` end to end through yuyan.cli.main; the classifier beats the majority class by far."""
    from transformers import AutoModelForSequenceClassification, pipeline

    from yuyan import cli

    train_rows, validation_rows = _sentiment_rows(160, 0), _sentiment_rows(48, 1)
    train = tmp_path / "train.tsv"
    validation = tmp_path / "dev.tsv"
    for path, rows in ((train, train_rows), (validation, validation_rows)):
        path.write_text("sentence\tlabel\n" + "".join(f"{r['sentence']}\t{r['label']}\n" for r in rows))
    out = tmp_path / "sst"
    common = ["finetune", "--task", "classification", "--model", base_model, "--train", str(train),
              "--validation", str(validation), "--output", str(out), "--text-column", "sentence"]
    code = cli.main(common + ["--label-column", "polarity"])
    assert code == 2 and "yuyan finetune: error:" in capsys.readouterr().err

    test_rows = _sentiment_rows(40, 2)
    test = tmp_path / "test.tsv"
    test.write_text("sentence\tlabel\n" + "".join(f"{r['sentence']}\t{r['label']}\n" for r in test_rows))
    code = cli.main(common + ["--test", str(test), "--class-names", "negative", "positive", "--num_train_epochs", "3",
                              "--learning-rate", "3e-3", "--per_device_train_batch_size", "16", "--disable_tqdm",
                              "true", "--save_strategy", "no"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    positive = np.mean([r["label"] for r in validation_rows])
    majority = 100 * max(positive, 1 - positive)
    assert metrics["metrics"]["accuracy"] >= max(90.0, majority + 20)
    assert set(metrics) >= {"task", "base_model", "metrics", "dataset", "validation_data", "train_seconds",
                            "parameters", "layer_types", "device", "hardware"}
    assert metrics["task"] == "text-classification" and metrics["layer_types"] == ["lstm", "full_attention"]
    # --test: scored once after training, apart from the validation (selection) metrics.
    assert metrics["test_data"] == str(test) and set(metrics["test_metrics"]) >= {"accuracy", "macro_f1", "loss"}
    assert metrics["test_metrics"]["accuracy"] >= 90.0
    assert metrics["test_metrics"]["loss"] != metrics["metrics"]["loss"]
    assert "(test: " in capsys.readouterr().out
    run = json.loads((out / "run.json").read_text())
    assert run["training"]["learning_rate"] == 3e-3 and run["training"]["num_train_epochs"] == 3
    assert run["lora"] is None and run["data"]["labels"] == ["negative", "positive"]

    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.id2label == {0: "negative", 1: "positive"}
    classify = pipeline("text-classification", model=str(out))
    results = classify(["apple mango cherry banana", "river ocean desert valley"])
    assert [r["label"] for r in results] == ["positive", "negative"]


# ----------------------------------------------------------------------------------------------------------------
# Fine-tuning runs, one per task, each served by its pipeline
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_token_classification_run_and_pipeline(tmp_path, base_model):
    from transformers import AutoModelForTokenClassification, pipeline

    rng = random.Random(3)

    def rows(count):
        out = []
        for _ in range(count):
            tokens = [rng.choice(FRUIT + PLACES) for _ in range(5)]
            out.append({"words": tokens, "ner": ["B-FRUIT" if t in FRUIT else "O" for t in tokens]})
        return out

    train = _write_jsonl(tmp_path / "train.jsonl", rows(64))
    validation = _write_jsonl(tmp_path / "validation.jsonl", rows(16))
    out = tmp_path / "tagger"
    metrics = ft.finetune(ft.FinetuneArguments("token-classification", base_model, train, validation),
                          {**QUICK, "num_train_epochs": 2, "output_dir": out},
                          data_args={"tokens_column": "words", "tags_column": "ner"})
    assert metrics["task"] == "token-classification"
    assert set(metrics["metrics"]) >= {"f1", "precision", "recall", "accuracy", "loss"}
    model = AutoModelForTokenClassification.from_pretrained(out)
    assert model.config.id2label == {0: "O", 1: "B-FRUIT"}
    tagger = pipeline("token-classification", model=str(out))
    entities = tagger("apple river mango")
    assert all(e["entity"] in ("O", "B-FRUIT") for e in entities)
    assert all(0 <= e["start"] < e["end"] <= len("apple river mango") for e in entities)


@pytest.mark.slow
def test_question_answering_run_and_pipeline(tmp_path, base_model):
    from transformers import AutoModelForQuestionAnswering, pipeline

    rng = random.Random(4)
    rows = []
    for index in range(48):
        answer = rng.choice(FRUIT)
        before = " ".join(rng.choice(PLACES) for _ in range(rng.randint(1, 12)))
        after = " ".join(rng.choice(PLACES) for _ in range(rng.randint(1, 12)))
        context = f"{before} the answer is {answer} {after}"
        rows.append({"id": str(index), "question": "What is the answer?", "context": context,
                     "answers": {"text": [answer], "answer_start": [len(before) + 15]}})
    paragraphs = [
        {"context": r["context"], "qas": [{"id": r["id"], "question": r["question"], "answers": [
            {"text": r["answers"]["text"][0], "answer_start": r["answers"]["answer_start"][0]}]}]}
        for r in rows[40:]
    ]
    squad = {"version": "1.1", "data": [{"title": "t", "paragraphs": paragraphs}]}
    train = _write_jsonl(tmp_path / "train.jsonl", rows[:40])
    validation = tmp_path / "dev.json"
    validation.write_text(json.dumps(squad))
    out = tmp_path / "qa"
    metrics = ft.finetune(ft.FinetuneArguments("question-answering", base_model, train, str(validation)),
                          {**QUICK, "num_train_epochs": 1, "output_dir": out},
                          data_args={"max_seq_length": 48, "doc_stride": 16})
    assert metrics["task"] == "question-answering"
    assert 0 <= metrics["metrics"]["exact_match"] <= metrics["metrics"]["f1"] <= 100
    model = AutoModelForQuestionAnswering.from_pretrained(out)
    assert model.config.question_answering == {"max_seq_length": 48, "doc_stride": 16}
    answerer = pipeline("question-answering", model=str(out))
    context = "ocean river the answer is mango forest " * 4  # longer than one window
    result = answerer(question="What is the answer?", context=context)
    assert set(result) == {"score", "start", "end", "answer"} and 0 <= result["score"] <= 1
    assert result["answer"] == context[result["start"]: result["end"]] and result["answer"]
    several = answerer({"question": "What is the answer?", "context": context}, top_k=3)
    assert len(several) == 3 and several[0]["score"] >= several[1]["score"] >= several[2]["score"]


@pytest.mark.slow
def test_text_generation_run_with_chat_template_and_pipeline(tmp_path, base_model):
    from transformers import AutoModelForCausalLM, pipeline

    rng = random.Random(5)
    rows = []
    for _ in range(40):
        words = [rng.choice(FRUIT) for _ in range(3)]
        rows.append({"source": " ".join(words), "target": [" ".join(reversed(words)), words[0]]})
    train = _write_jsonl(tmp_path / "train.jsonl", rows[:32])
    validation = _write_jsonl(tmp_path / "validation.jsonl", rows[32:])
    out = tmp_path / "gen"
    metrics = ft.finetune(ft.FinetuneArguments("text-generation", base_model, train, validation),
                          {**QUICK, "num_train_epochs": 1, "per_device_eval_batch_size": 4, "output_dir": out},
                          data_args={"chat_template": True, "max_new_tokens": 6, "system_prompt": "Reverse.",
                                     "no_repeat_ngram_size": 2})
    assert metrics["task"] == "text-generation"
    assert set(metrics["metrics"]) >= {"loss", "rougeL", "chrf", "bleu"}
    run = json.loads((out / "run.json").read_text())
    assert run["data"]["chat_template"] and run["data"]["max_new_tokens"] == 6
    assert run["data"]["no_repeat_ngram_size"] == 2
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.generation_config.max_new_tokens == 6 and model.generation_config.no_repeat_ngram_size == 2
    generator = pipeline("text-generation", model=str(out))
    chat = generator([{"role": "system", "content": "Reverse."}, {"role": "user", "content": "apple mango lemon"}])
    assert chat[0]["generated_text"][-1]["role"] == "assistant"
    plain = generator("apple mango\n", max_new_tokens=3)
    assert plain[0]["generated_text"].startswith("apple mango\n")


def test_evaluation_decoding_can_forbid_repeated_ngrams(base_model, tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_model)  # random weights: greedy decoding loops
    prompt = tokenizer("apple mango", add_special_tokens=False)["input_ids"]
    looping = generation.generate_completions(model, tokenizer, [prompt], max_new_tokens=12)
    distinct = generation.generate_completions(model, tokenizer, [prompt], max_new_tokens=12, no_repeat_ngram_size=1)
    ids = model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, no_repeat_ngram_size=1,
                         pad_token_id=tokenizer.pad_token_id)[0].tolist()
    assert len(ids) > len(prompt) + 1 and len(set(ids)) == len(ids)  # no token twice, the prompt's included
    assert distinct == [tokenizer.decode(ids[len(prompt):], skip_special_tokens=True).strip()]
    assert looping != distinct


@pytest.mark.slow
def test_lora_trains_only_the_adapter_and_merges_exactly(tmp_path, base_model, tokenizer):
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification, pipeline

    from yuyan import YuyanForSequenceClassification

    # Wrapping: only LoRA matrices and the new head are trainable; every projection kind is adapted.
    model = YuyanForSequenceClassification.from_pretrained(base_model, num_labels=2)
    wrapped, targets = ft.apply_lora(model, ft.LoraArguments(lora=True), "SEQ_CLS", ["score"])
    assert targets == ft.DEFAULT_LORA_TARGETS
    trainable = [name for name, p in wrapped.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name or "modules_to_save" in name for name in trainable)
    assert any("out_proj.lora_A" in name for name in trainable) and any("qkv_proj.lora_A" in name for name in trainable)
    assert any("score" in name for name in trainable)

    train = _write_jsonl(tmp_path / "train.jsonl", _sentiment_rows(64, 0))
    validation = _write_jsonl(tmp_path / "validation.jsonl", _sentiment_rows(16, 1))
    out = tmp_path / "lora"
    metrics = ft.finetune(ft.FinetuneArguments("classification", base_model, train, validation),
                          {**QUICK, "num_train_epochs": 1, "output_dir": out},
                          lora_args={"lora": True, "lora_r": 4, "merge": True})
    run = json.loads((out / "run.json").read_text())
    assert run["lora"]["r"] == 4 and run["lora"]["merged"] and run["lora"]["modules_to_save"] == ["score"]
    assert run["lora"]["trainable_parameters"] < metrics["parameters"]
    saved = load_file(out / "adapter" / "adapter_model.safetensors")
    assert saved and all("lora_" in key or "score" in key for key in saved)

    # The merged model gives the adapted model's logits.
    adapted = load_finetuned(out / "adapter")
    merged = AutoModelForSequenceClassification.from_pretrained(out)
    batch = tokenizer(["apple mango cherry", "river ocean"], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = adapted(**batch).logits
        actual = merged(**batch).logits
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    results = pipeline("text-classification", model=str(out))(["apple mango", "river ocean"])
    assert all(r["label"] in ("0", "1") for r in results)
