"""yuyan.files: the atomic and staged writes that run folders, checkpoints, tokenizers and exports rely on."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from yuyan.files import (
    check_output_file,
    move_into,
    publish_folder,
    replacing_file,
    staging_dir,
    write_json_atomic,
    write_text_atomic,
)


def test_json_is_written_whole_with_its_text_as_it_is(tmp_path):
    path = write_json_atomic(tmp_path / "metrics.json", {"language": "中文", "path": Path("/data/x"), "n": [1, 2]})
    text = path.read_text(encoding="utf-8")
    assert json.loads(text) == {"language": "中文", "path": "/data/x", "n": [1, 2]}
    assert "中文" in text and text.endswith("\n")
    write_text_atomic(path, "replaced")
    assert path.read_text() == "replaced" and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_a_failed_staging_leaves_nothing_and_the_destination_untouched(tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    (output / "keep.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with staging_dir(tmp_path, prefix=".out.") as staging:
            (staging / "keep.txt").write_text("new")
            raise RuntimeError("killed half-way")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert (output / "keep.txt").read_text() == "old"


def test_staged_entries_move_in_with_the_finishing_file_last(tmp_path):
    output = tmp_path / "out"
    (output / "sub").mkdir(parents=True)
    (output / "sub" / "stale.txt").write_text("stale")
    (output / "other.txt").write_text("left alone")
    with staging_dir(output, prefix=".final-") as staging:
        for name in ("metrics.json", "a.txt", "z.txt"):
            (staging / name).write_text(name)
        (staging / "sub").mkdir()
        (staging / "sub" / "fresh.txt").write_text("fresh")
        moved = move_into(staging, output, last=("metrics.json",))
    assert moved[-1] == "metrics.json" and sorted(moved) == ["a.txt", "metrics.json", "sub", "z.txt"]
    assert sorted(p.name for p in output.iterdir()) == ["a.txt", "metrics.json", "other.txt", "sub", "z.txt"]
    assert [p.name for p in (output / "sub").iterdir()] == ["fresh.txt"], "a replaced folder is replaced whole"


def test_a_published_folder_replaces_the_old_one_whole(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.bin").write_text("old")
    with staging_dir(tmp_path, prefix=".model.") as staging:
        (staging / "new.bin").write_text("new")
        publish_folder(staging, target)
    assert [p.name for p in target.iterdir()] == ["new.bin"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"], "the old folder and the staging folder are gone"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o777 & ~umask, "the usual permissions, not mkdtemp's 0o700"


def test_a_replaced_file_appears_whole_and_a_failed_write_leaves_the_old_one(tmp_path):
    target = tmp_path / "model.gguf"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with replacing_file(target) as temporary:
            assert temporary.parent == tmp_path and temporary.name.startswith(".model.gguf.")
            temporary.write_bytes(b"half")
            raise RuntimeError("killed half-way")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["model.gguf"]
    with replacing_file(target) as temporary:
        temporary.write_bytes(b"new")
        assert target.read_bytes() == b"old"  # nothing changes until the block ends
    assert target.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["model.gguf"]
    # The file gets the permissions of any file created here, not mkstemp's owner-only mode.
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask


def test_an_output_file_is_replaced_only_when_allowed(tmp_path):
    check_output_file(tmp_path / "new.gguf", False, "pass --overwrite")
    (tmp_path / "old.gguf").write_bytes(b"x")
    check_output_file(tmp_path / "old.gguf", True, "pass --overwrite")
    with pytest.raises(ValueError, match="old.gguf exists; pass --overwrite"):
        check_output_file(tmp_path / "old.gguf", False, "pass --overwrite")
    with pytest.raises(ValueError, match="is a folder: give the path of the file to write"):
        check_output_file(tmp_path, True, "pass --overwrite")
