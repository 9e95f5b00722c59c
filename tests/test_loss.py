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
