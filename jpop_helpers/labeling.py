"""Automatic labels for clips.

DSP labels (key, BPM) come from essentia's standard algorithms and need no model files. Genre,
moods/themes and instruments come from essentia-tensorflow: audio at 16 kHz -> Discogs-EffNet
embeddings -> classification heads (genre_discogs400: 400 Discogs styles incl. "Pop---J-pop";
mtg_jamendo_moodtheme: 56; mtg_jamendo_instrument: 40). The graphs are fetched once into a cache folder
when online; offline, `MissingModelError` names the missing file and where to get it, and
`LabelConfig.dsp_only=True` (CLI `--dsp-only`) proceeds with key and BPM only.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import urllib.request
from dataclasses import dataclass, field
from typing import ClassVar
from pathlib import Path

import numpy as np

from .io import atomic_path, read_json
from .quiet import quiet_essentia

log = logging.getLogger(__name__)

MODEL_SITE = "https://essentia.upf.edu/models"


@dataclass(frozen=True)
class ModelSpec:
    """One essentia-tensorflow graph: where it comes from and how it is called."""

    name: str  # file stem, e.g. "genre_discogs400-discogs-effnet-1"
    folder: str  # path under MODEL_SITE
    input: str  # default node names; the head's .json "schema" overrides them when present
    output: str

    def url(self, ext: str) -> str:
        return f"{MODEL_SITE}/{self.folder}/{self.name}.{ext}"


EMBEDDING = ModelSpec("discogs-effnet-bs64-1", "feature-extractors/discogs-effnet",
                      "serving_default_melspectrogram", "PartitionedCall:1")
HEADS = {
    "genre": ModelSpec("genre_discogs400-discogs-effnet-1", "classification-heads/genre_discogs400",
                       "serving_default_model_Placeholder", "PartitionedCall:0"),
    "moods": ModelSpec("mtg_jamendo_moodtheme-discogs-effnet-1", "classification-heads/mtg_jamendo_moodtheme",
                       "model/Placeholder", "model/Sigmoid"),
    "instruments": ModelSpec("mtg_jamendo_instrument-discogs-effnet-1", "classification-heads/mtg_jamendo_instrument",
                             "model/Placeholder", "model/Sigmoid"),
}


class MissingModelError(RuntimeError):
    """A tagger graph is not in the cache and could not be downloaded."""


@dataclass
class LabelConfig:
    dsp_only: bool = False  # skip the TensorFlow taggers (explicit opt-in; key and BPM only)
    models_dir: str | None = None  # graph cache; default $JPOP_MODELS_DIR or ~/.cache/jpop-musicgen/essentia
    download_models: bool = True  # fetch missing graphs from essentia's model site
    genre_top_k: int = 3
    genre_threshold: float = 0.1  # keep a style only if its mean activation is at least this
    mood_top_k: int = 3
    mood_threshold: float = 0.05
    instrument_top_k: int = 3
    instrument_threshold: float = 0.1
    bpm_method: str = "multifeature"  # essentia RhythmExtractor2013 method ("multifeature" | "degara")
    bpm_min_confidence: float = 1.0  # multifeature confidence (0-5.3); below it BPM stays out of captions
    key_profile: str = "bgate"  # essentia KeyExtractor profileType

    CHOICES: ClassVar[dict] = {"bpm_method": ("multifeature", "degara")}


@dataclass
class ClipLabels:
    """Labels of one clip. Tag lists are ordered by score, best first."""

    key: str | None = None  # e.g. "A minor"
    key_strength: float | None = None
    bpm: float | None = None
    bpm_confidence: float | None = None
    genres: list[str] = field(default_factory=list)  # e.g. ["j-pop", "synth-pop"]
    moods: list[str] = field(default_factory=list)
    instruments: list[str] = field(default_factory=list)
    scores: dict[str, dict[str, float]] = field(default_factory=dict)  # head -> label -> mean activation


def default_models_dir() -> Path:
    return Path(os.environ.get("JPOP_MODELS_DIR", Path.home() / ".cache" / "jpop-musicgen" / "essentia"))


def dsp_labels(audio: np.ndarray, sample_rate: int, config: LabelConfig | None = None) -> ClipLabels:
    """Key and tempo of one clip with essentia's DSP algorithms.

    Args:
        audio: float32 mono [T] at `sample_rate`.
    """
    quiet_essentia()  # before essentia.standard's first import, which logs
    import essentia.standard as es

    config = config or LabelConfig()
    x = np.ascontiguousarray(audio, dtype=np.float32)
    if sample_rate != 44100:  # RhythmExtractor2013 is defined at 44.1 kHz
        x = es.Resample(inputSampleRate=sample_rate, outputSampleRate=44100, quality=1)(x)
    bpm, _, confidence, _, _ = es.RhythmExtractor2013(method=config.bpm_method)(x)
    key, scale, strength = es.KeyExtractor(profileType=config.key_profile, sampleRate=44100)(x)
    return ClipLabels(key=f"{key} {scale}", key_strength=float(strength),
                      bpm=round(float(bpm), 2) if bpm > 0 else None, bpm_confidence=float(confidence))


def ensure_model(spec: ModelSpec, models_dir: Path, download: bool, with_json: bool = True) -> Path:
    """Path of a graph in the cache, downloading the .pb (and its .json label list) if allowed.

    Raises:
        MissingModelError: naming the missing file, its URL and the DSP-only way out.
    """
    models_dir.mkdir(parents=True, exist_ok=True)
    for ext in ("pb", "json") if with_json else ("pb",):
        path = models_dir / f"{spec.name}.{ext}"
        if path.exists() and path.stat().st_size > 0:
            continue
        reason = "downloads are disabled (LabelConfig.download_models=False)"
        if download:
            try:
                log.info("downloading %s", spec.url(ext))
                with atomic_path(path) as tmp, urllib.request.urlopen(spec.url(ext), timeout=60) as r:
                    tmp.write_bytes(r.read())
                continue
            except Exception as e:
                reason = f"download failed: {e}"
        raise MissingModelError(
            f"essentia model file {path} is missing ({reason}). Get it from {spec.url(ext)} "
            f"into {models_dir}, or label with DSP only (key, BPM): LabelConfig(dsp_only=True) / --dsp-only.")
    return models_dir / f"{spec.name}.pb"


def _display_label(head: str, label: str) -> str:
    """'Pop---J-pop' -> 'j-pop'; mood/instrument labels are already plain words."""
    return label.split("---")[-1].strip().lower() if head == "genre" else label.strip().lower()


class EssentiaTagger:
    """Genre, mood/theme and instrument tagger built on essentia-tensorflow graphs."""

    def __init__(self, config: LabelConfig | None = None):
        quiet_essentia()
        import essentia.standard as es

        self.config = config or LabelConfig()
        models_dir = Path(self.config.models_dir) if self.config.models_dir else default_models_dir()
        emb_path = ensure_model(EMBEDDING, models_dir, self.config.download_models, with_json=False)
        self.embedder = es.TensorflowPredictEffnetDiscogs(
            graphFilename=str(emb_path), input=EMBEDDING.input, output=EMBEDDING.output)
        self.heads = {}
        for head, spec in HEADS.items():
            pb = ensure_model(spec, models_dir, self.config.download_models)
            meta = read_json(pb.with_suffix(".json"))
            schema = meta.get("schema", {})
            inp = (schema.get("inputs") or [{}])[0].get("name", spec.input)
            outs = schema.get("outputs") or []
            out = next((o["name"] for o in outs if o.get("output_purpose") == "predictions"), spec.output)
            model = es.TensorflowPredict2D(graphFilename=str(pb), input=inp, output=out)
            self.heads[head] = (model, [_display_label(head, c) for c in meta["classes"]])

    def scores(self, audio16k: np.ndarray) -> dict[str, np.ndarray]:
        """Mean activation per label of each head.

        Args:
            audio16k: float32 mono [T] at 16 kHz.
        Returns:
            head -> [n_labels] activations averaged over the clip's ~1-s patches.
        """
        emb = self.embedder(np.ascontiguousarray(audio16k, dtype=np.float32))  # [patches, 1280]
        return {head: np.asarray(model(emb)).mean(axis=0) for head, (model, _) in self.heads.items()}

    def labels(self, audio16k: np.ndarray) -> ClipLabels:
        cfg = self.config
        rules = {"genre": (cfg.genre_top_k, cfg.genre_threshold), "moods": (cfg.mood_top_k, cfg.mood_threshold),
                 "instruments": (cfg.instrument_top_k, cfg.instrument_threshold)}
        out = ClipLabels()
        for head, act in self.scores(audio16k).items():
            names = self.heads[head][1]
            out.scores[head] = {n: round(float(a), 4) for n, a in zip(names, act)}
            k, thr = rules[head]
            top = select_top(names, act, k, thr)
            setattr(out, "genres" if head == "genre" else head, top)
        return out


# Tags that say a voice is heard: the instrument head's "voice", discogs styles such as "Pop---Vocal".
VOCAL_TAGS = frozenset({"voice", "vocal", "vocals", "a cappella", "choral", "singer"})


def without_vocal_tags(labels: ClipLabels) -> ClipLabels:
    """The labels of an instrumental (vocals removed by separation): tags that name a voice go, since
    what is left of it is separation bleed, and a caption must not ask for what the audio lacks (and
    MusicGen cannot make). Scores are kept as measured."""
    return dataclasses.replace(labels, genres=[g for g in labels.genres if g not in VOCAL_TAGS],
                               moods=[m for m in labels.moods if m not in VOCAL_TAGS],
                               instruments=[i for i in labels.instruments if i not in VOCAL_TAGS])


def select_top(names: list[str], scores: np.ndarray, top_k: int, threshold: float) -> list[str]:
    """The `top_k` best labels whose score reaches `threshold`, best first (duplicates merged)."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    out: list[str] = []
    for i in order:
        if scores[i] < threshold or len(out) >= top_k:
            break
        if names[i] not in out:
            out.append(names[i])
    return out


class Labeler:
    """DSP labels always, plus the essentia-tensorflow tags unless `dsp_only`."""

    def __init__(self, config: LabelConfig | None = None):
        self.config = config or LabelConfig()
        self.tagger = None if self.config.dsp_only else EssentiaTagger(self.config)

    def __call__(self, audio: np.ndarray, sample_rate: int) -> ClipLabels:
        """audio: float32 mono [T] at `sample_rate` (the clip as it will be trained on)."""
        labels = dsp_labels(audio, sample_rate, self.config)
        if self.tagger is not None:
            import essentia.standard as es

            x16 = es.Resample(inputSampleRate=sample_rate, outputSampleRate=16000, quality=1)(
                np.ascontiguousarray(audio, dtype=np.float32))
            tags = self.tagger.labels(x16)
            labels.genres, labels.moods, labels.instruments, labels.scores = (
                tags.genres, tags.moods, tags.instruments, tags.scores)
        return labels
