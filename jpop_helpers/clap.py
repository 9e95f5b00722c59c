"""CLAP (LAION's contrastive audio-text model, music checkpoint) through Hugging Face transformers.

Two uses in stage 05:
- `clap_score`: cosine similarity between a prompt and the audio generated for it, averaged over
  fixed 10-s windows of the clip (CLAP's input length) instead of one random crop.
- `ClapEmbedder`: the FAD embedder (one embedding per 10-s window), in place of the weight-free
  mel-statistics embedder, when the checkpoint is reachable (Colab; cached after the first download).
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

    @torch.no_grad()
    def audio_embeddings(self, audio: np.ndarray) -> torch.Tensor:
        """Unit-norm embeddings of each window of one clip: [n_windows, D]."""
        feats = self.feature_extractor(self.windows(audio), sampling_rate=SAMPLE_RATE, return_tensors="pt",
                                       truncation="rand_trunc", padding="repeatpad")  # windows never exceed 10 s
        feats = {k: v.to(self.device) for k, v in feats.items()}
        emb = _embedding(self.model.get_audio_features(**feats))
        return torch.nn.functional.normalize(emb.float(), dim=-1).cpu()

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


@dataclass
class ClapEmbedder:
    """FAD embedder: one CLAP embedding per 10-s window (the fad.Embedder protocol)."""

    clap: Clap
    sample_rate: int = SAMPLE_RATE

    @property
    def name(self) -> str:
        return f"clap:{self.clap.name}"

    def embed(self, audio: np.ndarray) -> np.ndarray:
        return self.clap.audio_embeddings(audio).numpy().astype(np.float64)
