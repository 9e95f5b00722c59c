import math

import pytest
import torch
import torch.nn.functional as F

from jpop_helpers.loss import EmptySplitError, codebook_ce, evaluate_ce


def test_codebook_ce_matches_audiocraft_solver_definition():
    g = torch.Generator().manual_seed(0)
    B, K, T, card = 3, 4, 20, 50
    logits = torch.randn(B, K, T, card, generator=g)
    targets = torch.randint(card, (B, K, T), generator=g)
    mask = torch.rand(B, K, T, generator=g) > 0.3
    logits[~mask] = float("nan")  # what the LM returns at invalid delay-pattern positions
    ce, sums, counts = codebook_ce(logits, targets, mask)
    # audiocraft solvers/musicgen.py::_compute_cross_entropy, written out independently
    ref = sum(F.cross_entropy(logits[:, k][mask[:, k]], targets[:, k][mask[:, k]]) for k in range(K)) / K
    assert torch.isfinite(ce) and torch.allclose(ce, ref, atol=1e-6)
    assert counts.tolist() == mask.sum(dim=(0, 2)).tolist()
    assert torch.allclose((sums / counts).float().mean(), ref, atol=1e-6)


def _old_codebook_ce(logits, targets, mask):
    """The former implementation (boolean selection), kept here as the reference."""
    K = targets.shape[1]
    sums = [F.cross_entropy(logits[:, k][mask[:, k]].float(), targets[:, k][mask[:, k]].long(), reduction="sum")
            for k in range(K)]
    counts = mask.sum(dim=(0, 2))
    ce = sum(q / max(int(n), 1) for q, n in zip(sums, counts)) / K
    return ce, torch.stack(sums).detach().double(), counts


def test_codebook_ce_equals_boolean_selection_with_gradients_through_nan_logits():
    """Values and gradients equal the select-then-score formula; NaN logits leave no trace in either,
    also with a codebook that has no valid token and targets out of range at invalid positions."""
    g = torch.Generator().manual_seed(1)
    B, K, T, card = 2, 4, 30, 64
    base = torch.randn(B, K, T, card, generator=g)
    targets = torch.randint(card, (B, K, T), generator=g)
    mask = torch.rand(B, K, T, generator=g) > 0.4
    mask[:, 3] = False  # a codebook entirely masked (e.g. the delay pattern's head on a short clip)
    targets[~mask] = card  # the special token: out of range, must never be looked up
    base[~mask] = float("nan")
    got_l = base.clone().requires_grad_()
    ref_l = base.clone().requires_grad_()
    ce, sums, counts = codebook_ce(got_l, targets, mask)
    ref, ref_sums, ref_counts = _old_codebook_ce(ref_l, targets, mask)
    ce.backward()
    ref.backward()
    assert torch.isfinite(ce) and torch.allclose(ce, ref, atol=1e-6)
    assert torch.allclose(sums, ref_sums, atol=1e-5) and sums.dtype == torch.float64 and not sums.requires_grad
    assert counts.tolist() == ref_counts.tolist() and counts.dtype == torch.long and counts[3] == 0
    assert torch.isfinite(got_l.grad).all()
    assert torch.allclose(got_l.grad, ref_l.grad, atol=1e-7)
    assert (got_l.grad[~mask] == 0).all() and got_l.grad[mask].abs().sum() > 0


@pytest.mark.parametrize("fn", ["codebook_ce", "old"])
def test_codebook_ce_needs_no_host_sync(fn):
    """Run forward and backward on the meta device, which holds no data: any op whose result depends on
    the data (boolean indexing's nonzero, .item(), a count read back) cannot run there. The old boolean
    selection is checked to fail, so this test can tell the two apart."""
    B, K, T, card = 2, 4, 12, 32
    logits = torch.empty(B, K, T, card, device="meta", requires_grad=True)
    targets = torch.empty(B, K, T, dtype=torch.long, device="meta")
    mask = torch.empty(B, K, T, dtype=torch.bool, device="meta")
    if fn == "old":
        with pytest.raises((NotImplementedError, RuntimeError)):
            _old_codebook_ce(logits, targets, mask)
        return
    ce, sums, counts = codebook_ce(logits, targets, mask)
    ce.backward()
    assert ce.shape == () and sums.shape == (K,) and counts.shape == (K,) and logits.grad.shape == logits.shape


def test_evaluate_ce_matches_an_independent_per_clip_computation(tiny_tokens):
    """Batched, masked, aggregated CE == token-by-token CE computed clip by clip here."""
    from audiocraft.modules.conditioners import ConditioningAttributes

    from jpop_helpers.model import load_musicgen

    lm = load_musicgen("tiny", "cpu").lm.eval()
    _, items = tiny_tokens
    got = evaluate_ce(lm, items, batch_size=2, device="cpu")
    nll = [[] for _ in range(4)]
    with torch.no_grad():
        for it in items:
            codes = it.codes.long()[None]
            attrs = [ConditioningAttributes(text={"description": it.descriptions[0]})]
            out = lm.compute_predictions(codes, [], lm.condition_provider(lm.condition_provider.tokenize(attrs)))
            logp = F.log_softmax(out.logits[0].double(), dim=-1)  # [K, T, card]
            for k in range(4):
                for t in range(it.valid_frames):
                    if out.mask[0, k, t]:
                        nll[k].append(-float(logp[k, t, codes[0, k, t]]))
    per_q = [sum(v) / len(v) for v in nll]
    assert got["tokens"] == len(nll[0])
    assert [got[f"ce_q{k + 1}"] for k in range(4)] == pytest.approx(per_q, rel=1e-5)
    assert got["ce"] == pytest.approx(sum(per_q) / 4, rel=1e-5)
    assert got["ppl"] == pytest.approx(math.exp(sum(per_q) / 4), rel=1e-5)


def test_an_empty_split_is_named_with_what_to_do():
    """It crashed with AttributeError ('NoneType' ... clamp) before."""
    with pytest.raises(EmptySplitError, match=r"the test split has no clips.*--test-fraction"):
        evaluate_ce(torch.nn.Linear(1, 1), [], 4, "cpu", split="test")
