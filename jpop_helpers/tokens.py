"""Audio -> EnCodec tokens, and the token cache: every clip is encoded once, training reads codes.

<root>/tokens/<codec>/<split>/ holds a few files however many clips the split has (a Google Drive folder
with thousands of small files gives I/O errors in Colab):
    shard-<nnnnn>.safetensors   up to SHARD_CLIPS clips, each a tensor named by its clip id:
                                codes int16 [K, T] (T may differ from clip to clip; K = 8 for stereo
                                models: left and right codes interleaved, as their codec gives them);
                                for melody models also "<clip id>#chroma", float32 [T_chroma, 12]:
                                the clip's chroma, computed once by the model's own conditioner
    index.json                  "clips": clip id -> {shard, frames (T), valid_frames, descriptions,
                                audio_sig, codec_sig[, chroma_sig]}; "shards": shard -> {clips, bytes, sha1}
A clip is re-encoded when its wav changes (size or mtime: re-chunking rewrites it), the codec's weights
change, or its shard is missing or damaged (size and SHA-1 are checked before a shard is parsed); clips
no longer in the manifest are dropped; captions follow the sidecars (editing one needs no re-encoding).
Nothing is unpickled: shards are safetensors, the index is JSON, and the previous format's per-clip
`<clip_id>.pt` files are deleted unread.

Crash safety: a shard is written under a name no index has used and renamed into place whole, the index
is written (atomically) after its shards, and only then are shards it no longer names deleted; a kill at
any point leaves the previous index with all its shards, or the new one with all of its. Clips encoded
by a run go to new shards (a full shard and the index are written every SHARD_CLIPS clips, so a
disconnect loses at most that much work); older shards are never rewritten, except that when more than
MAX_PARTIAL shards hold fewer than SHARD_CLIPS / 2 current clips, those clips are packed into full
shards. After a run a split therefore holds at most 2 x clips / SHARD_CLIPS + MAX_PARTIAL + 1 files.
"""
from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load as load_safetensors, save as save_safetensors

from .colab import progress
from .io import atomic_path, discard, load_audio, read_json, slugify, write_json
from .layout import DataLayout
from .manifest import Clip, split_clips
from .problems import ProblemLog

# 1000 clips of 30 s at K=4 are 12 MB (24 MB for 8 codebooks): 10,000 clips make ~10 shards, and a
# Colab disconnect while encoding loses at most one shard of work. MusicGen's 30-s limit bounds a clip's
# bytes, so a count bounds a shard's size.
SHARD_CLIPS = 1000
MAX_PARTIAL = 4  # shards less than half full (of current clips) tolerated before they are repacked
INDEX = "index.json"
FORMAT = "jpop-token-shards/1"
SHARD_NAME = re.compile(r"^shard-(\d{5,})\.safetensors$")


CHROMA = "#chroma"  # suffix of a clip's chroma tensor in a shard


@dataclass
class TokenItem:
    """One encoded clip. codes: int16 [K, T]; frames at or after `valid_frames` are padding.
    chroma: melody models only, float32 [T_chroma, n_chroma] (melody.clip_chroma)."""

    clip_id: str
    codes: torch.Tensor
    valid_frames: int
    descriptions: list[str]
    chroma: torch.Tensor | None = None


def valid_frames(n_valid_samples: int, sample_rate: int, frame_rate: float, n_frames: int) -> int:
    """Token frames that hold real audio: those that end within the first `n_valid_samples`."""
    return min(math.floor(n_valid_samples * frame_rate / sample_rate), n_frames)


def to_model_channels(audio: np.ndarray, channels: int) -> np.ndarray:
    """[T] or [C, T] -> [channels, T], as audiocraft converts audio for a model (mono is averaged;
    a mono clip given to a stereo model is duplicated, more channels are cut to the first two)."""
    from audiocraft.data.audio_utils import convert_audio_channels

    wav = torch.from_numpy(np.asarray(audio, dtype=np.float32)).reshape(-1, np.shape(audio)[-1])
    return convert_audio_channels(wav, channels).numpy()


@torch.no_grad()
def encode_audio(model, audio: list[np.ndarray], n_valid: list[int]) -> list[tuple[torch.Tensor, int]]:
    """Encode equally long clips with the model's codec (on the codec's device).

    Args:
        audio: float32 [T] or [C, T] each, at model.sample_rate, all of one length; converted to the
            model's channels (stereo models: 2, encoded by audiocraft's InterleaveStereoCompressionModel).
        n_valid: real samples at the start of each clip (the rest is padding).
    Returns:
        (codes int16 [K, T_frames] on CPU, valid frames) per clip; K = 8 for stereo models
        ([L1, R1, L2, R2, ...]).
    """
    codec = model.compression_model
    device = next(codec.parameters()).device
    out = []
    for a, n in zip(audio, n_valid):
        # One clip per forward: a batched convolution rounds differently with the batch, and a fitted
        # codebook's nearest centroid can flip on a near-tie, so a clip's codes would depend on which clips
        # shared its batch (a resumed tokenization would then differ from an uninterrupted one).
        wav = torch.from_numpy(to_model_channels(a, model.audio_channels)[None]).to(device)  # [1, C, T]
        codes, _ = codec.encode(wav)  # [1, K, T_frames]
        out.append((codes[0].cpu().to(torch.int16),
                    valid_frames(n, model.sample_rate, model.frame_rate, codes.shape[-1])))
    return out


def _audio_sig(path: Path) -> str | None:
    try:
        st = path.stat()
    except OSError:
        return None  # no wav: the clip goes to the encoder, which reports it
    return f"{st.st_size}:{st.st_mtime_ns}"


def _is_entry(e) -> bool:
    return (isinstance(e, dict) and isinstance(e.get("shard"), str) and isinstance(e.get("frames"), int)
            and isinstance(e.get("valid_frames"), int) and isinstance(e.get("audio_sig"), str)
            and isinstance(e.get("codec_sig"), str) and isinstance(e.get("descriptions"), list))


def _read_index(folder: Path) -> tuple[dict[str, dict], dict[str, dict]]:
    """(shards, clips) of a split's index; empty when it is missing or unreadable, and without the
    entries that are malformed or name a shard the index does not list."""
    try:
        raw = read_json(folder / INDEX)
        if raw.get("format") != FORMAT:
            return {}, {}
        shards = {n: m for n, m in raw["shards"].items()
                  if SHARD_NAME.match(n) and isinstance(m.get("bytes"), int) and isinstance(m.get("sha1"), str)}
        clips = {c: e for c, e in raw["clips"].items() if _is_entry(e) and e["shard"] in shards}
        return shards, clips
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}, {}


def read_shard(path: Path, meta: dict) -> dict[str, torch.Tensor]:
    """The shard's tensors, or {} when it is missing, torn or not the file the index describes."""
    try:
        data = path.read_bytes()
        if len(data) != meta["bytes"] or hashlib.sha1(data).hexdigest() != meta["sha1"]:
            return {}
        return load_safetensors(data)
    except Exception:  # OSError, or safetensors' own error for a malformed file
        return {}


def _discard(path: Path) -> None:
    """io.discard, where a failure only leaves the file for the next run to remove."""
    try:
        discard(path)
    except OSError:
        pass


def next_shard_number(folder: Path, index_names) -> int:
    """A shard number neither `folder` nor the index's names (`index_names`) has used: never reuse one,
    since an old index may still name that shard until the new index replaces it."""
    names = [*index_names, *(p.name for p in folder.iterdir())] if folder.exists() else list(index_names)
    return 1 + max((int(m[1]) for m in map(SHARD_NAME.match, names) if m), default=0)


def leftover_files(folder: Path, kept) -> list[Path]:
    """What a new index no longer needs, to delete once it is written: shards it does not name (`kept`)
    and the temporary files of interrupted writes."""
    if not folder.exists():
        return []
    return [f for f in folder.iterdir() if f.is_file() and ((SHARD_NAME.match(f.name) and f.name not in kept)
                                                            or (f.name.startswith((".shard-", ".index.")) and ".tmp." in f.name))]


class _ShardWriter:
    """The index being built by one `encode_split` run, and the shards it writes."""

    def __init__(self, folder: Path, shards: dict[str, dict]):
        self.folder = folder
        self.shards: dict[str, dict] = {}  # shards the new index names
        self.clips: dict[str, dict] = {}
        self.next = next_shard_number(folder, shards)

    def keep(self, name: str, meta: dict, clip_id: str, entry: dict) -> None:
        self.shards[name] = meta
        self.clips[clip_id] = entry

    def write(self, items: list[tuple[TokenItem, dict]]) -> None:
        """Write one new shard of `items` (TokenItem, index entry without its shard)."""
        name = f"shard-{self.next:05d}.safetensors"
        self.next += 1
        tensors = {it.clip_id: it.codes.contiguous() for it, _ in items}
        tensors.update({it.clip_id + CHROMA: it.chroma.contiguous() for it, _ in items if it.chroma is not None})
        data = save_safetensors(tensors)
        with atomic_path(self.folder / name) as tmp:
            tmp.write_bytes(data)
        self.shards[name] = {"clips": len({it.clip_id for it, _ in items}), "bytes": len(data),
                             "sha1": hashlib.sha1(data).hexdigest()}
        for it, entry in items:
            self.clips[it.clip_id] = {**entry, "shard": name}

    def write_index(self, order: list[str] | None = None) -> None:
        clips = self.clips if order is None else {c: self.clips[c] for c in order if c in self.clips}
        write_json(self.folder / INDEX, {"format": FORMAT, "shards": self.shards, "clips": clips})

    def partial(self) -> list[str]:
        """Shards that hold fewer than SHARD_CLIPS / 2 current clips."""
        live = Counter(e["shard"] for e in self.clips.values())
        return [n for n in self.shards if live[n] < SHARD_CLIPS / 2]


def encode_split(model, root: str | Path, split: str, codec_name: str, batch_size: int = 8) -> list[TokenItem]:
    """Encode (or load from the cache) every clip of a split.

    Args:
        model: audiocraft MusicGen; its compression_model encodes on its own device.
        codec_name: folder name of this codec's cache (e.g. the model name).
    Returns:
        TokenItems in manifest order (codes int16 [K, T]); clips that cannot be read are reported in
        <root>/reports/tokens_problems.jsonl and left out.
    """
    from .melody import chroma_signature, clip_chroma, takes_melody
    from .model import weights_fingerprint

    csig = weights_fingerprint(model.compression_model)
    melody = takes_melody(model)  # melody models: each clip's chroma is cached with its codes
    msig = chroma_signature(model.lm) if melody else None
    folder = DataLayout(root).root / "tokens" / slugify(codec_name) / split
    problems = ProblemLog.for_stage(root, "tokens")
    clips = split_clips(root, split, problems)
    old_shards, old_clips = _read_index(folder)
    out = _ShardWriter(folder, old_shards)
    items: dict[str, TokenItem] = {}

    # reuse: the current clips whose wav and codec are unchanged, from shards that read back intact
    by_shard: dict[str, list[Clip]] = {}
    for clip in clips:
        e = old_clips.get(clip.clip_id)
        if e and e["audio_sig"] == _audio_sig(clip.path) and e["codec_sig"] == csig and e.get("chroma_sig") == msig:
            by_shard.setdefault(e["shard"], []).append(clip)
    for name, group in by_shard.items():
        tensors = read_shard(folder / name, old_shards[name])
        for clip in group:
            e, codes = old_clips[clip.clip_id], tensors.get(clip.clip_id)
            chroma = tensors.get(clip.clip_id + CHROMA) if melody else None
            if (codes is None or codes.dtype != torch.int16 or codes.dim() != 2 or codes.shape[1] != e["frames"]
                    or not 0 <= e["valid_frames"] <= e["frames"]
                    or (melody and (chroma is None or chroma.dim() != 2 or chroma.dtype != torch.float32))):
                continue
            items[clip.clip_id] = TokenItem(clip.clip_id, codes, e["valid_frames"], clip.descriptions, chroma)
            out.keep(name, old_shards[name], clip.clip_id, {**e, "descriptions": clip.descriptions})

    # encode the rest; every SHARD_CLIPS new clips become a shard and the index is saved with it
    todo = list({c.clip_id: c for c in clips if c.clip_id not in items}.values())
    pending: list[tuple[TokenItem, dict]] = []
    for i in progress(range(0, len(todo), batch_size), desc=f"encode {split}", unit="batch"):
        batch, audio = [], []
        for clip in todo[i : i + batch_size]:
            try:
                audio.append(load_audio(clip.path, model.sample_rate, mono=model.audio_channels == 1))
                batch.append(clip)
            except (OSError, ValueError) as e:  # e.g. a clip damaged by an interrupted Drive sync: skip it, say which
                problems.add(clip.path, str(e))
        if not batch:
            continue
        n_valid = [round((c.duration - c.padded_seconds) * model.sample_rate) for c in batch]
        for clip, wav, (codes, frames) in zip(batch, audio, encode_audio(model, audio, n_valid)):
            chroma = clip_chroma(model.lm, wav, model.sample_rate) if melody else None
            items[clip.clip_id] = item = TokenItem(clip.clip_id, codes, frames, clip.descriptions, chroma)
            pending.append((item, {"frames": codes.shape[1], "valid_frames": frames, "descriptions": clip.descriptions,
                                   "audio_sig": _audio_sig(clip.path), "codec_sig": csig,
                                   **({"chroma_sig": msig} if melody else {})}))
        while len(pending) >= SHARD_CLIPS:
            out.write(pending[:SHARD_CLIPS])
            out.write_index()
            pending = pending[SHARD_CLIPS:]

    # the last, partial shard; too many partial shards are packed into full ones
    partial = out.partial()
    if len(partial) + bool(pending) > MAX_PARTIAL:
        pending += [(items[c], e) for c, e in out.clips.items() if e["shard"] in partial]
        for name in partial:
            del out.shards[name]
    for i in range(0, len(pending), SHARD_CLIPS):
        out.write(pending[i : i + SHARD_CLIPS])
    if (out.shards, out.clips) != (old_shards, old_clips):  # a re-run with nothing new writes nothing
        out.write_index([c.clip_id for c in clips])

    # only now, with the new index in place: delete shards it does not name, crash leftovers, the old format
    for f in leftover_files(folder, out.shards) + [f for f in folder.glob("*.pt") if f.is_file()]:
        _discard(f)
    return [items[c.clip_id] for c in clips if c.clip_id in items]
