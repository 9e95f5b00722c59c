"""Fréchet Audio Distance with pluggable embedders, a bootstrap interval over clips, and a floor.

FAD fits a Gaussian to the window embeddings of each set of clips and measures
    ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)).
The maths does not depend on the embedder. Which embedder makes a number comparable with others:
- CLAP-LAION music (clap.ClapEmbedder, `laion/larger_clap_music` through transformers): the embedder
  of fadtk's `clap-laion-music` (Gui et al. 2024, "Adapting Fréchet Audio Distance for generative
  music evaluation", whose tables include MusicGen), with its windows (10 s, 1-s hop, zero-padded).
- VGGish at 16 kHz (`VGGishEmbedder`), the embedder of the MusicGen paper's FAD (Copet et al. 2023,
  after Kilgour et al.): the `torchvggish` package's architecture and input pipeline (a port of
  Google's), its published weights read with torch.load(weights_only=True), never through the
  package's own torch.hub loader (a full unpickler); raw 128-d embeddings of 0.96-s examples, no PCA,
  as fadtk's `vggish`.
- `MelStatsEmbedder` needs no weights: an offline fallback for tests and the offline demo. Its numbers
  compare with nothing published; every table labels it so.
FAD is biased by sample size and noisy on few clips: every number comes with the clips it rests on, a
bootstrap interval (clips resampled, not frames: windows of one clip are not independent), and an
"indicative only" flag below MIN_RELIABLE_CLIPS; the FAD between two halves of the real set is the
floor to read the others against.
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
    window: str  # how a clip is cut into embedded windows, for the report
    comparable: bool  # False: a fallback whose numbers compare with nothing published

    def embed(self, audio: np.ndarray) -> np.ndarray:
        """audio: float32 mono [T] at `sample_rate` -> window embeddings [N, D]."""


@dataclass
class MelStatsEmbedder:
    """Weight-free offline fallback: log-mel spectrum frames (n_mels dims, 0.5-s hops). Not a standard
    FAD embedder: its numbers only rank sets against each other within one report."""

    sample_rate: int = 16000
    n_mels: int = 32
    hop_seconds: float = 0.5
    name: str = "mel-stats (offline fallback)"
    comparable: bool = False

    @property
    def window(self) -> str:
        return f"log-mel frames, {self.hop_seconds:g}-s hop, 2048-sample FFT at {self.sample_rate} Hz"

    def embed(self, audio: np.ndarray) -> np.ndarray:
        import librosa

        hop = int(self.hop_seconds * self.sample_rate)
        mel = librosa.feature.melspectrogram(y=audio, sr=self.sample_rate, n_fft=2048, hop_length=hop,
                                             n_mels=self.n_mels)
        return np.log(mel + 1e-6).T.astype(np.float64)  # [frames, n_mels]


VGGISH_WEIGHTS = "https://github.com/harritaylor/torchvggish/releases/download/v0.1/vggish-10086976.pth"


@dataclass
class VGGishEmbedder:
    """VGGish (16 kHz, 0.96-s examples, 128-d) from torchvggish's architecture and log-mel front end."""

    model: object  # torchvggish's VGG module
    device: str = "cpu"
    sample_rate: int = 16000
    name: str = "vggish"
    window: str = "0.96-s log-mel examples (VGGish), 16 kHz, no PCA"
    comparable: bool = True

    @classmethod
    def load(cls, weights: str | Path | None = None, device: str = "cpu") -> "VGGishEmbedder":
        """The published weights: `weights` (a local .pth), else downloaded once into torch's hub cache
        (its file name carries the SHA-256 prefix, which the download checks).

        Raises:
            ImportError: torchvggish (and its resampy) are not installed: `pip install torchvggish resampy`.
            pickle.UnpicklingError: the file holds anything but tensors (weights_only refuses to run code).
        """
        import torch

        if weights is None:
            weights = Path(torch.hub.get_dir()) / "checkpoints" / VGGISH_WEIGHTS.rsplit("/", 1)[1]
            if not weights.exists():
                weights.parent.mkdir(parents=True, exist_ok=True)
                torch.hub.download_url_to_file(VGGISH_WEIGHTS, str(weights), hash_prefix="10086976")
        state = torch.load(weights, map_location="cpu", weights_only=True)  # tensors only: nothing runs
        from torchvggish.torchvggish import _vgg

        model = _vgg(postprocess=False)
        model.load_state_dict(state)
        return cls(model.to(device).eval(), device)

    def embed(self, audio: np.ndarray) -> np.ndarray:
        """audio: float32 mono [T] at 16 kHz -> [n_examples, 128]; a clip shorter than one 0.96-s example
        gives no rows."""
        import torch
        from torchvggish.vggish_input import waveform_to_examples

        examples = waveform_to_examples(np.asarray(audio, dtype=np.float64), self.sample_rate, return_tensor=False)
        if not len(examples):
            return np.zeros((0, 128))
        with torch.no_grad():
            x = torch.from_numpy(examples[:, None]).float().to(self.device)  # [N, 1, 96, 64]
            return self.model(x).double().cpu().numpy()


def gaussian_stats(emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and covariance [D, D] of embeddings [N, D]."""
    emb = np.asarray(emb, dtype=np.float64)
    return emb.mean(axis=0), np.atleast_2d(np.cov(emb, rowvar=False))


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

    Tr((S1 S2)^1/2) is computed as Tr((S1^1/2 S2 S1^1/2)^1/2) from symmetric eigendecompositions: the
    same number as scipy's sqrtm of the product for covariance matrices, but real and stable when they
    are rank-deficient (fewer windows than dimensions), and fast enough to bootstrap.
    """
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    r1 = _sqrt_psd(sigma1)
    inner = np.linalg.eigvalsh(r1 @ sigma2 @ r1)
    tr_covmean = float(np.sqrt(np.clip(inner, 0, None)).sum())
    diff = mu1 - mu2
    return float(max(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean, 0.0))


def embed_clips(embedder: Embedder, files: list[str | Path], seconds: float | None = None) -> list[np.ndarray]:
    """Window embeddings of every file, one array [n_windows, D] per clip.

    Args:
        seconds: embed only the first `seconds` of each file (real clips cut to the generated length,
            so both sets are embedded over the same span).
    """
    from .io import load_audio

    out = []
    for f in files:
        audio = load_audio(f, embedder.sample_rate)
        if seconds:
            audio = audio[: int(seconds * embedder.sample_rate)]
        out.append(np.asarray(embedder.embed(audio), dtype=np.float64))
    return out


def _distance(clips_a: list[np.ndarray], clips_b: list[np.ndarray]) -> float:
    """FAD of the stacked windows of two sets of clips.

    With fewer windows than dimensions squared (CLAP: 512 dims), the same number comes cheaper from
    the windows themselves: with centred windows Xa [Na, D], Xb [Nb, D], the eigenvalues of Sa Sb are
    the squared singular values of Xa Xb^T / sqrt((Na-1)(Nb-1)), so Tr((Sa Sb)^1/2) is its nuclear norm:
    one [Na, Nb] SVD instead of two [D, D] eigendecompositions (the bootstrap repeats it many times).
    """
    ea, eb = np.concatenate(clips_a).astype(np.float64), np.concatenate(clips_b).astype(np.float64)
    na, nb, dim = len(ea), len(eb), ea.shape[1]
    if min(na, nb) < 2:
        return float("nan")
    if na * nb >= dim * dim:
        return frechet_distance(*gaussian_stats(ea), *gaussian_stats(eb))
    xa, xb = ea - ea.mean(0), eb - eb.mean(0)
    diff = ea.mean(0) - eb.mean(0)
    tr_covmean = np.linalg.svd(xa @ xb.T, compute_uv=False).sum() / np.sqrt((na - 1) * (nb - 1))
    value = diff @ diff + (xa * xa).sum() / (na - 1) + (xb * xb).sum() / (nb - 1) - 2 * tr_covmean
    return float(max(value, 0.0))


def bootstrap_fad(clips_a: list[np.ndarray], clips_b: list[np.ndarray], n_boot: int = 200, seed: int = 0,
                  level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the FAD: both sets' clips resampled with replacement.

    Clips, not windows, are resampled: the windows of one clip are correlated, and resampling them as
    if independent would give an interval far too narrow. Returns (low, high); NaN when n_boot is 0.
    """
    if n_boot <= 0 or min(len(clips_a), len(clips_b)) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        ia = rng.integers(0, len(clips_a), len(clips_a))
        ib = rng.integers(0, len(clips_b), len(clips_b))
        values.append(_distance([clips_a[i] for i in ia], [clips_b[i] for i in ib]))
    values = np.asarray(values)
    values = values[np.isfinite(values)]
    if not len(values):
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return float(lo), float(hi)


def fad_of_embeddings(clips_a: list[np.ndarray], clips_b: list[np.ndarray], n_boot: int = 200, seed: int = 0,
                      warn: bool = True) -> dict:
    """FAD between two sets of per-clip window embeddings, with its interval and sample sizes.

    Returns:
        {"fad", "low", "high" (95 % bootstrap), "clips_a", "clips_b", "frames_a", "frames_b",
         "reliable", "indicative_only", "warning"}
    """
    na, nb = (sum(len(c) for c in clips) for clips in (clips_a, clips_b))
    dim = next((c.shape[1] for c in [*clips_a, *clips_b] if c.ndim == 2), 0)
    problems = []
    if min(na, nb) < 2:  # no covariance from one frame: say so instead of crashing
        value = float("nan")
        problems.append(f"a set has {min(na, nb)} embedding frame(s); a covariance needs 2 or more "
                        "(generate more or longer clips)")
    else:
        value = _distance(clips_a, clips_b)
    few = min(len(clips_a), len(clips_b)) < MIN_RELIABLE_CLIPS
    if few:
        problems.append(f"fewer than {MIN_RELIABLE_CLIPS} clips per set ({len(clips_a)} vs {len(clips_b)}): "
                        "indicative only")
    if min(na, nb) <= dim:
        problems.append(f"fewer frames than embedding dimensions ({min(na, nb)} <= {dim}): "
                        "covariance is rank-deficient")
    warning = ("FAD is unstable here: " + "; ".join(problems)) if problems else None
    if warning and warn:
        warnings.warn(warning)
    lo, hi = bootstrap_fad(clips_a, clips_b, n_boot, seed) if np.isfinite(value) else (float("nan"),) * 2
    return {"fad": value, "low": lo, "high": hi, "clips_a": len(clips_a), "clips_b": len(clips_b),
            "frames_a": int(na), "frames_b": int(nb), "reliable": not problems, "indicative_only": few,
            "warning": warning}


def fad(embedder: Embedder, files_a: list, files_b: list, n_boot: int = 200, seconds: float | None = None) -> dict:
    """FAD between two sets of audio files, with the sample sizes it rests on and its interval.

    Returns:
        fad_of_embeddings' dict + {"embedder", "window", "comparable"}.
    """
    row = fad_of_embeddings(embed_clips(embedder, files_a, seconds), embed_clips(embedder, files_b, seconds), n_boot)
    return {**row, "embedder": embedder.name, "window": embedder.window,
            "comparable": bool(getattr(embedder, "comparable", False))}


def halves(groups: list[str], seed: int = 0) -> tuple[list[int], list[int]]:
    """Indices of two halves of a set, whole groups (songs) to each half when there are 2 or more, so
    the floor compares different songs of the genre, as generated clips are new songs; else clips."""
    rng = np.random.default_rng(seed)
    names = sorted(set(groups))
    if len(names) >= 2:
        rng.shuffle(names)
        first = set(names[0::2])
        a = [i for i, g in enumerate(groups) if g in first]
        return a, [i for i, g in enumerate(groups) if g not in first]
    order = list(rng.permutation(len(groups)))
    return sorted(order[0::2]), sorted(order[1::2])


def fad_floor(clips: list[np.ndarray], groups: list[str], n_boot: int = 200, seed: int = 0) -> dict:
    """FAD between two halves of the real set: what two samples of the genre itself score.

    Each half holds about half the clips, so the floor sits a little above the distance of two full-size
    real sets (FAD grows as sets shrink): read a model's FAD against it, not against zero.
    """
    a, b = halves(groups, seed)
    row = fad_of_embeddings([clips[i] for i in a], [clips[i] for i in b], n_boot, seed, warn=False)
    return {**row, "split": "songs" if len(set(groups)) >= 2 else "clips"}
