"""The report's verdict and plots, from constructed summaries (no model work): the counts, forgetting
and listening lines must follow the numbers, and overlapping intervals must read "not distinguishable"."""
import numpy as np
import pytest

from jpop_helpers.listen import summarize
from jpop_helpers.report import paired_interval, verdict, write_report


def _fad(model, value, low, high, clips=60, embedder="clap:laion/larger_clap_music", comparable=True):
    return {"model": model, "embedder": embedder, "window": "10-s windows", "comparable": comparable, "fad": value,
            "low": low, "high": high, "clips_a": clips, "clips_b": 80, "frames_a": clips * 10, "frames_b": 800,
            "reliable": clips >= 50, "indicative_only": clips < 50, "warning": None}


def _ab(model, wins, losses):
    rows = [{"a_model": model, "b_model": "base", "winner": model, "choice": "A"}] * wins + \
           [{"a_model": model, "b_model": "base", "winner": "base", "choice": "B"}] * losses
    return summarize(rows, model, "base")


def _summary(clips=60):
    rng = np.random.default_rng(0)
    noise = lambda: rng.normal(0, 0.05, 30)
    test_base = 5 + rng.normal(0, 0.5, 30)  # per-clip CE; clips differ a lot, the differences are paired
    other_base = 4 + rng.normal(0, 0.5, 30)
    clap_base = 0.2 + rng.normal(0, 0.05, 30)
    ce_rows = [{"split": sp, "model": m, "clips": 30, "tokens": 750, "ce": 4.0, "ppl": 54.6,
                **{f"ce_q{k}": 4.0 + k / 10 for k in range(1, 5)}}
               for sp in ("test", "other_genre") for m in ("base", "full", "lora")]
    return {
        "title": "constructed", "base": "base", "models": ["base", "full", "lora"], "ce": ce_rows,
        "ce_clips": {
            "test": {"base": list(test_base), "full": list(test_base - 1.0 + noise()),  # clearly lower
                     "lora": list(test_base + noise())},  # indistinguishable
            "other_genre": {"base": list(other_base), "full": list(other_base + 0.8 + noise()),  # forgot
                            "lora": list(other_base + noise())}},  # did not
        "fad": [_fad("base", 9.0, 8.0, 10.0, clips), _fad("full", 5.0, 4.0, 6.0, clips),  # apart: better
                _fad("lora", 8.5, 7.5, 9.5, clips),  # overlaps the base: not distinguishable
                _fad("base", 3.0, 2.5, 3.5, clips, "mel-stats (offline fallback)", False),
                _fad("full", 2.0, 1.5, 2.4, clips, "mel-stats (offline fallback)", False),
                _fad("lora", 4.0, 3.6, 4.4, clips, "mel-stats (offline fallback)", False)],  # apart: worse
        "fad_floor": [{**_fad("floor", 1.0, 0.7, 1.4, 40), "split": "songs"}],
        "clap": [], "clap_clips": {"base": list(clap_base), "full": list(clap_base + 0.05 + noise() / 10),
                                   "lora": list(clap_base - 0.05 + noise() / 10)},
        "ab": [_ab("full", 15, 1), _ab("lora", 3, 2)], "prompts": ["a", "b"], "duration": 10.0, "real_clips": 80,
        "n_boot": 200, "pair_ids": []}


def test_the_verdict_counts_follow_the_intervals():
    v = verdict(_summary())
    full, lora = v["models"]["full"], v["models"]["lora"]
    # CE, CLAP-FAD, fallback FAD, CLAP score: 4 measures each
    assert (full["better"], full["worse"], full["unclear"], full["of"]) == (4, 0, 0, 4)
    assert (lora["better"], lora["worse"], lora["unclear"], lora["of"]) == (0, 2, 2, 4)
    assert {m["measure"]: m["outcome"] for m in lora["measures"]} == {
        "held-out genre CE": "not distinguishable", "FAD clap:laion/larger_clap_music": "not distinguishable",
        "FAD mel-stats (offline fallback)": "worse", "CLAP score (prompt agreement)": "worse"}
    assert full["forgetting"]["outcome"] == "forgot" and full["forgetting"]["increase"] == pytest.approx(0.8, abs=0.05)
    assert lora["forgetting"]["outcome"] == "no measurable forgetting"
    assert v["forgot_more"] == [("full", "lora")]
    assert full["listening"]["outcome"] == "preferred" and lora["listening"]["outcome"] == "not distinguishable"
    assert not v["indicative_only"]
    text = "\n".join(v["lines"])
    assert "**full** is closer to the held-out genre than the base on 4 of 4 measures" in text
    assert "**lora** is closer to the held-out genre than the base on 0 of 4 measures (further on 2, not " \
           "distinguishable on 2)" in text
    assert "**full** forgot more than **lora**" in text


def test_few_clips_make_the_verdict_indicative_only_and_missing_parts_are_said():
    s = _summary(clips=12)
    s["ab"] = None
    del s["ce_clips"]["other_genre"]
    v = verdict(s)
    text = "\n".join(v["lines"])
    assert v["indicative_only"] and "Indicative only" in text and "(12)" in text
    assert "forgetting: not measured" in text and "listening: no judgments yet" in text


def test_paired_interval_contains_the_mean_and_narrows_with_more_clips():
    rng = np.random.default_rng(1)
    a = rng.normal(0, 1, 400)
    b = a + 0.3 + rng.normal(0, 0.5, 400)
    d, lo, hi = paired_interval(a, b)
    d20, lo20, hi20 = paired_interval(a[:20], b[:20])
    assert lo < d < hi and lo < 0.3 < hi and (hi - lo) < (hi20 - lo20) / 3
    assert np.isnan(paired_interval([1.0], [2.0])[1])


def test_the_report_opens_with_the_verdict_then_tables_and_plots(tmp_path):
    s = _summary()
    s["verdict"] = verdict(s)
    text = write_report(tmp_path, s).read_text()
    assert text.index("## Verdict") < text.index("## Cross-entropy") < text.index("## Fréchet") < text.index("## Blind A/B")
    assert "floor (real half vs half)" in text and "offline fallback embedder: not comparable" in text
    assert "[4.000, 6.000]" in text  # the full model's FAD interval
    assert "full preferred in 15 of 16" in text and "Wilson 95 % CI" in text
    for png in ("ce_per_codebook.png", "fad.png", "ab.png"):
        assert (tmp_path / png).read_bytes().startswith(b"\x89PNG") and f"]({png})" in text


def test_the_fad_plot_draws_each_value_with_its_interval():
    from jpop_helpers.plots import eval_figures

    s = _summary()
    ax = eval_figures(s)["fad"].axes[0]  # the CLAP embedder's panel
    points = ax.lines[0].get_ydata()
    assert list(points) == [9.0, 5.0, 8.5]
    segments = ax.collections[0].get_segments()  # the error bars: one vertical segment per model
    assert [tuple(np.round(seg[:, 1], 6)) for seg in segments] == [(8.0, 10.0), (4.0, 6.0), (7.5, 9.5)]


def test_an_evaluation_from_before_multi_model_reports_still_refreshes(tmp_path):
    """summary.json written by the previous version (base vs "finetuned", FAD without intervals): the
    notebook's last cell (refresh_report) must still work on it, and never call it distinguishable."""
    import json

    from jpop_helpers.report import refresh_report

    (tmp_path / "eval").mkdir()
    old = {"run": str(tmp_path), "base_model": "tiny", "mode": "full", "curves": None, "prompts": ["a"], "pair_ids": [],
           "ab": None, "clap": [], "clap_note": None,
           "ce": [{"split": "test", "model": m, "clips": 2, "tokens": 10, "ce": 5.0, "ppl": 148.4, "ce_q1": 5.0}
                  for m in ("base", "finetuned")],
           "fad": [{"model": m, "fad": f, "embedder": "mel-stats", "clips_a": 2, "clips_b": 3, "frames_a": 8,
                    "frames_b": 9, "reliable": False, "warning": "few"} for m, f in (("base", 9.0), ("finetuned", 1.0))]}
    (tmp_path / "eval" / "summary.json").write_text(json.dumps(old))
    s = refresh_report(tmp_path)
    assert s["verdict"]["models"]["finetuned"]["unclear"] == 1  # no interval: a lower FAD alone proves nothing
    assert "## Verdict" in (tmp_path / "eval" / "report.md").read_text()
