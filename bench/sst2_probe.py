"""Linear probe on SST-2: how much sentiment a model's frozen last-token state already carries.

A diagnostic beside `bench/finetune_report.py`: when a pretrained row does not beat its from-scratch twin, this
tells whether the pretrained representation holds anything a classifier can use (probe well above the scratch
twin's) or not (both near the majority class). Features are the final hidden state of each sentence's last token
(what `YuyanForSequenceClassification` reads); a logistic regression is fitted on `--train` sentences drawn from
GLUE's training set (shared `sst2/train.tsv` + `dev.tsv`) and scored on `sst2/test.tsv` (GLUE dev).

    python bench/sst2_probe.py runs/tiny-hybrid --train 4000
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def _report_module():
    spec = importlib.util.spec_from_file_location("finetune_report", REPO / "bench" / "finetune_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@torch.no_grad()
def features(model, tokenizer, sentences: list[str], batch_size: int = 64) -> torch.Tensor:
    rows = []
    for start in range(0, len(sentences), batch_size):
        batch = tokenizer(sentences[start:start + batch_size], padding=True, return_tensors="pt")
        hidden = model(**batch).last_hidden_state
        last = batch["attention_mask"].sum(dim=1) - 1  # right padding: the last real token
        rows.append(hidden[torch.arange(len(last)), last])
    return torch.cat(rows)


def probe_accuracy(train_x, train_y, test_x, test_y, steps: int = 300) -> float:
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    head = torch.nn.Linear(train_x.shape[1], 2)
    optimizer = torch.optim.LBFGS(head.parameters(), max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(train_x), train_y) + 1e-3 * head.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return 100 * (head(test_x).argmax(-1) == test_y).float().mean().item()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a pretrained Yuyan model folder")
    parser.add_argument("--train", type=int, default=4000, help="training sentences for the probe")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from yuyan.modeling import YuyanConfig, YuyanModel
    from yuyan.training.finetune import load_tokenizer

    report = _report_module()
    rows = report._tsv_rows(report.DATA / "sst2" / "train.tsv") + report._tsv_rows(report.DATA / "sst2" / "dev.tsv")
    train, _ = report.split_sst2(rows, 2000, args.seed)
    train = train[:args.train]
    test = report._tsv_rows(report.DATA / "sst2" / "test.tsv")
    tokenizer = load_tokenizer(args.model)
    tokenizer.padding_side = "right"
    train_y = torch.tensor([int(label) for _, label in train])
    test_y = torch.tensor([int(label) for _, label in test])
    majority = 100 * max(test_y.float().mean().item(), 1 - test_y.float().mean().item())
    print(f"SST-2 linear probe, {len(train):,} training sentences, scored on {len(test)} (majority class "
          f"{majority:.1f}%)")
    pretrained = YuyanModel.from_pretrained(args.model).eval()
    torch.manual_seed(args.seed)
    scratch = YuyanModel(YuyanConfig.from_pretrained(args.model)).eval()
    for name, model in (("pretrained", pretrained), ("scratch", scratch)):
        start = time.perf_counter()
        train_x = features(model, tokenizer, [s for s, _ in train])
        test_x = features(model, tokenizer, [s for s, _ in test])
        accuracy = probe_accuracy(train_x, train_y, test_x, test_y)
        print(f"{name:10s} probe accuracy {accuracy:.1f}%  ({time.perf_counter() - start:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
