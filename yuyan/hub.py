"""Publishing Yuyan models: `yuyan card` (re-render a folder's model card) and `yuyan push` (upload a folder to
the Hugging Face Hub).

A folder written by `yuyan pretrain` / `yuyan finetune` is a complete Hub repository: weights (safetensors),
config.json with `auto_map`, the modeling code beside it (so it loads with `trust_remote_code=True` where `yuyan`
is not installed), the tokenizer, the card (README.md) and the run's metrics. `push_model` checks that before it
makes any network call, then uploads it with huggingface_hub, leaving out training state (checkpoints/, logs/,
temporary files):

```python
>>> from yuyan.hub import push_model
>>> info = push_model("runs/tiny", "my-org/tiny-yuyan", revision="v1")
>>> info.oid, info.commit_url
```

The endpoint and token are huggingface_hub's: `HF_ENDPOINT` (read when pushing) and `HF_TOKEN` or `hf auth login`.
`model.push_to_hub(...)` / `tokenizer.push_to_hub(...)` also work for a model loaded with `yuyan` imported, since
its `save_pretrained` writes `auto_map` and copies the code.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from yuyan.cards import card_repo_id, read_run_files, render_card_for_folder, write_model_card

# Never uploaded: training state, logs and temporary files. `fnmatch` patterns on paths relative to the folder
# (`*` also matches `/`).
EXCLUDED_PATTERNS = (
    "checkpoints/*",        # yuyan pretrain: accelerate states
    "checkpoint-*/*",       # transformers Trainer checkpoints
    "logs/*",               # tracker output
    "runs/*",               # Trainer's TensorBoard default
    "wandb/*",
    "*__pycache__/*",
    "*.pyc",
    "*.tmp",
    "*.tmp/*",              # .final.tmp/ staging folders, .step-N.tmp checkpoints
    "*.temp",
    "*.lock",
    "*.swp",
    "*~",
    "*.DS_Store",
    "*.ipynb_checkpoints/*",
    "optimizer.pt",
    "scheduler.pt",
    "rng_state*.pth",
    "training_args.bin",    # pickled Trainer arguments
)
# Weights on the Hub that the folder no longer has (a re-sharded model) are deleted by the same commit.
STALE_WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json")

_SHA = re.compile(r"^[0-9a-f]{40}$")


# ---------------------------------------------------------------------------------------------------------------
# Is the folder a complete model?
# ---------------------------------------------------------------------------------------------------------------


def _auto_map_modules(auto_map: dict[str, Any]) -> list[str]:
    """The code files that `auto_map` names: {"AutoConfig": "configuration_yuyan.YuyanConfig"} -> [...py]."""
    files = []
    for value in auto_map.values():
        for reference in value if isinstance(value, (list, tuple)) else [value]:
            if not isinstance(reference, str) or "." not in reference:
                continue
            reference = reference.split("--", 1)[-1]  # "repo--module.Class" points at another repository
            files.append(reference.rsplit(".", 1)[0].replace(".", "/") + ".py")
    return list(dict.fromkeys(files))


def missing_model_files(folder: str | Path) -> list[str]:
    """Everything a Yuyan model folder lacks to be a complete Hub repository (empty when complete): config.json
    with model_type yuyan and auto_map, safetensors weights, the configuration and modeling code, the tokenizer
    files and the model card."""
    folder = Path(folder)
    missing: list[str] = []
    config = None
    config_path = folder / "config.json"
    if not config_path.is_file():
        missing.append("config.json (the model configuration: save the model with save_pretrained)")
    else:
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except ValueError as error:
            missing.append(f"a readable config.json ({error})")
        if config is not None and not isinstance(config, dict):
            missing.append("a readable config.json (it is not a JSON object)")
            config = None
    code_files = ["configuration_yuyan.py", "modeling_yuyan.py"]
    if config is not None:
        if config.get("model_type") != "yuyan":
            missing.append(f"model_type 'yuyan' in config.json (it has {config.get('model_type')!r})")
        auto_map = config.get("auto_map")
        if not isinstance(auto_map, dict) or not auto_map:
            missing.append("auto_map in config.json (save the model after `import yuyan`, which makes "
                           "save_pretrained write it and copy the code)")
        else:
            if "AutoConfig" not in auto_map:
                missing.append("an AutoConfig entry in config.json's auto_map")
            if not any(key.startswith("AutoModel") for key in auto_map):
                missing.append("an AutoModel... entry in config.json's auto_map")
            code_files += _auto_map_modules(auto_map)
    for name in dict.fromkeys(code_files):
        if not (folder / name).is_file():
            missing.append(f"{name} (model code, for trust_remote_code=True)")

    weights = sorted(folder.glob("*.safetensors"))
    index_path = folder / "model.safetensors.index.json"
    if index_path.is_file():
        try:
            shards = set(json.loads(index_path.read_text(encoding="utf-8"))["weight_map"].values())
        except (ValueError, KeyError, AttributeError) as error:
            missing.append(f"a readable model.safetensors.index.json ({error!r})")
            shards = set()
        missing += [f"{shard} (a weight shard listed in model.safetensors.index.json)"
                    for shard in sorted(shards) if not (folder / shard).is_file()]
    elif not weights:
        found = [p.name for p in folder.glob("*.bin")] + [p.name for p in folder.glob("*.pt")]
        missing.append("model weights (*.safetensors)" + (f"; found only {', '.join(found)}" if found else ""))

    if not (folder / "tokenizer.json").is_file() and not (
        (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    ):
        missing.append("tokenizer.json (the tokenizer: tokenizer.save_pretrained into the folder)")
    if not (folder / "tokenizer_config.json").is_file():
        missing.append("tokenizer_config.json")
    if not (folder / "README.md").is_file():
        hint = "`yuyan card --model DIR` renders it" if (folder / "metrics.json").is_file() else "write one"
        missing.append(f"README.md (the model card: {hint})")
    return missing


def check_model_folder(folder: str | Path) -> Path:
    """The folder, when it is a complete Yuyan model; otherwise FileNotFoundError / ValueError listing what is
    missing."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    missing = missing_model_files(folder)
    if missing:
        raise ValueError(
            f"{folder} is not a complete Yuyan model folder, so nothing was uploaded. It lacks:\n"
            + "\n".join(f"  - {item}" for item in missing)
        )
    return folder


def files_to_upload(folder: str | Path) -> list[str]:
    """The folder's files that `push_model` uploads (paths relative to the folder)."""
    from huggingface_hub.utils import filter_repo_objects
    from huggingface_hub.utils._paths import DEFAULT_IGNORE_PATTERNS

    folder = Path(folder).resolve()
    paths = sorted(p.relative_to(folder).as_posix() for p in folder.glob("**/*") if p.is_file())
    return list(filter_repo_objects(paths, ignore_patterns=[*EXCLUDED_PATTERNS, *DEFAULT_IGNORE_PATTERNS]))


# ---------------------------------------------------------------------------------------------------------------
# Pushing
# ---------------------------------------------------------------------------------------------------------------


def validate_repo_id(repo_id: str) -> str:
    """`org/name`, as the Hub spells repository ids; ValueError otherwise."""
    from huggingface_hub.utils import HFValidationError
    from huggingface_hub.utils import validate_repo_id as hub_validate

    if not isinstance(repo_id, str) or repo_id.count("/") != 1:
        raise ValueError(f"--repo-id should be ORG/NAME (a user or organisation, then the model name), not {repo_id!r}")
    try:
        hub_validate(repo_id)
    except HFValidationError as error:
        raise ValueError(f"--repo-id {repo_id!r} is not a valid repository id: {error}") from None
    return repo_id


def update_card_for_repo(folder: str | Path, repo_id: str) -> bool:
    """Re-render folder/README.md for `repo_id` (its loading examples name the repository), when the card is one
    Yuyan rendered from the folder's files and not edited since. True when it was rewritten."""
    previous = card_repo_id(folder)
    if previous is None or previous == repo_id:
        return False
    metrics, run = read_run_files(folder)
    write_model_card(folder, metrics=metrics, run=run, repo_id=repo_id)
    return True


def push_model(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    token: str | None = None,
    endpoint: str | None = None,
    update_card: bool = True,
):
    """Upload a complete Yuyan model folder to the Hub repository `repo_id` (created when new, on the branch
    `revision`, created from main when new). Returns huggingface_hub's `CommitInfo` (`oid`, `commit_url`).

    The folder is checked first, with no network call: an incomplete one raises ValueError listing what it lacks.
    """
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError

    folder = Path(folder)
    validate_repo_id(repo_id)
    if revision is not None and (not revision.strip() or _SHA.match(revision)):
        raise ValueError(f"--revision should be a branch name, not {revision!r}")
    check_model_folder(folder)
    if update_card and update_card_for_repo(folder, repo_id):
        print(f"README.md re-rendered for {repo_id}", file=sys.stderr)
    if constants.is_offline_mode():
        raise ValueError("HF_HUB_OFFLINE is set: pushing needs the network (unset HF_HUB_OFFLINE)")

    api = HfApi(endpoint=endpoint or os.environ.get("HF_ENDPOINT") or None, token=token)
    branch = revision or constants.DEFAULT_REVISION
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if branch != constants.DEFAULT_REVISION:
            api.create_branch(repo_id, branch=branch, exist_ok=True, repo_type="model")
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            repo_type="model",
            revision=branch,
            commit_message=commit_message or f"Upload Yuyan model {folder.resolve().name}",
            ignore_patterns=list(EXCLUDED_PATTERNS),
            delete_patterns=list(STALE_WEIGHT_PATTERNS),
        )
    except HfHubHTTPError as error:
        status = getattr(getattr(error, "response", None), "status_code", None)
        hint = " (log in with `hf auth login` or set HF_TOKEN)" if status in (401, 403) else ""
        raise ValueError(f"the Hub at {api.endpoint} refused the push to {repo_id}{hint}: {error}") from error


# ---------------------------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------------------------


def _existing_card_repo_id(folder: Path) -> str | None:
    """The repository the folder's current card names in its loading examples, if any."""
    try:
        text = (folder / "README.md").read_text(encoding="utf-8")
    except OSError:
        return None
    match = re.search(r'from_pretrained\("([^"]+)"', text)
    return match.group(1) if match and match.group(1).count("/") == 1 else None


def add_card_command(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "card", help="re-render a model folder's card (README.md) from its metrics.json and run.json",
        description="Re-render DIR/README.md from DIR/metrics.json, DIR/run.json and DIR/config.json.",
    )
    parser.add_argument("--model", required=True, metavar="DIR", help="the model folder")
    parser.add_argument("--repo-id", default=None, metavar="ORG/NAME",
                        help="the Hub repository named in the card's loading examples (default: the one the card "
                             "already names, else the folder's name)")
    parser.set_defaults(handler=run_card_command)
    return parser


def run_card_command(args) -> Path:
    folder = Path(args.model)
    if args.repo_id is not None:
        validate_repo_id(args.repo_id)
    repo_id = args.repo_id or _existing_card_repo_id(folder)
    path = render_card_for_folder(folder, repo_id=repo_id)
    print(f"wrote {path}")
    return path


def add_push_command(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "push", help="upload a model folder to the Hugging Face Hub",
        description="Upload a complete Yuyan model folder (weights, config with auto_map, modeling code, tokenizer, "
                    "card, metrics) to a Hub model repository, without checkpoints/, logs/ or temporary files. "
                    "The endpoint and token are huggingface_hub's (HF_ENDPOINT, HF_TOKEN / `hf auth login`).",
    )
    parser.add_argument("--model", required=True, metavar="DIR", help="the model folder")
    parser.add_argument("--repo-id", required=True, metavar="ORG/NAME", help="the Hub repository (created if new)")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--revision", default=None, metavar="BRANCH",
                        help="the branch to push to (created from main if new; default main)")
    parser.add_argument("--commit-message", default=None, help="the commit message")
    parser.set_defaults(handler=run_push_command)
    return parser


def run_push_command(args):
    folder = Path(args.model)
    validate_repo_id(args.repo_id)
    check_model_folder(folder)
    print(f"uploading {len(files_to_upload(folder))} files from {folder} to {args.repo_id}", file=sys.stderr)
    info = push_model(folder, args.repo_id, private=args.private, revision=args.revision,
                      commit_message=args.commit_message)
    print(f"pushed {folder} to {args.repo_id} ({args.revision or 'main'})")
    print(f"commit {info.oid}")
    print(info.commit_url)
    return info



__all__ = [
    "EXCLUDED_PATTERNS",
    "add_card_command",
    "add_push_command",
    "check_model_folder",
    "files_to_upload",
    "missing_model_files",
    "push_model",
    "update_card_for_repo",
    "validate_repo_id",
]

