"""Fresh embeddings for the tokens pretraining never read (yuyan.training.unseen_tokens)."""

from __future__ import annotations

import pytest
import torch

from tests.model_helpers import tiny_config
from yuyan import YuyanForCausalLM
from yuyan.tokenization import train_tokenizer
from yuyan.training.unseen_tokens import reset_unseen_token_embeddings, token_counts

pytestmark = pytest.mark.usefixtures("one_thread")


def test_token_counts_count_every_line_of_every_file(tmp_path):
    tokenizer = train_tokenizer(texts=["apple banana cherry"] * 20 + ["river ocean"] * 20, vocab_size=300)
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text("apple banana\napple\n", encoding="utf-8")
    second.write_text("river\n", encoding="utf-8")
    counts = token_counts(tokenizer, [first, second], len(tokenizer))
    expected = torch.zeros(len(tokenizer), dtype=torch.long)
    for line in ["apple banana\n", "apple\n", "river\n"]:
        for index in tokenizer(line, add_special_tokens=False)["input_ids"]:
            expected[index] += 1
    assert torch.equal(counts, expected)
    assert counts[tokenizer(" ocean", add_special_tokens=False)["input_ids"]].sum() == 0
    # Read as `yuyan pretrain --data` reads: a .jsonl file's text column (not its JSON), a glob.
    (tmp_path / "c.jsonl").write_text('{"text": "apple banana\\n"}\n{"text": "apple\\n"}\n', encoding="utf-8")
    assert torch.equal(token_counts(tokenizer, [tmp_path / "c.jsonl", second], len(tokenizer)), expected)
    assert torch.equal(token_counts(tokenizer, [tmp_path / "*.txt"], len(tokenizer)), expected)
    with pytest.raises(ValueError, match="not a file"):
        token_counts(tokenizer, [tmp_path / "missing.txt"], len(tokenizer))


def _skewed_model(tie: bool) -> YuyanForCausalLM:
    """A tiny model whose rows 60.. look like an English model's Chinese tokens: long, all one direction."""
    torch.manual_seed(0)
    model = YuyanForCausalLM(tiny_config("hybrid", tie_word_embeddings=tie, initializer_range=0.02))
    with torch.no_grad():
        direction = torch.randn(model.config.hidden_size)
        for weight in {id(w): w for w in (model.get_input_embeddings().weight,
                                          model.get_output_embeddings().weight)}.values():
            weight[60:] = 3.0 * direction / direction.norm()
    return model


@pytest.mark.parametrize("tie", [True, False])
def test_unseen_rows_are_redrawn_like_the_seen_ones_and_nothing_else_moves(tie):
    model = _skewed_model(tie)
    seen = torch.zeros(model.config.vocab_size, dtype=torch.bool)
    seen[:60] = True
    embeddings, output = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    before = {name: value.clone() for name, value in model.state_dict().items()}
    matrices = [(embeddings, embeddings.detach().clone()), (output, output.detach().clone())]
    ids = reset_unseen_token_embeddings(model, seen, keep=[95, 96], seed=0)
    assert ids == list(range(60, 95))  # the unseen ones, less those kept
    for weight, old in matrices:
        assert torch.equal(weight[:60], old[:60]) and torch.equal(weight[95:], old[95:])
        new = weight[60:95].detach()
        # Typical rows: the seen rows' scale, pointing every way (the skewed rows were one direction, norm 3).
        assert new.norm(dim=1).mean() == pytest.approx(weight[:60].norm(dim=1).mean().item(), rel=0.3)
        unit = torch.nn.functional.normalize(new, dim=1)
        assert (unit @ unit.T).mean() < 0.2
    assert (output.data_ptr() == embeddings.data_ptr()) == tie
    untouched = {name for name in before if "embed_tokens" not in name and "lm_head" not in name}
    assert all(torch.equal(before[name], model.state_dict()[name]) for name in untouched)
    again = _skewed_model(tie)
    reset_unseen_token_embeddings(again, seen, keep=[95, 96], seed=0)
    assert torch.equal(again.get_input_embeddings().weight, embeddings)  # seeded


def test_nothing_to_redraw_and_bad_flags():
    model = _skewed_model(True)
    before = model.get_input_embeddings().weight.clone()
    assert reset_unseen_token_embeddings(model, torch.ones(model.config.vocab_size, dtype=torch.bool)) == []
    assert torch.equal(model.get_input_embeddings().weight, before)
    with pytest.raises(ValueError, match="one flag a token"):
        reset_unseen_token_embeddings(model, torch.ones(5, dtype=torch.bool))
    with pytest.raises(ValueError, match="fewer than 2 tokens were seen"):
        reset_unseen_token_embeddings(model, torch.zeros(model.config.vocab_size, dtype=torch.bool))
