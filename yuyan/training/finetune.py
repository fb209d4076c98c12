"""Fine-tune a pretrained Yuyan model for a task with the transformers `Trainer`.

```python
>>> from yuyan.training.finetune import FinetuneArguments, finetune
>>> result = finetune(FinetuneArguments("classification", "runs/small-hybrid", "sst2/train.tsv", "sst2/test.tsv"),
...                   {"output_dir": "runs/sst2", "learning_rate": 1e-3, "num_train_epochs": 2},
...                   data_args={"text_column": "sentence", "class_names": ["negative", "positive"]})
>>> result["metrics"]["accuracy"]
```

or on the command line, the same four groups of arguments as flags, with every `TrainingArguments` field as a flag
(`--learning_rate` or `--learning-rate`):

    yuyan finetune --task classification --model runs/small-hybrid --train sst2/train.tsv \\
        --validation sst2/test.tsv --output runs/sst2 --text-column sentence --num_train_epochs 2

Tasks (the pipeline the output folder then serves):

| `--task`                | model class                       | data columns (defaults)                 | metrics (percent)        |
|-------------------------|-----------------------------------|-----------------------------------------|--------------------------|
| `classification`        | `YuyanForSequenceClassification`  | text (+ text pair), label               | accuracy, macro_f1       |
| `token-classification`  | `YuyanForTokenClassification`     | tokens, tags (lists, one tag a token)   | entity f1 / precision / recall, accuracy |
| `question-answering`    | `YuyanForQuestionAnswering`       | question, context, answers (SQuAD v1.1) | exact_match, f1          |
| `text-generation`       | `YuyanForCausalLM`                | prompt, completion                      | rougeL, chrf, bleu       |

Every task also reports the validation `loss`. Data files: CSV, TSV, JSON, JSONL, SQuAD v1.1 JSON
(`yuyan.training.recipes.tables`); how each task encodes its examples is its recipe, a module of
`yuyan.training.recipes`.

Yuyan models are causal: each position sees only the text to its left. A classifier reads the last token's state
(it has seen everything; `config_overrides="classifier_pooling=mean"` averages every token's instead); a tagger labels
a word from its left context only; a QA model reads the question first, then the context, and picks the answer's
start without seeing the text after it. That is the architecture, not a bug, and it costs accuracy on tagging and
QA against bidirectional encoders.

`--leading-space` reads every text as if it started with a space (`yuyan.tokenization.add_leading_space`, saved
with the tokenizer): a byte-level BPE trained on text whose lines start with a space (WikiText) otherwise spells a
text's first word in pieces the model hardly saw. `--layer-lr-decay D` trains each layer below the head at D times
the rate of the one above, the embeddings lowest.

Checked before training, as `ValueError`: the model folder is a Yuyan model (config.json with model_type
"yuyan"), the data columns exist, validation labels are all among the training labels, QA answers lie in their
contexts at `answer_start`.

LoRA (`--lora`, with peft): low-rank adapters on the attention (`qkv_proj`, `o_proj`), LSTM (`out_proj`) and MLP
(`gate_up_proj`, `down_proj`) projections; a task head (`score`, `qa_outputs`) is new, so it is trained whole
(`modules_to_save`). LoRA wraps `nn.Linear` layers: it cannot wrap `nn.LSTM` itself, whose gates are one fused
kernel; that is why every LSTM layer ends in the linear `out_proj`.

Output folder:

    OUTPUT/
      config.json, model.safetensors, modeling code   the fine-tuned model (loads with AutoModelFor..., pipeline)
        -- or, with --lora: adapter_config.json, adapter_model.safetensors (the adapter, which
           `yuyan.loading.load_finetuned` loads)
        -- with --lora --merge: the merged model here, and the adapter in OUTPUT/adapter/
      tokenizer files                                 the tokenizer (with `<|endoftext|>` between pair texts)
      metrics.json                                    {"task", "base_model", "metrics", "dataset", ...}
      run.json                                        {"training", "lora", "task", "data"}: how to run it again
      README.md                                       the model card
      checkpoint-*/                                   the Trainer's checkpoints (resume with --resume_from_checkpoint)

metrics.json is written last: its presence means the run finished.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import platform
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from yuyan.files import check_output_folder, move_into, staging_dir
from yuyan.modeling import LORA_TARGET_MODULES
from yuyan.records import METRICS_FILE, FinetuneMetrics, FinetuneRun
from yuyan.tasks import TASKS, Task, get_task
from yuyan.training.recipes import recipe_of

DEFAULT_LORA_TARGETS = list(LORA_TARGET_MODULES)
# TrainingArguments defaults that suit a laptop CPU better than transformers' own; any flag overrides them.
TRAINING_DEFAULTS: dict[str, Any] = {
    "report_to": "none",
    "eval_strategy": "epoch",
    "save_strategy": "epoch",
    "save_total_limit": 1,
}
ADAPTER_DIR = "adapter"
# The config fields a fine-tuning run may change: they regularise training or choose how the classification head
# reads a sequence, and leave every weight's shape alone (hidden_dropout is also the task heads' dropout).
FINETUNE_CONFIG_FIELDS = ("hidden_dropout", "attention_dropout", "classifier_pooling")
# Fields whose value is a word, not a number; YuyanConfig checks their values (validate_architecture).
_TEXT_CONFIG_FIELDS = ("classifier_pooling",)


# ----------------------------------------------------------------------------------------------------------------
# Arguments (each field is a command-line flag, in the --under_score and --dash-ed forms)
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class FinetuneArguments:
    """What to fine-tune, on what: the first argument of `finetune`."""

    task: str = field(metadata={"help": "the task", "choices": list(TASKS)})
    model_name_or_path: str = field(
        metadata={"aliases": ["--model"], "help": "the pretrained Yuyan model: a folder or a Hub id"}
    )
    train_file: str = field(metadata={"aliases": ["--train"], "help": "training data (.csv, .tsv, .json, .jsonl)"})
    validation_file: str = field(metadata={"aliases": ["--validation"], "help": "validation data, same format"})
    test_file: str | None = field(
        default=None,
        metadata={"aliases": ["--test"], "help": "data scored once after training (metrics.json test_metrics)"},
    )
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"aliases": ["--tokenizer"], "help": "tokenizer folder (default: the model's)"}
    )
    overwrite: bool = field(default=False, metadata={"help": "write into a non-empty output folder"})
    ignore_mismatched_sizes: bool = field(
        default=False,
        metadata={"help": "load a checkpoint whose head has another shape (e.g. another label count), re-initialised"},
    )
    config_overrides: str | None = field(
        default=None,
        metadata={"help": "model config fields for fine-tuning, as transformers' run_clm spells them: "
                  "hidden_dropout=0.1,classifier_pooling=mean (allowed: " + ", ".join(FINETUNE_CONFIG_FIELDS) + ")"},
    )
    leading_space: bool = field(
        default=False,
        metadata={"help": "read every text as if it started with a space, so that its first word is spelled as "
                  "inside a text (for a byte-level BPE trained on text whose lines start with a space, as "
                  "WikiText's do); saved with the tokenizer, so pipelines do the same"},
    )
    layer_lr_decay: float | None = field(
        default=None,
        metadata={"help": "layer-wise learning-rate decay in (0, 1]: the head trains at --learning_rate, the top "
                  "layer at this times it, each layer below at this times the one above, the embeddings lowest "
                  "(ULMFiT's discriminative fine-tuning; default: one rate for all)"},
    )
    reset_unseen_tokens: list[str] | None = field(
        default=None,
        metadata={"metavar": "FILE",
                  "help": "the files the model was pretrained on (its --data): tokens that never occur in them get "
                  "fresh embeddings drawn like the pretrained ones (for a tokenizer that knows more than pretraining "
                  "read, e.g. a second language)"},
    )


@dataclass
class DataArguments:
    """Columns, lengths and task options. A column left unset is looked for under its usual names."""

    text_column: str | None = field(default=None, metadata={"help": "classification text (text, sentence, ...)"})
    text_pair_column: str | None = field(default=None, metadata={"help": "classification second text, if any"})
    label_column: str = field(default="label", metadata={"help": "classification label"})
    class_names: list[str] | None = field(
        default=None, metadata={"help": "names of integer labels / tags, in id order (e.g. negative positive)"}
    )
    tokens_column: str | None = field(default=None, metadata={"help": "tagging words (tokens, words)"})
    tags_column: str | None = field(default=None, metadata={"help": "tagging tags (tags, ner_tags, ...)"})
    question_column: str | None = field(default=None, metadata={"help": "QA question (question)"})
    context_column: str | None = field(default=None, metadata={"help": "QA context (context)"})
    answers_column: str | None = field(default=None, metadata={"help": "QA answers (answers: text + answer_start)"})
    id_column: str = field(default="id", metadata={"help": "QA example ids, for error messages"})
    prompt_column: str | None = field(default=None, metadata={"help": "generation prompt (prompt, source, ...)"})
    completion_column: str | None = field(
        default=None, metadata={"help": "generation target (completion, target, ...)"}
    )
    delimiter: str | None = field(default=None, metadata={"help": "field separator of delimited text (\\t for tabs)"})
    max_seq_length: int | None = field(
        default=None,
        metadata={"help": "tokens per example (default 256; QA 384; generation 512; at most the model's positions)"},
    )
    doc_stride: int | None = field(default=None, metadata={"help": "QA: overlap of context windows (default 128)"})
    n_best_size: int = field(default=20, metadata={"help": "QA: start / end candidates per window"})
    max_answer_length: int = field(default=30, metadata={"help": "QA: longest answer, in tokens"})
    chat_template: bool = field(default=False, metadata={"help": "generation: prompt / completion as chat turns"})
    system_prompt: str | None = field(default=None, metadata={"help": "generation: system turn (with chat template)"})
    prompt_suffix: str = field(
        default="\n", metadata={"help": "generation: text after the prompt without chat template (\\n: newline)"}
    )
    max_target_length: int | None = field(
        default=None, metadata={"help": "generation: completion tokens kept in training (default min(128, half))"}
    )
    max_new_tokens: int = field(default=64, metadata={"help": "generation: tokens generated in evaluation"})
    num_beams: int = field(default=1, metadata={"help": "generation: beams in evaluation (1: greedy)"})
    no_repeat_ngram_size: int = field(
        default=0, metadata={"help": "generation: never repeat an n-gram of this size in evaluation (0: off)"}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "use only the first N training examples"})
    max_eval_samples: int | None = field(default=None, metadata={"help": "use only the first N validation examples"})


@dataclass
class LoraArguments:
    lora: bool = field(default=False, metadata={"help": "train a LoRA adapter instead of all weights (peft)"})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling numerator (scale = alpha / r)"})
    lora_dropout: float = field(default=0.05, metadata={"help": "dropout on the LoRA input"})
    lora_target_modules: list[str] = field(
        default_factory=lambda: list(DEFAULT_LORA_TARGETS),
        metadata={"help": "linear layers to adapt (nn.LSTM cannot be: its out_proj is)"},
    )
    merge: bool = field(default=False, metadata={"help": "also write the merged model (adapter in OUTPUT/adapter)"})


def _accelerator_available() -> bool:
    if torch.cuda.is_available():
        return True
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def make_training_arguments(output_dir: str | os.PathLike, **overrides):
    """`TrainingArguments` with Yuyan's defaults (`TRAINING_DEFAULTS`, and `use_cpu` when no GPU is there)."""
    from transformers import TrainingArguments

    known = {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown training arguments {unknown} (not TrainingArguments fields)")
    values = {**TRAINING_DEFAULTS, "use_cpu": not _accelerator_available(), **overrides}
    values["output_dir"] = os.fspath(output_dir)
    return TrainingArguments(**values)


def _coerce(kind, value, name: str):
    if value is None:
        return kind()
    if isinstance(value, kind):
        return copy.copy(value)
    if isinstance(value, dict):
        unknown = set(value) - {f.name for f in dataclasses.fields(kind)}
        if unknown:
            raise ValueError(f"unknown {name} {sorted(unknown)}")
        return kind(**value)
    raise ValueError(f"{name} must be a {kind.__name__} or a dict, not {type(value).__name__}")


# ----------------------------------------------------------------------------------------------------------------
# Model, tokenizer
# ----------------------------------------------------------------------------------------------------------------


def check_yuyan_model(name_or_path: str) -> str:
    """The model's path (absolute for a folder) after checking that it is a Yuyan model, with the loader's checks
    for a local folder (`yuyan.loading`); ValueError / FileNotFoundError if not."""
    from yuyan.loading import resolve_model_folder

    folder = resolve_model_folder(name_or_path, yuyan_only=True, need_tokenizer=False)
    if folder is not None:
        return str(Path(folder).resolve())
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(
            f"cannot find the model {name_or_path!r}: no such folder, and no Hub model ({error})"
        ) from None
    if config.model_type != "yuyan":
        raise ValueError(f"{name_or_path} is not a Yuyan model: its model_type is {config.model_type!r}, not 'yuyan'")
    return name_or_path


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError, TypeError) as error:
        raise ValueError(f"cannot load a tokenizer from {name_or_path} ({error}); give one with --tokenizer") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def tokenization_with_pair_separator(tokenizer) -> bool:
    """Make the tokenizer encode a text pair as `first <eos> second` (as `pipeline` will call it: one pair, no
    template of our own). Yuyan's tokenizer otherwise concatenates the two texts with nothing between. Single texts
    are unchanged. Returns whether a separator was added (not when the tokenizer already marks pairs)."""
    from tokenizers import processors

    backend = getattr(tokenizer, "backend_tokenizer", None)
    separator = tokenizer.eos_token or tokenizer.sep_token
    if backend is None or separator is None:
        return False
    first = tokenizer("a", add_special_tokens=True)["input_ids"]
    second = tokenizer("b", add_special_tokens=True)["input_ids"]
    if tokenizer("a", "b", add_special_tokens=True)["input_ids"] != first + second:
        return False
    template = processors.TemplateProcessing(
        single="$A:0",
        pair=f"$A:0 {separator}:0 $B:1",
        special_tokens=[(separator, tokenizer.convert_tokens_to_ids(separator))],
    )
    existing = backend.post_processor
    backend.post_processor = template if existing is None else processors.Sequence([existing, template])
    return True


def resolve_max_length(task: Task, requested: int | None, tokenizer, config) -> int:
    positions = config.max_position_embeddings if config.has_attention else None
    limit_name = f"the model's max_position_embeddings={positions}"
    limits = [limit for limit in (tokenizer.model_max_length, positions) if limit and limit < 10**8]
    if requested is None:
        return int(min([task.default_max_length, *limits]))
    if requested < 8:
        raise ValueError(f"max_seq_length={requested} is too short")
    if positions is not None and requested > positions:
        raise ValueError(f"max_seq_length={requested} exceeds {limit_name}")
    return requested


def _count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def apply_lora(model, lora_args: LoraArguments, peft_task_type: str, head_modules: list[str]):
    """Wrap `model` in a peft LoRA model (see the module docstring); returns (peft model, targets)."""
    try:
        from peft import LoraConfig, TaskType, get_peft_model
    except ImportError:
        raise ValueError("--lora needs peft: pip install peft") from None
    linear = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    recurrent = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.LSTM)}
    requested = list(lora_args.lora_target_modules)
    if any(target in recurrent for target in requested):
        raise ValueError(
            "LoRA cannot wrap nn.LSTM (its four gates are one fused kernel); adapt the LSTM layers through their "
            "linear output projection, 'out_proj'"
        )
    missing = [target for target in requested if target not in linear]
    if missing and requested != DEFAULT_LORA_TARGETS:
        raise ValueError(f"no linear layer named {missing} in the model; its linear layers: {sorted(linear)}")
    targets = [target for target in requested if target in linear and target not in head_modules]
    if not targets:
        raise ValueError(
            f"none of the LoRA target modules {requested} is a linear layer of the model ({sorted(linear)})"
        )
    config = LoraConfig(
        task_type=TaskType[peft_task_type],
        r=lora_args.lora_r,
        lora_alpha=lora_args.lora_alpha,
        lora_dropout=lora_args.lora_dropout,
        target_modules=targets,
        modules_to_save=list(head_modules) or None,
    )
    return get_peft_model(model, config), targets


# ----------------------------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------------------------


def hardware_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


TRAINING_RECORD = (
    "learning_rate", "per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
    "num_train_epochs", "max_steps", "warmup_steps", "lr_scheduler_type", "weight_decay", "max_grad_norm",
    "adam_beta1", "adam_beta2", "adam_epsilon", "optim", "label_smoothing_factor", "seed", "bf16", "fp16",
    "gradient_checkpointing", "eval_strategy", "save_strategy", "load_best_model_at_end", "use_cpu",
)


def _training_record(args, trainer) -> dict[str, Any]:
    values = args.to_dict()
    record = {key: values.get(key) for key in TRAINING_RECORD}
    record["total_train_batch_size"] = args.per_device_train_batch_size * args.gradient_accumulation_steps * max(
        1, args.world_size
    )
    record["steps"] = trainer.state.global_step
    record["epochs"] = trainer.state.epoch
    return record


def write_card(output_dir: Path, metrics: dict, run: dict) -> None:
    """The model card, through yuyan.cards; a failure is reported, not raised (the weights are already saved)."""
    try:
        from yuyan.cards import write_model_card

        write_model_card(output_dir, metrics=metrics, run=run)
    except Exception as error:  # noqa: BLE001 - the card is a convenience; the run itself succeeded
        print(f"warning: the model card was not written: {type(error).__name__}: {error}", file=sys.stderr)


# ----------------------------------------------------------------------------------------------------------------
# The driver
# ----------------------------------------------------------------------------------------------------------------


def check_layer_lr_decay(decay: float | None) -> None:
    if decay is not None and not 0.0 < decay <= 1.0:
        raise ValueError(f"layer_lr_decay must be in (0, 1] (1: every layer at the same rate; 0.5: each layer below "
                         f"the top at half the rate of the one above it), not {decay}")


def layer_lr_scales(model: torch.nn.Module, decay: float) -> dict[str, float]:
    """Each trainable parameter's learning-rate factor under layer-wise decay (ULMFiT's discriminative fine-tuning):
    the task head and the final norm train at the full rate, the top decoder layer at `decay` times it, each layer
    below at `decay` times the one above, and the token embeddings lowest (`decay ** (layers + 1)`). The lower a
    weight, the more general what it learned in pretraining, and the less the task should move it."""
    layers = model.config.num_hidden_layers
    scales = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        index = re.search(r"(?:^|\.)layers\.(\d+)\.", name)
        if index is not None:
            depth = layers - int(index.group(1))
        elif "embed_tokens" in name:
            depth = layers + 1
        else:
            depth = 0
        scales[name] = decay ** depth
    return scales


def split_by_layer_lr(optimizer: torch.optim.Optimizer, model: torch.nn.Module, decay: float) -> None:
    """Split each of the optimizer's parameter groups (weight decay or not) by depth, each part at its layer's rate.
    Done before the scheduler exists, so that the schedule scales every group's own peak rate."""
    scales = layer_lr_scales(model, decay)
    scale_of = {id(parameter): scales[name] for name, parameter in model.named_parameters() if name in scales}
    groups, optimizer.param_groups = optimizer.param_groups, []
    for group in groups:
        options = {key: value for key, value in group.items() if key != "params"}
        for scale in sorted({scale_of[id(parameter)] for parameter in group["params"]}, reverse=True):
            parameters = [parameter for parameter in group["params"] if scale_of[id(parameter)] == scale]
            optimizer.add_param_group({**options, "params": parameters, "lr": group["lr"] * scale})


def _trainer_class(loss_only: bool, layer_lr_decay: float | None = None):
    from transformers import Trainer

    base = Trainer
    if loss_only:
        class LossOnlyTrainer(Trainer):
            """Evaluates the loss only: a language model's logits are (examples x length x vocabulary)."""

            def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
                return super().prediction_step(model, inputs, True, ignore_keys=ignore_keys)

        base = LossOnlyTrainer
    if layer_lr_decay is None or layer_lr_decay == 1.0:
        return base

    class LayerLRTrainer(base):
        """The Trainer's optimizer, each layer at its own rate (`split_by_layer_lr`)."""

        def create_optimizer(self, model=None):
            if self.optimizer is None:  # once: the Trainer calls this again for the optimizer it already has
                super().create_optimizer(model)
                split_by_layer_lr(self.optimizer, self.model if model is None else model, layer_lr_decay)
            return self.optimizer

    return LayerLRTrainer


def _validation_metrics(evaluation: dict[str, float], prefix: str = "eval") -> dict[str, float]:
    skipped = {"runtime", "samples_per_second", "steps_per_second", "epoch"}
    metrics = {}
    for key, value in evaluation.items():
        name = key.removeprefix(f"{prefix}_")
        if name not in skipped:
            metrics[name] = float(value)
    return metrics


def finetune(
    args: FinetuneArguments | dict,
    training_args: Any,
    data_args: DataArguments | dict | None = None,
    lora_args: LoraArguments | dict | None = None,
    *,
    callbacks: list | None = None,
) -> dict[str, Any]:
    """Fine-tune `args.model_name_or_path` (a Yuyan folder or Hub id) for `args.task` and save it in the output
    folder; returns metrics.json. The four arguments are the four groups of `yuyan finetune`'s flags.

    `args`: a `FinetuneArguments` (or a dict of its fields): the task, model, data files and run options.
    `config_overrides` may also be a dict here (`{"hidden_dropout": 0.1}`); `reset_unseen_tokens`: the text files
    the model was pretrained on, whose unseen tokens get fresh embeddings (`yuyan.training.unseen_tokens`);
    `layer_lr_decay`: see `layer_lr_scales`; `test_file`: data scored once after training (metrics.json
    "test_metrics"), so that the validation file can serve model selection (`load_best_model_at_end`) without the
    reported score choosing the model.
    `training_args`: a `TrainingArguments`, or a dict of its fields on top of `TRAINING_DEFAULTS`; its `output_dir`
    is the output folder.
    `data_args` / `lora_args`: `DataArguments` / `LoraArguments` or dicts of their fields.
    `callbacks`: Trainer callbacks (e.g. `EarlyStoppingCallback`).
    """
    from transformers import set_seed

    # Setup: everything that can be wrong with the inputs is found before the model is loaded.
    args = _coerce(FinetuneArguments, args, "fine-tuning arguments")
    task_spec = get_task(args.task)
    data_args = _coerce(DataArguments, data_args, "data arguments")
    lora_args = _coerce(LoraArguments, lora_args, "LoRA arguments")
    training_args = _training_arguments(training_args)
    output = Path(training_args.output_dir)
    check_output_folder(output, args.overwrite or training_args.resume_from_checkpoint is not None,
                        "pass --overwrite to write into it, or --resume_from_checkpoint to continue its run")
    if lora_args.merge and not lora_args.lora:
        raise ValueError("--merge merges a LoRA adapter: give --lora too")
    config_overrides = parse_config_overrides(args.config_overrides)
    layer_lr_decay, reset_unseen_tokens = args.layer_lr_decay, args.reset_unseen_tokens
    check_layer_lr_decay(layer_lr_decay)
    inputs = prepare_inputs(task_spec, args.model_name_or_path, args.tokenizer_name_or_path, data_args,
                            args.train_file, args.validation_file, args.test_file, config_overrides, args.leading_space)
    seen = None
    if reset_unseen_tokens:
        from yuyan.training.unseen_tokens import token_counts

        seen = token_counts(inputs.tokenizer, reset_unseen_tokens, inputs.config.vocab_size) > 0
    set_seed(training_args.seed)
    task_model, parameters, targets, redrawn = load_task_model(task_spec, inputs, lora_args,
                                                               args.ignore_mismatched_sizes, seen, training_args.seed)

    # Fit, evaluate, save.
    trainer, train_seconds = fit(task_model, training_args, inputs, callbacks, layer_lr_decay)
    validation_metrics, test_metrics = evaluate(trainer, inputs)
    metrics = FinetuneMetrics(
        task=task_spec.pipeline_task,
        base_model=str(args.model_name_or_path),
        metrics=validation_metrics,
        dataset=str(args.train_file),
        validation_data=str(args.validation_file),
        test_metrics=test_metrics,
        test_data=str(args.test_file) if test_metrics is not None else None,
        train_seconds=round(train_seconds, 3),
        parameters=parameters,
        layer_types=list(inputs.config.layer_types),
        device=str(training_args.device),
        hardware=hardware_name(training_args.device),
    )
    run = run_record(task_spec, trainer, inputs, data_args, lora_args, targets)
    if layer_lr_decay is not None:
        run.training["layer_lr_decay"] = layer_lr_decay
    if args.leading_space:
        run.training["leading_space"] = True
    if reset_unseen_tokens:
        run.training["reset_unseen_tokens"] = {"files": [str(file) for file in reset_unseen_tokens],
                                               "tokens": len(redrawn)}
    # Launched as several processes, each holds the same trained model: the main one writes the folder (several
    # writers would replace each other's files while the card is rendered), and an error there stops them all.
    from yuyan.training.distributed import on_main_process

    on_main_process(trainer.accelerator, save_output, output, trainer.model, inputs.tokenizer, lora_args.lora,
                    lora_args.merge, run, metrics)
    return metrics.to_dict()


@dataclass
class FinetuneInputs:
    """A fine-tuning run's checked inputs: the base model's path and config, the tokenizer, the examples and the
    task recipe's setup of them (and of the test rows, when given)."""

    model_path: str
    config: Any
    tokenizer: Any
    max_length: int
    train_file: str
    validation_file: str
    train_examples: int
    validation_examples: int
    setup: Any
    test_setup: Any = None
    config_overrides: dict[str, float | str] = field(default_factory=dict)


def _training_arguments(training_args: Any):
    """`TrainingArguments` from one or from a dict of its fields; either must name the output folder (`output_dir`)."""
    from transformers import TrainingArguments

    if isinstance(training_args, TrainingArguments):
        if not training_args.output_dir:
            raise ValueError("give the output folder: TrainingArguments(output_dir=...) (--output)")
        training_args.output_dir = os.fspath(Path(training_args.output_dir))
        return training_args
    if training_args is not None and not isinstance(training_args, dict):
        raise ValueError(f"training arguments must be a TrainingArguments or a dict, "
                         f"not {type(training_args).__name__}")
    values = dict(training_args or {})
    output_dir = values.pop("output_dir", None)
    if not output_dir:
        raise ValueError("give the output folder: training_args={'output_dir': ...} (--output)")
    return make_training_arguments(Path(output_dir), **values)


def prepare_inputs(task: Task, model: str, tokenizer: str | None, data_args: DataArguments, train_file,
                   validation_file, test_file, config_overrides: dict[str, Any] | None = None,
                   leading_space: bool = False) -> FinetuneInputs:
    """Check the model, load the tokenizer and the data, and let the task's recipe encode the examples."""
    from yuyan.modeling import YuyanConfig
    from yuyan.training.recipes.tables import limit, load_table

    model_path = check_yuyan_model(model)
    config = YuyanConfig.from_pretrained(model_path, **(config_overrides or {}))
    if config_overrides:
        # from_pretrained sets keyword fields without validating them: the config's own check, before any data.
        config.validate_architecture()
    tokenizer_obj = load_tokenizer(tokenizer or model_path)
    if leading_space:
        from yuyan.tokenization import add_leading_space

        add_leading_space(tokenizer_obj)
    if len(tokenizer_obj) > config.vocab_size:
        raise ValueError(
            f"the tokenizer has {len(tokenizer_obj)} tokens but the model only {config.vocab_size}: is it the "
            "model's own tokenizer?"
        )
    if task.name == "question-answering" or (task.name == "classification" and data_args.text_pair_column):
        tokenization_with_pair_separator(tokenizer_obj)
    max_length = resolve_max_length(task, data_args.max_seq_length, tokenizer_obj, config)
    train = limit(load_table(train_file, data_args.delimiter), data_args.max_train_samples)
    validation = limit(load_table(validation_file, data_args.delimiter), data_args.max_eval_samples)
    setup = recipe_of(task).prepare(train, validation, tokenizer_obj, data_args, str(train_file), str(validation_file),
                                max_length)
    test_setup = None
    if test_file is not None:
        # The same recipe with the test rows in the validation place: labels checked against the training set.
        test = limit(load_table(test_file, data_args.delimiter), data_args.max_eval_samples)
        test_setup = recipe_of(task).prepare(train, test, tokenizer_obj, data_args, str(train_file), str(test_file),
                                         max_length)
    return FinetuneInputs(model_path, config, tokenizer_obj, max_length, str(train_file), str(validation_file),
                          len(train), len(validation), setup, test_setup, dict(config_overrides or {}))


def parse_config_overrides(overrides: dict[str, Any] | str | None) -> dict[str, float | str]:
    """`{"hidden_dropout": 0.1}` or "hidden_dropout=0.1,classifier_pooling=mean" as a checked dict."""
    if overrides is None or overrides == "":
        return {}
    if isinstance(overrides, str):
        pairs = {}
        for pair in overrides.split(","):
            key, sep, raw = pair.partition("=")
            key = key.strip()
            if not sep or not key:
                raise ValueError(f"config_overrides {pair!r}: expected key=value pairs separated by commas, "
                                 "e.g. hidden_dropout=0.1,attention_dropout=0.1")
            if key in _TEXT_CONFIG_FIELDS:
                pairs[key] = raw.strip()
                continue
            try:
                pairs[key] = float(raw)
            except ValueError:
                raise ValueError(f"config_overrides {pair!r}: {raw!r} is not a number") from None
        overrides = pairs
    unknown = sorted(set(overrides) - set(FINETUNE_CONFIG_FIELDS))
    if unknown:
        raise ValueError(f"config_overrides cannot set {unknown} when fine-tuning; allowed: "
                         f"{list(FINETUNE_CONFIG_FIELDS)} (they leave the weights' shapes as pretrained).")
    checked = {}
    for key, value in overrides.items():
        if key in _TEXT_CONFIG_FIELDS:
            checked[key] = value
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"config_overrides {key}={value!r} is not allowed: a dropout must be a number.")
        else:
            checked[key] = float(value)
    return checked


def load_task_model(task: Task, inputs: FinetuneInputs, lora_args: LoraArguments, ignore_mismatched_sizes: bool,
                    seen: torch.Tensor | None = None, seed: int = 0):
    """The base model with the task's head (LoRA-wrapped with `--lora`); (model, parameters, LoRA targets, the
    token ids whose embeddings were redrawn). `seen`: a flag per token id; the embeddings of the tokens not seen are
    redrawn (`reset_unseen_token_embeddings`), except the special tokens'."""
    setup, config = inputs.setup, inputs.config
    config_updates = {**inputs.config_overrides, **setup.config_updates}
    if config.pad_token_id is None and inputs.tokenizer.pad_token_id is not None:
        config_updates["pad_token_id"] = inputs.tokenizer.pad_token_id
    from yuyan.loading import load_pretrained

    task_model = load_pretrained(task.model_class, inputs.model_path, dtype=torch.float32,
                                 ignore_mismatched_sizes=ignore_mismatched_sizes, **config_updates)
    if setup.prepare_model is not None:
        setup.prepare_model(task_model)
    redrawn = []
    if seen is not None:
        from yuyan.training.unseen_tokens import reset_unseen_token_embeddings

        redrawn = reset_unseen_token_embeddings(task_model, seen, keep=inputs.tokenizer.all_special_ids, seed=seed)
    parameters = _count_parameters(task_model)
    targets = None
    if lora_args.lora:
        task_model, targets = apply_lora(task_model, lora_args, task.peft_task_type, setup.head_modules)
    return task_model, parameters, targets, redrawn


def fit(task_model, training_args, inputs: FinetuneInputs, callbacks: list | None,
        layer_lr_decay: float | None = None):
    """Train with the Trainer (resuming from a checkpoint when asked); (trainer, training seconds)."""
    setup = inputs.setup
    # The Trainer sets config.use_cache to its own argument (False by default) for training; the model it saves
    # keeps the setting the pretrained model came with.
    use_cache = task_model.config.use_cache
    trainer = _trainer_class(setup.loss_only_evaluation, layer_lr_decay)(
        model=task_model,
        args=training_args,
        train_dataset=setup.train_dataset,
        eval_dataset=setup.eval_dataset,
        data_collator=setup.data_collator,
        processing_class=inputs.tokenizer,
        compute_metrics=setup.compute_metrics,
        preprocess_logits_for_metrics=setup.preprocess_logits_for_metrics,
        callbacks=callbacks,
    )
    resume = training_args.resume_from_checkpoint
    if isinstance(resume, str) and resume.lower() in ("latest", "true", "last"):
        resume = True
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume)
    task_model.config.use_cache = use_cache
    return trainer, time.perf_counter() - start


def evaluate(trainer, inputs: FinetuneInputs) -> tuple[dict[str, float], dict[str, float] | None]:
    """Validation metrics (the Trainer's, then the recipe's final evaluation) and, with test data, test metrics."""
    setup, test_setup = inputs.setup, inputs.test_setup
    validation_metrics = _validation_metrics(trainer.evaluate())
    if setup.final_evaluation is not None:
        validation_metrics.update(setup.final_evaluation(trainer))
    test_metrics = None
    if test_setup is not None:
        test_metrics = _validation_metrics(
            trainer.evaluate(eval_dataset=test_setup.eval_dataset, metric_key_prefix="test"), prefix="test"
        )
        if test_setup.final_evaluation is not None:
            test_metrics.update(test_setup.final_evaluation(trainer))
    return validation_metrics, test_metrics


def run_record(task: Task, trainer, inputs: FinetuneInputs, data_args: DataArguments, lora_args: LoraArguments,
               targets: list[str] | None) -> FinetuneRun:
    """run.json: the Trainer settings, LoRA settings (peft's names, as the card shows them), task and data."""
    run = FinetuneRun(
        training={**_training_record(trainer.args, trainer), "max_seq_length": inputs.max_length,
                  **({"config_overrides": inputs.config_overrides} if inputs.config_overrides else {})},
        lora=None,
        task=task.name,
        data={
            "train_file": inputs.train_file,
            "validation_file": inputs.validation_file,
            "train_examples": inputs.train_examples,
            "validation_examples": inputs.validation_examples,
            **inputs.setup.data_info,
            "options": asdict(data_args),
        },
    )
    if lora_args.lora:
        run.lora = {
            "r": lora_args.lora_r,
            "lora_alpha": lora_args.lora_alpha,
            "lora_dropout": lora_args.lora_dropout,
            "target_modules": targets,
            "modules_to_save": inputs.setup.head_modules,
            "merged": lora_args.merge,
            "trainable_parameters": _count_parameters(trainer.model, trainable_only=True),
            "base_model_path": inputs.model_path,
        }
    return run


def save_output(output: Path, trained, tokenizer, lora: bool, merge: bool, run: FinetuneRun,
                metrics: FinetuneMetrics) -> None:
    """The model (or adapter), tokenizer, run.json and metrics.json, staged in the output folder and moved in
    with metrics.json last; then the card."""
    from yuyan.tokenization import save_tokenizer

    with staging_dir(output, prefix=".finetune-") as staging:
        if lora:
            adapter_dir = staging / ADAPTER_DIR if merge else staging
            adapter_dir.mkdir(exist_ok=True)
            trained.save_pretrained(str(adapter_dir), save_embedding_layers=False)
            save_tokenizer(tokenizer, adapter_dir, overwrite=True)
            if merge:
                run.write(adapter_dir)
                merged = trained.merge_and_unload()
                merged.save_pretrained(str(staging))
                save_tokenizer(tokenizer, staging, overwrite=True)
        else:
            trained.save_pretrained(str(staging))
            save_tokenizer(tokenizer, staging, overwrite=True)
        run.write(staging)
        metrics.write(staging)
        move_into(staging, output, last=(METRICS_FILE,))
    write_card(output, metrics, run)


__all__ = [
    "DataArguments",
    "FinetuneArguments",
    "LoraArguments",
    "TRAINING_DEFAULTS",
    "apply_lora",
    "check_yuyan_model",
    "finetune",
    "make_training_arguments",
    "tokenization_with_pair_separator",
]
