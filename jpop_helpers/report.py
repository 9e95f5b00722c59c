"""Stage 05's report: report.md from the evaluation summary, refreshed as A/B judgments arrive."""
from __future__ import annotations

from pathlib import Path

from .io import atomic_path, read_json, write_json


def write_report(out: Path, summary: dict) -> Path:
    """report.md: what was measured, on how much data, base vs fine-tuned."""
    lines = [f"# Evaluation of `{Path(summary['run']).name}`", "",
             f"Base model `{summary['base_model']}`, fine-tuning mode `{summary['mode']}`.", ""]
    if summary["curves"]:
        lines += ["## Training curves", "", "![curves](../curves.png)", ""]
    lines += ["## Cross-entropy and perplexity (lower is better)", "",
              "Same masked per-codebook CE as training; perplexity = exp(mean CE) over valid tokens.", "",
              "| split | model | clips | tokens/codebook | CE | PPL | CE q1 | CE q2 | CE q3 | CE q4 |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary["ce"]:
        lines.append(f"| {r['split']} | {r['model']} | {r['clips']} | {r['tokens']} | {r['ce']:.4f} | {r['ppl']:.2f} | "
                     + " | ".join(f"{r.get(f'ce_q{k}', float('nan')):.3f}" for k in range(1, 5)) + " |")
    lines += ["", "`test`: held-out songs of the genre. `other_genre`: the forgetting check "
              "(a fine-tune that helps the genre should not make these much worse).", ""]
    lines += ["## Fréchet Audio Distance (generated vs held-out real test clips; lower is better)", ""]
    if summary["fad"]:
        lines += ["| model | FAD | embedder | generated clips | real clips | note |", "|---|---|---|---|---|---|"]
        for r in summary["fad"]:
            lines.append(f"| {r['model']} | {r['fad']:.3f} | {r['embedder']} | {r['clips_a']} | {r['clips_b']} | "
                         f"{r['warning'] or ''} |")
    else:
        lines.append("Not computed (no generated or no real test clips).")
    lines += ["", "## CLAP text-audio agreement (higher is better)", ""]
    if summary.get("clap"):
        lines += ["Cosine similarity of each prompt with its clip, averaged over fixed 10-s windows.", "",
                  "| model | CLAP score | clips | checkpoint |", "|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['clap_score']:.4f} | {r['clips']} | {r['checkpoint']} |" for r in summary["clap"]]
    else:
        lines.append(summary.get("clap_note") or "Not computed.")
    lines += ["", "## Generation", "", f"{len(summary['prompts'])} prompts, the same seed per prompt for both models; "
              "files and index in `generated/`.", ""]
    lines += [f"- {p}" for p in summary["prompts"]]
    lines += ["", "## Blind A/B listening", ""]
    ab = summary["ab"]
    if ab and ab["decisive"]:
        lines.append(f"Fine-tuned preferred in {ab['wins']} of {ab['decisive']} decisive judgments "
                     f"(win rate {ab['win_rate']:.0%}, Wilson 95% CI {ab['wilson95_low']:.0%}-{ab['wilson95_high']:.0%}, "
                     f"two-sided binomial p = {ab['binomial_p']:.3g}); ties {ab['ties']}, skips {ab['skips']}.")
    else:
        lines.append("No judgments yet: run the listening widget in notebook 05, then re-run the report.")
    path = out / "report.md"
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def ab_summary(run_dir: str | Path, pair_ids: list[str]) -> dict | None:
    """The A/B judgments of these pairs (fine-tuned vs base), or None before the first one."""
    from .listen import read_results, summarize

    ids = set(pair_ids)
    rows = [r for r in read_results(Path(run_dir) / "eval" / "ab_results.csv") if r["pair_id"] in ids]
    return summarize(rows, "finetuned", "base") if rows else None


def refresh_report(run_dir: str | Path) -> dict:
    """Re-read the A/B judgments and rewrite summary.json and report.md (no model work)."""
    out = Path(run_dir) / "eval"
    summary = read_json(out / "summary.json")
    summary["ab"] = ab_summary(run_dir, summary.get("pair_ids", []))
    write_json(out / "summary.json", summary)
    write_report(out, summary)
    return summary


def describe_evaluation(summary: dict) -> str:
    """A few lines for a terminal: CE/PPL per split and model, FAD, and where the report is."""
    lines = [f"{r['split']:>11} {r['model']:>9}: CE {r['ce']:.4f}  PPL {r['ppl']:.2f}  ({r['clips']} clips, "
             f"{r['tokens']} tokens/codebook)" for r in summary["ce"]]
    lines += [f"FAD {r['model']}: {r['fad']:.3f} ({r['embedder']}, {r['clips_a']} vs {r['clips_b']} clips)"
              for r in summary["fad"]]
    return "\n".join(lines + [f"report: {Path(summary['run']) / 'eval' / 'report.md'}"])
