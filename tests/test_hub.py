"""Publishing (`yuyan.hub`): `yuyan push` through a Hub protocol server on loopback (../shared/tools/hub_server.py),
download and load in a process where `yuyan` cannot be imported with identical logits, a pinned revision,
`model.push_to_hub` / `tokenizer.push_to_hub`, and the refusal of an incomplete folder before any upload."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer

import yuyan  # noqa: F401
from yuyan import YuyanForCausalLM
from yuyan.cli import build_parser
from yuyan.hub import EXCLUDED_PATTERNS, files_to_upload, missing_model_files, public_file_bytes, public_text

from run_helpers import build_model_folder, pretrain_tiny, train_tiny_tokenizer

HUB_SERVER = Path(__file__).resolve().parents[1].parent / "shared" / "tools" / "hub_server.py"
TEXT = "the cat sat on the mat near the old stone bridge"
REPO = "yuyan-test/tiny-hybrid"

# Run in the subprocess: `yuyan` cannot be imported, so only the code saved in the repository can build the model.
LOADER = r'''
import importlib.abc, json, sys

class BlockYuyan(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "yuyan" or name.startswith("yuyan."):
            raise ImportError(f"yuyan is blocked in this process ({name})")
        return None

sys.meta_path.insert(0, BlockYuyan())
try:
    import yuyan
    raise SystemExit("yuyan was importable")
except ImportError:
    pass

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

torch.set_num_threads(1)
for item in json.loads(sys.argv[1]):
    revision = item.get("revision")
    plain_error = None
    try:
        tokenizer = AutoTokenizer.from_pretrained(item["repo"], revision=revision)
    except Exception as error:  # the config of an LSTM stack fails transformers' generic config validation
        plain_error = f"{type(error).__name__}: {error}"[:500]
        tokenizer = AutoTokenizer.from_pretrained(item["repo"], revision=revision, trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(item["repo"], revision=revision, trust_remote_code=True).eval()
    ids = tokenizer(item["text"], return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    torch.save({"ids": ids, "logits": logits, "module": type(model).__module__, "class": type(model).__name__,
                "plain_tokenizer_error": plain_error}, item["out"])
assert not any(name == "yuyan" or name.startswith("yuyan.") for name in sys.modules)
'''


class HubServer:
    def __init__(self, url: str, data_dir: Path, process: subprocess.Popen):
        self.url, self.data_dir, self.process = url, data_dir, process

    def get(self, route: str):
        with urllib.request.urlopen(self.url + route, timeout=30) as response:
            return json.load(response)

    def files(self, repo_id: str, revision: str = "main") -> dict[str, int]:
        info = self.get(f"/api/models/{repo_id}/revision/{revision}")
        return {sibling["rfilename"]: sibling["size"] for sibling in info["siblings"]}

    def branches(self, repo_id: str) -> dict[str, str]:
        return {b["name"]: b["targetCommit"] for b in self.get(f"/api/models/{repo_id}/refs")["branches"]}

    def repo_exists(self, repo_id: str) -> bool:
        try:
            self.get(f"/api/models/{repo_id}")
        except urllib.error.HTTPError as error:
            assert error.code == 404
            return False
        return True

    def state(self) -> list[tuple[str, float]]:
        """Every stored repository and blob, with its modification time: any write shows up."""
        return sorted((str(p.relative_to(self.data_dir)), p.stat().st_mtime) for p in self.data_dir.rglob("*"))


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    if not HUB_SERVER.is_file():
        pytest.skip(f"{HUB_SERVER} is absent")
    data_dir = tmp_path_factory.mktemp("hub-data")
    log = open(data_dir.parent / "hub-server.log", "w")
    process = subprocess.Popen(
        [sys.executable, str(HUB_SERVER), "--host", "127.0.0.1", "--port", "0", "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE, stderr=log, text=True,
    )
    try:
        ready, _, _ = select.select([process.stdout], [], [], 60)
        line = process.stdout.readline() if ready else ""
        match = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        assert match, f"the hub server did not start: {line!r}"
        yield HubServer(f"http://127.0.0.1:{match.group(1)}", data_dir, process)
    finally:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
        process.stdout.close()
        log.close()


def client_env(hub: HubServer, home: Path) -> dict[str, str]:
    return dict(
        os.environ, HF_ENDPOINT=hub.url, HF_HOME=str(home), HF_TOKEN="yuyan-test-token", HF_HUB_OFFLINE="0",
        TRANSFORMERS_OFFLINE="0", HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1",
        OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
    )


@contextlib.contextmanager
def online(hub: HubServer, home: Path):
    """This process's huggingface_hub pointed at the loopback server (it read HF_HUB_OFFLINE at import)."""
    from huggingface_hub import constants

    with pytest.MonkeyPatch.context() as patch:
        for key, value in client_env(hub, home).items():
            if key.startswith(("HF_", "TRANSFORMERS_")):
                patch.setenv(key, value)
        patch.setattr(constants, "HF_HUB_OFFLINE", False)
        yield


def push_parser() -> argparse.ArgumentParser:
    return build_parser({"push"})


def push(*argv: str) -> tuple[object, str]:
    args = push_parser().parse_args(["push", *argv])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        info = args.handler(args)
    return info, out.getvalue()


def load_without_yuyan(hub: HubServer, home: Path, items: list[dict], cwd: Path) -> list[dict]:
    result = subprocess.run([sys.executable, "-c", LOADER, json.dumps(items)], env=client_env(hub, home), cwd=cwd,
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return [torch.load(item["out"]) for item in items]


def local_logits(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = YuyanForCausalLM.from_pretrained(folder).eval()
    ids = tokenizer(TEXT, return_tensors="pt").input_ids
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            return ids, model(ids).logits
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """A real `yuyan pretrain` output, with training state beside the model that must not be uploaded."""
    out = pretrain_tiny(tmp_path_factory.mktemp("pretrain"), save_steps=1)
    assert (out / "checkpoints").is_dir()
    (out / "logs").mkdir()
    (out / "logs" / "events.out.tfevents.1").write_text("x")
    (out / ".metrics.json.tmp").write_text("{}")
    (out / "notes.txt~").write_text("backup")
    return out


@pytest.fixture(scope="module")
def round_trip(hub, pretrained, tmp_path_factory):
    """Push, load without yuyan; change a weight, push again, push a new branch; load the first by its commit."""
    root = tmp_path_factory.mktemp("round-trip")
    home = root / "hf-home"
    folder = root / "model"
    shutil.copytree(pretrained, folder)
    results = {"folder": folder}

    with online(hub, home):
        info1, printed1 = push("--model", str(folder), "--repo-id", REPO, "--commit-message", "first version")
    results.update(sha1=info1.oid, printed1=printed1, files1=hub.files(REPO), card1=(folder / "README.md").read_text())
    results["local1"] = local_logits(folder)
    results["loaded1"] = load_without_yuyan(
        hub, home, [{"repo": REPO, "text": TEXT, "out": str(root / "v1-main.pt")}], cwd=root)[0]

    weights = load_file(folder / "model.safetensors")
    name = next(key for key in weights if key.endswith("norm.weight"))
    weights[name] = weights[name] + 0.25
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    results["local2"] = local_logits(folder)
    with online(hub, home):
        info2, _ = push("--model", str(folder), "--repo-id", REPO)
        info3, printed3 = push("--model", str(folder), "--repo-id", REPO, "--revision", "experiment")
    results.update(sha2=info2.oid, sha3=info3.oid, printed3=printed3, branches=hub.branches(REPO))
    pinned, main = load_without_yuyan(hub, home, [
        {"repo": REPO, "revision": info1.oid, "text": TEXT, "out": str(root / "v1-pinned.pt")},
        {"repo": REPO, "text": TEXT, "out": str(root / "v2-main.pt")},
    ], cwd=root)
    results.update(pinned=pinned, loaded2=main)
    return results


@pytest.mark.slow
def test_push_uploads_a_complete_repository_without_training_state(hub, round_trip):
    files = round_trip["files1"]
    for name in ("config.json", "model.safetensors", "configuration_yuyan.py", "modeling_yuyan.py", "tokenizer.json",
                 "tokenizer_config.json", "README.md", "metrics.json", "run.json", "generation_config.json"):
        assert name in files, name
    assert not [f for f in files if f.startswith(("checkpoints/", "logs/")) or f.endswith(("~", ".tmp"))], files
    assert re.search(rf"commit {round_trip['sha1']}\n{re.escape(hub.url)}/{REPO}/commit/{round_trip['sha1']}",
                     round_trip["printed1"]), round_trip["printed1"]
    # The card was rendered from the folder's own files; for the push it names the repository it is in.
    card = ModelCard(round_trip["card1"])
    assert f'AutoModelForCausalLM.from_pretrained("{REPO}", trust_remote_code=True)' in card.text
    assert card.data.to_dict()["model-index"][0]["name"] == "tiny-hybrid"
    metrics = json.loads((round_trip["folder"] / "metrics.json").read_text())
    assert card.data.eval_results[1].metric_value == metrics["validation_perplexity"]


@pytest.mark.slow
def test_download_in_a_process_without_yuyan_gives_identical_logits(round_trip):
    ids, logits = round_trip["local1"]
    loaded = round_trip["loaded1"]
    assert loaded["module"].startswith("transformers_modules.") and loaded["class"] == "YuyanForCausalLM"
    assert torch.equal(loaded["ids"], ids)
    assert torch.equal(loaded["logits"], logits)


@pytest.mark.slow
def test_a_second_push_and_a_pinned_first_revision(round_trip):
    (_, old), (_, new) = round_trip["local1"], round_trip["local2"]
    assert not torch.equal(old, new)
    assert len({round_trip["sha1"], round_trip["sha2"]}) == 2
    assert torch.equal(round_trip["pinned"]["logits"], old), "revision=<first commit> did not load the first weights"
    assert torch.equal(round_trip["loaded2"]["logits"], new)


@pytest.mark.slow
def test_push_to_a_new_branch_creates_it_and_leaves_main(round_trip):
    branches = round_trip["branches"]
    assert branches["main"] == round_trip["sha2"] and branches["experiment"] == round_trip["sha3"]
    assert "(experiment)" in round_trip["printed3"]


@pytest.mark.slow
def test_no_local_path_reaches_the_hub(hub, round_trip, tmp_path_factory):
    """metrics.json and run.json record the data files, the tokenizer and output folders: every file the server
    holds, at every pushed revision, must be free of this machine's paths, while the local records keep them."""
    folder = round_trip["folder"]
    local_run = json.loads((folder / "run.json").read_text())
    data_file = local_run["training"]["data"][0]
    assert os.path.isabs(data_file) and os.path.isabs(local_run["training"]["output"]), "the local record changed"
    assert local_run["training"]["tokenizer"] and os.path.isabs(local_run["training"]["tokenizer"])
    private = {str(tmp_path_factory.getbasetemp().resolve()), str(tmp_path_factory.getbasetemp()),
               str(Path.home()), str(Path(__file__).resolve().parents[1]), str(Path(data_file).parent)}
    scanned = 0
    for revision in ("main", "experiment", round_trip["sha1"]):
        for name in hub.files(REPO, revision):
            with urllib.request.urlopen(f"{hub.url}/{REPO}/resolve/{revision}/{name}", timeout=30) as response:
                data = response.read()
            scanned += 1
            for path in private:
                assert path.encode() not in data, f"{name}@{revision} holds the local path {path}"
    assert scanned >= 3 * 10
    with urllib.request.urlopen(f"{hub.url}/{REPO}/resolve/main/run.json", timeout=30) as response:
        public_run = json.load(response)
    with urllib.request.urlopen(f"{hub.url}/{REPO}/resolve/main/metrics.json", timeout=30) as response:
        public_metrics = json.load(response)
    # Reduced to file names, or relative to the model folder; everything else as recorded.
    assert public_run["training"]["data"] == [Path(data_file).name]
    # (the folder pushed is a copy of the run's output folder, so that one is outside it: its name)
    assert public_run["training"]["output"] == Path(local_run["training"]["output"]).name == "run"
    assert public_run["data"]["tokenizer"] == Path(local_run["data"]["tokenizer"]).name
    assert public_run["model"] == local_run["model"]
    assert public_metrics["train_data"] == Path(data_file).name
    assert public_metrics["loss_history"] == json.loads((folder / "metrics.json").read_text())["loss_history"]
    # The card is rendered without local paths in the first place, not only cleaned on the way out.
    card = (folder / "README.md").read_text()
    assert not [path for path in private if path in card]


def test_local_paths_in_text_are_reduced(tmp_path):
    folder = tmp_path / "model"
    assert public_text("/home/ana/corpus/train.txt, /home/ana/corpus/more.txt", folder) == "train.txt, more.txt"
    assert public_text(str(folder / "checkpoints" / "step-2"), folder) == "checkpoints/step-2"
    assert public_text(str(folder), folder) == "."
    assert public_text("/home/Ana Lima/my data/train.jsonl", folder) == "train.jsonl"
    assert public_text(r"C:\Users\ana\data\valid.csv", folder) == "valid.csv"
    assert public_text("/data/wiki [train]", folder) == "wiki [train]"
    prose = "Trained on [this file](/srv/ana/x.txt) (see https://huggingface.co/docs/hub and ~/notes/a.md); 3 tok/s"
    assert public_text(prose, folder) == (
        "Trained on [this file](x.txt) (see https://huggingface.co/docs/hub and a.md); 3 tok/s")
    for unchanged in ("every 50th document of the training data", "N/A", "a / b", "org/name", "./runs/x"):
        assert public_text(unchanged, folder) == unchanged


def test_only_run_records_are_rewritten(tmp_path):
    folder = tmp_path / "model"
    (folder / "adapter").mkdir(parents=True)
    base = str(tmp_path / "bases" / "tiny-base")
    (folder / "adapter" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": base, "r": 4}))
    (folder / "metrics.json").write_text(json.dumps({"dataset": "/srv/ana/train.jsonl", "steps": 3}))
    (folder / "config.json").write_text(json.dumps({"model_type": "yuyan", "hidden_size": 32}))
    vocabulary = json.dumps({"model": {"vocab": {"/usr": 0, "/": 1}, "merges": [["/", "usr"]]}})
    (folder / "tokenizer.json").write_text(vocabulary)
    adapter = json.loads(public_file_bytes(folder, "adapter/adapter_config.json"))
    assert adapter == {"base_model_name_or_path": "tiny-base", "r": 4}
    assert json.loads(public_file_bytes(folder, "metrics.json")) == {"dataset": "train.jsonl", "steps": 3}
    assert public_file_bytes(folder, "config.json") is None, "a record without paths is uploaded as it is"
    assert public_file_bytes(folder, "tokenizer.json") is None, "tokens that look like paths are vocabulary"
    assert json.loads((folder / "metrics.json").read_text())["dataset"] == "/srv/ana/train.jsonl"


@pytest.mark.slow
def test_autotokenizer_without_trust_remote_code(round_trip):
    # config.json keeps "lstm" out of transformers' reserved `layer_types` (Yuyan's field is `mixer_types`), so the
    # generic config AutoTokenizer falls back to accepts an LSTM stack.
    assert round_trip["loaded1"]["plain_tokenizer_error"] is None, round_trip["loaded1"]["plain_tokenizer_error"]


@pytest.mark.slow
def test_model_and_tokenizer_push_to_hub(hub, tmp_path):
    folder = tmp_path / "model"
    train_tiny_tokenizer(tmp_path / "tokenizer")
    build_model_folder(folder, tmp_path / "tokenizer", seed=3)
    repo = "yuyan-test/pushed-with-mixin"
    script = textwrap.dedent(f"""
        import yuyan
        from transformers import AutoModelForCausalLM, AutoTokenizer
        AutoModelForCausalLM.from_pretrained({str(folder)!r}).push_to_hub({repo!r}, commit_message="model")
        AutoTokenizer.from_pretrained({str(folder)!r}).push_to_hub({repo!r}, commit_message="tokenizer")
    """)
    result = subprocess.run([sys.executable, "-c", script], env=client_env(hub, tmp_path / "home"), cwd=tmp_path,
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    files = hub.files(repo)
    assert {"config.json", "model.safetensors", "modeling_yuyan.py", "configuration_yuyan.py",
            "tokenizer.json"} <= set(files)
    ids, logits = local_logits(folder)
    loaded = load_without_yuyan(hub, tmp_path / "home",
                                [{"repo": repo, "text": TEXT, "out": str(tmp_path / "out.pt")}], cwd=tmp_path)[0]
    assert torch.equal(loaded["ids"], ids) and torch.equal(loaded["logits"], logits)


# ---------------------------------------------------------------------------------------------------------------
# Refusals, before any network call
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_an_incomplete_folder_is_refused_before_any_upload(hub, tmp_path):
    folder = tmp_path / "not-a-model"
    train_tiny_tokenizer(folder)  # tokenizer files only: no config, no weights, no code, no card
    before = hub.state()
    with online(hub, tmp_path / "home"), pytest.raises(ValueError) as caught:
        push("--model", str(folder), "--repo-id", "yuyan-test/incomplete")
    message = str(caught.value)
    assert "nothing was uploaded" in message
    for item in ("config.json", "model weights (*.safetensors)", "configuration_yuyan.py", "modeling_yuyan.py",
                 "README.md"):
        assert item in message, item
    assert "tokenizer.json" not in message
    assert not hub.repo_exists("yuyan-test/incomplete")
    assert hub.state() == before, "the server was written to"


def test_what_a_folder_lacks_is_listed(pretrained, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(pretrained, folder, ignore=shutil.ignore_patterns("checkpoints", "logs"))
    assert missing_model_files(folder) == []
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "llama"
    del config["auto_map"]
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "modeling_yuyan.py").unlink()
    (folder / "model.safetensors").rename(folder / "model-00001-of-00002.safetensors")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    (folder / "README.md").unlink()
    missing = "\n".join(missing_model_files(folder))
    assert "model_type 'yuyan' in config.json (it has 'llama')" in missing
    assert "auto_map in config.json" in missing
    assert "modeling_yuyan.py" in missing and "configuration_yuyan.py" not in missing
    assert "model-00002-of-00002.safetensors" in missing and "model-00001" not in missing
    assert "README.md (the model card: `yuyan card --model DIR` renders it)" in missing


def test_training_state_is_not_uploaded(pretrained):
    files = files_to_upload(pretrained)
    assert "model.safetensors" in files and "README.md" in files
    assert not [f for f in files if f.startswith(("checkpoints/", "logs/")) or f.endswith(("~", ".tmp"))], files
    assert "checkpoints/*" in EXCLUDED_PATTERNS


@pytest.mark.parametrize("argv, match", [
    (["--repo-id", "no-namespace"], "ORG/NAME"),
    (["--repo-id", "org/bad name"], "not a valid repository id"),
    (["--repo-id", "org/name", "--revision", "0123456789abcdef0123456789abcdef01234567"], "a branch name"),
])
def test_bad_arguments_are_refused(pretrained, argv, match):
    with pytest.raises(ValueError, match=match):
        push("--model", str(pretrained), *argv)


def test_a_missing_folder_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        push("--model", str(tmp_path / "nowhere"), "--repo-id", "org/name")
