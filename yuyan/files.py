"""Writes that other processes and later runs rely on, made atomic: whoever reads a file or a folder Yuyan wrote
(a resumed run, `yuyan card`, a Hub upload, another process of the same run) sees the old version or the new one,
never half of one, even if the writer is killed in between.

- `write_text_atomic` / `write_json_atomic`: one file, written beside its place and renamed over it.
- `replacing_file`: the same for a file written by other code (a GGUF writer): a temporary path beside the
  destination, renamed over it when the block ends, removed when the block fails.
- `staging_dir`: a fresh folder beside (or inside) the destination, on the same file system so that the renames
  that publish it are atomic; removed again when the block that fills it fails.
- `move_into`: publish a staged folder's entries into an existing folder, one rename each, chosen names last
  (a file whose presence means "finished", such as metrics.json).
- `publish_folder`: publish a staged folder as a whole, replacing what was there (the old folder is removed only
  after the new one is in place).
- `check_output_folder`: refuse, before any work, to write into a file or into a folder that already holds
  something, unless the caller was told it may; `check_output_file`, the same for a single output file.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def check_output_folder(output: str | os.PathLike, may_write: bool, how_to_allow: str) -> None:
    """ValueError when `output` is a file, or a non-empty folder and `may_write` is false; `how_to_allow` ends the
    message (the flag or argument that permits writing there)."""
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise ValueError(f"the output {output} is not a directory: it is a file")
    if output.is_dir() and any(output.iterdir()) and not may_write:
        raise ValueError(f"the output folder {output} is not empty; {how_to_allow}")


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)
    return path


def write_json_atomic(path: str | os.PathLike, data: Any) -> Path:
    """Indented JSON; values JSON cannot hold (paths, dtypes) are written as their `str`."""
    return write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


@contextlib.contextmanager
def replacing_file(path: str | os.PathLike) -> Iterator[Path]:
    """A new, empty temporary file `.NAME.XXXX.tmp` beside `path` for the block to write; when the block ends it is
    renamed to `path` (replacing a file there), and when the block raises it is removed and `path` left as it was.
    The caller decides beforehand whether `path` may be replaced (`check_output_file`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    temporary = Path(name)
    # mkstemp creates the file with mode 0o600; the published file gets the permissions any other would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def check_output_file(output: str | os.PathLike, may_replace: bool, how_to_allow: str) -> None:
    """ValueError when `output` is a folder, or an existing file and `may_replace` is false; `how_to_allow` ends
    the message (the flag or argument that permits replacing it)."""
    output = Path(output)
    if output.is_dir():
        raise ValueError(f"the output {output} is a folder: give the path of the file to write")
    if output.exists() and not may_replace:
        raise ValueError(f"the output file {output} exists; {how_to_allow}")


@contextlib.contextmanager
def staging_dir(parent: str | os.PathLike, prefix: str) -> Iterator[Path]:
    """A new empty folder `parent/<prefix>XXXX.tmp` (a hidden name when `prefix` starts with a dot); removed with
    its contents if the block raises, and also after it if the block left it behind."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=parent))
    # mkdtemp creates the folder with mode 0o700; a published folder gets the permissions any other would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def move_into(staging: Path, output: Path, last: tuple[str, ...] = ()) -> list[str]:
    """Move every entry of `staging` into the folder `output` (replacing same-named ones), the names in `last`
    at the end; returns the names moved."""
    output.mkdir(parents=True, exist_ok=True)
    entries = sorted(staging.iterdir(), key=lambda entry: entry.name in last)
    for entry in entries:
        target = output / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(entry, target)
    return [entry.name for entry in entries]


def publish_folder(staging: Path, target: Path) -> None:
    """Rename `staging` to `target`. An existing `target` is first renamed aside and removed only once the new
    folder is in place, so a kill never leaves a half-written folder and never loses the old one: it is under
    the name, or (killed between the two renames) beside it as `.NAME.old-*`, until the new one is."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{staging.name}")
        target.rename(old)
    staging.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


__all__ = [
    "check_output_file",
    "check_output_folder",
    "move_into",
    "publish_folder",
    "replacing_file",
    "staging_dir",
    "write_json_atomic",
    "write_text_atomic",
]
