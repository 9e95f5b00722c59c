"""The fast sampler against audiocraft's own LMModel: same tokens (greedy), same logits, same support.

Every check runs over several LM builds (`MODELS`): the tiny MusicGen, and tiny LMs that exercise what
the tiny one does not (post-norm layers with layer scale, biases, q/k layer norms and gelu; conditions
of different lengths per prompt, cross-attended or prepended; 8 codebooks with a stereo delay pattern;
another pattern provider; LoRA adapters, unmerged and merged; the bundled tiny-stereo and tiny-melody).
Adding a model variant is one entry.
"""
from __future__ import annotations

import copy
import random

import pytest
import torch

from jpop_helpers.model import WordTokenizer
from jpop_helpers.sampler import SamplingParams, generate_tokens, sample_tokens, step_logits

PROMPTS = ["calm piano", "fast drums with a loud electric guitar solo", "city pop at night with synths"]


class EnvelopeMelody:
    """A 'self_wav' conditioner standing in for ChromaStemConditioner (which needs Demucs): per-frame
    statistics of the mono melody through audiocraft's WaveformConditioner, whose forward projects and
    masks them. Melodies of different lengths give prefixes of different lengths."""

    HOP = 1280  # samples per frame: 25 Hz at 32 kHz

    @classmethod
    def make(cls, dim: int):
        from audiocraft.modules.conditioners import WaveformConditioner

        class _Envelope(WaveformConditioner):
            def _downsampling_factor(self):
                return cls.HOP

            def _get_wav_embedding(self, x):
                wav = x.wav[:, 0]  # [B, T]
                frames = max(1, wav.shape[-1] // cls.HOP)
                w = torch.nn.functional.pad(wav, (0, max(0, frames * cls.HOP - wav.shape[-1])))
                w = w[:, : frames * cls.HOP].reshape(wav.shape[0], frames, cls.HOP)
                return torch.stack([w.pow(2).mean(-1).sqrt(), w.mean(-1), w.amax(-1), w.amin(-1)], dim=-1)

        return _Envelope(4, dim, "cpu")


def build_lm(seed=0, words=True, post_norm=False, prepend=False, n_q=4, delays=None, pattern="delay", melody=False):
    """A tiny audiocraft LMModel built by audiocraft's builders from jpop_helpers' tiny config."""
    from audiocraft.models import builders
    from omegaconf import OmegaConf

    from jpop_helpers.model import tiny_lm_cfg

    cfg = tiny_lm_cfg()
    tl = cfg["transformer_lm"]
    tl["n_q"] = n_q
    if post_norm:  # the other branch of audiocraft's layer, with everything it can hold
        tl.update(norm_first=False, layer_scale=0.5, bias_attn=True, bias_ff=True, activation="gelu",
                  qk_layer_norm=True, qk_layer_norm_cross=True, zero_bias_init=False)
        cfg["fuser"]["cross_attention_pos_emb"] = True
    if prepend:  # conditions prepended to the sequence (as MusicGen-melody's), no cross-attention
        cfg["fuser"].update(prepend=["description"], cross=[])
        tl["cross_attention"] = False
    cfg["codebooks_pattern"] = {"modeling": pattern, "delay": {"delays": delays or list(range(n_q))},
                                "unroll": {"flattening": list(range(n_q)), "delays": [0] * n_q}}
    if melody:  # MusicGen-melody's fusing: the melody prepended, the text cross-attended here
        cfg["fuser"]["prepend"] = ["self_wav"]
    torch.manual_seed(seed)
    lm = builders.get_lm_model(OmegaConf.create(cfg))
    if melody:
        lm.condition_provider.conditioners["self_wav"] = EnvelopeMelody.make(lm.dim)
    if words:
        lm.condition_provider.conditioners["description"].tokenizer = WordTokenizer(256 - 1)
    with torch.no_grad():  # audiocraft zeroes attention biases at init: make them matter
        for name, p in lm.named_parameters():
            if name.endswith("bias") or "layer_scale" in name:
                p.normal_(0, 0.3)
    return lm.eval()


def with_lora(lm, merge=False):
    from jpop_helpers.lora import LoraConfig, add_lora, merge_lora

    torch.manual_seed(1)
    adapted = add_lora(copy.deepcopy(lm), LoraConfig(rank=4))
    with torch.no_grad():  # lora_B starts at zero (no change): make the adapter change the model
        for name, p in adapted.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    adapted.eval()
    return merge_lora(adapted).eval() if merge else adapted


def released(name="tiny"):
    from jpop_helpers.model import load_musicgen

    return load_musicgen(name, "cpu").lm.eval()


def tiny_musicgen_lm():
    return released("tiny")


MODELS = {
    "tiny": tiny_musicgen_lm,
    "words-postnorm": lambda: build_lm(post_norm=True),
    "prepend-stereo": lambda: build_lm(prepend=True, n_q=8, delays=[0, 0, 1, 1, 2, 2, 3, 3]),
    "unroll-pattern": lambda: build_lm(pattern="unroll"),
    "lora-adapter": lambda: with_lora(build_lm()),
    "melody": lambda: build_lm(melody=True),
    "tiny-stereo": lambda: released("tiny-stereo"),  # the bundled variant (8 codebooks, stereo delays)
    # the bundled melody model: audiocraft's ChromaStemConditioner, whose Demucs draws a random time shift
    # from Python's `random`; the sampler seeds it with the prompt's seed, and so do the references here
    "tiny-melody": lambda: released("tiny-melody"),
}
_built: dict = {}


def get(name):
    if name not in _built:
        _built[name] = MODELS[name]()
    return _built[name]


@pytest.fixture(params=list(MODELS))
def lm(request):
    return get(request.param)


def melody_wav(i: int, sample_rate: int = 32000) -> torch.Tensor:
    """A short two-tone melody [1, T] whose length depends on i (0.3 s to 0.7 s)."""
    t = torch.arange(int((0.3 + 0.2 * (i % 3)) * sample_rate)) / sample_rate
    return (0.5 * torch.sin(2 * torch.pi * (220 + 110 * i) * t) * (1 + (t * 4).floor() % 2))[None]


def attributes(prompts, lm=None):
    """ConditioningAttributes as MusicGen._prepare_tokens_and_attributes builds them (text, and a
    melody per prompt when the LM takes one)."""
    from audiocraft.modules.conditioners import ConditioningAttributes, WavCondition

    attrs = [ConditioningAttributes(text={"description": p}) for p in prompts]
    if lm is not None and "self_wav" in base(lm).condition_provider.conditioners:
        for i, a in enumerate(attrs):
            wav = melody_wav(i + len(a.text["description"]))
            a.wav["self_wav"] = WavCondition(wav[None], torch.tensor([wav.shape[-1]]), sample_rate=[32000], path=[None])
    return attrs


def base(lm):
    from jpop_helpers.sampler import base_lm

    return base_lm(lm)


def test_greedy_tokens_are_audiocraft_generates(lm, request):
    """Batched, with CFG: every prompt's tokens equal LMModel.generate's for that prompt alone."""
    frames = 3 if "unroll" in request.node.callspec.id else 6  # unrolled: K sequence steps per frame
    prompts = PROMPTS[:2]  # of different lengths
    ours = generate_tokens(lm, attributes(prompts, lm), [0, 1], frames, SamplingParams(use_sampling=False, cfg_coef=3.0))
    assert ours.shape == (len(prompts), base(lm).num_codebooks, frames)
    for i, prompt in enumerate(prompts):
        random.seed(i)  # prompt i's seed, as the sampler seeds a melody's Demucs shift
        ref = base(lm).generate(None, attributes(prompts, lm)[i : i + 1], max_gen_len=frames, use_sampling=False, cfg_coef=3.0)
        assert torch.equal(ours[i : i + 1], ref), prompt


@pytest.mark.parametrize("name", ["words-postnorm", "prepend-stereo", "melody"])  # with padded rows
def test_attention_windows_wider_than_the_filled_cache_change_nothing(name):
    """The GPU path reads the cache in fixed windows (one CUDA graph each), masking unfilled slots."""
    lm = get(name)
    params = SamplingParams(top_k=20)
    exact = generate_tokens(lm, attributes(PROMPTS, lm), [5, 6, 7], 6, params)
    windowed = generate_tokens(lm, attributes(PROMPTS, lm), [5, 6, 7], 6, params, kv_bucket=7)
    assert torch.equal(exact, windowed)


def test_logits_match_audiocraft_for_the_same_prefix_and_conditions(lm):
    """Teacher-forced random codes: the sampler's CFG logits at every step against audiocraft's
    non-streaming forward of the whole pattern sequence (each prompt with its null condition)."""
    from audiocraft.modules.conditioners import ClassifierFreeGuidanceDropout

    b = base(lm)
    frames, cfg_coef = 6, 2.5
    codes = torch.randint(0, b.card, (len(PROMPTS), b.num_codebooks, frames), generator=torch.Generator().manual_seed(3))
    ours = step_logits(lm, attributes(PROMPTS, lm), codes, cfg_coef)  # [B, K, S - start, card]
    pattern = b.pattern_provider.get_pattern(frames)
    start = pattern.get_first_step_with_timesteps(0)
    for i, attr in enumerate(attributes(PROMPTS, lm)):
        seq, _, _ = pattern.build_pattern_sequence(codes[i : i + 1], b.special_token_id)
        pair = [attr] + ClassifierFreeGuidanceDropout(p=1.0)([attr])
        random.seed(0)  # step_logits encodes every prompt with seed 0
        with torch.no_grad():
            cond = b.condition_provider(b.condition_provider.tokenize(pair))
            logits = lm(torch.cat([seq, seq]), [], condition_tensors=cond)  # [2, K, S, card]
        ref = logits[1] + (logits[0] - logits[1]) * cfg_coef
        # column c is sampled from the output at position c - 1
        torch.testing.assert_close(ours[i], ref[:, start - 1 : -1], rtol=1e-4, atol=1e-4)


def test_a_lora_adapter_is_applied_and_equals_its_merged_model():
    """The adapter must change the logits (else the tests above could not see it ignored), and the
    unmerged adapter must give the merged model's logits."""
    plain = build_lm()
    adapter, merged = with_lora(plain), with_lora(plain, merge=True)
    codes = torch.randint(0, 400, (2, 4, 6), generator=torch.Generator().manual_seed(0))
    attrs = attributes(PROMPTS[:2])
    l_plain, l_adapter, l_merged = (step_logits(m, attrs, codes) for m in (plain, adapter, merged))
    assert (l_adapter - l_plain).abs().max() > 1e-2
    torch.testing.assert_close(l_adapter, l_merged, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("top_k,top_p", [(5, 0.0), (0, 0.6), (0, 0.0)])
def test_top_k_and_top_p_draw_from_audiocraft_support_and_distribution(top_k, top_p):
    """Many draws from one set of logits: ours and audiocraft's own sampling functions give the same
    support and the same frequencies (two-sample comparison, 20000 draws each)."""
    from audiocraft.utils import utils

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(12, generator=g) * 1.5
    n, temp = 20000, 1.3
    params = SamplingParams(temp=temp, top_k=top_k, top_p=top_p)
    noise = torch.empty(n, 12).exponential_(generator=g)
    ours = sample_tokens(logits.expand(n, 12), noise, params)
    probs = torch.softmax(logits / temp, dim=-1).expand(n, 12).clone()
    torch.manual_seed(1)
    if top_p > 0:
        theirs = utils.sample_top_p(probs, p=top_p)[:, 0]
    elif top_k > 0:
        theirs = utils.sample_top_k(probs, k=top_k)[:, 0]
    else:
        theirs = utils.multinomial(probs, num_samples=1)[:, 0]
    f_ours, f_theirs = (torch.bincount(t, minlength=12).float() / n for t in (ours, theirs))
    assert set(ours.unique().tolist()) == set(theirs.unique().tolist())
    if top_k:
        assert len(set(ours.tolist())) == top_k
    assert (f_ours - f_theirs).abs().max() < 0.02, (f_ours, f_theirs)
    # greedy: argmax, whatever the noise
    assert torch.equal(sample_tokens(logits.expand(3, 12), noise[:3], SamplingParams(use_sampling=False)),
                       logits.argmax().expand(3))


def test_a_prompt_and_seed_give_the_same_clip_whatever_the_batch():
    lm = get("words-postnorm")
    params = SamplingParams(top_k=50, temp=1.0)
    frames = 8
    together = generate_tokens(lm, attributes(PROMPTS), [10, 11, 12], frames, params)
    alone = generate_tokens(lm, attributes([PROMPTS[1]]), [11], frames, params)
    reordered = generate_tokens(lm, attributes([PROMPTS[2], PROMPTS[1], PROMPTS[1]]), [12, 11, 99], frames, params)
    assert torch.equal(together[1], alone[0]) and torch.equal(together[1], reordered[1])
    assert torch.equal(together[2], reordered[0])
    assert not torch.equal(reordered[1], reordered[2])  # another seed, another clip


def test_a_melody_clip_is_the_same_for_the_same_seed_and_melody():
    """tiny-melody's ChromaStemConditioner runs Demucs with a random time shift drawn from Python's
    `random`: the sampler seeds it per prompt, so the same seed and melody give the same tokens whatever
    the state of `random` before (set differently here), and that state is left as it was. The melody is
    noise, whose chroma changes with the shift (a steady tone's would not)."""
    from audiocraft.modules.conditioners import ConditioningAttributes, WavCondition

    lm = get("tiny-melody")

    def attrs(wav):
        a = ConditioningAttributes(text={"description": PROMPTS[0]})
        a.wav["self_wav"] = WavCondition(wav[None], torch.tensor([wav.shape[-1]]), sample_rate=[32000], path=[None])
        return [a]

    g = torch.Generator().manual_seed(0)
    wav, other = (0.3 * torch.randn(1, 16000, generator=g) for _ in range(2))  # [1, T]: 0.5 s each
    params = SamplingParams(top_k=50)
    runs = []
    for before, melody in ((1, wav), (2, wav), (1, other)):
        random.seed(before)
        state = random.getstate()
        runs.append(generate_tokens(lm, attrs(melody), [7], 10, params))
        assert random.getstate() == state  # the caller's random sequence is untouched
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])  # the melody steers the clip
