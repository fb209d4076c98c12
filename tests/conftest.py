"""Fixtures shared by several test files. Helpers that tests import live beside this file: `model_helpers` (tiny
models, one per stack) and `run_helpers` (a tiny corpus and training runs through the CLI)."""

from pathlib import Path

import pytest
import torch

from run_helpers import write_corpus


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on one torch thread: their small matmuls run far slower on two threads when another job holds
    the second core of a shared machine. Restores the thread count afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    """A made-up text corpus (train.txt, valid.txt) with its own tokenizer: see `run_helpers.write_corpus`."""
    return write_corpus(tmp_path_factory.mktemp("corpus"))
