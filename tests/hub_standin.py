"""An offline stand-in for the Hugging Face cache of `facebook/musicgen-small` and `t5-base`.

The real models cannot be downloaded here. This builds, with random weights, the files that
`MusicGen.get_pretrained('facebook/musicgen-small')` reads, in the hub cache layout, so that the exact
loading path runs offline (`HF_HUB_OFFLINE=1`, `HF_HUB_CACHE` pointing here):

- `models--facebook--musicgen-small/snapshots/<rev>/{state_dict.bin, compression_state_dict.bin}` and
  `refs/main`. Each package is what audiocraft's `utils/export.py` writes for a release:
  {'xp.cfg': yaml, 'best_state': state dict, 'version', 'exported'}. The configurations are composed with
  hydra from audiocraft v1.3.0's own `config/` tree (tests/fixtures/audiocraft_config_v1.3.0), as its
  solver does: `solver=musicgen/musicgen_base_32khz` (LM: model_scale small, text2music conditioner with
  T5 `t5-base`, delay pattern, 4 x 2048 codebooks) and `solver=compression/encodec_musicgen_32khz`
  (EnCodec 32 kHz, 4 codebooks, 50 Hz). Models are built by audiocraft's builders from those configs.
- `models--t5-base/snapshots/<rev>/{config.json, model.safetensors, spiece.model, tokenizer.json}`:
  audiocraft 1.3.0's T5Conditioner calls `T5Tokenizer.from_pretrained(name)` and
  `T5EncoderModel.from_pretrained(name)` with the name stored in xp.cfg, 't5-base' (not
  'google-t5/t5-base'; offline, no redirect is followed, so the cache folder is models--t5-base). The
  encoder has t5-base's configuration; the tokenizer is a sentencepiece unigram model trained here on
  generated music descriptions (T5's special ids: pad 0, eos 1, unk 2, plus 100 sentinels).

Other released layouts (`variant`):
- "melody", `facebook/musicgen-melody`: `solver=musicgen/musicgen_melody_32khz` (conditioner chroma2music:
  the chroma of the clip's Demucs stems and the T5 description, both prepended; no cross-attention) at
  the release's medium scale, plus `adefossez/HTDemucs` (build_demucs_standin) in the same cache, which
  its ChromaStemConditioner loads through `demucs.pretrained.get_model('htdemucs')`.
- "stereo", `facebook/musicgen-stereo-small`: `solver=musicgen/musicgen_base_32khz` with the overrides of
  audiocraft's grid `musicgen_stereo_finetune_32khz.py` (8 interleaved codebooks, delays [0,0,1,1,2,2,3,3],
  2 channels); its compression package is the mono EnCodec's, which audiocraft's loader wraps.

`num_layers` (LM) and `t5_num_layers` reduce depth for fast tests (`dim`/`num_heads` the LM's width). Both are read back by the loaders
from the stored configuration (xp.cfg's `transformer_lm.num_layers`, given to hydra as a command-line
override; T5's `config.json`), so the loading path is unchanged.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import os
import random
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import torch

AUDIOCRAFT_CONFIG_DIR = Path(__file__).resolve().parent / "fixtures" / "audiocraft_config_v1.3.0" / "config"
MUSICGEN_REPO = "facebook/musicgen-small"
LM_SOLVER = "musicgen/musicgen_base_32khz"
CODEC_SOLVER = "compression/encodec_musicgen_32khz"

# google-t5/t5-base's config.json (the encoder reads only the architecture fields).
T5_BASE_CONFIG = {
    "architectures": ["T5ForConditionalGeneration"], "d_ff": 3072, "d_kv": 64, "d_model": 768,
    "decoder_start_token_id": 0, "dropout_rate": 0.1, "eos_token_id": 1, "feed_forward_proj": "relu",
    "initializer_factor": 1.0, "is_encoder_decoder": True, "layer_norm_epsilon": 1e-06, "model_type": "t5",
    "n_positions": 512, "num_decoder_layers": 12, "num_heads": 12, "num_layers": 12, "output_past": True,
    "pad_token_id": 0, "relative_attention_max_distance": 128, "relative_attention_num_buckets": 32,
    "vocab_size": 32128,
}

STEREO_OVERRIDES = ("codebooks_pattern.delay.delays=[0,0,1,1,2,2,3,3]", "transformer_lm.n_q=8",
                    "interleave_stereo_codebooks.use=true", "channels=2")  # grids/musicgen/musicgen_stereo_finetune_32khz.py


@dataclass(frozen=True)
class Variant:
    repo: str  # the Hugging Face repository it stands in for
    solver: str
    overrides: tuple[str, ...] = ()
    demucs: bool = False  # a melody model: its conditioner loads htdemucs from the hub


VARIANTS = {
    "small": Variant(MUSICGEN_REPO, LM_SOLVER),
    "melody": Variant("facebook/musicgen-melody", "musicgen/musicgen_melody_32khz", ("model/lm/model_scale=medium",),
                      demucs=True),
    "stereo": Variant("facebook/musicgen-stereo-small", LM_SOLVER, STEREO_OVERRIDES),
}

MUSIC_WORDS = (
    "upbeat j-pop song with bright synths piano electric guitar bass drums female male vocals energetic "
    "happy sad calm ballad anime opening theme rock electronic dance catchy chorus fast slow tempo bpm "
    "major minor key acoustic strings orchestral city pop idol emotional dreamy retro modern lofi chill "
    "melancholic nostalgic summer night love festival live band hip hop jazz funk soul r&b groove beat "
    "melody harmony rhythm verse bridge intro outro instrumental powerful soft gentle heavy light warm "
    "cold sparkling cheerful dark epic cinematic and a the of in for at by"
).split()


# ---------------------------------------------------------------- configuration
def compose_audiocraft_cfg(solver: str, overrides: tuple[str, ...] = ()):
    """audiocraft's solver configuration, composed by hydra exactly as `audiocraft.train` does
    (config_name='config', version_base='1.1'), from the vendored v1.3.0 tree."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # hydra's version_base 1.1 migration notice
        with initialize_config_dir(config_dir=str(AUDIOCRAFT_CONFIG_DIR), version_base="1.1"):
            return compose(config_name="config", overrides=[f"solver={solver}", *overrides])


# ---------------------------------------------------------------- hub cache layout
def _fake_commit(*parts: str) -> str:
    return hashlib.sha1("\0".join(("jpop-musicgen hub stand-in", *parts)).encode()).hexdigest()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def put_repo(cache_dir: Path, repo_id: str, files: dict[str, Path], revision: str) -> Path:
    """Move `files` ({name in repo: local file}) into the hub cache layout, as huggingface_hub stores a
    download: blobs/<sha256>, snapshots/<rev>/<name> -> ../../blobs/<sha256> (relative links), refs/main."""
    repo = Path(cache_dir) / f"models--{repo_id.replace('/', '--')}"
    snap = repo / "snapshots" / revision
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snap.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    for name, src in files.items():
        digest = _sha256(src)
        blob = repo / "blobs" / digest
        shutil.move(str(src), blob)
        link = snap / name
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        try:
            link.symlink_to(os.path.relpath(blob, link.parent))
        except OSError:  # no symlinks (as huggingface_hub does on such systems): a copy
            shutil.copyfile(blob, link)
    (repo / "refs" / "main").write_text(revision)
    return snap


@contextlib.contextmanager
def offline_hub(cache_dir: str | Path):
    """Point huggingface_hub and transformers at `cache_dir` (HF_HUB_CACHE; HF_HOME its parent) with
    HF_HUB_OFFLINE=1, for this process, and restore everything on exit.

    huggingface_hub reads its environment once, at import; both libraries read the resulting module
    constants at each call, so those are set too (the environment alone would be ignored when they
    were imported earlier in the session). AUDIOCRAFT_CACHE_DIR is removed: audiocraft would pass it
    as an explicit cache_dir and bypass HF_HUB_CACHE.
    """
    import pytest
    from huggingface_hub import constants

    cache_dir = Path(cache_dir).resolve()
    with pytest.MonkeyPatch.context() as mp:
        env = {"HF_HOME": str(cache_dir.parent), "HF_HUB_CACHE": str(cache_dir), "HF_HUB_OFFLINE": "1",
               "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
        for k, v in env.items():
            mp.setenv(k, v)
        mp.delenv("AUDIOCRAFT_CACHE_DIR", raising=False)
        mp.delenv("HF_TOKEN", raising=False)
        mp.setattr(constants, "HF_HOME", str(cache_dir.parent))
        mp.setattr(constants, "HF_HUB_CACHE", str(cache_dir))
        mp.setattr(constants, "HUGGINGFACE_HUB_CACHE", str(cache_dir), raising=False)
        mp.setattr(constants, "HF_HUB_OFFLINE", True)
        yield cache_dir


# ---------------------------------------------------------------- T5 (encoder + tokenizer)
def description_corpus(n_lines: int = 4000, seed: int = 0) -> list[str]:
    """Music descriptions plus pseudo-words (so sentencepiece learns sub-word pieces too)."""
    rng = random.Random(seed)
    syll = [c + v for c in "bcdfghjkmnprstwyz" for v in "aeiou"]
    pseudo = ["".join(rng.choice(syll) for _ in range(rng.randint(1, 4))) for _ in range(3000)]
    lines = []
    for _ in range(n_lines):
        words = [rng.choice(MUSIC_WORDS) if rng.random() < 0.6 else rng.choice(pseudo) for _ in range(rng.randint(3, 14))]
        if rng.random() < 0.3:
            words.append(f"{rng.randint(60, 180)} bpm")
        lines.append(" ".join(words))
    return lines


def train_spiece(vocab_size: int = 2000, seed: int = 0) -> bytes:
    """A T5-style sentencepiece unigram model (pad 0, eos 1, unk 2, no bos), trained on generated text."""
    import sentencepiece as spm

    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(description_corpus(seed=seed)), model_writer=out, vocab_size=vocab_size,
        model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0,
        hard_vocab_limit=False, num_threads=1, minloglevel=2)
    return out.getvalue()


def build_t5(cache_dir: Path, num_layers: int | None = None, seed: int = 0) -> str:
    """models--t5-base: t5-base's configuration (random encoder weights) and a trained tokenizer.
    Returns the revision."""
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    cfg = dict(T5_BASE_CONFIG)
    if num_layers is not None:
        cfg["num_layers"] = cfg["num_decoder_layers"] = num_layers
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        tmp = Path(tmp)
        (tmp / "spm").mkdir()
        (tmp / "spm" / "spiece.model").write_bytes(train_spiece(seed=seed))
        # transformers 5: T5Tokenizer(vocab_file=...) ignores the file (empty vocabulary, everything
        # <unk>); from_pretrained on a folder holding spiece.model converts it properly.
        tok = T5Tokenizer.from_pretrained(str(tmp / "spm"))
        tok.save_pretrained(str(tmp / "tok"))
        torch.manual_seed(seed)
        model = T5EncoderModel(T5Config(**cfg))
        model.save_pretrained(str(tmp / "model"), safe_serialization=True)
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
        files = {"config.json": tmp / "config.json", "model.safetensors": tmp / "model" / "model.safetensors",
                 "spiece.model": tmp / "spm" / "spiece.model", "tokenizer.json": tmp / "tok" / "tokenizer.json"}
        rev = _fake_commit("t5-base", json.dumps(cfg, sort_keys=True), str(seed))
        put_repo(cache_dir, "t5-base", files, rev)
    return rev


# ---------------------------------------------------------------- MusicGen
@dataclass
class StandinHub:
    cache_dir: Path  # use as HF_HUB_CACHE
    revision: str  # of the MusicGen repository
    lm_num_layers: int
    t5_name: str
    t5_num_layers: int
    seconds: dict = field(default_factory=dict)  # build time per part
    repo: str = MUSICGEN_REPO  # the MusicGen repository it holds


def build_standin_hub(cache_dir: str | Path, num_layers: int | None = None, t5_num_layers: int | None = None,
                      seed: int = 0, variant: str = "small", dim: int | None = None,
                      num_heads: int | None = None) -> StandinHub:
    """Write the stand-in cache under `cache_dir` (used as HF_HUB_CACHE). Several variants may share one
    cache: T5 (and htdemucs) are written once.

    Args:
        num_layers: LM transformer layers (real small: 24), stored in xp.cfg like a hydra override.
        t5_num_layers: T5 encoder layers (real t5-base: 12), stored in its config.json.
        variant: a key of VARIANTS ("small", "melody", "stereo").
        dim, num_heads: the LM's width (hydra overrides too), for fast tests.
    """
    from audiocraft.models import builders
    from omegaconf import OmegaConf

    spec = VARIANTS[variant]
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    seconds = {}
    t0 = time.perf_counter()
    overrides = list(spec.overrides)
    for key, value in (("num_layers", num_layers), ("dim", dim), ("num_heads", num_heads)):
        if value is not None:
            overrides.append(f"transformer_lm.{key}={value}")
    lm_cfg = compose_audiocraft_cfg(spec.solver, tuple(overrides))
    codec_cfg = compose_audiocraft_cfg(CODEC_SOLVER)
    t5_name = lm_cfg.conditioners.description.t5.name
    seconds["compose"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    if not (cache_dir / "models--t5-base").is_dir():
        build_t5(cache_dir, t5_num_layers, seed)
    if spec.demucs and not (cache_dir / f"models--{DEMUCS_REPO.replace('/', '--')}").is_dir():
        build_demucs_standin(cache_dir, seed=seed)
    seconds["t5_demucs"] = time.perf_counter() - t0

    with offline_hub(cache_dir), tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        torch.manual_seed(seed)
        build_cfg = copy.deepcopy(codec_cfg)
        build_cfg.device = "cpu"
        codec = builders.get_compression_model(build_cfg)
        _init_codebooks(codec, codec_cfg.sample_rate)
        _save_pkg(tmp / "compression_state_dict.bin", codec_cfg, codec.eval().state_dict())
        del codec
        seconds["compression_model"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        build_cfg = copy.deepcopy(lm_cfg)
        build_cfg.device = "cpu"  # the stored cfg keeps the solver's (cuda); loaders override it
        with _safe_demucs() if spec.demucs else contextlib.nullcontext():
            lm = builders.get_lm_model(build_cfg)  # loads the stand-in T5 through T5Conditioner (and htdemucs)
        _save_pkg(tmp / "state_dict.bin", lm_cfg, lm.state_dict())
        del lm
        seconds["lm"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        rev = _fake_commit(spec.repo, OmegaConf.to_yaml(lm_cfg), str(seed))
        put_repo(cache_dir, spec.repo, {"state_dict.bin": tmp / "state_dict.bin",
                                        "compression_state_dict.bin": tmp / "compression_state_dict.bin"}, rev)
        seconds["hub_layout"] = time.perf_counter() - t0
    seconds["total"] = sum(seconds.values())
    t5_layers = json.loads((next((cache_dir / "models--t5-base" / "snapshots").iterdir()) / "config.json").read_text())
    return StandinHub(cache_dir, rev, int(lm_cfg.transformer_lm.num_layers), t5_name, t5_layers["num_layers"], seconds,
                      spec.repo)


def _safe_demucs():
    """htdemucs through the package's checked loader (separate.safe_demucs_pretrained), as load_musicgen
    builds a melody model."""
    from jpop_helpers.model import demucs_from

    return demucs_from(None)


@torch.no_grad()
def _init_codebooks(codec, sample_rate: int) -> None:
    """Mark the codebooks initialised, as in a trained EnCodec (an uninitialised one would run k-means
    on the first batch it encodes): each residual level gets random codes at the scale of the encoder's
    output for noise. (audiocraft's own k-means on 2048 codes takes 25 s here.)"""
    scale = float(codec.encoder(torch.randn(1, 1, sample_rate) * 0.1).std())
    for layer in codec.quantizer.vq.layers:
        cb = layer._codebook
        cb.embed.copy_(torch.randn_like(cb.embed) * scale)
        cb.embed_avg.copy_(cb.embed)
        cb.cluster_size.fill_(1.0)
        cb.inited.fill_(1.0)
        scale /= 2


def _save_pkg(path: Path, cfg, state: dict) -> None:
    """A release package as audiocraft.utils.export writes it (export_lm / export_encodec)."""
    from omegaconf import OmegaConf

    torch.save({"best_state": state, "xp.cfg": OmegaConf.to_yaml(cfg), "version": "1.3.0", "exported": True}, path)


# ---------------------------------------------------------------- Demucs (htdemucs), for vocal removal
DEMUCS_REPO = "adefossez/HTDemucs"  # demucs.hf.hf_repo_name('htdemucs')
DEMUCS_SOURCES = ["drums", "bass", "other", "vocals"]
# The released htdemucs (signature 955717e8): demucs's conf/config.yaml `htdemucs` section with the
# overrides of its grid (grids/mmi.py: dconv_mode 3, t_dropout 0.02, bottom_channels 512, 5 transformer
# layers) and the 7.8-s segment of the release; HTDemucs's other defaults are the config's.
HTDEMUCS_FULL_KWARGS = {"sources": DEMUCS_SOURCES, "audio_channels": 2, "samplerate": 44100,
                        "segment": Fraction(39, 5), "channels": 48, "depth": 4, "nfft": 4096, "dconv_mode": 3,
                        "t_layers": 5, "t_dropout": 0.02, "bottom_channels": 512, "multi_freqs": []}
# The stand-in: the same class, far fewer channels, one transformer layer, a 2048-point STFT and 2-s
# segments (apply_model pads every input to a whole segment: 7.8 s would cost 4x on a 2-s test song).
# About 0.16 s of CPU per second of audio, against ~1.3 s for the 5-s songs of the full-STFT variant.
HTDEMUCS_SMALL_KWARGS = {**HTDEMUCS_FULL_KWARGS, "channels": 8, "t_layers": 1, "bottom_channels": 0,
                         "t_heads": 2, "nfft": 2048, "segment": Fraction(2)}


def _demucs_json_default(value):
    """demucs's tools/export_hf.py `_json_default`: fractions as tagged dicts, anything else as str."""
    if isinstance(value, Fraction):
        return {"_type": "fraction", "numerator": value.numerator, "denominator": value.denominator}
    return str(value)


def save_demucs_safetensors(model, path: Path) -> None:
    """One demucs model as export_hf.py's `convert_checkpoint` writes it: the weights (half precision,
    as demucs's serialize_model stores releases) plus 'klass', 'args', 'kwargs' as JSON metadata."""
    from safetensors.torch import save_file

    args, kwargs = model._init_args_kwargs  # demucs's capture_init records them
    klass = type(model)
    metadata = {"klass": f"{klass.__module__}.{klass.__qualname__}",
                "args": json.dumps(list(args), default=_demucs_json_default),
                "kwargs": json.dumps(kwargs, default=_demucs_json_default)}
    tensors = {k: v.detach().to("cpu", torch.half).contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(path), metadata=metadata)


def build_htdemucs(full: bool = False, seed: int = 0):
    """A real `demucs.htdemucs.HTDemucs`, random weights: the released architecture (`full`) or small."""
    from demucs.htdemucs import HTDemucs

    torch.manual_seed(seed)
    kwargs = copy.deepcopy(HTDEMUCS_FULL_KWARGS if full else HTDEMUCS_SMALL_KWARGS)
    return HTDemucs(**kwargs).eval()


def write_demucs_repo(folder: str | Path, name: str = "htdemucs", full: bool = False, seed: int = 0) -> Path:
    """A local demucs model repository, as the hub repository holds it: `<name>.yaml` (the bag:
    `models: [<sig>]`) and `<sig>.safetensors`. The signature is derived from the weights, like
    demucs's 8-hex-digit checkpoint signatures. Returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = build_htdemucs(full, seed)
    tmp = folder / f".{name}.tmp.safetensors"
    save_demucs_safetensors(model, tmp)
    sig = _sha256(tmp)[:8]
    tmp.rename(folder / f"{sig}.safetensors")
    (folder / f"{name}.yaml").write_text(f"models: ['{sig}']\n")
    return folder


def build_demucs_standin(cache_dir: str | Path, full: bool = False, seed: int = 0) -> Path:
    """Write `adefossez/HTDemucs` into the hub cache `cache_dir` (use as HF_HUB_CACHE, e.g. with
    `offline_hub`): `htdemucs.yaml` + `<sig>.safetensors` holding a real HTDemucs with random weights,
    so that demucs's own hub loader (`demucs.hf.get_hf_model('htdemucs')`, which audiocraft's melody
    conditioner reaches through `demucs.pretrained.get_model`) and `separate.load_separator` run offline.
    Returns the snapshot folder."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        folder = write_demucs_repo(Path(tmp) / "repo", "htdemucs", full, seed)
        files = {p.name: p for p in folder.iterdir()}
        rev = _fake_commit(DEMUCS_REPO, *sorted(files), str(full), str(seed))
        return put_repo(cache_dir, DEMUCS_REPO, files, rev)


if __name__ == "__main__":  # python tests/hub_standin.py <cache_dir> [num_layers] [t5_num_layers]
    import sys

    a = sys.argv[1:]
    hub = build_standin_hub(a[0], *(int(x) for x in a[1:3]))
    print(hub)
