"""Blind A/B listening test: same prompt and seed, base vs fine-tuned, in a hidden random order.

Every judgment is appended to a CSV (flushed and fsync'ed) the moment it is made, so a kernel crash or
a Colab disconnect loses nothing, and reopening the session resumes at the first unjudged pair. The
session logic (`ABSession`) is plain Python, testable without a browser; `ab_widget` is its thin
ipywidgets face. `summarize` gives the win rate with a Wilson 95 % interval and a two-sided binomial
test (ties and skips excluded from the test, reported separately).
"""
from __future__ import annotations

import csv
import datetime as _dt
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

CHOICES = ("A", "B", "tie", "skip")
FIELDS = ["pair_id", "prompt", "seed", "a_model", "b_model", "choice", "winner", "listener", "time"]


@dataclass
class Pair:
    """One comparison: the same prompt and seed rendered by two models."""

    pair_id: str
    prompt: str
    seed: int
    wav_by_model: dict[str, str]  # model name -> wav path


@dataclass
class ABSession:
    """Presents pairs in a fixed shuffled order with a hidden per-pair A/B assignment.

    Args:
        pairs: the comparisons; each maps exactly two model names to wav files.
        results_csv: where judgments are appended (created with a header if missing).
        seed: fixes the order and the hidden sides, so a resumed session shows the same thing.
    """

    pairs: list[Pair]
    results_csv: Path
    seed: int = 0
    listener: str = "anonymous"
    order: list[int] = field(init=False)
    sides: dict[str, tuple[str, str]] = field(init=False)

    def __post_init__(self):
        self.results_csv = Path(self.results_csv)
        rng = random.Random(self.seed)
        self.order = list(range(len(self.pairs)))
        rng.shuffle(self.order)
        self.sides = {}
        for p in self.pairs:
            models = sorted(p.wav_by_model)
            if len(models) != 2:
                raise ValueError(f"pair {p.pair_id}: needs exactly two models, got {models}")
            self.sides[p.pair_id] = tuple(models if rng.random() < 0.5 else models[::-1])

    def judged(self) -> set[str]:
        return {r["pair_id"] for r in read_results(self.results_csv) if r.get("listener") == self.listener}

    def current(self) -> tuple[Pair, str, str] | None:
        """The next unjudged pair and the wav files behind "A" and "B" (the models stay hidden)."""
        done = self.judged()
        for i in self.order:
            p = self.pairs[i]
            if p.pair_id not in done:
                a, b = self.sides[p.pair_id]
                return p, p.wav_by_model[a], p.wav_by_model[b]
        return None

    def remaining(self) -> int:
        return len(self.pairs) - len(self.judged() & {p.pair_id for p in self.pairs})

    def judge(self, choice: str) -> dict:
        """Record a choice ("A", "B", "tie" or "skip") for the current pair, durably, and move on."""
        if choice not in CHOICES:
            raise ValueError(f"choice must be one of {CHOICES}, not {choice!r}")
        cur = self.current()
        if cur is None:
            raise IndexError("every pair has been judged")
        pair = cur[0]
        a, b = self.sides[pair.pair_id]
        winner = {"A": a, "B": b}.get(choice, choice)
        row = {"pair_id": pair.pair_id, "prompt": pair.prompt, "seed": pair.seed, "a_model": a, "b_model": b,
               "choice": choice, "winner": winner, "listener": self.listener,
               "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        append_result(self.results_csv, row)
        return row


def append_result(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    torn = False
    if not new:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            torn = f.read(1) != b"\n"  # a crash cut the last line: start a fresh one
    with open(path, "a", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            w.writeheader()
        if torn:
            f.write("\r\n")
        w.writerow(row)
        f.flush()
        os.fsync(f.fileno())


def read_results(path: str | Path) -> list[dict]:
    """Judgments so far; a torn last line (crash mid-write) is ignored."""
    path = Path(path)
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return [r for r in csv.DictReader(f) if r.get("choice") in CHOICES and r.get("time")]


def wilson_interval(wins: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95 % by default); (0, 1) when n == 0."""
    if n == 0:
        return 0.0, 1.0
    p = wins / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def binomial_two_sided_p(wins: int, n: int, p: float = 0.5) -> float:
    """Exact two-sided binomial test: the probability of an outcome no likelier than `wins`."""
    if n == 0:
        return 1.0
    pmf = [math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(n + 1)]
    observed = pmf[wins]
    return min(1.0, sum(q for q in pmf if q <= observed * (1 + 1e-7)))


def summarize(rows: list[dict], model: str, other: str) -> dict:
    """How often `model` beat `other` in decisive judgments (ties and skips counted apart)."""
    rel = [r for r in rows if {r["a_model"], r["b_model"]} == {model, other}]
    wins = sum(r["winner"] == model for r in rel)
    losses = sum(r["winner"] == other for r in rel)
    ties = sum(r["choice"] == "tie" for r in rel)
    skips = sum(r["choice"] == "skip" for r in rel)
    n = wins + losses
    lo, hi = wilson_interval(wins, n)
    return {"model": model, "other": other, "wins": wins, "losses": losses, "ties": ties, "skips": skips,
            "decisive": n, "win_rate": wins / n if n else float("nan"), "wilson95_low": lo, "wilson95_high": hi,
            "binomial_p": binomial_two_sided_p(wins, n)}


def ab_widget(session: ABSession):
    """An ipywidgets player: two audio players labelled A and B, four buttons, a progress line."""
    import ipywidgets as w

    out = w.Output()
    status = w.HTML()
    buttons = [w.Button(description=c, layout=w.Layout(width="90px")) for c in CHOICES]

    def render():
        from IPython.display import Audio, display

        out.clear_output()
        cur = session.current()
        with out:
            if cur is None:
                display(w.HTML("<b>All pairs judged.</b> Run the summary cell."))
                for b in buttons:
                    b.disabled = True
                return
            pair, wav_a, wav_b = cur
            display(w.HTML(f"<b>Prompt:</b> {pair.prompt}"))
            display(w.HTML("<b>A</b>"), Audio(wav_a), w.HTML("<b>B</b>"), Audio(wav_b))
        status.value = f"{session.remaining()} pair(s) left"

    def on_click(button):
        session.judge(button.description)
        render()

    for b in buttons:
        b.on_click(on_click)
    render()
    return w.VBox([out, w.HBox(buttons), status])
