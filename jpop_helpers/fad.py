"""Fréchet Audio Distance with pluggable embedders.

FAD fits a Gaussian to the frame embeddings of each set of clips and measures
    ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)).
The maths and the pipeline do not depend on the embedder: `MelStatsEmbedder` needs no weights (tests,
offline sanity checks); model embedders (VGGish, CLAP) plug in through the same `embed` method when
their weights are reachable. FAD is biased by sample size: compare numbers computed on sets of the
same size, and treat sets smaller than `MIN_RELIABLE_CLIPS` as indicative only.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

MIN_RELIABLE_CLIPS = 50


class Embedder(Protocol):
    name: str
    sample_rate: int

    def embed(self, audio: np.ndarray) -> np.ndarray:
        """audio: float32 mono [T] at `sample_rate` -> frame embeddings [N, D]."""


@dataclass
class MelStatsEmbedder:
    """Weight-free embedder: log-mel spectrum frames (n_mels dims, ~0.5-s hops)."""

    sample_rate: int = 16000
    n_mels: int = 32
    hop_seconds: float = 0.5
    name: str = "mel-stats"

    def embed(self, audio: np.ndarray) -> np.ndarray:
        import librosa

        hop = int(self.hop_seconds * self.sample_rate)
        mel = librosa.feature.melspectrogram(y=audio, sr=self.sample_rate, n_fft=2048, hop_length=hop,
                                             n_mels=self.n_mels)
        return np.log(mel + 1e-6).T.astype(np.float64)  # [frames, n_mels]


def gaussian_stats(emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and covariance [D, D] of embeddings [N, D]."""
    emb = np.asarray(emb, dtype=np.float64)
    return emb.mean(axis=0), np.cov(emb, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2)."""
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():  # singular product: regularise, as the reference implementations do
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    covmean = covmean.real
    return float(max(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean), 0.0))


def embed_files(embedder: Embedder, files: list[str | Path]) -> np.ndarray:
    """Frame embeddings of every file, stacked: [sum of frames, D]."""
    from .io import load_audio

    return np.concatenate([embedder.embed(load_audio(f, embedder.sample_rate)) for f in files])


def fad(embedder: Embedder, files_a: list, files_b: list) -> dict:
    """FAD between two sets of audio files, with the sample sizes it rests on.

    Returns:
        {"fad", "embedder", "clips_a", "clips_b", "frames_a", "frames_b", "reliable", "warning"}
    """
    ea, eb = embed_files(embedder, files_a), embed_files(embedder, files_b)
    dim = ea.shape[1]
    problems = []
    if min(len(ea), len(eb)) < 2:  # no covariance from one frame: say so instead of crashing in sqrtm
        value = float("nan")
        problems.append(f"a set has {min(len(ea), len(eb))} embedding frame(s); a covariance needs 2 or more "
                        "(generate more or longer clips)")
    else:
        value = frechet_distance(*gaussian_stats(ea), *gaussian_stats(eb))
    if min(len(files_a), len(files_b)) < MIN_RELIABLE_CLIPS:
        problems.append(f"fewer than {MIN_RELIABLE_CLIPS} clips per set ({len(files_a)} vs {len(files_b)})")
    if min(len(ea), len(eb)) <= dim:
        problems.append(f"fewer frames than embedding dimensions ({min(len(ea), len(eb))} <= {dim}): "
                        "covariance is rank-deficient")
    warning = ("FAD is unstable here: " + "; ".join(problems)) if problems else None
    if warning:
        warnings.warn(warning)
    return {"fad": value, "embedder": embedder.name, "clips_a": len(files_a), "clips_b": len(files_b),
            "frames_a": int(len(ea)), "frames_b": int(len(eb)), "reliable": not problems, "warning": warning}
