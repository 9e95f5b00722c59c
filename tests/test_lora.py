import torch
from audiocraft.modules.conditioners import ConditioningAttributes

from jpop_helpers.lora import LoraConfig, add_lora, merge_lora
from jpop_helpers.model import load_musicgen
from jpop_helpers.train import TrainConfig, train


def test_lora_trains_the_adapters_and_leaves_every_base_weight_as_it_was(tiny_tokens, tmp_path):
    model = load_musicgen("tiny", "cpu")
    base = dict(model.lm.named_parameters())  # the very Parameter objects the loop will hold
    before = {n: p.detach().clone() for n, p in base.items()}
    train_items, _ = tiny_tokens
    cfg = TrainConfig(model="tiny", mode="lora", steps=4, batch_size=4, grad_accum=1, lr=3e-3, warmup_steps=1, save_every=4)
    train(cfg, tmp_path / "run", train_items, [], model=model, device="cpu")
    trained = dict(model.lm.named_parameters())  # peft injected its layers into this LM in place
    assert all(any(p is q for q in trained.values()) for p in base.values())  # still the model's weights
    assert all(torch.equal(p, before[n]) for n, p in base.items())  # and unchanged
    lora_b = [p for n, p in trained.items() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # the adapters did train (B starts at 0)


def test_lora_adapts_the_packed_attention_projection_and_merges_exactly():
    torch.manual_seed(0)
    lm = load_musicgen("tiny", "cpu").lm.eval()
    peft_lm = add_lora(lm, LoraConfig(rank=4), base_model="tiny")
    names = [n for n, _ in peft_lm.named_parameters() if "lora_A" in n]
    assert any("in_proj_weight" in n or ".self_attn.lora_A" in n for n in names)  # the packed q/k/v too
    assert peft_lm.peft_config["default"].base_model_name_or_path == "tiny"
    for n, p in peft_lm.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.05)  # a trained-looking adapter
    codes = torch.randint(400, (1, 4, 30))
    cond = lambda m: m.condition_provider(m.condition_provider.tokenize(
        [ConditioningAttributes(text={"description": "calm piano"})]))
    with torch.no_grad():
        before = peft_lm.compute_predictions(codes, [], cond(peft_lm)).logits
        merged = merge_lora(peft_lm)
        assert not any("lora_" in k for k in merged.state_dict())  # audiocraft's own keys again
        after = merged.compute_predictions(codes, [], cond(merged)).logits
    valid = torch.isfinite(before)
    assert torch.allclose(before[valid], after[valid], atol=1e-5)


def test_the_lent_packed_projection_forward_equals_pefts_own():
    """add_lora replaces peft's per-call parametrization of in_proj_weight by lending W + delta to the
    attention: the same logits and the same adapter gradients (including under activation checkpointing)."""
    import copy

    from peft.tuners.lora.layer import ParamWrapper

    torch.manual_seed(0)
    lent = add_lora(load_musicgen("tiny", "cpu").lm, LoraConfig(rank=4))
    for n, p in lent.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.05)
    own = copy.deepcopy(lent)
    wrappers = [m for m in own.modules() if isinstance(m, ParamWrapper)]
    assert wrappers and all("forward" in m.__dict__ for m in wrappers)
    for m in wrappers:
        del m.forward  # back to peft's ParamWrapper.forward
    own.transformer.checkpointing = lent.transformer.checkpointing = "torch"
    codes = torch.randint(400, (2, 4, 12))
    attrs = [ConditioningAttributes(text={"description": t}) for t in ("calm piano", None)]
    out = {}
    for name, m in (("lent", lent), ("own", own)):
        logits = m.compute_predictions(codes, [], m.condition_provider(m.condition_provider.tokenize(attrs))).logits
        logits.nan_to_num(0.0).pow(2).mean().backward()
        out[name] = logits.detach(), {n: p.grad.clone() for n, p in m.named_parameters() if p.requires_grad}
    assert torch.equal(out["lent"][0].isnan(), out["own"][0].isnan())
    assert torch.allclose(out["lent"][0].nan_to_num(), out["own"][0].nan_to_num(), atol=1e-6)
    grads = out["lent"][1]
    assert any("in_proj" in n or ".self_attn.lora_A" in n for n in grads)
    assert set(grads) == set(out["own"][1])
    assert all(torch.allclose(grads[n], out["own"][1][n], atol=1e-6) for n in grads)
    assert all(g.abs().sum() > 0 for n, g in grads.items() if "lora_A" in n)
