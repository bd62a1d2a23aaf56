"""GRPO's update does only useful work and leaves the gradient what the plain padded update gives: rows with
zero advantage skipped (beta = 0), rows packed end to end with block-diagonal attention, and micro-batches of
rows of similar length, each cut to its own width."""
import pytest
import torch

from conftest import tiny_config
from r1lab.model import Transformer
from r1lab.train.grpo_config import GRPOSection
from r1lab.train.grpo_loss import PolicyBatch, fill_logp, make_loss_fn, pack_rows, token_logp


def _batch(seed: int = 0) -> PolicyBatch:
    """Eight rows of different prompt and completion lengths, right-padded; two groups of four, one of them
    with equal rewards (advantage 0), and one more zero in the other group."""
    gen = torch.Generator().manual_seed(seed)
    lengths = [(5, 9), (5, 3), (5, 12), (5, 6), (7, 2), (7, 11), (7, 4), (7, 8)]
    width = max(p + c for p, c in lengths)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros(len(lengths), width - 1)
    for i, (p, c) in enumerate(lengths):
        ids[i, :p + c] = torch.randint(1, 96, (p + c,), generator=gen)
        mask[i, p - 1:p + c - 1] = 1.0
    advantages = torch.tensor([0.8, -1.2, 0.0, 0.4, 0.0, 0.0, 0.0, 0.0])
    return PolicyBatch(ids, mask, advantages)


def _grads(model, cfg: GRPOSection, batch: PolicyBatch, n_rows: int, n_tokens: int, old=None) -> torch.Tensor:
    model.zero_grad()
    if old is not None:
        batch.old_logp = old
    loss_fn = make_loss_fn(cfg, n_rows, n_tokens)
    for rows in torch.arange(len(batch.advantages)).split(cfg.micro_batch_size):  # in order, padded
        loss, _ = loss_fn(model, batch.take(rows))
        loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def _model():
    torch.manual_seed(0)
    return Transformer(tiny_config(96)).float()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("loss", ["grpo", "dr_grpo", "dapo"])
def test_skipping_zero_advantage_rows_leaves_the_gradient(loss):
    model, batch = _model(), _batch()
    cfg = GRPOSection(loss=loss, micro_batch_size=3, pack=False)
    n_rows, n_tokens = len(batch.advantages), batch.n_targets
    with torch.no_grad():
        old = token_logp(model, batch.input_ids, batch.target_mask, 1.0)[0] + 0.1 * batch.target_mask  # off-policy
    plain = _grads(model, cfg, batch, n_rows, n_tokens, old)
    useful = batch.useful()
    assert len(useful.advantages) == 3 and useful.input_ids.shape[1] < batch.input_ids.shape[1] + 1
    skipped = _grads(model, cfg, useful, n_rows, n_tokens)  # old_logp was cut along with the rows
    assert plain.norm() > 0
    assert _rel(skipped, plain) <= 1e-5


@pytest.mark.parametrize("loss", ["grpo", "dapo"])
def test_packed_rows_leave_the_gradient(loss):
    model, batch = _model(), _batch(1)
    batch.advantages = torch.linspace(-1.0, 1.0, 8)
    plain = _grads(model, GRPOSection(loss=loss, micro_batch_size=8, pack=False), batch, 8, batch.n_targets)
    packed = _grads(model, GRPOSection(loss=loss, micro_batch_size=8, pack=True), batch, 8, batch.n_targets)
    assert _rel(packed, plain) <= 1e-5
    # packing saved rows: eight rows of at most 19 tokens fit in fewer than eight
    ids, positions, attn, select, order = pack_rows(batch.input_ids, batch.target_mask)
    assert len(ids) < 8 and sorted(order) == list(range(8)) and int(select.sum()) == batch.n_targets
    # block-diagonal: a token attends exactly to the earlier tokens of its own original row (ids here are
    # never 0, the padding id, so a packed row's real tokens are the ones before its trailing zeros)
    for b in range(len(ids)):
        real = int((ids[b] != 0).nonzero().max()) + 1
        starts = (positions[b, :real] == 0).nonzero().squeeze(1).tolist()
        for q in range(real):
            start = max(s for s in starts if s <= q)
            expected = torch.zeros(ids.shape[1], dtype=torch.bool)
            expected[start:q + 1] = True
            assert torch.equal(attn[b, 0, q], expected)


def test_packed_logp_matches_padded():
    model, batch = _model(), _batch(2)
    with torch.no_grad():
        plain, _ = token_logp(model, batch.input_ids, batch.target_mask, 0.7)
        packed, _ = token_logp(model, batch.input_ids, batch.target_mask, 0.7, pack=True)
    assert torch.allclose(plain, packed, atol=1e-5)
    assert torch.equal(packed == 0, batch.target_mask == 0)


@pytest.mark.parametrize("loss", ["grpo", "dr_grpo", "dapo"])
def test_micro_batches_by_length_leave_the_gradient(loss):
    model, batch = _model(), _batch(3)
    batch.advantages = torch.linspace(-1.0, 1.0, 8)
    cfg = GRPOSection(loss=loss, micro_batch_size=3, pack=False)
    plain = _grads(model, GRPOSection(loss=loss, micro_batch_size=8, pack=False), batch, 8, batch.n_targets)
    micro = batch.micro_batches(cfg.micro_batch_size)
    widths = [b.input_ids.shape[1] for b in micro]
    assert [len(b.advantages) for b in micro] == [3, 3, 2] and widths == sorted(widths)
    assert widths[0] < batch.input_ids.shape[1]  # the short rows' micro-batch is narrower
    model.zero_grad()
    loss_fn = make_loss_fn(cfg, 8, batch.n_targets)
    for b in micro:
        loss_fn(model, b)[0].backward()
    by_length = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    assert plain.norm() > 0 and _rel(by_length, plain) <= 1e-5


def test_fill_logp_by_length_matches_the_whole_batch():
    model, batch = _model(), _batch(4)
    with torch.no_grad():
        whole, _ = token_logp(model, batch.input_ids, batch.target_mask, 0.7)
    fill_logp(model, batch, 0.7, 3, "old_logp")
    assert batch.old_logp.shape == whole.shape and torch.allclose(batch.old_logp, whole, atol=1e-5)
