"""The one bridge from a dataclass to command-line flags: one flag per field, its help from `metadata["help"]`.

It returns a parser to pass as `parents=[...]` to `subparsers.add_parser` (argparse's public way to add a ready
set of arguments to a parser), in one of two styles:

- `unset=False`: transformers' `HfArgumentParser` itself (its public constructor): `--under_score` and
  `--dash-ed` forms, `metadata["aliases"]`, `choices` from Literal / Enum types, booleans as `--flag [BOOL]` with a
  `--no_flag` complement for those true by default, and the field defaults. `yuyan finetune` uses it, as the
  transformers examples do, so every `TrainingArguments` field is a flag with transformers' own spelling.
- `unset=True`: every flag defaults to None (a boolean is a plain switch), so that what the user did not type
  can be told apart from a default and filled from a config file (`yuyan pretrain --config`).
"""

from __future__ import annotations

import argparse
import dataclasses
import typing


def dataclass_flags(dataclass_type, *, title: str | None = None, skip=frozenset(), unset: bool = False):
    """A parent parser holding one flag per init field of `dataclass_type` (under the group `title`, if given)."""
    if not unset:
        from transformers import HfArgumentParser

        if skip:
            raise ValueError("skip applies to unset=True only: HfArgumentParser adds every field")
        # HfArgumentParser puts the fields of a dataclass with `_argument_group_name` under that titled group.
        source = type(dataclass_type.__name__, (dataclass_type,), {"_argument_group_name": title}) if title \
            else dataclass_type
        return HfArgumentParser(source, add_help=False)

    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group(title) if title else parent
    hints = typing.get_type_hints(dataclass_type)
    for item in dataclasses.fields(dataclass_type):
        if item.name in skip or not item.init:
            continue
        flag = "--" + item.name.replace("_", "-")
        hint = hints[item.name]
        help_text = item.metadata.get("help", "")
        if hint is bool:
            group.add_argument(flag, action="store_true", default=None, help=help_text)
        elif typing.get_origin(hint) is list:
            group.add_argument(flag, nargs="+", default=None, help=help_text)
        else:
            kinds = [t for t in typing.get_args(hint) if t is not type(None)] or [hint]
            group.add_argument(flag, type=kinds[0], default=None, help=help_text)
    return parent
