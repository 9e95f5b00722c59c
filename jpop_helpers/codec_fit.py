"""Codebooks for the tiny offline codec that carry the audio, and how to tell that they do.

The tiny codec (model.build_tiny) is audiocraft's EncodecModel with a random SEANet encoder/decoder and
a 4-stage ResidualVectorQuantizer of 400 entries each. Left to audiocraft's own k-means initialisation
on random noise, its codebooks sit where no music's latents fall: every frame of real audio gets the
same code, so an LM trained on such tokens learns nothing about music (and a fine-tune "wins" by
predicting a constant). Here the codebooks are fitted instead, stage by stage, by k-means on the
encoder's latents of music-like audio (stage k on the residual left by stages 1..k-1), and written
into the quantizer's own buffers (embed, embed_avg, cluster_size, inited), so audiocraft loads and
uses the codec unchanged.

The audio they are fitted on is `fit_audio()`: notes in five synthetic timbres (piano,
electric piano, strings, square and saw leads) synthesised here, deterministic and without
fluidsynth or music21, so "tiny" builds in seconds anywhere. `codec_report` measures what the
codes keep on any audio (tests use the rendered demo corpus):
- usage per codebook: entropy of the code histogram (bits) and its perplexity (2**entropy: the number
  of equally used codes it is worth; 1 = a constant, 400 = uniform);
- reconstruction: the latent's relative quantization error (|z - q(z)|^2 / |z - mean z|^2: 0 is
  lossless, 1 means the codes say no more than the mean frame). It is measured on the latent, not on
  audio, because the decoder is untrained (random): decoded audio says nothing about the codes, and
  SI-SNR of decode(q(z)) against decode(z) is inflated by the decoder's constant path (25 dB even for
  the noise-fitted codebooks, under which every frame gets one code).
"""
from __future__ import annotations

import math

import numpy as np
import torch

SAMPLE_RATE = 32000


def _note(f0: float, seconds: float, timbre: str, rng: np.random.Generator, sr: int) -> np.ndarray:
    """One note [T] of a timbre: harmonics and envelope shaped like General MIDI
    piano, electric piano, strings and square/saw leads."""
    t = np.arange(int(seconds * sr)) / sr
    n_harm = max(1, min(8, int(sr / 2 / f0) - 1))
    h = np.arange(1, n_harm + 1)
    if timbre == "piano":  # 1/n^1.5 partials, fast attack, exponential decay (higher partials faster)
        amps, env = h ** -1.5, np.exp(-t[None] * (2.0 + 1.5 * h[:, None]))
    elif timbre == "epiano":  # few bell-like partials
        amps, env = np.exp(-h / 1.5), np.exp(-t[None] * (3.0 + 3.0 * h[:, None]))
    elif timbre == "strings":  # saw-like, slow attack, vibrato
        amps, env = 1.0 / h, np.minimum(1.0, t / 0.12)[None] * np.ones((len(h), 1))
    elif timbre == "square":  # odd harmonics
        amps, env = np.where(h % 2 == 1, 1.0 / h, 0.0), np.ones((len(h), len(t)))
    else:  # "saw"
        amps, env = 1.0 / h, np.ones((len(h), len(t)))
    vib = 1.0 + (0.004 * np.sin(2 * np.pi * 5.5 * t) if timbre == "strings" else 0.0)
    phase = 2 * np.pi * f0 * np.cumsum(np.broadcast_to(vib, t.shape)) / sr
    x = (amps[:, None] * env * np.sin(h[:, None] * phase[None] + rng.uniform(0, 2 * np.pi, (len(h), 1)))).sum(0)
    release = np.minimum(1.0, (len(t) - np.arange(len(t))) / (0.02 * sr))  # no clicks at note ends
    return (x * release / np.abs(amps).sum()).astype(np.float32)


def fit_audio(seconds: float = 120.0, seed: int = 0, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Deterministic music-like audio to fit codebooks on: [N, 10 s] float32 at `sample_rate`.

    Each 10-s excerpt has one timbre (of the five), a tempo of 60-140 BPM, a random
    key, and a melody over chords (1-4 voices of notes of 1/4-2 beats); levels vary by excerpt.
    """
    rng = np.random.default_rng(seed)
    length = 10 * sample_rate
    timbres = ["piano", "epiano", "strings", "square", "saw"]
    out = []
    for i in range(max(1, int(seconds // 10))):
        timbre = timbres[i % len(timbres)]
        beat = 60.0 / rng.uniform(60, 140)
        tonic = int(rng.integers(45, 57))
        scale = np.array([0, 2, 4, 5, 7, 9, 11] if rng.random() < 0.6 else [0, 2, 3, 5, 7, 8, 10])
        x = np.zeros(length + sample_rate * 4, np.float32)
        for voice in range(int(rng.integers(1, 5))):
            pos, octave = 0.0, 12 * (voice == 0) - 12 * (voice == 2)
            while pos * sample_rate < length:
                dur = beat * float(rng.choice([0.25, 0.5, 1.0, 1.0, 2.0] if voice == 0 else [1.0, 2.0, 2.0]))
                if rng.random() > 0.1:  # a rest now and then
                    midi = tonic + octave + 12 * int(rng.integers(0, 2)) + int(rng.choice(scale))
                    note = _note(440.0 * 2 ** ((midi - 69) / 12), dur * 1.1, timbre, rng, sample_rate)
                    s = int(pos * sample_rate)
                    x[s : s + len(note)] += note * (0.5 if voice == 0 else 0.3)
                pos += dur
        x = x[:length]
        out.append(x / max(1e-6, np.abs(x).max()) * rng.uniform(0.2, 0.9))
    return np.stack(out).astype(np.float32)


@torch.no_grad()
def encoder_latents(codec, audio: np.ndarray | torch.Tensor, batch: int = 8) -> torch.Tensor:
    """The codec encoder's latent frames of `audio` [N, T] (mono, at codec.sample_rate): [N, D, F]."""
    x = torch.as_tensor(np.asarray(audio, np.float32))[:, None]
    device = next(codec.parameters()).device
    return torch.cat([codec.encoder(x[i : i + batch].to(device)).cpu() for i in range(0, len(x), batch)])


def _nearest(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centroid of each row of x [N, D]: [N]."""
    return (centroids.pow(2).sum(1) - 2 * x @ centroids.T).argmin(1)


def kmeans(x: torch.Tensor, k: int, iters: int = 15, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means from k random samples (deterministic for a seed).

    Args:
        x: [N, D] float32 samples, N >= k.
    Returns:
        centroids [k, D], cluster sizes [k] (float).
    Raises:
        ValueError: fewer samples than clusters.
    """
    if len(x) < k:
        raise ValueError(f"{len(x)} latent frames cannot fit {k} codes: give the codec more audio")
    g = torch.Generator().manual_seed(seed)
    # Centred first: the random encoder's latents sit far from the origin with a small spread, and
    # float32 distances computed as |x|^2 - 2xc + |c|^2 would lose that spread to cancellation.
    mean = x.mean(0)
    x = (x - mean).float()
    centroids = x[torch.randperm(len(x), generator=g)[:k]]  # k distinct frames to start from
    for _ in range(iters):
        assign = _nearest(x, centroids)
        sizes = torch.bincount(assign, minlength=k).float()
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        empty = sizes == 0
        centroids = torch.where(empty[:, None], centroids, sums / sizes.clamp(min=1)[:, None])
        if empty.any():  # an empty cluster takes the point farthest from its centre
            far = (x - centroids[assign]).pow(2).sum(1).topk(int(empty.sum())).indices
            centroids[empty] = x[far]
    sizes = torch.bincount(_nearest(x, centroids), minlength=k).float()
    return centroids + mean, sizes


@torch.no_grad()
def fit_codebooks(codec, audio: np.ndarray, iters: int = 15, seed: int = 0, max_frames: int = 8000) -> None:
    """Fit the codec's residual codebooks to the encoder latents of `audio` [N, T], in place.

    Stage k's codebook is k-means on the residual the earlier stages leave, as the RVQ encodes. The
    quantizer's buffers are set as its own k-means init sets them (embed, embed_avg, cluster_size,
    inited), so nothing audiocraft does afterwards re-initialises them.
    """
    z = encoder_latents(codec, audio)  # [N, D, F]
    residual = z.transpose(1, 2).reshape(-1, z.shape[1])  # [N*F, D]
    if len(residual) > max_frames:  # a strided subset: k-means costs N x k per iteration
        residual = residual[:: math.ceil(len(residual) / max_frames)]
    for stage, layer in enumerate(codec.quantizer.vq.layers):
        book = layer._codebook
        embed, sizes = kmeans(residual, book.codebook_size, iters, seed + stage)
        book.embed.copy_(embed)
        book.embed_avg.copy_(embed)
        book.cluster_size.copy_(sizes)
        book.inited.fill_(1.0)
        residual = residual - embed[_nearest(residual - embed.mean(0), embed - embed.mean(0))]


def code_usage(codes: torch.Tensor, card: int) -> list[dict]:
    """Per codebook: codes used, entropy of their histogram (bits) and its perplexity (2**entropy).

    Args:
        codes: [B, K, T] (or [K, T]) integer codes.
    """
    codes = codes.reshape(-1, *codes.shape[-2:]) if codes.dim() == 3 else codes[None]
    rows = []
    for k in range(codes.shape[1]):
        p = torch.bincount(codes[:, k].flatten().long(), minlength=card).double()
        p = p[p > 0] / p.sum()
        h = float(-(p * p.log2()).sum())
        rows.append({"codebook": k + 1, "used": int(len(p)), "entropy_bits": h, "perplexity": 2.0 ** h})
    return rows


@torch.no_grad()
def codec_report(codec, audio: np.ndarray) -> dict:
    """What the codes keep of `audio` [N, T] (mono, codec.sample_rate).

    Returns:
        {"usage": code_usage rows, "mean_perplexity", "latent_rel_error": |z - q(z)|^2 / |z - mean z|^2,
         "frames": latent frames measured}
    """
    was_training = codec.training
    codec.eval()
    x = torch.as_tensor(np.asarray(audio, np.float32))[:, None]
    z = codec.encoder(x)  # [N, D, F]
    codes = codec.quantizer.encode(z)  # [N, K, F]
    zq = codec.quantizer.decode(codes)
    flat, flat_q = z.transpose(1, 2).reshape(-1, z.shape[1]), zq.transpose(1, 2).reshape(-1, z.shape[1])
    rel = float((flat - flat_q).pow(2).sum() / (flat - flat.mean(0)).pow(2).sum())
    codec.train(was_training)
    usage = code_usage(codes, codec.quantizer.bins)
    return {"usage": usage, "mean_perplexity": sum(u["perplexity"] for u in usage) / len(usage),
            "latent_rel_error": rel, "frames": int(flat.shape[0])}


def describe(report: dict) -> str:
    """Two lines for a terminal or a report."""
    usage = ", ".join(f"q{u['codebook']} {u['perplexity']:.0f} ({u['used']} used)" for u in report["usage"])
    return (f"code perplexity per codebook: {usage}\n"
            f"latent quantization error {report['latent_rel_error']:.1%} of the latent's variance "
            f"({report['frames']} frames)")
