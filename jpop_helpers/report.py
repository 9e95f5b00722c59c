"""Stage 05's report: a verdict a musician can read, then the tables and plots; refreshed as A/B
judgments arrive.

The verdict counts, for each fine-tuned model against the base, the measures on which it is clearly
closer to the held-out genre (lower held-out CE, lower FAD per embedder, higher CLAP score), clearly
further, or not distinguishable: a difference counts only when its 95 % interval excludes zero (paired
bootstrap over the same clips for CE and CLAP) or, for FAD, when the two models' bootstrap intervals
do not overlap. Forgetting (CE on another family) and listening (A/B win rate, Wilson interval) are
stated apart, with the same rule.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .fad import MIN_RELIABLE_CLIPS
from .io import atomic_path, read_json, write_json


def paired_interval(a: list[float], b: list[float], n_boot: int = 2000, seed: int = 0,
                    level: float = 0.95) -> tuple[float, float, float]:
    """Mean of b - a over paired values (the same clips), with a percentile bootstrap interval.

    Returns:
        (mean difference, low, high); low = high = NaN with fewer than 2 pairs.
    """
    d = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    if len(d) == 0:
        return float("nan"), float("nan"), float("nan")
    if len(d) < 2:
        return float(d.mean()), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), (n_boot, len(d)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(d.mean()), float(lo), float(hi)


def _sign(lo: float, hi: float) -> int:
    """+1: the interval lies above zero; -1: below; 0: it contains zero or is unknown."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return 0
    return 1 if lo > 0 else -1 if hi < 0 else 0


def _fmt(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}f}" if isinstance(x, (int, float)) and math.isfinite(x) else "n/a"


def _interval(lo: float, hi: float, digits: int = 3) -> str:
    return f"[{_fmt(lo, digits)}, {_fmt(hi, digits)}]"


OUTCOME = {1: "better", -1: "worse", 0: "not distinguishable"}


def _measures(summary: dict, name: str) -> list[dict]:
    """The genre measures of model `name` vs the base: {measure, outcome (better|worse|unclear), detail}."""
    base = summary["base"]
    out = []
    test = summary.get("ce_clips", {}).get("test", {})
    if name in test and base in test:
        d, lo, hi = paired_interval(test[base], test[name])
        s = -_sign(lo, hi)  # lower CE is better
        out.append({"measure": "held-out genre CE", "outcome": OUTCOME[s],
                    "detail": f"CE {d:+.3f} nats vs base, 95 % interval {_interval(lo, hi)} over {len(test[name])} clips"})
    rows = {(r["embedder"], r["model"]): r for r in summary.get("fad", [])}
    for (emb, model), r in rows.items():
        b = rows.get((emb, base))
        if model != name or b is None:
            continue
        if all(math.isfinite(x) for x in (r["low"], r["high"], b["low"], b["high"])):
            s = 1 if r["high"] < b["low"] else -1 if r["low"] > b["high"] else 0
        else:
            s = 0
        label = f"FAD {emb}" + ("" if r.get("comparable") or "fallback" in emb else " (not a standard embedder)")
        flag = ", indicative only" if r.get("indicative_only") else ""
        out.append({"measure": label, "outcome": OUTCOME[s],
                    "detail": f"{_fmt(r['fad'])} {_interval(r['low'], r['high'])} vs base {_fmt(b['fad'])} "
                              f"{_interval(b['low'], b['high'])}, {r['clips_a']} clips{flag}"})
    clap = summary.get("clap_clips", {})
    if name in clap and base in clap and clap[name]:
        d, lo, hi = paired_interval(clap[base], clap[name])
        s = _sign(lo, hi)  # higher CLAP score is better
        out.append({"measure": "CLAP score (prompt agreement)", "outcome": OUTCOME[s],
                    "detail": f"{d:+.4f} vs base, 95 % interval {_interval(lo, hi, 4)} over {len(clap[name])} clips"})
    return out


def _forgetting(summary: dict, name: str) -> dict | None:
    other = summary.get("ce_clips", {}).get("other_genre", {})
    base = summary["base"]
    if name not in other or base not in other:
        return None
    d, lo, hi = paired_interval(other[base], other[name])
    s = _sign(lo, hi)
    state = {1: "forgot", -1: "improved", 0: "no measurable forgetting"}[s]
    return {"outcome": state, "increase": d, "low": lo, "high": hi, "clips": len(other[name])}


def _listening(summary: dict, name: str) -> dict | None:
    for ab in summary.get("ab") or []:
        if ab["model"] == name and ab["decisive"]:
            lo, hi = ab["wilson95_low"], ab["wilson95_high"]
            state = "preferred" if lo > 0.5 else "not preferred" if hi < 0.5 else "not distinguishable"
            return {**ab, "outcome": state}
    return None


def verdict(summary: dict) -> dict:
    """The verdict of an evaluation summary (see the module docstring for the rules).

    Returns:
        {"models": {name: {"better", "worse", "unclear", "of", "measures", "forgetting", "listening"}},
         "forgot_more": [(a, b, ...)], "indicative_only": bool, "lines": [markdown lines]}
    """
    base = summary["base"]
    tuned = [m for m in summary["models"] if m != base]
    gen_clips = [r["clips_a"] for r in summary.get("fad", [])]
    indicative = bool(gen_clips) and min(gen_clips) < MIN_RELIABLE_CLIPS
    result, lines = {"models": {}, "forgot_more": [], "indicative_only": indicative}, []
    for name in tuned:
        ms = _measures(summary, name)
        counts = {k: sum(m["outcome"] == OUTCOME[s] for m in ms) for s, k in ((1, "better"), (-1, "worse"), (0, "unclear"))}
        f, li = _forgetting(summary, name), _listening(summary, name)
        result["models"][name] = {**counts, "of": len(ms), "measures": ms, "forgetting": f, "listening": li}
        line = (f"**{name}** is closer to the held-out genre than the base on {counts['better']} of {len(ms)} "
                f"measures (further on {counts['worse']}, not distinguishable on {counts['unclear']})")
        if f is None:
            line += "; forgetting: not measured (no other-family audio given)"
        else:
            line += (f"; forgetting: {f['outcome']} (CE on the other family {f['increase']:+.3f} nats, "
                     f"95 % interval {_interval(f['low'], f['high'])})")
        if li is None:
            line += "; listening: no judgments yet."
        else:
            line += (f"; listening: {li['outcome']} (preferred in {li['wins']} of {li['decisive']}, Wilson 95 % "
                     f"{li['wilson95_low']:.0%}-{li['wilson95_high']:.0%}).")
        lines.append(line)
    other = summary.get("ce_clips", {}).get("other_genre", {})
    for i, a in enumerate(tuned):
        for b in tuned[i + 1:]:
            if a in other and b in other:
                d, lo, hi = paired_interval(other[b], other[a])  # CE of a minus CE of b on the other family
                s = _sign(lo, hi)
                if s:
                    more, less = (a, b) if s > 0 else (b, a)
                    result["forgot_more"].append((more, less))
                    lines.append(f"**{more}** forgot more than **{less}** (other-family CE higher by {abs(d):.3f} "
                                 f"nats, 95 % interval {_interval(*sorted((abs(lo), abs(hi))))}).")
                else:
                    lines.append(f"**{a}** and **{b}** forgot alike: their other-family CE differ by {d:+.3f} nats, "
                                 f"95 % interval {_interval(lo, hi)} contains 0.")
    lines.append("Uncertainty: 95 % bootstrap intervals (clips resampled). A difference whose interval contains "
                 "zero, or FAD intervals that overlap, is reported as not distinguishable.")
    if indicative:
        lines.append(f"**Indicative only**: fewer than {MIN_RELIABLE_CLIPS} generated clips per model "
                     f"({min(gen_clips)}); FAD on so few clips is noisy and biased upwards.")
    result["lines"] = lines
    return result


def _ce_table(summary: dict) -> list[str]:
    rows = summary["ce"]
    k = max((int(key[4:]) for r in rows for key in r if key.startswith("ce_q")), default=0)
    lines = ["| split | model | clips | tokens/codebook | CE | PPL | " + " | ".join(f"CE q{i}" for i in range(1, k + 1)) + " |",
             "|---|---|---|---|---|---|" + "---|" * k]
    for r in rows:
        lines.append(f"| {r['split']} | {r['model']} | {r['clips']} | {r['tokens']} | {r['ce']:.4f} | {r['ppl']:.2f} | "
                     + " | ".join(f"{r.get(f'ce_q{i}', float('nan')):.3f}" for i in range(1, k + 1)) + " |")
    return lines


def write_report(out: Path, summary: dict) -> Path:
    """report.md (and its plots): the verdict, then what was measured, on how much data, per model."""
    from .plots import save_eval_plots

    out = Path(out)
    plots = {p.stem: p.name for p in save_eval_plots(out, summary)}
    v = summary.get("verdict") or verdict(summary)
    base = summary["base"]
    lines = [f"# Evaluation of {summary.get('title', out.name)}", "", "## Verdict", ""]
    lines += [f"- {line}" for line in v["lines"]]
    lines += ["", f"Models: {', '.join(f'`{m}`' for m in summary['models'])} (`{base}` is the reference"
              + (f": `{summary['base_model']}`" if summary.get("base_model") else "") + ")"
              + (f"; fine-tuning mode `{summary['mode']}`." if summary.get("mode") else "."), ""]
    for name, m in v["models"].items():
        if m["measures"]:
            lines += [f"`{name}` vs `{base}`:", "", "| measure | outcome | detail |", "|---|---|---|"]
            lines += [f"| {x['measure']} | {x['outcome']} | {x['detail']} |" for x in m["measures"]] + [""]
    if summary.get("curves"):
        lines += ["## Training curves", "", "![curves](../curves.png)", ""]
    lines += ["## Cross-entropy and perplexity (lower is better)", "",
              "Same masked per-codebook CE as training; perplexity = exp(mean CE) over valid tokens.", ""]
    lines += _ce_table(summary)
    lines += ["", "`test`: held-out songs of the genre. `other_genre`: the forgetting check, held-out audio of "
              "another family (a fine-tune that helps the genre should not make these much worse).", ""]
    if "ce_per_codebook" in plots:
        lines += [f"![CE per codebook]({plots['ce_per_codebook']})", ""]
    lines += ["## Fréchet Audio Distance (generated vs held-out real test clips; lower is better)", ""]
    if summary["fad"]:
        lines += [f"Every model's clips come from the same {len(summary['prompts'])} prompts and seeds; real clips "
                  f"({summary.get('real_clips', '?')}) are cut to the generated length ({summary.get('duration', '?')} s). "
                  f"Intervals: 95 % bootstrap over clips ({summary.get('n_boot', '?')} resamples). Floor: FAD between "
                  "two halves of the real clips (split by song): read the models against it, not against zero. "
                  f"Fewer than {MIN_RELIABLE_CLIPS} clips per model: indicative only.", "",
                  "| model | embedder | FAD | 95 % interval | generated clips | real clips | windows (frames) | note |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in summary["fad"] + [{**f, "model": "floor (real half vs half)"} for f in summary.get("fad_floor", [])]:
            notes = [n for n in ("indicative only" if r.get("indicative_only") else "",
                                 "" if r.get("comparable") else "offline fallback embedder: not comparable with "
                                 "published FAD") if n]
            lines.append(f"| {r['model']} | {r['embedder']} | {_fmt(r['fad'])} | {_interval(r['low'], r['high'])} | "
                         f"{r['clips_a']} | {r['clips_b']} | {r['frames_a']} | {'; '.join(notes)} |")
        lines += ["", "Windows: " + "; ".join(sorted({f"{r['embedder']}: {r['window']}" for r in summary['fad']})), ""]
        lines += [f"Note: {n}" for n in summary.get("fad_notes", [])] + [""] * bool(summary.get("fad_notes"))
        if "fad" in plots:
            lines += [f"![FAD]({plots['fad']})", ""]
    else:
        lines.append("Not computed (no generated or no real test clips).")
    lines += ["", "## CLAP text-audio agreement (higher is better)", ""]
    if summary.get("clap"):
        lines += ["Cosine similarity of each prompt with its clip, averaged over consecutive 10-s windows; the "
                  "same prompts and seeds for every model.", "",
                  "| model | CLAP score | clips | checkpoint |", "|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['clap_score']:.4f} | {r['clips']} | {r['checkpoint']} |" for r in summary["clap"]]
    else:
        lines.append(summary.get("clap_note") or "Not computed.")
    lines += ["", "## Generation", "", f"{len(summary['prompts'])} prompts, the same seed per prompt for every model; "
              "files and index in `generated/`.", ""]
    lines += [f"- {p}" for p in dict.fromkeys(summary["prompts"])]
    lines += ["", "## Blind A/B listening", ""]
    judged = [ab for ab in summary.get("ab") or [] if ab["decisive"]]
    for ab in judged:
        lines.append(f"- {ab['model']} preferred in {ab['wins']} of {ab['decisive']} decisive judgments against "
                     f"{ab['other']} (win rate {ab['win_rate']:.0%}, Wilson 95 % CI {ab['wilson95_low']:.0%}-"
                     f"{ab['wilson95_high']:.0%}, two-sided binomial p = {ab['binomial_p']:.3g}); ties {ab['ties']}, "
                     f"skips {ab['skips']}.")
    if judged and "ab" in plots:
        lines += ["", f"![A/B]({plots['ab']})"]
    if not judged:
        lines.append("No judgments yet: run the listening widget in notebook 05, then re-run the report.")
    path = out / "report.md"
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def ab_summary(eval_dir: str | Path, pair_ids: list[str], models: list[str], base: str = "base") -> list[dict] | None:
    """The A/B judgments of these pairs, each model vs the base, or None before the first one."""
    from .listen import read_results, summarize

    ids = set(pair_ids)
    rows = [r for r in read_results(Path(eval_dir) / "ab_results.csv") if r["pair_id"] in ids]
    return [summarize(rows, m, base) for m in models if m != base] if rows else None


def _eval_dir(path: str | Path) -> Path:
    """A run folder's eval/, or an evaluation folder itself."""
    path = Path(path)
    return path if (path / "summary.json").exists() else path / "eval"


def refresh_report(path: str | Path) -> dict:
    """Re-read the A/B judgments and rewrite summary.json and report.md (no model work).

    Args:
        path: a run folder (its eval/) or an evaluation folder.
    """
    out = _eval_dir(path)
    summary = read_json(out / "summary.json")
    # an evaluation written before multi-model reports: base vs "finetuned", FAD without intervals
    summary.setdefault("base", "base")
    summary.setdefault("models", ["base", "finetuned"])
    summary.setdefault("out", str(out))
    for r in summary.get("fad", []):
        for key in ("low", "high"):
            r.setdefault(key, float("nan"))
        r.setdefault("window", "")
    summary["ab"] = ab_summary(out, summary.get("pair_ids", []), summary["models"], summary["base"])
    summary["verdict"] = verdict(summary)
    write_json(out / "summary.json", summary)
    write_report(out, summary)
    return summary


def describe_evaluation(summary: dict) -> str:
    """A few lines for a terminal: the verdict, CE/PPL per split and model, FAD, and where the report is."""
    lines = [line.replace("**", "") for line in summary["verdict"]["lines"]]
    lines += [f"{r['split']:>11} {r['model']:>9}: CE {r['ce']:.4f}  PPL {r['ppl']:.2f}  ({r['clips']} clips, "
              f"{r['tokens']} tokens/codebook)" for r in summary["ce"]]
    lines += [f"FAD {r['model']}: {_fmt(r['fad'])} {_interval(r['low'], r['high'])} ({r['embedder']}, {r['clips_a']} vs "
              f"{r['clips_b']} clips)" for r in summary["fad"]]
    lines += [f"FAD floor (real half vs half): {_fmt(r['fad'])} {_interval(r['low'], r['high'])} ({r['embedder']})"
              for r in summary.get("fad_floor", [])]
    return "\n".join(lines + [f"report: {Path(summary['out']) / 'report.md'}"])
