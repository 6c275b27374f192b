"""Specification of MultiTalent's loss (paper eq. 2): masked BCE + batch Dice, summed over heads."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from multitalent.loss import MultiTalentLoss, deep_supervision_weights


def _sig(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def _bce(v: float, t: float) -> float:
    p = _sig(v)
    return -(t * math.log(p) + (1 - t) * math.log(1 - p))


def _random_case(seed: int = 0, b: int = 3, h: int = 4, shape: tuple[int, ...] = (3, 4, 5)):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, h, *shape, generator=g, dtype=torch.float64)
    t = (torch.rand(b, h, *shape, generator=g) > 0.7).double()
    ann = torch.tensor([[True, False, True, False], [True, True, False, False], [False, True, True, False]])
    return x, t, ann[:b, :h]


def _loss_and_grad(loss_fn, x, t, ann):
    x = x.clone().requires_grad_(True)
    loss = loss_fn(x, t, ann)
    loss.backward()
    return loss.detach(), x.grad


def test_hand_computed_example_matches_equation_2():
    x = [[[2.0, -1.0, 0.5, -3.0], [1.0, 1.0, -2.0, 0.0]],
         [[-0.5, 1.5, 0.0, 2.5], [0.3, -0.7, 4.0, -1.2]]]
    t = [[[1, 0, 1, 0], [1, 0, 0, 1]],
         [[0, 1, 0, 1], [0, 0, 1, 0]]]
    ann = [[True, False], [True, True]]  # sample 0's dataset does not annotate head 1
    smooth = 1e-5
    expected = 0.0
    for c in range(2):
        samples = [b for b in range(2) if ann[b][c]]
        bce = sum(sum(_bce(x[b][c][v], t[b][c][v]) for v in range(4)) / 4 for b in samples)
        inter = sum(_sig(x[b][c][v]) * t[b][c][v] for b in samples for v in range(4))
        psum = sum(_sig(x[b][c][v]) for b in samples for v in range(4))
        tsum = sum(t[b][c][v] for b in samples for v in range(4))
        expected += bce - (2 * inter + smooth) / (psum + tsum + smooth)
    loss = MultiTalentLoss(smooth=smooth)(torch.tensor(x, dtype=torch.float64), torch.tensor(t),
                                          torch.tensor(ann))
    assert loss.item() == pytest.approx(expected, abs=1e-10)


def test_unannotated_logits_and_targets_change_neither_loss_nor_gradients():
    x, t, ann = _random_case()
    fn = MultiTalentLoss()
    loss, grad = _loss_and_grad(fn, x, t, ann)
    unann = ~ann[:, :, None, None, None].expand_as(x)
    for replacement in (torch.full_like(x, float("nan")), torch.full_like(x, float("inf")), x * 50 + 3):
        x2 = torch.where(unann, replacement, x)
        t2 = torch.where(unann, 1 - t, t)
        loss2, grad2 = _loss_and_grad(fn, x2, t2, ann)
        assert torch.equal(loss, loss2)
        assert torch.equal(grad, grad2)
    assert torch.isfinite(grad).all()
    assert (grad[unann] == 0).all()
    assert (grad[~unann] != 0).any()


def test_heads_are_summed_not_averaged():
    x, t, ann = _random_case(1)
    fn = MultiTalentLoss()
    single = fn(x, t, ann)
    doubled = fn(torch.cat([x, x], 1), torch.cat([t, t], 1), torch.cat([ann, ann], 1))
    assert doubled.item() == pytest.approx(2 * single.item(), rel=1e-12)
    # and the total is the sum of the per-head losses
    per_head = sum(fn(x[:, c:c + 1], t[:, c:c + 1], ann[:, c:c + 1]) for c in range(x.shape[1]))
    assert single.item() == pytest.approx(float(per_head), rel=1e-12)


def test_dice_is_computed_over_the_batch_not_averaged_per_image():
    # sample 0: large foreground, well predicted; sample 1: one foreground voxel, missed
    x = torch.tensor([[[2.0] * 8], [[-2.0] * 8]], dtype=torch.float64)
    t = torch.tensor([[[1.0] * 8], [[1.0] + [0.0] * 7]], dtype=torch.float64)
    ann = torch.tensor([[True], [True]])
    smooth = 1e-5
    p_hi, p_lo = _sig(2.0), _sig(-2.0)
    batch_dice = (2 * (8 * p_hi + p_lo) + smooth) / (8 * p_hi + 8 * p_lo + 9 + smooth)
    dice0 = (2 * 8 * p_hi + smooth) / (8 * p_hi + 8 + smooth)
    dice1 = (2 * p_lo + smooth) / (8 * p_lo + 1 + smooth)
    per_image = (dice0 + dice1) / 2
    assert abs(batch_dice - per_image) > 0.1  # the case really separates the two definitions
    fn = MultiTalentLoss(smooth=smooth)
    comp = fn.components(x, t, ann)
    assert comp["dice"].item() == pytest.approx(batch_dice, abs=1e-10)
    bce = sum(sum(_bce(x[b, 0, v].item(), t[b, 0, v].item()) for v in range(8)) / 8 for b in range(2))
    assert fn(x, t, ann).item() == pytest.approx(bce - batch_dice, abs=1e-10)


def test_head_without_foreground_gives_finite_loss_and_gradients():
    x, t, ann = _random_case(2)
    t[:, 0] = 0
    x[:, 0] = -40.0  # confidently (and correctly) empty
    loss, grad = _loss_and_grad(MultiTalentLoss(), x, t, ann)
    assert torch.isfinite(loss)
    assert torch.isfinite(grad).all()
    loss32, grad32 = _loss_and_grad(MultiTalentLoss(), x.float(), t.float(), ann)
    assert torch.isfinite(loss32) and torch.isfinite(grad32).all()


def test_head_annotated_in_no_sample_contributes_nothing():
    x, t, ann = _random_case(3)
    assert not ann[:, 3].any()  # head 3 is annotated nowhere in this batch
    fn = MultiTalentLoss()
    loss, grad = _loss_and_grad(fn, x, t, ann)
    loss_without, _ = _loss_and_grad(fn, x[:, :3], t[:, :3], ann[:, :3])
    assert torch.equal(loss, loss_without)
    assert (grad[:, 3] == 0).all()
    nothing, grad_nothing = _loss_and_grad(fn, x, t, torch.zeros_like(ann))
    assert nothing.item() == 0.0 and (grad_nothing == 0).all()


def test_deep_supervision_weights():
    assert deep_supervision_weights(1) == [1.0]
    assert deep_supervision_weights(3) == pytest.approx([1 / 1.5, 0.5 / 1.5, 0.0])
    w = deep_supervision_weights(5)
    assert sum(w) == pytest.approx(1.0)
    assert w[-1] == 0.0
    assert all(w[i] == pytest.approx(2 * w[i + 1]) for i in range(3))
    with pytest.raises(ValueError):
        deep_supervision_weights(0)


def test_list_of_outputs_is_weighted_per_level():
    x, t, ann = _random_case(4, shape=(4, 4, 4))
    xs = [x, x[..., ::2, ::2, ::2].clone(), x[..., ::4, ::4, ::4].clone()]
    ts = [t, t[..., ::2, ::2, ::2].clone(), t[..., ::4, ::4, ::4].clone()]
    fn = MultiTalentLoss()
    w = deep_supervision_weights(3)
    expected = w[0] * fn(xs[0], ts[0], ann) + w[1] * fn(xs[1], ts[1], ann)
    assert fn(xs, ts, ann).item() == pytest.approx(expected.item(), rel=1e-12)
    # the lowest resolution has weight 0: even NaN there changes nothing
    xs_nan = xs[:2] + [torch.full_like(xs[2], float("nan"))]
    assert fn(xs_nan, ts, ann).item() == pytest.approx(expected.item(), rel=1e-12)
    custom = MultiTalentLoss(ds_weights=[0.2, 0.3, 0.5])
    expected_custom = sum(wi * fn(o, g, ann) for wi, o, g in zip([0.2, 0.3, 0.5], xs, ts, strict=True))
    assert custom(xs, ts, ann).item() == pytest.approx(expected_custom.item(), rel=1e-12)
    with pytest.raises(ValueError):
        custom(xs[:2], ts[:2], ann)


def test_sum_fn_gives_the_dice_of_the_global_batch():
    """Simulate two DDP ranks: each adds the other's per-head sums, as an all-reduce would."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4, 3, 6, 6, generator=g, dtype=torch.float64)
    t = (torch.rand(4, 3, 6, 6, generator=g) > 0.6).double()
    ann = torch.tensor([[True, False, True], [True, True, False], [False, True, True], [True, False, False]])
    seen: list[torch.Tensor] = []

    def local_sums(xi, ti, ai):
        MultiTalentLoss(sum_fn=lambda s: seen.append(s.detach()) or s)(xi, ti, ai)
        return seen.pop()

    other = local_sums(x[2:], t[2:], ann[2:])
    assert other.shape == (4, 3)  # intersection, prediction sum, target sum, annotated count
    rank0 = MultiTalentLoss(sum_fn=lambda s: s + other)
    loss0 = rank0(x[:2], t[:2], ann[:2])
    full = MultiTalentLoss().components(x, t, ann)
    local = MultiTalentLoss().components(x[:2], t[:2], ann[:2])
    present = full["annotated"] > 0  # head 2 is annotated only on the other rank: its Dice still counts
    expected = local["bce"].sum() - full["dice"][present].sum()
    assert loss0.item() == pytest.approx(expected.item(), rel=1e-12)


def test_components_report_per_head_values():
    x, t, ann = _random_case(6)
    comp = MultiTalentLoss().components([x, x[..., ::2, ::2, ::2]], [t, t[..., ::2, ::2, ::2]], ann)
    assert set(comp) >= {"bce", "dice", "annotated", "tp", "fp", "fn"}
    assert comp["dice"].shape == (4,)
    assert comp["annotated"].tolist() == ann.sum(0).tolist()
    pred = (x > 0) & ann[:, :, None, None, None]
    gt = (t > 0.5) & ann[:, :, None, None, None]
    assert comp["tp"].tolist() == (pred & gt).sum((0, 2, 3, 4)).tolist()
    assert comp["fn"][3] == 0 and comp["fp"][3] == 0  # unannotated head counts nothing


def test_shape_mismatch_is_rejected():
    x, t, ann = _random_case(7)
    with pytest.raises(ValueError):
        MultiTalentLoss()(x, t[..., :2], ann)
    with pytest.raises(ValueError):
        MultiTalentLoss()(x, t, ann[:, :2])


def test_compact_pairs_equal_the_dense_loss_and_gradients():
    """The training loop's compact form (annotated pairs only) is the same loss as the dense formula."""
    torch.manual_seed(3)
    b, h = 3, 5
    annotated = torch.tensor([[1, 1, 0, 0, 0], [0, 0, 1, 1, 1], [1, 1, 0, 0, 0]], dtype=torch.bool)
    shapes = [(4, 6, 6), (2, 3, 3), (1, 2, 2)]  # the last level has weight 0 and is left out of the graph
    outs = [torch.randn(b, h, *s, dtype=torch.float64, requires_grad=True) for s in shapes]
    tgts = [(torch.rand(b, h, *s) > 0.6).double() for s in shapes]
    loss = MultiTalentLoss()
    dense = loss(outs, tgts, annotated)
    g_dense = torch.autograd.grad(dense, outs[:2])
    pairs = annotated.nonzero()
    compact = loss.pairs([o[pairs[:, 0], pairs[:, 1]] for o in outs], [t[pairs[:, 0], pairs[:, 1]] for t in tgts],
                         pairs[:, 1], h)
    g_compact = torch.autograd.grad(compact, outs[:2])
    assert torch.allclose(dense, compact)
    for a, c in zip(g_dense, g_compact):
        assert torch.allclose(a, c)


# --- properties (hypothesis) ------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(b=st.integers(1, 3), h=st.integers(1, 4), shape=st.tuples(*[st.integers(1, 4)] * 3),
       seed=st.integers(0, 2**16), levels=st.integers(1, 2))
def test_loss_ignores_unannotated_heads(b, h, shape, seed, levels):
    """Changing the logits or targets of unannotated (sample, head) pairs, even to NaN/inf, changes neither
    the loss nor any gradient; unannotated logits get a zero gradient."""
    gen = torch.Generator().manual_seed(seed)
    annotated = torch.rand(b, h, generator=gen) < 0.6
    annotated[0, 0] = True
    sizes = [shape, tuple(max(s // 2, 1) for s in shape)][:levels]
    logits = [torch.randn(b, h, *s, generator=gen, dtype=torch.float64) * 3 for s in sizes]
    targets = [(torch.rand(b, h, *s, generator=gen) > 0.5).double() for s in sizes]
    loss_fn = MultiTalentLoss(ds_weights=[1.0, 0.5][:levels])

    def run(xs, ts):
        xs = [x.clone().requires_grad_(True) for x in xs]
        loss = loss_fn(xs if levels > 1 else xs[0], ts if levels > 1 else ts[0], annotated)
        loss.backward()
        return loss.detach(), [x.grad for x in xs]

    loss_a, grads_a = run(logits, targets)
    off = ~annotated[:, :, None, None, None]
    junk = [torch.where(off, torch.randn(x.shape, generator=gen, dtype=x.dtype) * 1e3, x) for x in logits]
    junk[0] = torch.where(off & (torch.rand(junk[0].shape, generator=gen) < 0.1), float("nan"), junk[0])
    flipped = [torch.where(off, 1 - t, t) for t in targets]
    loss_b, grads_b = run(junk, flipped)
    assert torch.isfinite(loss_a) and torch.equal(loss_a, loss_b)
    for ga, gb in zip(grads_a, grads_b):
        assert torch.equal(ga, gb)
        assert torch.all(ga[off.expand_as(ga)] == 0)
