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

import json
import os
import re
import sys
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from yuyan.cards import card_repo_id, read_run_files, write_model_card
from yuyan.records import METRICS_FILE, RUN_FILE

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
    "*.tmp/*",              # .final-*.tmp/ staging folders, .step-N.tmp checkpoints
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
# Records of where a run happened (data files, the output and tokenizer folders, a local base model): uploaded
# with local paths reduced (see `public_text`); the folder's own files are left as they are. Matched by file name,
# in any subfolder (a merged LoRA run keeps its adapter in adapter/). Tokenizer vocabularies are not rewritten:
# a token may look like a path.
PUBLIC_RECORDS = frozenset({
    METRICS_FILE, RUN_FILE, "README.md", "config.json", "generation_config.json", "tokenizer_config.json",
    "adapter_config.json", "trainer_state.json",
})

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
        hint = "`yuyan card --model DIR` renders it" if (folder / METRICS_FILE).is_file() else "write one"
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
# What leaves the machine: no local paths
# ---------------------------------------------------------------------------------------------------------------

# An absolute local path inside text: /..., ~/... or C:\... (C:/...), not inside a word, a relative path or a
# URL (https://...), up to whitespace or punctuation that ends a path in prose, lists and Markdown.
_LOCAL_PATH = re.compile(r"(?<![\w.:/~\\-])(?:~?/|[A-Za-z]:[\\/])(?![/\\])[^\s,;'\"`()<>\[\]{}|]+")
_WHOLE_LOCAL_PATH = re.compile(r"(?:~?/|[A-Za-z]:[\\/])\S.*", re.DOTALL)


def public_path(path: str, folder: str | Path) -> str:
    """A local path as it may be published: relative to `folder` (the model folder) when inside it, otherwise
    its last component (the file or folder name)."""
    windows = re.match(r"[A-Za-z]:[\\/]", path) is not None
    if not windows:
        try:
            inside = Path(os.path.expanduser(path)).resolve().relative_to(Path(folder).resolve())
            return inside.as_posix()
        except (ValueError, OSError, RuntimeError):
            pass
    name = (PureWindowsPath(path) if windows else PurePosixPath(path)).name
    return name or "."


def public_text(text: str, folder: str | Path) -> str:
    """`text` with every absolute local path reduced by `public_path`. A string that is one whole path (it may
    hold spaces) is reduced as a whole, as is each item of a ", "-separated list of paths (how a run describes
    several data files)."""
    parts = text.split(", ")
    if all(_WHOLE_LOCAL_PATH.fullmatch(part) and "\n" not in part for part in parts):
        return ", ".join(public_path(part, folder) for part in parts)
    return _LOCAL_PATH.sub(lambda match: public_path(match.group(0), folder), text)


def _public_json(value: Any, folder: Path) -> Any:
    if isinstance(value, str):
        return public_text(value, folder)
    if isinstance(value, list):
        return [_public_json(item, folder) for item in value]
    if isinstance(value, dict):
        return {public_text(key, folder): _public_json(item, folder) for key, item in value.items()}
    return value


def public_file_bytes(folder: str | Path, name: str) -> bytes | None:
    """The bytes to upload for folder/name when they differ from the file's (a run record holding local paths);
    None when the file goes up as it is."""
    folder = Path(folder)
    if PurePosixPath(name).name not in PUBLIC_RECORDS:
        return None
    raw = (folder / name).read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if name.endswith(".json"):
        try:
            data = json.loads(text)
        except ValueError:
            public = public_text(text, folder)
        else:
            cleaned = _public_json(data, folder)
            if cleaned == data:
                return None
            public = json.dumps(cleaned, indent=2, ensure_ascii=False) + "\n"
    else:
        public = public_text(text, folder)
    return None if public == text else public.encode("utf-8")


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

    from huggingface_hub import CommitOperationAdd, CommitOperationDelete
    from huggingface_hub.utils import filter_repo_objects

    # One commit of explicit operations rather than `upload_folder`: the run records go up as rewritten bytes.
    names = files_to_upload(folder)
    additions = []
    for name in names:
        public = public_file_bytes(folder, name)
        additions.append(CommitOperationAdd(path_in_repo=name, path_or_fileobj=folder / name if public is None
                                            else public))
    api = HfApi(endpoint=endpoint or os.environ.get("HF_ENDPOINT") or None, token=token)
    branch = revision or constants.DEFAULT_REVISION
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if branch != constants.DEFAULT_REVISION:
            api.create_branch(repo_id, branch=branch, exist_ok=True, repo_type="model")
        remote = api.list_repo_files(repo_id, revision=branch, repo_type="model")
        stale = [name for name in filter_repo_objects(remote, allow_patterns=list(STALE_WEIGHT_PATTERNS))
                 if name not in set(names)]
        return api.create_commit(
            repo_id=repo_id,
            repo_type="model",
            revision=branch,
            operations=[*(CommitOperationDelete(path_in_repo=name) for name in stale), *additions],
            commit_message=commit_message or f"Upload Yuyan model {folder.resolve().name}",
        )
    except HfHubHTTPError as error:
        status = getattr(getattr(error, "response", None), "status_code", None)
        hint = " (log in with `hf auth login` or set HF_TOKEN)" if status in (401, 403) else ""
        raise ValueError(f"the Hub at {api.endpoint} refused the push to {repo_id}{hint}: {error}") from error


__all__ = [
    "EXCLUDED_PATTERNS",
    "check_model_folder",
    "files_to_upload",
    "missing_model_files",
    "public_file_bytes",
    "public_path",
    "public_text",
    "push_model",
    "update_card_for_repo",
    "validate_repo_id",
]

