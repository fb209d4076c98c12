"""`yuyan card` (re-render a model folder's card) and `yuyan push` (upload a folder to the Hub): `yuyan.hub`'s
command line."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from yuyan.cards import render_card_for_folder
from yuyan.hub import check_model_folder, files_to_upload, push_model, validate_repo_id


def _existing_card_repo_id(folder: Path) -> str | None:
    """The repository the folder's current card names in its loading examples, if any."""
    try:
        text = (folder / "README.md").read_text(encoding="utf-8")
    except OSError:
        return None
    match = re.search(r'from_pretrained\("([^"]+)"', text)
    return match.group(1) if match and match.group(1).count("/") == 1 else None


def build_card(subparsers, name: str, help: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        name, help=help,
        description="Re-render DIR/README.md from DIR/metrics.json, DIR/run.json and DIR/config.json.",
    )
    parser.add_argument("--model", required=True, metavar="DIR", help="the model folder")
    parser.add_argument("--repo-id", default=None, metavar="ORG/NAME",
                        help="the Hub repository named in the card's loading examples (default: the one the card "
                             "already names, else the folder's name)")
    parser.set_defaults(handler=run_card)
    return parser


def run_card(args) -> Path:
    folder = Path(args.model)
    if args.repo_id is not None:
        validate_repo_id(args.repo_id)
    repo_id = args.repo_id or _existing_card_repo_id(folder)
    path = render_card_for_folder(folder, repo_id=repo_id)
    print(f"wrote {path}")
    return path


def build_push(subparsers, name: str, help: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        name, help=help,
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
    parser.set_defaults(handler=run_push)
    return parser


def run_push(args):
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
