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
