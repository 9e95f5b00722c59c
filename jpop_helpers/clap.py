"""CLAP (LAION's contrastive audio-text model, music checkpoint) through Hugging Face transformers.

Two uses in stage 05:
- `clap_score`: cosine similarity between a prompt and the audio generated for it, averaged over
  fixed 10-s windows of the clip (CLAP's input length) instead of one random crop.
- `ClapEmbedder`: the FAD embedder, with the windows of fadtk's `clap-laion-music` (10-s windows every
  1 s, the last ones zero-padded; audio rounded to 16 bits first), so its FAD compares with the
  published CLAP-music FAD tables (Gui et al. 2024, which include MusicGen). Same checkpoint family
  (`laion/larger_clap_music` is transformers' conversion of LAION's music_audioset_epoch_15 weights);
  the mel front end is transformers' port of LAION's, so expect small differences, not equal digits.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

DEFAULT_CHECKPOINT = "laion/larger_clap_music"
SAMPLE_RATE = 48000
WINDOW_SECONDS = 10.0


def _embedding(out) -> torch.Tensor:
    """transformers 4 returns the projected embedding; 5 wraps it in an output object."""
    return out if torch.is_tensor(out) else out.pooler_output


@dataclass
class Clap:
    """A CLAP model with its feature extractor and tokenizer."""

    model: torch.nn.Module
    feature_extractor: object
    tokenizer: object
    device: str = "cpu"
    name: str = DEFAULT_CHECKPOINT

    @classmethod
    def load(cls, name: str = DEFAULT_CHECKPOINT, device: str = "cpu") -> "Clap":
        """Download (or read from the Hugging Face cache) a CLAP checkpoint.

        Raises:
            OSError: the checkpoint is not reachable (offline) and not cached.
        """
        from transformers import ClapModel, ClapProcessor

        processor = ClapProcessor.from_pretrained(name)
        model = ClapModel.from_pretrained(name).to(device).eval()
        return cls(model, processor.feature_extractor, processor.tokenizer, device, name)

    def windows(self, audio: np.ndarray) -> list[np.ndarray]:
        """Consecutive 10-s windows of a 48 kHz clip [T]; a last piece shorter than half a window is
        dropped unless it is the only one (CLAP repeat-pads short inputs)."""
        w = int(WINDOW_SECONDS * SAMPLE_RATE)
        out = [audio[i : i + w] for i in range(0, max(len(audio), 1), w)]
        if len(out) > 1 and len(out[-1]) < w // 2:
            out = out[:-1]
        return out

    def audio_embeddings(self, audio: np.ndarray) -> torch.Tensor:
        """Unit-norm embeddings of each window of one clip: [n_windows, D]."""
        return self.window_embeddings(self.windows(audio))

    @torch.no_grad()
    def window_embeddings(self, windows: list[np.ndarray], batch_size: int = 16) -> torch.Tensor:
        """Unit-norm embeddings of 48 kHz windows of at most 10 s each: [len(windows), D]."""
        out = []
        for i in range(0, len(windows), batch_size):
            feats = self.feature_extractor(windows[i : i + batch_size], sampling_rate=SAMPLE_RATE,
                                           return_tensors="pt", truncation="rand_trunc",
                                           padding="repeatpad")  # windows never exceed 10 s: no crop
            feats = {k: v.to(self.device) for k, v in feats.items()}
            out.append(_embedding(self.model.get_audio_features(**feats)).float())
        return torch.nn.functional.normalize(torch.cat(out), dim=-1).cpu()

    @torch.no_grad()
    def text_embeddings(self, texts: list[str]) -> torch.Tensor:
        """Unit-norm text embeddings: [len(texts), D]."""
        tok = self.tokenizer(texts, padding=True, return_tensors="pt")
        tok = {k: v.to(self.device) for k, v in tok.items() if k in ("input_ids", "attention_mask")}
        return torch.nn.functional.normalize(_embedding(self.model.get_text_features(**tok)).float(), dim=-1).cpu()


def clap_score(clap: Clap, prompts: list[str], files: list[str]) -> list[float]:
    """Cosine similarity of each prompt with its audio file, averaged over the file's 10-s windows."""
    from .io import load_audio

    text = clap.text_embeddings(prompts)
    scores = []
    for i, f in enumerate(files):
        audio = clap.audio_embeddings(load_audio(f, SAMPLE_RATE))
        scores.append(float((audio @ text[i]).mean()))
    return scores


def fad_windows(audio: np.ndarray, hop_seconds: float = 1.0) -> list[np.ndarray]:
    """fadtk's clap-laion-music windows of a 48 kHz clip [T]: 10 s long, starting every `hop_seconds`
    up to the clip's end, zero-padded to 10 s; samples rounded to 16 bits first, as fadtk does."""
    audio = (np.clip(audio, -1.0, 1.0) * 32767.0).astype(np.int16).astype(np.float32) / 32767.0
    w, hop = int(WINDOW_SECONDS * SAMPLE_RATE), int(hop_seconds * SAMPLE_RATE)
    return [np.pad(audio[i : i + w], (0, w - len(audio[i : i + w]))) for i in range(0, max(len(audio), 1), hop)]


@dataclass
class ClapEmbedder:
    """FAD embedder (the fad.Embedder protocol): one CLAP embedding per fadtk window (`fad_windows`)."""

    clap: Clap
    hop_seconds: float = 1.0
    sample_rate: int = SAMPLE_RATE
    comparable: bool = True

    @property
    def name(self) -> str:
        return f"clap:{self.clap.name}"

    @property
    def window(self) -> str:
        return (f"10-s windows every {self.hop_seconds:g} s, zero-padded, 48 kHz, 16-bit rounded "
                "(fadtk clap-laion-music)")

    def embed(self, audio: np.ndarray) -> np.ndarray:
        """audio: 48 kHz [T] -> [n_windows, D] unit-norm CLAP embeddings."""
        return self.clap.window_embeddings(fad_windows(audio, self.hop_seconds)).numpy().astype(np.float64)
