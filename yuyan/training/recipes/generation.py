"""Text generation from prompt → completion pairs (summarization, translation, instructions) with the causal LM.

Format. A training sequence is `prompt ids + completion ids + eos`; the labels are -100 on the prompt and on the
padding, so the loss is the completion's alone (the eos included: the model learns to stop). The prompt is
tokenised on its own, exactly as `pipeline("text-generation")` tokenises it later:

- plain (default): the prompt text followed by `prompt_suffix` (a newline by default). At inference, give the
  pipeline the same: `pipe(prompt + "\\n")`;
- `chat_template=True`: the prompt is a user turn (after an optional system turn) rendered with the tokenizer's
  chat template and its generation prompt; the completion is the assistant's reply, then eos, as the template
  writes it. At inference, give the pipeline the messages: `pipe([{"role": "user", "content": prompt}])`.

A completion longer than `max_target_length` tokens is cut (and then has no eos); a prompt too long for the rest
of `max_seq_length` loses its end, but keeps the format's tokens around it (the suffix, the generation prompt).
A completion cell may hold a list of references: training uses the first, evaluation scores against all.

Evaluation: greedy decoding (`num_beams` beams if set; with `no_repeat_ngram_size` n, no n-gram twice, the prompt
included) of up to `max_new_tokens` tokens from each validation prompt, scored with maintained packages, in
percent: ROUGE-L F1 (`rouge-score`, with Porter stemming; text with CJK characters is compared character by
character), chrF and BLEU (`sacrebleu`; BLEU with its `zh` tokenisation for CJK references, else `13a`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch

from .tables import as_text

PROMPT_CANDIDATES = ("prompt", "source", "input", "instruction", "question", "text")
COMPLETION_CANDIDATES = ("completion", "target", "output", "response", "answer", "summary")
_SENTINEL = "\ue000PROMPT\ue000"  # a private-use character: never in real prompts
_CJK = re.compile(r"[\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\U00020000-\U0002fa1f]")


class PromptFormat:
    """How a prompt becomes the model's input text (see the module docstring)."""

    def __init__(self, tokenizer, chat_template: bool = False, system_prompt: str | None = None,
                 prompt_suffix: str = "\n"):
        if chat_template and not getattr(tokenizer, "chat_template", None):
            raise ValueError("chat_template=True, but the tokenizer has no chat template")
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no eos token to end completions with")
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.system_prompt = system_prompt
        self.prompt_suffix = prompt_suffix

    def messages(self, prompt: str) -> list[dict[str, str]]:
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return messages + [{"role": "user", "content": prompt}]

    def text(self, prompt: str) -> str:
        """The model's input text for a prompt: what generation continues."""
        if self.chat_template:
            return self.tokenizer.apply_chat_template(self.messages(prompt), tokenize=False, add_generation_prompt=True)
        return prompt + self.prompt_suffix

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt_ids(self, prompt: str, max_tokens: int) -> list[int]:
        ids = self._ids(self.text(prompt))
        if len(ids) <= max_tokens:
            return ids
        before, after = self.text(_SENTINEL).split(_SENTINEL)
        head, tail = self._ids(before), self._ids(after)
        room = max_tokens - len(head) - len(tail)
        if room < 1:
            raise ValueError(
                f"max_seq_length leaves {max_tokens} tokens for the prompt, too few for the prompt format's own "
                f"{len(head) + len(tail)} tokens; raise max_seq_length or lower max_target_length"
            )
        return head + self._ids(prompt)[:room] + tail

    def completion_ids(self, completion: str) -> list[int]:
        return self._ids(completion) + [self.tokenizer.eos_token_id]


def encode_example(prompt_format: PromptFormat, prompt: str, completion: str, max_length: int,
                   max_target_length: int) -> dict[str, list[int]]:
    """input_ids, attention_mask and labels (-100 on the prompt) of one pair."""
    completion_ids = prompt_format.completion_ids(completion)[:max_target_length]
    prompt_ids = prompt_format.prompt_ids(prompt, max_length - len(completion_ids))
    input_ids = prompt_ids + completion_ids
    return {
        "input_ids": input_ids,
        "attention_mask": [1] * len(input_ids),
        "labels": [-100] * len(prompt_ids) + completion_ids,
    }


class CompletionCollator:
    """Right-pads a batch: input_ids with the pad id, attention_mask with 0, labels with -100."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        length = max(len(row["input_ids"]) for row in rows)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = {"input_ids": [], "attention_mask": [], "labels": []}
        for row in rows:
            padding = length - len(row["input_ids"])
            batch["input_ids"].append(list(row["input_ids"]) + [self.pad_token_id] * padding)
            batch["attention_mask"].append(list(row["attention_mask"]) + [0] * padding)
            batch["labels"].append(list(row["labels"]) + [-100] * padding)
        return {key: torch.tensor(value, dtype=torch.long) for key, value in batch.items()}


def evaluation_prompts(prompt_format: PromptFormat, prompts: Sequence[Any], max_length: int,
                       max_new_tokens: int) -> list[list[int]]:
    """The token ids that evaluation continues: each prompt cut to leave room for `max_new_tokens` within
    `max_length` (or to half of it, when the generation length would leave the prompt under a quarter)."""
    room = max_length - max_new_tokens if max_length - max_new_tokens >= max_length // 4 else max_length // 2
    return [prompt_format.prompt_ids(as_text(prompt), room) for prompt in prompts]


@torch.no_grad()
def generate_completions(model, tokenizer, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                         batch_size: int = 8, num_beams: int = 1, no_repeat_ngram_size: int = 0) -> list[str]:
    """Greedy (or beam) continuations of tokenised prompts, left-padded in batches; decoded without special
    tokens and stripped. `no_repeat_ngram_size` n > 0 forbids any n-gram twice in a sequence (prompt included),
    as `generate` does: small models decoded greedily fall into loops otherwise."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    outputs = []
    try:
        for first in range(0, len(prompts), batch_size):
            chunk = prompts[first : first + batch_size]
            length = max(len(ids) for ids in chunk)
            input_ids = torch.tensor([[pad] * (length - len(ids)) + list(ids) for ids in chunk], device=device)
            attention_mask = torch.tensor([[0] * (length - len(ids)) + [1] * len(ids) for ids in chunk],
                                          device=device)
            generated = model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=num_beams,
                no_repeat_ngram_size=no_repeat_ngram_size,
                pad_token_id=pad,
                eos_token_id=tokenizer.eos_token_id,
            )
            for row in generated[:, length:]:
                outputs.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    finally:
        model.train(was_training)
    return outputs


# ----------------------------------------------------------------------------------------------------------------
# Scores
# ----------------------------------------------------------------------------------------------------------------


def has_cjk(text: str) -> bool:
    return bool(_CJK.search(text))


class _CharacterTokenizer:
    """ROUGE tokens for text with CJK: each CJK character alone, other letters and digits as lower-cased words."""

    _pattern = re.compile(r"[\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\U00020000-\U0002fa1f]|[^\W_]+")

    def tokenize(self, text: str) -> list[str]:
        return [token.lower() for token in self._pattern.findall(text)]


def check_metric_packages() -> None:
    missing = []
    for module, package in (("rouge_score", "rouge-score"), ("sacrebleu", "sacrebleu")):
        try:
            __import__(module)
        except ImportError:
            missing.append(package)
    if missing:
        raise ValueError(f"text-generation evaluation needs {' and '.join(missing)}: pip install {' '.join(missing)}")


def _checked_references(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> list[list[str]]:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} examples")
    return [[ref for ref in refs if ref] or [""] for refs in references]


def rouge_l_scores(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> list[float]:
    """Each prediction's ROUGE-L F1 in percent, against the best of its references (characters for Chinese, stemmed
    words otherwise); their mean is text_metrics' ROUGE-L."""
    from rouge_score import rouge_scorer

    references = _checked_references(predictions, references)
    cjk = any(has_cjk(ref) for refs in references for ref in refs)
    scorer = (
        rouge_scorer.RougeScorer(["rougeL"], tokenizer=_CharacterTokenizer())
        if cjk
        else rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    )
    return [100 * scorer.score_multi(refs, pred)["rougeL"].fmeasure for pred, refs in zip(predictions, references)]


def text_metrics(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """ROUGE-L F1, chrF and BLEU in percent (see the module docstring); several references per example allowed."""
    from sacrebleu.metrics import BLEU, CHRF

    references = _checked_references(predictions, references)
    if not predictions:
        return {"rougeL": 0.0, "chrf": 0.0, "bleu": 0.0}
    cjk = any(has_cjk(ref) for refs in references for ref in refs)
    rouge = sum(rouge_l_scores(predictions, references))
    most = max(len(refs) for refs in references)
    streams = [[refs[i] if i < len(refs) else None for refs in references] for i in range(most)]
    chrf = CHRF().corpus_score(list(predictions), streams).score
    bleu = BLEU(tokenize="zh" if cjk else "13a").corpus_score(list(predictions), streams).score
    return {"rougeL": rouge / len(predictions), "chrf": float(chrf), "bleu": float(bleu)}


# ----------------------------------------------------------------------------------------------------------------
# Task setup
# ----------------------------------------------------------------------------------------------------------------


def as_references(value: Any) -> list[str]:
    """A completion cell as its list of reference texts (one cell may hold several)."""
    if isinstance(value, (list, tuple)):
        return [as_text(item) for item in value]
    return [as_text(value)]


def prepare(train, validation, tokenizer, data_args, train_path: str, validation_path: str, max_length: int):
    import datasets


    from .base import TaskSetup
    from .tables import check_columns, pick_column

    check_metric_packages()
    prompt_column = pick_column(train, train_path, data_args.prompt_column, PROMPT_CANDIDATES, "--prompt-column")
    completion_column = pick_column(train, train_path, data_args.completion_column, COMPLETION_CANDIDATES,
                                    "--completion-column")
    check_columns(validation, validation_path, [(prompt_column, "--prompt-column"),
                                                (completion_column, "--completion-column")])
    prompt_format = PromptFormat(tokenizer, data_args.chat_template, data_args.system_prompt,
                                 data_args.prompt_suffix)
    max_target_length = data_args.max_target_length or min(128, max_length // 2)
    if not 1 <= max_target_length < max_length:
        raise ValueError(
            f"max_target_length={max_target_length} must be positive and below max_seq_length={max_length}"
        )
    max_new_tokens = data_args.max_new_tokens
    no_repeat_ngram_size = data_args.no_repeat_ngram_size
    if no_repeat_ngram_size < 0:
        raise ValueError(f"no_repeat_ngram_size={no_repeat_ngram_size} must be 0 (off) or a positive n-gram size")

    def encode(dataset, where):
        rows: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": []}
        for row, (prompt, completion) in enumerate(zip(dataset[prompt_column], dataset[completion_column])):
            references = as_references(completion)
            if not references or not references[0].strip():
                raise ValueError(f"{where}: row {row} has an empty completion")
            encoded = encode_example(prompt_format, as_text(prompt), references[0], max_length, max_target_length)
            for key, value in encoded.items():
                rows[key].append(value)
        return datasets.Dataset.from_dict(rows)

    train_dataset = encode(train, train_path)
    eval_dataset = encode(validation, validation_path)
    eval_prompts = evaluation_prompts(prompt_format, validation[prompt_column], max_length, max_new_tokens)
    eval_references = [as_references(value) for value in validation[completion_column]]
    num_beams = data_args.num_beams

    def final_evaluation(trainer) -> dict[str, float]:
        batch_size = trainer.args.per_device_eval_batch_size
        predictions = generate_completions(trainer.model, tokenizer, eval_prompts, max_new_tokens, batch_size,
                                           num_beams, no_repeat_ngram_size)
        return text_metrics(predictions, eval_references)

    def prepare_model(model) -> None:
        generation = model.generation_config
        generation.max_new_tokens = max_new_tokens
        generation.do_sample = False
        generation.num_beams = num_beams
        generation.no_repeat_ngram_size = no_repeat_ngram_size
        generation.pad_token_id = tokenizer.pad_token_id
        generation.eos_token_id = tokenizer.eos_token_id

    return TaskSetup(
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=CompletionCollator(tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                                         else tokenizer.eos_token_id),
        head_modules=[],
        final_evaluation=final_evaluation,
        loss_only_evaluation=True,
        prepare_model=prepare_model,
        data_info={
            "prompt_column": prompt_column,
            "completion_column": completion_column,
            "chat_template": prompt_format.chat_template,
            "system_prompt": prompt_format.system_prompt,
            "prompt_suffix": None if prompt_format.chat_template else prompt_format.prompt_suffix,
            "max_seq_length": max_length,
            "max_target_length": max_target_length,
            "max_new_tokens": max_new_tokens,
            "num_beams": num_beams,
            "no_repeat_ngram_size": no_repeat_ngram_size,
        },
    )


__all__ = [
    "CompletionCollator",
    "PromptFormat",
    "as_references",
    "encode_example",
    "evaluation_prompts",
    "generate_completions",
    "prepare",
    "rouge_l_scores",
    "text_metrics",
]
