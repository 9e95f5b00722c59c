"""The cached text encoder against audiocraft's live T5Conditioner: the same condition tensors (kept and
dropped captions), the same logits and output-projection gradients, and a disk cache that is reused,
invalidated and repaired like the token cache."""
import copy

import pytest
import torch
from audiocraft.modules.conditioners import ClassifierFreeGuidanceDropout, ConditioningAttributes, T5Conditioner

from hub_standin import T5_BASE_CONFIG, offline_hub, put_repo, train_spiece
from jpop_helpers.conditions import CachedTextConditioner, encode_texts, load_or_encode, use_cached_text

CAPTIONS = ["Upbeat j-pop song with bright synths and piano, 128 bpm.", "Calm ballad.",
            "A city pop track featuring electric guitar, bass and drums, nostalgic mood, key of A minor."]


@pytest.fixture(scope="module")
def t5_hub(tmp_path_factory):
    """A Hugging Face cache holding `t5-base`: its real configuration at 2 layers and a small vocabulary
    (the tokenizer's), random weights, a trained sentencepiece tokenizer (tests/hub_standin.py)."""
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    cache = tmp_path_factory.mktemp("hf")
    tmp = tmp_path_factory.mktemp("t5-build")
    (tmp / "spm").mkdir()
    (tmp / "spm" / "spiece.model").write_bytes(train_spiece())
    T5Tokenizer.from_pretrained(str(tmp / "spm")).save_pretrained(str(tmp / "tok"))
    torch.manual_seed(0)
    T5EncoderModel(T5Config(**{**T5_BASE_CONFIG, "num_layers": 2, "vocab_size": 2200})).save_pretrained(str(tmp / "m"))
    put_repo(cache, "t5-base", {"config.json": tmp / "m" / "config.json", "model.safetensors": tmp / "m" / "model.safetensors",
                                "spiece.model": tmp / "spm" / "spiece.model", "tokenizer.json": tmp / "tok" / "tokenizer.json"},
             "0" * 40)
    return cache


@pytest.fixture(scope="module")
def t5_lm(t5_hub):
    """The tiny LM with audiocraft's real T5Conditioner (frozen t5-base stand-in) as its description."""
    from jpop_helpers.model import load_musicgen

    model = load_musicgen("tiny", "cpu")
    with offline_hub(t5_hub):
        cond = T5Conditioner("t5-base", output_dim=model.lm.dim, finetune=False, device="cpu", word_dropout=0.3)
    torch.manual_seed(1)
    torch.nn.init.normal_(cond.output_proj.weight, std=0.05)
    model.lm.condition_provider.conditioners["description"] = cond
    return model


def _conditions(lm, texts):
    attrs = [ConditioningAttributes(text={"description": t}) for t in texts]
    return lm.condition_provider(lm.condition_provider.tokenize(attrs))["description"]


def test_cached_conditions_equal_the_live_t5_path_for_kept_and_dropped_captions(t5_lm):
    lm = copy.deepcopy(t5_lm.lm).eval()  # eval: no word dropout in the live path (see conditions.py)
    batch = [CAPTIONS[0], None, CAPTIONS[1], "", CAPTIONS[2]]
    live, live_mask = _conditions(lm, batch)
    cond = lm.condition_provider.conditioners["description"]
    restore = use_cached_text(lm, CAPTIONS, folder=None)
    assert isinstance(lm.condition_provider.conditioners["description"], CachedTextConditioner)
    cached, cached_mask = _conditions(lm, batch)
    assert cached.shape == live.shape and live.shape[1] > 1  # padded to the longest caption, as T5's tokenizer does
    assert torch.equal(cached_mask, live_mask) and cached_mask.dtype == live_mask.dtype
    assert cached_mask[1].sum() == 0 and cached_mask[3].sum() == 0  # dropped: nothing to attend to
    assert torch.allclose(cached, live, atol=1e-5)
    assert cached[[1, 3]].abs().sum() == 0

    # A whole batch nullified by audiocraft's own CFG dropout (what generation's unconditional half is).
    attrs = [ConditioningAttributes(text={"description": t}) for t in CAPTIONS]
    null = ClassifierFreeGuidanceDropout(p=1.0)(attrs)
    cached_null = lm.condition_provider(lm.condition_provider.tokenize(null))["description"]
    restore()
    assert lm.condition_provider.conditioners["description"] is cond
    live_null = lm.condition_provider(lm.condition_provider.tokenize(null))["description"]
    assert cached_null[0].shape == live_null[0].shape == (3, 1, lm.dim)
    assert torch.equal(cached_null[1], live_null[1]) and torch.equal(cached_null[0], live_null[0])


def test_cached_path_gives_the_same_logits_and_output_projection_gradient(t5_lm):
    lm = copy.deepcopy(t5_lm.lm).eval()
    codes = torch.randint(400, (3, 4, 20))
    texts = [CAPTIONS[2], None, CAPTIONS[0]]
    proj = lm.condition_provider.conditioners["description"].output_proj

    def run():
        proj.weight.grad = None
        logits = lm.compute_predictions(codes, [], dict(description=_conditions(lm, texts))).logits
        logits.nan_to_num(0.0).pow(2).mean().backward()
        return logits.detach(), proj.weight.grad.clone()

    live_logits, live_grad = run()
    restore = use_cached_text(lm, CAPTIONS, folder=None)
    assert lm.condition_provider.conditioners["description"].output_proj is proj  # the trained part is shared
    cached_logits, cached_grad = run()
    restore()
    ok = torch.isfinite(live_logits)
    assert torch.equal(ok, torch.isfinite(cached_logits))
    assert torch.allclose(cached_logits[ok], live_logits[ok], atol=1e-5)
    assert torch.allclose(cached_grad, live_grad, rtol=1e-4, atol=1e-7) and live_grad.abs().sum() > 0
    assert set(lm.state_dict()) == set(t5_lm.lm.state_dict())  # no key added or lost by the swap


def test_disk_cache_is_reused_invalidated_and_repaired(t5_lm, tmp_path, monkeypatch):
    cond = copy.deepcopy(t5_lm.lm.condition_provider.conditioners["description"])
    cond.__dict__["t5"] = copy.deepcopy(cond.t5)  # T5 is kept outside the module tree: copy it too
    calls = []
    real_forward = cond.t5.forward
    monkeypatch.setattr(cond.t5, "forward", lambda *a, **k: calls.append(1) or real_forward(*a, **k))
    first = load_or_encode(cond, CAPTIONS, tmp_path)
    assert calls and sorted(first) == sorted(CAPTIONS)
    expected = encode_texts(cond, CAPTIONS)
    assert all(torch.equal(first[t], expected[t]) for t in CAPTIONS)

    calls.clear()
    again = load_or_encode(cond, CAPTIONS, tmp_path)
    assert not calls and all(torch.equal(again[t], first[t]) for t in CAPTIONS)  # read back, T5 not run

    # a torn shard is re-encoded, not trusted; a dropped caption leaves the index
    shard = next(tmp_path.glob("shard-*.safetensors"))
    shard.write_bytes(shard.read_bytes()[:100])
    repaired = load_or_encode(cond, CAPTIONS[:2], tmp_path)
    assert calls and all(torch.equal(repaired[t], first[t]) for t in CAPTIONS[:2])
    assert not shard.exists() and len(list(tmp_path.glob("shard-*.safetensors"))) == 1

    # other T5 weights: everything is encoded again
    with torch.no_grad():
        cond.t5.shared.weight.mul_(1.5)
    calls.clear()
    changed = load_or_encode(cond, CAPTIONS[:2], tmp_path)
    assert calls and not torch.allclose(changed[CAPTIONS[0]], first[CAPTIONS[0]])


def test_training_with_the_cache_matches_training_with_live_t5(t5_lm, tiny_tokens, tmp_path):
    """The loop end to end (word dropout off in both, as the cache implies)."""
    from jpop_helpers.train import TrainConfig, train

    train_items, _ = tiny_tokens
    runs = {}
    for mode in ("cached", "live"):
        model = copy.copy(t5_lm)  # the codec is shared (frozen), the LM trained on a copy
        model.lm = copy.deepcopy(t5_lm.lm)
        model.lm.condition_provider.conditioners["description"].word_dropout = 0.0
        cfg = TrainConfig(model="tiny", mode="full", steps=2, batch_size=4, grad_accum=1, lr=1e-3, warmup_steps=1,
                          eval_every=2, save_every=2, log_every=1, cfg_dropout=0.5, text_encoder=mode)
        runs[mode] = train(cfg, tmp_path / mode, train_items, [], model=model, device="cpu",
                           text_cache=tmp_path / "text_cache")
        assert isinstance(model.lm.condition_provider.conditioners["description"], T5Conditioner)  # put back
    ce = {m: [r["train/ce"] for r in runs[m].metrics if "train/ce" in r] for m in runs}
    assert ce["cached"] == pytest.approx(ce["live"], rel=1e-5) and len(ce["live"]) == 2
    assert (tmp_path / "text_cache" / "description" / "index.json").exists()
