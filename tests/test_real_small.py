"""The real loading path of facebook/musicgen-small (T5 included), offline, end to end.

A stand-in Hugging Face cache (tests/hub_standin.py: audiocraft's builders, audiocraft v1.3.0's own
configuration, random weights, a t5-base-shaped encoder and a sentencepiece tokenizer trained here) is
built once for this module; with HF_HUB_OFFLINE=1 and HF_HUB_CACHE pointing at it, the package loads
`facebook/musicgen-small`, trains it for two steps in both modes, exports, and audiocraft loads the export.

Depth is reduced for speed (LM 24 -> 1 layer, T5 12 -> 2 layers; JPOP_STANDIN_LM_LAYERS /
JPOP_STANDIN_T5_LAYERS change it, e.g. 24 and 12 for the real depth: ~13 GB RSS and ~3 min for the
LoRA case alone). Both are read back from the stored configurations (xp.cfg, T5's config.json), so the
loading path is the real one; every check below is written for any depth.
"""
from __future__ import annotations

import copy
import math
import os
import random

import pytest
import torch
import torch.nn.functional as F

from hub_standin import MUSIC_WORDS, MUSICGEN_REPO, build_standin_hub, offline_hub

pytestmark = pytest.mark.slow

LM_LAYERS = int(os.environ.get("JPOP_STANDIN_LM_LAYERS", 1))
T5_LAYERS = int(os.environ.get("JPOP_STANDIN_T5_LAYERS", 2))
CARD, N_Q, DIM, RANK = 2048, 4, 1024, 16
FRAMES = 100  # 2-s clips at EnCodec 32 kHz's 50 Hz
TEXTS = ["upbeat j-pop song with bright synths and piano", "sad piano ballad with female vocals",
         "energetic anime opening theme with electric guitar and drums", "calm lofi city pop at night"]


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """The stand-in cache, and this process pointed at it (offline) for the whole module."""
    cache = tmp_path_factory.mktemp("hf_home") / "hub"
    info = build_standin_hub(cache, num_layers=LM_LAYERS, t5_num_layers=T5_LAYERS)
    print(f"\nstand-in hub built in {info.seconds['total']:.1f} s: {info.seconds}")
    with offline_hub(cache):
        yield info


@pytest.fixture(scope="module")
def base(hub):
    from jpop_helpers.model import load_musicgen

    return load_musicgen(MUSICGEN_REPO, "cpu")


@pytest.fixture(scope="module")
def items():
    """Random-token clips (train, valid): 2 s each, the last valid clip padded after 1.5 s."""
    from jpop_helpers.tokens import TokenItem

    g = torch.Generator().manual_seed(1)

    def item(i, valid=FRAMES):
        codes = torch.randint(0, CARD, (N_Q, FRAMES), generator=g).to(torch.int16)
        return TokenItem(f"clip{i}", codes, valid, [TEXTS[i % len(TEXTS)], f"take {i}"])

    return [item(i) for i in range(4)], [item(4), item(5, valid=75)]


@torch.no_grad()
def lm_ce(lm, items) -> dict:
    """Per-codebook masked CE averaged over codebooks, as audiocraft's solver computes it, on one
    batch (each clip's first description, no dropout), written here independently of the package.

    Returns:
        {"ce", "expected": E[CE] for uniformly random targets given these logits, "sd": its standard
         deviation, "s2": mean per-token variance of the logits over the vocabulary}
    """
    from audiocraft.modules.conditioners import ConditioningAttributes

    was_training = lm.training
    lm.eval()
    codes = torch.stack([it.codes.long() for it in items])
    pad = torch.zeros_like(codes, dtype=torch.bool)
    for i, it in enumerate(items):
        pad[i, :, : it.valid_frames] = True
    attrs = [ConditioningAttributes(text={"description": it.descriptions[0]}) for it in items]
    cond = lm.condition_provider(lm.condition_provider.tokenize(attrs))
    out = lm.compute_predictions(codes, [], cond)
    lm.train(was_training)
    ce = expected = var = s2 = 0.0
    for k in range(codes.shape[1]):
        m = pad[:, k] & out.mask[:, k]
        logits, target = out.logits[:, k][m].float(), codes[:, k][m]
        n = target.numel()
        ce += float(F.cross_entropy(logits, target)) / N_Q
        # With targets uniform and independent of the model, E[CE | logits] = lse - mean_j z_j exactly;
        # the target logit's spread around that mean is the per-token logit variance.
        expected += float((logits.logsumexp(-1) - logits.mean(-1)).mean()) / N_Q
        token_var = logits.var(-1, unbiased=False)
        var += float(token_var.sum()) / n**2 / N_Q**2
        s2 += float(token_var.mean()) / N_Q
    return {"ce": ce, "expected": expected, "sd": math.sqrt(var), "s2": s2}


@pytest.fixture(scope="module")
def base_ce(base, items):
    return lm_ce(base.lm, items[1])


# ---------------------------------------------------------------- loading
def test_loads_the_hub_model_offline(hub, base):
    from huggingface_hub import constants, try_to_load_from_cache

    assert constants.HF_HUB_OFFLINE
    for name in ("state_dict.bin", "compression_state_dict.bin"):
        path = try_to_load_from_cache(MUSICGEN_REPO, name)
        assert isinstance(path, str) and path.startswith(str(hub.cache_dir)) and hub.revision in path
    cfg = base.lm.cfg  # the xp.cfg that get_pretrained read back
    assert cfg.solver == "musicgen" and cfg.transformer_lm.num_layers == LM_LAYERS
    assert (cfg.transformer_lm.dim, cfg.transformer_lm.num_heads, cfg.transformer_lm.card) == (DIM, 16, CARD)
    assert cfg.conditioners.description.model == "t5" and cfg.conditioners.description.t5.name == "t5-base"
    assert len(base.lm.transformer.layers) == LM_LAYERS and base.lm.transformer.layers[0].cross_attention is not None
    assert (base.sample_rate, base.frame_rate, base.compression_model.num_codebooks, base.compression_model.cardinality) \
        == (32000, 50, N_Q, CARD)
    assert next(base.lm.parameters()).dtype == torch.float32


def test_t5_conditioner_really_tokenizes(hub, base):
    import sentencepiece as spm
    from huggingface_hub import try_to_load_from_cache
    from transformers import T5EncoderModel

    cond = base.lm.condition_provider.conditioners["description"]
    assert type(cond).__name__ == "T5Conditioner" and isinstance(cond.t5, T5EncoderModel)
    assert cond.t5.config.num_layers == T5_LAYERS and cond.t5.config.d_model == 768
    tok = cond.t5_tokenizer
    sp = spm.SentencePieceProcessor(model_file=try_to_load_from_cache("t5-base", "spiece.model"))
    # Not the transformers-5 trap (an empty vocabulary: 3 specials + "▁" + 100 sentinels, all words <unk>).
    assert len(tok) == sp.get_piece_size() + 100 > 1000
    inputs = cond.tokenize([*TEXTS, None])
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    for row, m, text in zip(ids, mask, TEXTS):
        real = row[m.bool()].tolist()
        assert real[-1] == tok.eos_token_id and tok.unk_token_id not in real
        assert len(real) - 1 >= len(text.split()) > 1
        assert real[:-1] == sp.encode(text)  # what the trained sentencepiece model says
    assert mask[-1].sum() == 0  # a missing description is masked out, as audiocraft does
    assert len({tuple(r.tolist()) for r in ids[:-1]}) == len(TEXTS)
    emb, emb_mask = cond(inputs)
    assert emb.shape[:2] == ids.shape and emb.shape[-1] == DIM and torch.isfinite(emb).all()
    assert not torch.allclose(emb[0, 0], emb[1, 0])
    # audiocraft keeps the frozen T5 outside the LM's module tree (never in its state dict, nor trained).
    assert not any("t5" in n.split(".") for n, _ in base.lm.named_parameters())
    assert set(w for t in TEXTS for w in t.split()) <= set(MUSIC_WORDS)


def test_cross_entropy_at_step0_is_that_of_random_logits(base_ce):
    """CE of a freshly initialised LM on random tokens.

    audiocraft's gaussian init gives the output heads std 1/sqrt(dim) (truncated at 3 std, variance
    0.973/dim) after a LayerNorm with unit variance, so each logit is ~N(0, s^2) with s^2 ~ 0.97. For
    card N = 2048 independent logits, E[logsumexp] = log N + s^2/2 (to O(1/N)) and a random target's
    logit has mean 0: CE0 ~ log(2048) + s^2/2 ~ 7.62 + 0.49. Exactly, given the logits, E[CE] =
    lse - mean(z) over tokens; the only randomness left is which target each token has, whose
    standard deviation `sd` gives a 4-sigma band.
    """
    ce, expected, sd, s2 = (base_ce[k] for k in ("ce", "expected", "sd", "s2"))
    print(f"\nCE0 {ce:.4f} = log(2048) {math.log(CARD):.4f} + {ce - math.log(CARD):.4f}; s^2/2 = {s2 / 2:.4f}, "
          f"E[CE|logits] {expected:.4f} +- {sd:.4f}")
    assert 0.8 < s2 < 1.2
    assert abs(ce - expected) < 4 * sd, (ce, expected, sd)
    assert abs(expected - (math.log(CARD) + s2 / 2)) < 0.01
    assert abs(ce - math.log(CARD) - s2 / 2) < 4 * sd + 0.01
    assert 0 < ce - math.log(CARD) < 0.65


# ---------------------------------------------------------------- train, export, load the export
def lora_sites(lm) -> dict[str, int]:
    """{adapted site (module path, '.in_proj_weight' for packed attention): its LoRA parameter count}."""
    from jpop_helpers.lora import LoraDelta, LoraLinear

    sites = {}
    for name, module in lm.named_modules():
        if isinstance(module, LoraLinear):
            sites[name] = module.lora_A.weight.numel() + module.lora_B.weight.numel()
        elif isinstance(module, LoraDelta):  # <attention>.parametrizations.in_proj_weight.0
            owner, _, rest = name.partition(".parametrizations.")
            sites[f"{owner}.{rest.split('.')[0]}"] = module.lora_A.numel() + module.lora_B.numel()
    return sites


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_train_export_and_load_export(mode, base, base_ce, items, tmp_path):
    from audiocraft.models import MusicGen

    from jpop_helpers.export import export_run
    from jpop_helpers.train import TrainConfig, train

    train_items, valid_items = items
    model = copy.copy(base)  # the base LM stays untouched for the other mode; the codec is frozen
    model.lm = copy.deepcopy(base.lm)  # (EnCodec's weight_norm tensors cannot be deep-copied)
    t5 = model.lm.condition_provider.conditioners["description"].t5
    t5_before = {k: v.clone() for k, v in t5.state_dict().items()}
    lm_before = {k: v.clone() for k, v in model.lm.state_dict().items()}
    ce0 = base_ce["ce"]

    config = TrainConfig(model=MUSICGEN_REPO, mode=mode, steps=2, batch_size=2, grad_accum=1, lr=1e-3 if mode == "full" else 1e-2,
                         warmup_steps=1, eval_every=2, save_every=2, log_every=1, seed=0)
    run = tmp_path / f"run-{mode}"
    result = train(config, run, train_items, valid_items, model=model, device="cpu")
    assert result.step == 2
    rows = [r for r in result.metrics if "valid/ce" in r]
    assert rows[0]["step"] == 0 and abs(rows[0]["valid/ce"] - ce0) < 1e-4  # the package's CE == ours
    trained_ce = result.final_valid["valid/ce"]
    assert abs(trained_ce - ce0) > 1e-3, (ce0, trained_ce)  # two steps moved it (on random tokens, not down)

    # T5 is frozen in both modes and outside the LM's tree.
    assert all(torch.equal(v, t5_before[k]) for k, v in t5.state_dict().items())
    assert all(p.grad is None for p in t5.parameters())  # audiocraft runs it under set_grad_enabled(False)
    if mode == "full":
        changed = {k for k, v in model.lm.state_dict().items() if v.is_floating_point() and not torch.equal(v, lm_before[k])}
        assert "condition_provider.conditioners.description.output_proj.weight" in changed
        assert changed == {k for k, v in lm_before.items() if v.is_floating_point()}  # every LM weight trained
    else:
        sites = lora_sites(model.lm)
        per_kind = {"self_attn.in_proj_weight": RANK * (DIM + 3 * DIM), "cross_attention.in_proj_weight": RANK * (DIM + 3 * DIM),
                    "self_attn.out_proj": RANK * 2 * DIM, "cross_attention.out_proj": RANK * 2 * DIM,
                    "linear1": RANK * (DIM + 4 * DIM), "linear2": RANK * (4 * DIM + DIM)}
        expected = {f"transformer.layers.{i}.{kind}": n for i in range(LM_LAYERS) for kind, n in per_kind.items()}
        assert sites == expected
        per_layer = sum(per_kind.values())
        assert (6 * 24, per_layer * 24) == (144, 8_650_752)  # the real small: 24 layers
        trainable = sum(p.numel() for p in model.lm.parameters() if p.requires_grad)
        assert (len(sites), trainable) == (6 * LM_LAYERS, per_layer * LM_LAYERS)

    out = export_run(run, tmp_path / f"export-{mode}")
    assert (out / "state_dict.bin").exists() and (out / "compression_state_dict.bin").exists()
    assert (out / "adapter").is_dir() == (mode == "lora")
    exported = MusicGen.get_pretrained(str(out), device="cpu")
    assert exported.lm.cfg.conditioners.description.t5.name == "t5-base"
    export_ce = lm_ce(exported.lm, valid_items)["ce"]
    # The export stores half-precision weights: rounding each weight by <= 2^-11 relative moves the
    # CE by ~1e-5 here (first-order terms of random sign average out over the tokens); 1e-3 is loose.
    print(f"\n{mode}: CE step0 {ce0:.5f} trained {trained_ce:.5f} export {export_ce:.5f} "
          f"(gap {export_ce - trained_ce:+.2e})")
    assert abs(export_ce - trained_ce) < 1e-3

    if mode == "full":
        return  # one generation (from the merged LoRA export) is enough: the same loader and sampler
    exported.set_generation_params(duration=0.5, top_k=250)
    torch.manual_seed(0)
    wav = exported.generate(["upbeat j-pop song with piano"])
    assert wav.shape == (1, 1, 16000) and torch.isfinite(wav).all() and wav.abs().max() > 0


def test_same_seed_same_run(base, items, tmp_path):
    """The real T5Conditioner's word dropout (0.3 in musicgen-small's xp.cfg) draws from Python's
    `random`, which the loop seeds per micro-batch: whatever ran before, the same config gives the same run."""
    from jpop_helpers.train import TrainConfig, train

    train_items, _ = items
    config = TrainConfig(model=MUSICGEN_REPO, mode="lora", steps=1, batch_size=2, grad_accum=1, lr=1e-3, warmup_steps=1,
                         cfg_dropout=0.0, log_every=1, seed=0)
    ces = []
    for i in range(2):
        model = copy.copy(base)
        model.lm = copy.deepcopy(base.lm)
        random.seed(100 + i)  # whatever ran before in the process (a notebook, another run)
        result = train(config, tmp_path / f"run{i}", train_items, [], model=model, device="cpu")
        ces.append(next(r["train/ce"] for r in result.metrics if "train/ce" in r))
    assert ces[0] == ces[1], ces


# ---------------------------------------------------------------- the memory plan reads the real config
def test_the_plan_reads_the_real_architecture_from_the_hub_checkpoint(hub, base):
    from jpop_helpers.plan import read_arch

    arch = read_arch(MUSICGEN_REPO)  # from the cached files' stored xp.cfg, weights not read
    assert (arch.dim, arch.layers, arch.codebooks, arch.card, arch.frame_rate) == (DIM, LM_LAYERS, N_Q, CARD, 50.0)
    # T5 is sized by the name the checkpoint stores; t5-base's encoder, counted on the meta device:
    from transformers import T5Config, T5EncoderModel

    from hub_standin import T5_BASE_CONFIG

    with torch.device("meta"):
        t5_base = T5EncoderModel(T5Config(**T5_BASE_CONFIG))
    assert arch.text_encoder_params == pytest.approx(sum(p.numel() for p in t5_base.parameters()), rel=0.002)
    assert arch.lm_params == pytest.approx(sum(p.numel() for p in base.lm.parameters()), rel=0.002)
