"""`pretrain()`: the setup of a run, in steps (data sources, run record, Accelerator, documents, output folder,
tokenizer, blocks), then the loop (`loop.PretrainLoop`: fit, evaluate, save)."""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import accelerate
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, ProjectConfiguration, set_seed

from yuyan.corpus import TextSource, load_documents
from yuyan.loading import cpu_has_native_bfloat16
from yuyan.modeling import YuyanForCausalLM
from yuyan.records import PretrainRun
from yuyan.training.distributed import main_process_first, on_main_process
from yuyan.training.packing import split_validation, tokenize_and_pack
from yuyan.training.pretrain.arguments import ModelSettings, PretrainArguments
from yuyan.training.pretrain.loop import PretrainLoop, make_loaders, open_output


def obtain_tokenizer(args: PretrainArguments, source: TextSource, vocab_size: int, output: Path,
                     accelerator: Accelerator):
    """The run's tokenizer: `--tokenizer`, or one trained on (up to 100 MB of) the training text and saved in
    OUTPUT/tokenizer (by the main process; the others wait and load it)."""
    from transformers import AutoTokenizer

    if args.tokenizer:
        if not (Path(args.tokenizer) / "tokenizer_config.json").exists():
            raise ValueError(f"--tokenizer {args.tokenizer}: not a tokenizer folder (no tokenizer_config.json).")
        return AutoTokenizer.from_pretrained(args.tokenizer)
    tokenizer_dir = output / "tokenizer"

    def train() -> None:
        if (tokenizer_dir / "tokenizer.json").exists():
            return
        from yuyan.tokenization import train_tokenizer

        accelerator.print(f"Training a byte-level BPE tokenizer ({vocab_size} tokens) on {source.description} ...")
        train_tokenizer(texts=source.texts(), vocab_size=vocab_size, output_dir=tokenizer_dir, max_bytes=100_000_000)

    on_main_process(accelerator, train)
    return AutoTokenizer.from_pretrained(tokenizer_dir)


def data_sources(args: PretrainArguments) -> tuple[TextSource, TextSource | None]:
    """The training text and, when given apart, the validation text."""
    source = TextSource(
        files=args.data, dataset=args.dataset, dataset_config=args.dataset_config, split=args.split,
        text_column=args.text_column, streaming=args.streaming, txt_split=args.txt_split,
    )
    validation_source = None
    if args.validation_data:
        validation_source = TextSource(files=args.validation_data, text_column=args.text_column,
                                       streaming=args.streaming, txt_split=args.txt_split)
    elif args.dataset and args.validation_split:
        validation_source = TextSource(
            dataset=args.dataset, dataset_config=args.dataset_config, split=args.validation_split,
            text_column=args.text_column, streaming=args.streaming,
        )
    return source, validation_source


def new_run_record(args: PretrainArguments, model: ModelSettings, source: TextSource,
                   validation_source: TextSource | None) -> PretrainRun:
    """run.json: what a resume must match (model and data) and every training setting."""
    config = model.config
    if config.has_attention and args.block_size > config.max_position_embeddings:
        raise ValueError(
            f"block_size={args.block_size} is beyond the model's max_position_embeddings="
            f"{config.max_position_embeddings}: lower --block-size or raise model.max_position_embeddings."
        )
    validation = validation_source.description if validation_source else (
        f"every {max(2, round(1 / args.validation_fraction))}th document of the training data")
    data = {"train": source.description, "validation": validation, "block_size": args.block_size,
            "tokenizer": args.tokenizer, "seed": args.seed}
    if args.txt_split != "paragraph":  # recorded only when set, so that runs from before the option still resume
        data["txt_split"] = args.txt_split
    return PretrainRun(model=model.requested, data=data, training=asdict(args))


def make_accelerator(args: PretrainArguments, output: Path) -> Accelerator:
    # Launched as several processes (accelerate launch / torchrun) on a machine without GPUs: Accelerate only
    # sets up CPU data parallelism (gloo) when told `cpu=True`.
    cpu_only = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    return Accelerator(
        cpu=cpu_only,
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(project_dir=str(output), logging_dir=str(output / "logs")),
    )


def check_launch(accelerator: Accelerator) -> None:
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and (
        accelerator.distributed_type != DistributedType.FSDP
    ):
        # Accelerate promotes a launch to FSDP only when its processes run on GPUs (or other accelerators); on CPUs
        # the same launch becomes plain DDP, with a whole model per process, which is not what was asked for.
        raise ValueError(
            f"an FSDP launch ended up as {accelerator.distributed_type.value}: Accelerate {accelerate.__version__} "
            "runs FSDP only on GPUs (or other accelerators), not on CPU processes. On CPUs launch data-parallel "
            "with configs/accelerate/cpu-2-processes.yaml instead."
        )


def pack_blocks(args: PretrainArguments, accelerator: Accelerator, tokenizer, documents, validation_documents):
    """Training and validation blocks of `block_size` tokens (the validation share split off when no validation
    text was given)."""
    if validation_documents is not None:
        train_documents = documents
    else:
        train_documents, validation_documents = split_validation(documents, args.validation_fraction)
    train_blocks, validation_blocks = main_process_first(accelerator, lambda: (
        tokenize_and_pack(train_documents, tokenizer, args.block_size, args.num_proc),
        tokenize_and_pack(validation_documents, tokenizer, args.block_size, args.num_proc),
    ))
    if not args.streaming:
        if len(train_blocks) == 0:
            raise ValueError(
                f"the training data gives no complete block of {args.block_size} tokens: give more text or lower "
                "--block-size."
            )
        if len(validation_blocks) == 0:
            raise ValueError(
                f"the validation data gives no complete block of {args.block_size} tokens: give more validation text, "
                "raise --validation-fraction or lower --block-size."
            )
    return train_blocks, validation_blocks


def pretrain(
    args: PretrainArguments, model: ModelSettings | dict[str, Any], accelerator: Accelerator | None = None,
    clock=time.perf_counter,
) -> dict[str, Any]:
    """Run (or resume) a pretraining run; returns the final metrics (metrics.json). The output folder's layout is
    in `yuyan.training.pretrain`. `model`: from `resolve_config`, or the model settings as a dict (`{"preset": ...,
    field: ...}`).

    `clock` (seconds, monotonic) measures the training time that `max_minutes` budgets; tests pass a fake one.
    """
    # Setup: every setting is checked before any data or model work; then data, output folder, tokenizer.
    output = Path(args.output)
    settings = model if isinstance(model, ModelSettings) else ModelSettings.resolve(model)
    source, validation_source = data_sources(args)
    run = new_run_record(args, settings, source, validation_source)
    accelerator = accelerator or make_accelerator(args, output)
    check_launch(accelerator)
    if args.mixed_precision == "bf16" and accelerator.device.type == "cpu" and not cpu_has_native_bfloat16():
        accelerator.print(
            "warning: --mixed-precision bf16 on a CPU without native bfloat16 (no AVX-512 / AMX; torch reports "
            f"{torch.backends.cpu.get_cpu_capability()}): its bf16 matmuls are emulated, about 20x slower than "
            "float32 (bench/optimizer_step.py). --mixed-precision no is the fast path here."
        )
    # The documents first: a missing column or an unreadable file is reported before the output is touched. Work
    # done by the main process alone (or first) goes through `on_main_process` / `main_process_first`, so that
    # its error stops every process instead of leaving them at a barrier.
    documents, validation_documents = main_process_first(
        accelerator, lambda: (load_documents(source),
                              load_documents(validation_source) if validation_source is not None else None)
    )
    resume_from = open_output(accelerator, output, run, args)
    tokenizer = obtain_tokenizer(args, source, settings.config.vocab_size, output, accelerator)
    config = settings.adopt_tokenizer(tokenizer)
    train_blocks, validation_blocks = pack_blocks(args, accelerator, tokenizer, documents, validation_documents)

    set_seed(args.seed)
    # Built after set_seed (the weights depend on the seed alone) and held by the loop only, which drops it at the end.
    # A hidden_dropout asked for holds for any budget; otherwise the run's planned passes choose it.
    loop = PretrainLoop(args, accelerator, YuyanForCausalLM(config), *make_loaders(args, train_blocks, validation_blocks),
                        output, clock, dropout_by_passes="hidden_dropout" not in settings.requested)
    loop.resume(resume_from)
    # Fit, evaluate, save.
    stop_reason = loop.fit()
    metrics = loop.final_metrics(stop_reason, run).to_dict()
    loop.save(tokenizer, metrics, run)
    return metrics


__all__ = ["pretrain"]
