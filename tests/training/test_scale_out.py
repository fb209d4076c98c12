"""Several processes on one machine without GPUs: a check that fails on the main process stops every process with
the same error; an FSDP launch on CPUs is refused with the reason (Accelerate runs FSDP only on accelerators); and
transformers' own Trainer scripts run data-parallel on CPUs the way docs/pretraining.md says."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from run_helpers import TINY, data_flags, free_port

# Every test here starts several processes (tens of seconds each).
pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
ACCELERATE_CONFIGS = REPO / "configs" / "accelerate"
TIMEOUT = 180  # a run that reaches a barrier nobody else reaches would wait for gloo's 30 minutes


def environment(**extra: str) -> dict[str, str]:
    return dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1",
                TOKENIZERS_PARALLELISM="false", **extra)


def run_ranks(args: list[str], cwd: Path) -> list[subprocess.CompletedProcess]:
    """`yuyan` as ranks 0 and 1 of one job, started as torchrun would start them but without its agent, which
    kills the other processes once one fails (and so hides whether they would have stopped by themselves): what a
    process on a second machine sees."""
    port = str(free_port())
    processes = []
    for rank in (0, 1):
        env = environment(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        processes.append(subprocess.Popen([sys.executable, "-m", "yuyan.cli", *args], env=env, cwd=cwd,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    try:
        for process in processes:
            out, err = process.communicate(timeout=TIMEOUT)
            results.append(subprocess.CompletedProcess(process.args, process.returncode, out, err))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()
    return results


def launch(config: Path, script: list[str], *flags: str, cwd: Path) -> subprocess.CompletedProcess:
    # A free port, not Accelerate's default 29500: another job on the machine may be using that one.
    return subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
                           "--main_process_port", str(free_port()), *flags, *script],
                          env=environment(), cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT)


# ---------------------------------------------------------------------------------------------------------------
# A failed check stops every process
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["output holds another run", "tokenizer training fails"])
def test_a_check_failing_on_the_main_process_stops_every_process(tmp_path, corpus, case):
    out = tmp_path / "out"
    flags = [*TINY, *data_flags(corpus), "--block-size", "16", "--batch-size", "2", "--max-steps", "2"]
    if case == "output holds another run":
        # Checked by the main process alone (prepare_output), while the others wait for it.
        out.mkdir()
        (out / "run.json").write_text("{}")
        (out / "config.json").write_text("{}")
        message = f"{out} holds another run"
    else:
        # Without --tokenizer the main process trains one while the others wait to load it.
        position = flags.index("--tokenizer")
        del flags[position:position + 2]
        flags += ["--set", "vocab_size=100"]
        message = "vocab_size=100 is too small"
    ranks = run_ranks(["pretrain", *flags, "--output", str(out)], cwd=tmp_path)
    for rank, result in enumerate(ranks):
        assert result.returncode == 2, f"rank {rank}: exit {result.returncode}\n{result.stderr[-3000:]}"
        lines = [line for line in result.stderr.splitlines() if line.startswith("yuyan pretrain: error:")]
        assert len(lines) == 1 and message in lines[0], f"rank {rank}:\n{result.stderr[-3000:]}"
        assert "Traceback" not in result.stderr, f"rank {rank}:\n{result.stderr[-3000:]}"
    assert ranks[0].stderr.splitlines()[-1] == ranks[1].stderr.splitlines()[-1]
    if case == "output holds another run":
        assert sorted(p.name for p in out.iterdir()) == ["config.json", "run.json"], "the other run was touched"


# ---------------------------------------------------------------------------------------------------------------
# FSDP on CPUs
# ---------------------------------------------------------------------------------------------------------------


def test_an_fsdp_launch_on_cpus_is_refused_with_the_reason(tmp_path, corpus):
    """Accelerate (1.x, state.py) makes a launch FSDP only when its processes use GPUs or other accelerators; with
    CPU processes (gloo) it sets up DDP and ignores the FSDP settings. Training on would silently hold a whole
    model per process; `yuyan pretrain` says so instead. torch's own `fully_shard` does run on CPU with gloo: if
    Accelerate learns it, this refusal disappears and this test must become a comparison with the DDP run."""
    out = tmp_path / "out"
    result = launch(ACCELERATE_CONFIGS / "fsdp.yaml",
                    ["-m", "yuyan.cli", "pretrain", *TINY, *data_flags(corpus), "--block-size", "16",
                     "--batch-size", "2", "--max-steps", "2", "--output", str(out)],
                    "--num_processes", "2", "--mixed_precision", "no", cwd=tmp_path)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("yuyan pretrain: error:")]
    assert errors, result.stderr[-3000:]
    assert all("an FSDP launch ended up as MULTI_CPU" in line and "cpu-2-processes.yaml" in line for line in errors)
    assert not out.exists()


# ---------------------------------------------------------------------------------------------------------------
# transformers' Trainer scripts, data-parallel on CPUs (docs/pretraining.md's recipe)
# ---------------------------------------------------------------------------------------------------------------

TRAINER_SCRIPT = textwrap.dedent('''
    """A Trainer script as transformers' examples are written (TrainingArguments from the command line)."""
    import json

    import torch
    from datasets import Dataset
    from transformers import HfArgumentParser, Trainer, TrainingArguments

    from yuyan import YuyanConfig, YuyanForCausalLM

    (args,) = HfArgumentParser(TrainingArguments).parse_args_into_dataclasses()
    torch.manual_seed(0)
    ids = torch.randint(0, 64, (32, 16)).tolist()
    model = YuyanForCausalLM(YuyanConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, layer_types=["lstm", "full_attention"],
        num_attention_heads=4, num_key_value_heads=2, intermediate_size=48, max_position_embeddings=32))
    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_dict({"input_ids": ids, "labels": ids}))
    result = trainer.train()
    # A file per process: lines printed by two processes into one pipe can interleave.
    with open(f"{args.output_dir}/result-{args.process_index}.json", "w") as file:
        json.dump({"rank": args.process_index, "world_size": args.world_size, "loss": result.training_loss}, file)
''')


def trainer_results(output_dir: Path) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted(output_dir.glob("result-*.json"))]


def test_trainer_scripts_run_data_parallel_on_cpus_with_use_cpu(tmp_path):
    script = tmp_path / "train_tiny.py"
    script.write_text(TRAINER_SCRIPT)
    # --logging_steps 1: the Trainer averages the loss across processes when it logs; the steps not logged yet
    # enter `training_loss` with the local process's loss only.
    def common(name: str) -> list[str]:
        return ["--output_dir", str(tmp_path / name), "--max_steps", "4", "--report_to", "none", "--save_strategy",
                "no", "--seed", "0", "--logging_steps", "1"]

    single = subprocess.run([sys.executable, str(script), *common("single"), "--per_device_train_batch_size", "8"],
                            env=environment(), cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT)
    assert single.returncode == 0, single.stderr[-3000:]
    (reference,) = trainer_results(tmp_path / "single")

    # Two processes, each told to use the CPU: one gloo group, half the batch each.
    ddp = launch(ACCELERATE_CONFIGS / "cpu-2-processes.yaml", [str(script), *common("ddp"), "--use_cpu",
                 "--per_device_train_batch_size", "4"], cwd=tmp_path)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    results = trainer_results(tmp_path / "ddp")
    assert sorted(r["rank"] for r in results) == [0, 1] and {r["world_size"] for r in results} == {2}
    # The same 8 sequences a step, averaged across the processes instead of inside one batch: float rounding only.
    for result in results:
        assert math.isclose(result["loss"], reference["loss"], rel_tol=1e-5), (result, reference)

    # `--cpu` on the launcher starts a single process, whatever --num_processes says.
    one = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2",
                          str(script), *common("one"), "--per_device_train_batch_size", "4"],
                         env=environment(), cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT)
    assert one.returncode == 0, one.stderr[-3000:]
    assert [(r["rank"], r["world_size"]) for r in trainer_results(tmp_path / "one")] == [(0, 1)]
