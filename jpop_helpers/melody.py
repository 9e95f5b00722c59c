"""The melody condition of melody models (facebook/musicgen-melody, -melody-large, tiny-melody).

audiocraft's ChromaStemConditioner ('self_wav') turns a waveform into a chroma: Demucs separates the
vocals + other stems (drums and bass would dominate it), and a 12-bin chroma, one-hot per frame
(argmax), is taken of their mix. The solver trains with each clip's own audio as its melody, and can
read the chroma from its chroma cache instead of running Demucs every step (the released models were
trained that way: audiocraft/grids/musicgen/musicgen_melody_32khz.py). We do the same:

- `clip_chroma`: when a clip is tokenized, its chroma is computed once by the conditioner's own code
  (`_compute_wav_embedding`: Demucs + ChromaExtractor) and cached with its codes (tokens.py). Demucs
  shifts its input by a random offset (apply_model's shifts=1, Python's `random`), so like the
  solver's cache this keeps one draw, seeded (CHROMA_SEED) so re-tokenizing gives the same chroma;
- `melody_attributes`: a clip's conditioning attributes (batches.collate): its kept melody rides
  along as its chroma, or the melody is audiocraft's `nullify_wav` when dropped;
- `solver_melody`: while the loss is computed, each kept melody becomes the WavCondition of the
  solver's cached path (a NaN waveform as long as the audio its chroma covers, the real length, the
  clip as path, seek time 0: NaN would show if anything read the placeholder), the conditioner reads
  the chromas through its cache hook (`get_embed_from_cache` -> its own `_extract_chroma_chunk`), and
  it uses the configuration it was trained with (`match_len_on_eval` from the model's config,
  masking on), which `MusicGen.get_pretrained` changes for generation;
- `melody_dropout`: the probability with which the solver drops the melody (the model's
  `attribute_dropout.wav.self_wav`: 0.5 for the released melody models) besides CFG dropout.
"""
from __future__ import annotations

import contextlib
import hashlib
import random
from pathlib import Path

import numpy as np
import torch

SELF_WAV = "self_wav"


def melody_conditioner(lm):
    """The LM's ChromaStemConditioner, or None for a model without melody input."""
    conditioners = lm.condition_provider.conditioners
    return conditioners[SELF_WAV] if SELF_WAV in conditioners else None


def takes_melody(model_or_lm) -> bool:
    lm = getattr(model_or_lm, "lm", model_or_lm)
    return melody_conditioner(lm) is not None


def model_takes_melody(name: str) -> bool:
    """Whether a model (pretrained name, folder, bundled name) takes a melody, from its stored
    configuration alone (memory-mapped: no weights read, no model built)."""
    from omegaconf import OmegaConf

    from .model import checkpoint_files

    lm_file, _ = checkpoint_files(name)
    try:
        try:
            pkg = torch.load(lm_file, map_location="cpu", mmap=True, weights_only=True)
        except RuntimeError:  # torch's legacy format cannot be mapped
            pkg = torch.load(lm_file, map_location="cpu", weights_only=True)
        conditioners = OmegaConf.create(pkg["xp.cfg"]).get("conditioners") or {}
    except Exception as e:  # truncated, foreign, or without audiocraft's config: say which file
        raise ValueError(f"{lm_file}: cannot read the model's checkpoint ({type(e).__name__}: {e})") from e
    return SELF_WAV in conditioners


def melody_dropout(lm) -> float:
    """The solver's probability of dropping the melody (AttributeDropout on wav 'self_wav'), from the
    model's own configuration; 0 for models without melody."""
    if melody_conditioner(lm) is None:
        return 0.0
    return float(lm.att_dropout.p.get("wav", {}).get(SELF_WAV, 0.0))


@contextlib.contextmanager
def seeded_python_random(seed: int):
    """Python's `random` seeded with `seed` inside the block, its state restored after.

    A melody model's ChromaStemConditioner runs Demucs with `shifts=1`: the melody is shifted by a random
    amount drawn from Python's `random` before separation, so each encoding of the same melody gives
    another chroma, and the same seed another clip. Seeding it per prompt fixes the shift (and leaves the
    caller's own `random` sequence as it was)."""
    state = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(state)


# Tokenizing draws the Demucs shift from this seed, so a clip's cached chroma is the same on every run.
CHROMA_SEED = 0


@torch.no_grad()
def clip_chroma(lm, audio: np.ndarray, sample_rate: int) -> torch.Tensor:
    """A clip's chroma, as the conditioner computes it from a waveform (Demucs stems -> chroma).

    Args:
        audio: float32 [T] or [C, T] at `sample_rate` (channels are averaged, as the conditioner does).
    Returns:
        float32 [T_chroma, n_chroma] on the CPU.
    """
    from audiocraft.data.audio_utils import convert_audio

    cond = melody_conditioner(lm)
    wav = torch.from_numpy(np.asarray(audio, dtype=np.float32)).reshape(-1, np.shape(audio)[-1])[None]
    wav = convert_audio(wav.to(cond.device), sample_rate, cond.sample_rate, 1)  # [1, 1, T]
    with seeded_python_random(CHROMA_SEED):  # Demucs's random shift: the same chroma on every run
        return cond._compute_wav_embedding(wav, cond.sample_rate)[0].float().cpu()


def melody_input(path: str | Path, sample_rate: int) -> tuple[np.ndarray, int, str]:
    """An audio file as a melody for generation (generate.generate_set's `melodies`):
    (wav float32 [C, T] at `sample_rate`, sample_rate, the file's name)."""
    from .io import load_audio

    wav = load_audio(path, sample_rate, mono=False)
    return wav.reshape(-1, wav.shape[-1]), sample_rate, Path(path).stem


def chroma_signature(lm) -> str:
    """What a cached chroma depends on: the Demucs weights and the chroma settings."""
    from .model import weights_fingerprint

    cond = melody_conditioner(lm)
    c = cond.chroma
    settings = f"{cond.sample_rate}:{c.n_chroma}:{c.nfft}:{c.winlen}:{c.winhop}:{c.argmax}:{c.norm}"
    return hashlib.sha1(f"{weights_fingerprint(cond.demucs)}|{settings}".encode()).hexdigest()[:12]


def melody_attributes(text: str | None, clip_id: str, chroma: torch.Tensor, valid_fraction: float, keep: bool):
    """A clip's ConditioningAttributes for a melody model: its description and its own melody.

    Args:
        chroma: [T_chroma, n_chroma], the clip's cached chroma.
        valid_fraction: the share of the clip that is real audio (the rest is padding).
        keep: False when the melody is dropped: wav['self_wav'] is audiocraft's nullify_wav of it.
    Returns:
        audiocraft ConditioningAttributes with text['description']; a kept melody rides along as
        `.chroma` / `.valid_fraction`, and `solver_melody` (which knows the conditioner's hop) turns it
        into wav['self_wav'] before the conditioner sees it.
    """
    from audiocraft.modules.conditioners import ConditioningAttributes, WavCondition, nullify_wav

    attr = ConditioningAttributes(text={"description": text})
    if keep:
        attr.chroma, attr.clip_id, attr.valid_fraction = chroma, clip_id, valid_fraction
    else:
        attr.wav[SELF_WAV] = nullify_wav(WavCondition(torch.zeros(1, 1, 1), torch.tensor([1]), [32000], [clip_id], [0.0]))
    return attr


def _melody_condition(cond, attr):
    """The solver's cached-chroma condition of one clip: a NaN waveform as long as the audio its chroma
    was computed from (T_chroma frames of the conditioner's hop, so the cache returns that whole
    chroma), the real samples as its length, the clip as its path, seek time 0."""
    from audiocraft.modules.conditioners import WavCondition

    hop = cond.chroma.winhop
    n = attr.chroma.shape[0] * hop
    return WavCondition(torch.full((1, 1, n), float("nan")), torch.tensor([round(n * attr.valid_fraction)]),
                        [cond.sample_rate], [attr.clip_id], [0.0])


class _ClipChromaCache:
    """The conditioner's cache hook (audiocraft's EmbeddingCache interface), holding this batch's
    precomputed chromas in memory instead of files; the conditioner's own `_extract_chroma_chunk`
    cuts each to the clip's length, as with the solver's cache."""

    def __init__(self, conditioner, chroma: dict[str, torch.Tensor]):
        self.conditioner = conditioner
        self.chroma = chroma

    def populate_embed_cache(self, paths, x) -> None:
        pass  # everything is in memory already

    def get_embed_from_cache(self, paths: list[Path], x) -> torch.Tensor:
        out = []
        for i, path in enumerate(paths):
            if str(path) not in self.chroma:
                raise KeyError(f"no cached chroma for clip {path}: re-encode the token cache with this model")
            out.append(self.conditioner._extract_chroma_chunk(self.chroma[str(path)], x, i))
        return torch.stack(out)


@contextlib.contextmanager
def solver_melody(lm, attributes: list):
    """While computing a loss: the melody conditioner reads each clip's cached chroma and is set up as
    in the solver (the model's configured `match_len_on_eval`, masking on), then is restored as it was.
    A no-op for models without melody."""
    cond = melody_conditioner(lm)
    if cond is None:
        yield
        return
    chroma = {}
    for a in attributes:
        if getattr(a, "chroma", None) is not None:
            a.wav[SELF_WAV] = _melody_condition(cond, a)
            chroma[str(Path(a.clip_id))] = a.chroma
        elif SELF_WAV not in a.wav:
            raise ValueError("this melody model needs each clip's chroma, and these tokens have none: encode the "
                             "clips with this model (tokens.encode_split caches the chroma of melody models)")
    saved = (cond.cache, cond.match_len_on_eval, cond._use_masking)
    cfg = getattr(lm, "cfg", None)
    try:
        match_len = bool(cfg.conditioners.self_wav.chroma_stem.get("match_len_on_eval", False)) if cfg is not None else False
    except AttributeError:  # a config without the melody section: audiocraft's default
        match_len = False
    cond.cache = _ClipChromaCache(cond, chroma)
    cond.match_len_on_eval, cond._use_masking = match_len, not match_len
    try:
        yield
    finally:
        cond.cache, cond.match_len_on_eval, cond._use_masking = saved
