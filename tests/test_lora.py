"""LoRA by composition (jpop_helpers.lora): what trains, exact merge, gradients, the packed projection
read once per forward, adapter files (ours and peft's loader), and clear refusals."""
import copy
import json
from importlib.metadata import PackageNotFoundError, version

import pytest
import torch
from audiocraft.modules.conditioners import ConditioningAttributes
from packaging.version import Version
from torch.nn.utils import parametrize

from jpop_helpers.lora import (LoraConfig, LoraDelta, LoraLinear, adapter_state, add_lora, load_adapter,
                               load_adapter_state, merge_lora, save_adapter)
from jpop_helpers.loss import LMLoss
from jpop_helpers.model import load_musicgen
from jpop_helpers.train import TrainConfig, train

try:
    PEFT = Version(version("peft"))  # only this test file uses peft: to check that it loads our adapters
except PackageNotFoundError:
    PEFT = None


def trained_looking(lm, seed=0):
    """Adapters as after training: lora_B starts at zero (no change), so give it values."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for n, p in lm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    return lm


def conditions(lm, texts=("calm piano",)):
    attrs = [ConditioningAttributes(text={"description": t}) for t in texts]
    return lm.condition_provider(lm.condition_provider.tokenize(attrs))


def logits(lm, codes, texts=("calm piano",)):
    return lm.compute_predictions(codes, [], conditions(lm, texts)).logits


def test_lora_trains_the_adapters_and_leaves_every_base_weight_as_it_was(tiny_tokens, tmp_path):
    model = load_musicgen("tiny", "cpu")
    base = dict(model.lm.named_parameters())  # the very Parameter objects the loop will hold
    before = {n: p.detach().clone() for n, p in base.items()}
    train_items, _ = tiny_tokens
    cfg = TrainConfig(model="tiny", mode="lora", steps=4, batch_size=4, grad_accum=1, lr=3e-3, warmup_steps=1, save_every=4)
    train(cfg, tmp_path / "run", train_items, [], model=model, device="cpu")
    trained = dict(model.lm.named_parameters())  # the adapters were composed into this LM in place
    assert all(any(p is q for q in trained.values()) for p in base.values())  # still the model's weights
    assert all(torch.equal(p, before[n]) for n, p in base.items())  # and unchanged
    lora_b = [p for n, p in trained.items() if "lora_B" in n]
    assert lora_b and all(p.dtype == torch.float32 for p in lora_b)
    assert any(p.abs().sum() > 0 for p in lora_b)  # the adapters did train (B starts at 0)


def test_every_targeted_site_is_adapted_and_only_the_adapters_train():
    lm = add_lora(load_musicgen("tiny", "cpu").lm, LoraConfig(rank=4))
    layers = len(lm.transformer.layers)
    linears = [n for n, m in lm.named_modules() if isinstance(m, LoraLinear)]
    packed = [n for n, m in lm.named_modules() if isinstance(m, LoraDelta)]
    cross = lm.transformer.layers[0].cross_attention is not None
    assert len(linears) == layers * (3 + cross)  # out_proj (self, cross), linear1, linear2
    assert len(packed) == layers * (1 + cross)  # in_proj_weight (self, cross)
    trainable = {n for n, p in lm.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    with pytest.raises(ValueError, match="already has LoRA"):
        add_lora(lm, LoraConfig(rank=4))
    with pytest.raises(ValueError, match="no LoRA target"):
        add_lora(load_musicgen("tiny", "cpu").lm, LoraConfig(targets=["q_proj"], target_parameters=[]))


def test_lora_adapts_the_packed_attention_projection_and_merges_exactly():
    lm = trained_looking(add_lora(load_musicgen("tiny", "cpu").lm.eval(), LoraConfig(rank=4)))
    base = load_musicgen("tiny", "cpu").lm.eval()
    codes = torch.randint(400, (1, 4, 30))
    with torch.no_grad():
        adapted, plain = logits(lm, codes), logits(base, codes)
        merged = merge_lora(lm)
        assert not any("lora_" in k or "parametrizations" in k for k in merged.state_dict())  # audiocraft's keys
        assert merged.state_dict().keys() == base.state_dict().keys()
        after = logits(merged, codes)
    valid = torch.isfinite(adapted)
    assert (adapted[valid] - plain[valid]).abs().max() > 1e-2  # the adapters change the model
    assert torch.allclose(adapted[valid], after[valid], atol=1e-5)


@pytest.mark.parametrize("checkpointing", ["none", "torch"])
def test_adapter_gradients_equal_those_of_the_merged_formula(checkpointing):
    """Autograd through LoraLinear and the LoraDelta parametrization (cached, or recomputed by activation
    checkpointing) gives the adapters the gradients of the plain LM run with W + scaling * B @ A in
    every adapted weight (torch.func.functional_call: another code path to the same function)."""
    torch.manual_seed(0)
    lm = trained_looking(add_lora(load_musicgen("tiny", "cpu").lm.eval(), LoraConfig(rank=4)))
    lm.transformer.checkpointing = checkpointing
    plain = load_musicgen("tiny", "cpu").lm.eval()
    codes = torch.randint(400, (2, 4, 12))
    texts = ("calm piano", "fast drums")
    ours = LMLoss(lm)(codes, torch.ones_like(codes, dtype=torch.bool), [
        ConditioningAttributes(text={"description": t}) for t in texts])[0]
    ours.backward()

    adapters = {}  # plain LM weight name -> (A, B, scaling), leaves with their own gradients
    for name, m in lm.named_modules():
        if isinstance(m, LoraLinear):
            adapters[f"{name}.weight"] = (m.lora_A.weight, m.lora_B.weight, m.scaling)
        elif isinstance(m, LoraDelta):
            owner = name.split(".parametrizations.")[0]
            adapters[f"{owner}.in_proj_weight"] = (m.lora_A, m.lora_B, m.scaling)
    leaves = {k: (a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_(), s)
              for k, (a, b, s) in adapters.items()}
    weights = {k: plain.get_parameter(k).detach() + b @ a * s for k, (a, b, s) in leaves.items()}
    reference = torch.func.functional_call(LMLoss(plain), {f"lm.{k}": v for k, v in weights.items()}, (
        codes, torch.ones_like(codes, dtype=torch.bool), [ConditioningAttributes(text={"description": t}) for t in texts]),
        strict=False)[0]
    reference.backward()
    assert torch.allclose(ours, reference, atol=1e-5)
    for k, (a, b, _) in adapters.items():
        ra, rb, _ = leaves[k]
        assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0, k
        assert torch.allclose(a.grad, ra.grad, atol=1e-6, rtol=1e-4), k
        assert torch.allclose(b.grad, rb.grad, atol=1e-6, rtol=1e-4), k


def test_the_packed_projection_is_computed_once_per_attention_per_forward():
    """A cross-attention reads its packed weight three times (q, k, v): under loss.LMLoss, W + delta is
    built once per attention (parametrize.cached), so one copy is kept for backward, not three (the
    gradient test above covers activation checkpointing, where the cache is off)."""
    lm = add_lora(load_musicgen("tiny", "cpu").lm, LoraConfig(rank=4))
    deltas = [m for m in lm.modules() if isinstance(m, LoraDelta)]
    calls = []
    for d in deltas:
        d.register_forward_hook(lambda m, i, o: calls.append(m))
    codes = torch.randint(400, (1, 4, 8))
    LMLoss(lm)(codes, torch.ones_like(codes, dtype=torch.bool), [ConditioningAttributes(text={"description": "x"})])
    assert len(calls) == len(deltas) and set(map(id, calls)) == set(map(id, deltas))
    calls.clear()
    logits(lm, codes)  # outside the cache: every read computes it
    assert len(calls) > len(deltas)


def test_an_adapter_saved_and_loaded_gives_the_same_model(tmp_path):
    lm = trained_looking(add_lora(load_musicgen("tiny", "cpu").lm.eval(), LoraConfig(rank=4, alpha=8)))
    folder = save_adapter(lm, LoraConfig(rank=4, alpha=8), tmp_path / "adapter", base_model="tiny")
    config = json.loads((folder / "adapter_config.json").read_text())
    assert (config["peft_type"], config["r"], config["lora_alpha"], config["base_model_name_or_path"]) == ("LORA", 4, 8, "tiny")
    loaded = load_adapter(load_musicgen("tiny", "cpu").lm.eval(), folder)
    codes = torch.randint(400, (1, 4, 20))
    with torch.no_grad():
        a, b = logits(lm, codes), logits(loaded, codes)
    assert torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())


@pytest.mark.skipif(PEFT is None, reason="peft is not installed (requirements-dev.txt)")
@pytest.mark.xfail(PEFT is not None and PEFT >= Version("0.22"), raises=AttributeError, strict=True,
                   reason="peft 0.22 cannot adapt out_proj inside an attention whose in_proj_weight it adapts "
                          "('ParamWrapper has no attribute out_proj'); peft 0.17-0.21 can")
def test_peft_loads_the_saved_adapter_and_computes_the_same_logits(tmp_path):
    """The claim that our files are peft's format: PeftModel.from_pretrained on the plain base LM gives
    our adapted LM's logits (peft's own LoRA implementation: same keys, shapes, scaling and orientation)."""
    from peft import PeftModel

    lm = trained_looking(add_lora(load_musicgen("tiny", "cpu").lm.eval(), LoraConfig(rank=4, alpha=8)))
    folder = save_adapter(lm, LoraConfig(rank=4, alpha=8), tmp_path / "adapter", base_model="tiny")
    peft_lm = PeftModel.from_pretrained(load_musicgen("tiny", "cpu").lm, str(folder)).eval()
    assert {k.replace(".default", "") for k, _ in peft_lm.named_parameters() if "lora_" in k} == {
        k.removesuffix(".weight") + ".weight" for k in adapter_state(lm)}
    codes = torch.randint(400, (1, 4, 20))
    with torch.no_grad():
        ours, theirs = logits(lm, codes), logits(peft_lm, codes)
    valid = torch.isfinite(ours)
    assert torch.allclose(ours[valid], theirs[valid], atol=1e-5)


def test_an_adapter_of_another_rank_or_a_full_runs_weights_are_refused_by_name():
    lm = add_lora(load_musicgen("tiny", "cpu").lm, LoraConfig(rank=4))
    other_rank = adapter_state(add_lora(load_musicgen("tiny", "cpu").lm, LoraConfig(rank=8)))
    with pytest.raises(ValueError, match=r"ckpt_00000008.*other shapes.*rank"):
        load_adapter_state(lm, other_rank, source="ckpt_00000008")
    with pytest.raises(ValueError, match=r"ckpt_00000004.*does not fit.*full run"):
        load_adapter_state(lm, load_musicgen("tiny", "cpu").lm.state_dict(), source="ckpt_00000004")
    fewer = adapter_state(add_lora(load_musicgen("tiny", "cpu").lm, LoraConfig(rank=4, target_parameters=[])))
    with pytest.raises(ValueError, match="missing"):
        load_adapter_state(lm, fewer)


def test_a_damaged_adapter_folder_is_named(tmp_path):
    lm = add_lora(load_musicgen("tiny", "cpu").lm, LoraConfig(rank=2))
    folder = save_adapter(lm, LoraConfig(rank=2), tmp_path / "adapter")
    (folder / "adapter_model.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(ValueError, match="adapter_model.safetensors: unreadable"):
        load_adapter(load_musicgen("tiny", "cpu").lm, folder)
    (folder / "adapter_config.json").write_text("[" * 100_000)
    with pytest.raises(ValueError, match="adapter_config.json: not a readable LoRA adapter config"):
        load_adapter(load_musicgen("tiny", "cpu").lm, folder)


def test_a_copy_of_an_adapted_lm_is_independent():
    """deepcopy (the tests' and evaluate's way to keep a base) copies the adapters and parametrizations."""
    lm = add_lora(load_musicgen("tiny", "cpu").lm, LoraConfig(rank=2))
    twin = copy.deepcopy(lm)
    with torch.no_grad():
        next(p for n, p in twin.named_parameters() if "lora_B" in n).fill_(1.0)
    assert all(p.abs().sum() == 0 for n, p in lm.named_parameters() if "lora_B" in n)
    assert parametrize.is_parametrized(twin.transformer.layers[0].self_attn, "in_proj_weight")
