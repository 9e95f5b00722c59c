"""The real loading path of facebook/musicgen-melody and facebook/musicgen-stereo-small, offline.

One stand-in Hugging Face cache (tests/hub_standin.py) holds both, composed from audiocraft v1.3.0's own
configuration (melody: `solver=musicgen/musicgen_melody_32khz` at the release's medium scale, with a
stand-in `adefossez/HTDemucs` for its chroma conditioner; stereo: the overrides of audiocraft's stereo
fine-tuning grid), t5-base-shaped T5 and random weights. `load_musicgen` loads each through audiocraft's
own loader, the package trains one step and generates a short clip. Narrow and shallow for speed (LM
1 layer of width 128, T5 2 layers), which the loaders read back from the stored configurations.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from hub_standin import VARIANTS, build_standin_hub, offline_hub

pytestmark = pytest.mark.slow

FRAMES = 50  # 1-s clips at 50 Hz
TEXTS = ["upbeat j-pop song with bright synths and piano", "calm lofi city pop at night"]


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    cache = tmp_path_factory.mktemp("hf_home_variants") / "hub"
    built = {v: build_standin_hub(cache, num_layers=1, t5_num_layers=2, variant=v, dim=128, num_heads=2)
             for v in ("melody", "stereo")}
    with offline_hub(cache):
        yield built


def _train_one_step(model, repo, items, tmp_path):
    from jpop_helpers.train import TrainConfig, train

    before = {k: v.clone() for k, v in model.lm.state_dict().items() if v.is_floating_point()}
    config = TrainConfig(model=repo, mode="full", steps=1, batch_size=2, grad_accum=1, lr=1e-3, warmup_steps=1,
                         eval_every=1, save_every=1, log_every=1, seed=0)
    result = train(config, tmp_path / "run", items, items[:1], model=model, device="cpu")
    assert result.step == 1 and np.isfinite(result.final_valid["valid/ce"])
    moved = [k for k, v in model.lm.state_dict().items() if k in before and not torch.equal(v, before[k])]
    assert any("transformer.layers.0" in k for k in moved)
    model.lm.eval()


def test_musicgen_melody_loads_trains_and_generates_following_a_melody(hub, tmp_path):
    from audiocraft.modules.conditioners import ChromaStemConditioner
    from demucs.htdemucs import HTDemucs

    from jpop_helpers.generate import GenerateConfig, generate_set
    from jpop_helpers.melody import clip_chroma, model_takes_melody
    from jpop_helpers.model import load_musicgen
    from jpop_helpers.plan import read_arch
    from jpop_helpers.tokens import TokenItem

    repo = VARIANTS["melody"].repo
    model = load_musicgen(repo, "cpu")
    lm = model.lm
    cond = lm.condition_provider.conditioners["self_wav"]
    assert isinstance(cond, ChromaStemConditioner) and isinstance(cond.demucs.models[0], HTDemucs)
    assert model_takes_melody(repo) and lm.fuser.fuse2cond["prepend"] == ["self_wav", "description"]
    assert all(layer.cross_attention is None for layer in lm.transformer.layers)  # conditions are prepended
    arch = read_arch(repo)  # the memory plan, from the stored config: no cross-attention, a 30-s chroma prefix
    assert arch.lm_params == pytest.approx(sum(p.numel() for p in lm.parameters()), rel=0.002)
    assert arch.prefix(30) > 200

    g = torch.Generator().manual_seed(0)
    items = []
    for i in range(2):
        wav = (0.3 * torch.randn(1, model.sample_rate, generator=g)).numpy()  # 1 s
        codes = torch.randint(0, lm.card, (lm.num_codebooks, FRAMES), generator=g).to(torch.int16)
        items.append(TokenItem(f"clip{i}", codes, FRAMES, [TEXTS[i]], clip_chroma(lm, wav, model.sample_rate)))
    assert items[0].chroma.shape[1] == 12
    _train_one_step(model, repo, items, tmp_path)

    tune = (0.3 * torch.randn(1, 16000, generator=g)).numpy()
    rows = generate_set({"melody": model}, [TEXTS[0]], tmp_path / "gen", GenerateConfig(duration=0.5, top_k=50),
                        melodies=[(tune, 32000, "tune")])
    import soundfile as sf

    audio, sr = sf.read(rows[0]["path"])
    assert sr == 32000 and audio.shape == (16000,) and np.isfinite(audio).all() and rows[0]["melody"] == "tune"


def test_musicgen_stereo_loads_trains_and_generates_two_channels(hub, tmp_path):
    from audiocraft.models.encodec import InterleaveStereoCompressionModel

    from jpop_helpers.generate import GenerateConfig, generate_set
    from jpop_helpers.model import load_musicgen
    from jpop_helpers.plan import read_arch
    from jpop_helpers.tokens import TokenItem

    repo = VARIANTS["stereo"].repo
    model = load_musicgen(repo, "cpu")
    assert isinstance(model.compression_model, InterleaveStereoCompressionModel) and model.audio_channels == 2
    assert model.lm.num_codebooks == 8 and model.lm.pattern_provider.delays == [0, 0, 1, 1, 2, 2, 3, 3]
    arch = read_arch(repo)
    assert arch.lm_params == pytest.approx(sum(p.numel() for p in model.lm.parameters()), rel=0.002)
    assert arch.codebooks == 8 and arch.prefix(30) == 0

    # a stereo clip's tokens, as the package encodes them: [8, T] = [L1, R1, L2, R2, ...]
    g = torch.Generator().manual_seed(0)
    stereo = 0.3 * torch.randn(1, 2, model.sample_rate, generator=g)
    with torch.no_grad():
        codes, _ = model.compression_model.encode(stereo)
    assert codes.shape == (1, 8, FRAMES)
    items = [TokenItem("clip0", codes[0].to(torch.int16), FRAMES, [TEXTS[0]]),
             TokenItem("clip1", codes[0].roll(7, dims=-1).to(torch.int16), FRAMES, [TEXTS[1]])]
    _train_one_step(model, repo, items, tmp_path)

    rows = generate_set({"stereo": model}, [TEXTS[1]], tmp_path / "gen", GenerateConfig(duration=0.5, top_k=50))
    import soundfile as sf

    audio, sr = sf.read(rows[0]["path"])
    assert sr == 32000 and audio.shape == (16000, 2) and np.isfinite(audio).all()
