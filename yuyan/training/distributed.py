"""Several processes, one job: work that one process does alone (or first) must not leave the others at a barrier
when it fails. These helpers replace `accelerator.wait_for_everyone()` after such work with a collective check:
every process says whether its part failed, and if one did, all of them raise that error.

Without them, a check that fails on the main process (`yuyan pretrain` finding another run in the output folder)
ends that process while the others wait at the next barrier: with NCCL until its timeout, with gloo until the
connection drops and they die in a torch traceback. With them, each process raises the same error and the command
prints the same one-line message and exit status on every rank.
"""

from __future__ import annotations

import builtins

from accelerate import Accelerator


def _failure(error: Exception | None) -> tuple[str, str] | None:
    return None if error is None else (type(error).__name__, str(error))


def raise_if_any_failed(accelerator: Accelerator, error: Exception | None) -> None:
    """A collective step (every process must call it): if any process passes an error, all of them raise. The
    failing process re-raises its own exception; the others raise one of the same built-in type with the same
    message (RuntimeError for other types), so a command prints the same line and exit status everywhere."""
    from accelerate.utils import gather_object

    failures = gather_object([_failure(error)]) if accelerator.num_processes > 1 else [_failure(error)]
    first = next(((rank, failure) for rank, failure in enumerate(failures) if failure is not None), None)
    if first is None:
        return
    if error is not None:
        raise error
    rank, (kind_name, message) = first
    kind = getattr(builtins, kind_name, None)
    if isinstance(kind, type) and issubclass(kind, Exception):
        raise kind(message)
    raise RuntimeError(f"process {rank} failed with {kind_name}: {message}")


def _attempt(function, *arguments):
    """(result, None) or (None, the exception): an error is held until every process has reached the check."""
    try:
        return function(*arguments), None
    except Exception as caught:
        return None, caught


def on_main_process(accelerator: Accelerator, function, *arguments):
    """`function(*arguments)` on the main process only; None elsewhere. Every process raises its error, if any."""
    result, error = _attempt(function, *arguments) if accelerator.is_main_process else (None, None)
    raise_if_any_failed(accelerator, error)
    return result


def on_every_process(accelerator: Accelerator, function, *arguments):
    """`function(*arguments)` on every process; an error on any process stops all of them."""
    result, error = _attempt(function, *arguments)
    raise_if_any_failed(accelerator, error)
    return result


def main_process_first(accelerator: Accelerator, function, *arguments):
    """`function(*arguments)` on the main process, then (when it succeeded) on the others, e.g. to fill a cache
    once; like `accelerator.main_process_first()`, except that an error on any process stops all of them."""
    result = on_main_process(accelerator, function, *arguments)
    error = None
    if not accelerator.is_main_process:
        result, error = _attempt(function, *arguments)
    raise_if_any_failed(accelerator, error)
    return result


__all__ = ["main_process_first", "on_every_process", "on_main_process", "raise_if_any_failed"]
