"""Captions: tags -> varied natural-language descriptions.

MusicGen is conditioned on free text. One fixed template per clip teaches it one phrasing; several
seeded variants per clip (the training loop samples one per step) teach it the tags, not the template.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import ClassVar

from .io import short_hash


@dataclass
class CaptionConfig:
    n_variants: int = 4  # descriptions written per clip
    seed: int = 0
    genre_fallback: str = "pop"  # used when neither the manifest nor the tagger gives a genre

    CLI_NAMES: ClassVar[dict] = {"n_variants": "captions_per_clip", "seed": "captions_seed"}


def tempo_word(bpm: float | None) -> str:
    if bpm is None:
        return "mid-tempo"
    return "slow" if bpm < 76 else "mid-tempo" if bpm < 108 else "upbeat" if bpm < 140 else "fast"


def _join(words: list[str]) -> str:
    words = [w for w in words if w]
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


def make_captions(clip_id: str, genre: str | None, moods: list[str], instruments: list[str],
                  bpm: float | None, key: str | None, config: CaptionConfig | None = None,
                  instrumental: bool = False) -> list[str]:
    """Distinct descriptions of one clip, deterministic for (seed, clip_id).

    A caption is a head ("Upbeat j-pop song") followed by optional clauses (instruments, mood, tempo,
    key) in random order and wording; a missing tag drops its clause instead of printing "None".

    Args:
        instrumental: the clip is an instrumental (its vocals were removed): every caption says so
            ("instrumental j-pop track"). Only then: a clip that may hold vocals is never called
            instrumental.
    """
    config = config or CaptionConfig()
    rng = random.Random(f"{config.seed}:{short_hash(clip_id, 16)}")
    genre = (genre or config.genre_fallback).strip()
    if instrumental:
        genre = f"instrumental {genre}"
    out: list[str] = []
    for _ in range(20 * config.n_variants):  # bounded: few tags admit few distinct captions
        if len(out) >= config.n_variants:
            break
        m = rng.sample(list(moods), len(moods))
        ins = _join(rng.sample(list(instruments), len(instruments)))
        noun = rng.choice(["song", "track", "tune", "piece"])
        tw = tempo_word(bpm)
        article = "an" if genre[:1].lower() in "aeiou" else "a"
        head = rng.choice([f"{genre} {noun}", f"{m[0]} {genre} {noun}" if m else f"{tw} {genre} {noun}",
                           f"{tw} {genre}", f"{article} {genre} {noun}"])
        clauses = []
        if ins:
            clauses.append(rng.choice([f"with {ins}", f"featuring {ins}", f"played on {ins}"]))
        if m:
            mood = _join(m[:2])
            clauses.append(rng.choice([f"{mood} mood", f"feels {mood}", f"{mood} atmosphere"]))
        if bpm:
            tempo = tw if tw.endswith("tempo") else f"{tw} tempo"
            options = [f"{bpm:.0f} bpm", f"{bpm:.0f} BPM"] if tw in head else [f"{tempo} at {bpm:.0f} BPM", f"{tw}, {bpm:.0f} bpm"]
            clauses.append(rng.choice(options))
        if key:
            clauses.append(rng.choice([f"in {key}", f"key of {key}"]))
        rng.shuffle(clauses)
        text = ", ".join([head] + clauses)
        text = text[0].upper() + text[1:] + "."
        if text not in out:
            out.append(text)
    return out
