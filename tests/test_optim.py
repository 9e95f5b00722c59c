import pytest
import torch

from jpop_helpers.optim import make_optimizer, step_if_finite, warmup_cosine


@pytest.mark.parametrize("finite", [True, False])
def test_fused_adamw_skips_a_non_finite_step_on_the_device(finite):
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(5))
    opt = make_optimizer([p], "adamw", lr=0.1, weight_decay=0.01)
    assert opt.defaults["fused"] and opt._step_supports_amp_scaling  # the fused kernel, which takes found_inf
    p.grad = torch.randn(5)
    step_if_finite(opt, torch.ones((), dtype=torch.bool))  # one real step first: moments and step exist
    before = {"p": p.detach().clone(), **{k: v.clone() for k, v in opt.state[p].items()}}
    p.grad = torch.randn(5)
    step_if_finite(opt, torch.tensor(finite))
    assert not hasattr(opt, "found_inf")  # not left behind for the next step
    unchanged = torch.equal(p, before["p"]) and all(torch.equal(opt.state[p][k], before[k]) for k in opt.state[p])
    assert unchanged != finite
    assert float(opt.state[p]["step"]) == (2.0 if finite else 1.0)


def test_an_optimizer_without_a_device_side_skip_is_asked_on_the_host():
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([p], lr=1.0)
    p.grad = torch.ones(3)
    step_if_finite(opt, torch.tensor(False))
    assert torch.equal(p, torch.ones(3))
    step_if_finite(opt, torch.tensor(True))
    assert torch.equal(p, torch.zeros(3))


def test_warmup_then_cosine_to_the_floor():
    f = warmup_cosine(2, 10, 0.1)
    assert [f(0), f(1)] == [0.5, 1.0] and f(10) == pytest.approx(0.1) and f(2) == pytest.approx(1.0)
