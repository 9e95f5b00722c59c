"""EnCodec token cache: every clip is encoded once, training reads codes and never re-encodes audio.

<root>/tokens/<codec>/<split>/<clip_id>.pt holds {"codes": int16 [K, T], "valid_frames", "descriptions",
"audio_sig", "codec_sig"}. A clip is re-encoded when its wav changes (size or mtime: re-chunking
rewrites it) or the codec's weights change; clips that no longer exist are not returned.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from .colab import progress
from .io import atomic_path, slugify
from .layout import DataLayout
from .problems import ProblemLog


@dataclass
class TokenItem:
    """One encoded clip. codes: int16 [K, T]; frames at or after `valid_frames` are padding."""

    clip_id: str
    codes: torch.Tensor
    valid_frames: int
    descriptions: list[str]


def codec_signature(codec: torch.nn.Module) -> str:
    """A fingerprint of the codec's weights: cheap, and different for every real or tiny codec."""
    h = hashlib.sha1()
    for name, t in sorted(codec.state_dict().items()):
        flat = t.detach().float().flatten()
        h.update(name.encode())
        h.update(json.dumps([round(float(flat.sum()), 4), flat.numel()]).encode())
    return h.hexdigest()[:12]


def _audio_sig(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def _manifest_clips(layout: DataLayout, split: str, problems: ProblemLog) -> list[dict]:
    """Clip rows of one split, from the audiocraft manifest and each clip's sidecar; a line or sidecar
    that cannot be read is reported and skipped."""
    rows = []
    manifest = layout.manifest(split)
    if not manifest.exists():
        raise FileNotFoundError(f"{manifest} is missing: run the prepare stage first")
    for n, line in enumerate(manifest.read_text().splitlines(), start=1):
        item = f"{manifest}:{n}"
        try:
            meta = json.loads(line)
            wav = Path(meta["path"])
            item = str(wav.with_suffix(".json"))
            side = json.loads(wav.with_suffix(".json").read_text(encoding="utf-8"))
            rows.append({"wav": wav, "clip_id": side["name"], "duration": meta["duration"],
                         "padded_seconds": side.get("padded_seconds", 0.0),
                         "descriptions": side.get("descriptions") or [side["description"]]})
        except (OSError, ValueError, KeyError) as e:
            problems.add(item, f"unreadable clip metadata ({type(e).__name__}: {e})")
    return rows


@torch.no_grad()
def encode_split(model, root: str | Path, split: str, codec_name: str, batch_size: int = 8) -> list[TokenItem]:
    """Encode (or load from the cache) every clip of a split.

    Args:
        model: audiocraft MusicGen; its compression_model encodes on its own device.
        codec_name: folder name of this codec's cache (e.g. the model name).
    Returns:
        TokenItems in manifest order.
    """
    from .io import load_audio

    layout = DataLayout(root)
    codec = model.compression_model
    device = next(codec.parameters()).device
    csig = codec_signature(codec)
    out_dir = layout.root / "tokens" / slugify(codec_name) / split
    problems = ProblemLog.for_stage(root, "tokens")
    rows = _manifest_clips(layout, split, problems)
    items: dict[str, TokenItem] = {}
    todo = []
    for r in rows:
        cache = out_dir / f"{r['clip_id']}.pt"
        if cache.exists():
            try:
                d = torch.load(cache, weights_only=True)
                if d["audio_sig"] == _audio_sig(r["wav"]) and d["codec_sig"] == csig:
                    items[r["clip_id"]] = TokenItem(r["clip_id"], d["codes"], d["valid_frames"], d["descriptions"])
                    continue
            except Exception:
                pass  # unreadable cache entry (e.g. torn by a crash): encode again
        todo.append(r)
    for i in progress(range(0, len(todo), batch_size), desc=f"encode {split}", unit="batch"):
        batch, audio = [], []
        for r in todo[i : i + batch_size]:
            try:
                audio.append(torch.from_numpy(load_audio(r["wav"], model.sample_rate)))
                batch.append(r)
            except ValueError as e:  # e.g. a clip damaged by an interrupted Drive sync: skip it, say which
                problems.add(r["wav"], str(e))
        if not batch:
            continue
        wav = torch.stack(audio)[:, None]
        codes, _ = codec.encode(wav.to(device))  # [B, K, T]
        for r, c in zip(batch, codes.cpu()):
            valid = math.floor((r["duration"] - r["padded_seconds"]) * model.frame_rate)
            item = TokenItem(r["clip_id"], c.to(torch.int16), min(valid, c.shape[-1]), r["descriptions"])
            cache = out_dir / f"{r['clip_id']}.pt"
            cache.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(cache) as tmp:
                torch.save({"codes": item.codes, "valid_frames": item.valid_frames, "descriptions": item.descriptions,
                            "audio_sig": _audio_sig(r["wav"]), "codec_sig": csig}, tmp)
            items[r["clip_id"]] = item
    return [items[r["clip_id"]] for r in rows if r["clip_id"] in items]
