import pytest
from scipy import stats

from jpop_helpers.listen import (ABSession, Pair, binomial_two_sided_p, read_results, summarize,
                                 wilson_interval)


@pytest.mark.parametrize("wins,n", [(0, 10), (3, 10), (7, 10), (10, 10), (31, 50), (1, 1), (55, 120)])
def test_statistics_match_scipy(wins, n):
    assert binomial_two_sided_p(wins, n) == pytest.approx(stats.binomtest(wins, n, 0.5).pvalue, rel=1e-9)
    ci = stats.binomtest(wins, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert wilson_interval(wins, n) == pytest.approx((ci.low, ci.high), abs=1e-9)


def _pairs(n=6):
    return [Pair(f"p{i}", f"prompt {i}", i, {"base": f"/gen/base_{i}.wav", "tuned": f"/gen/tuned_{i}.wav"})
            for i in range(n)]


def test_sides_are_hidden_random_and_stable(tmp_path):
    s1, s2 = ABSession(_pairs(40), tmp_path / "a.csv", seed=3), ABSession(_pairs(40), tmp_path / "b.csv", seed=3)
    assert s1.sides == s2.sides and s1.order == s2.order  # a reopened session shows the same thing
    firsts = [s1.sides[f"p{i}"][0] for i in range(40)]
    assert 5 < firsts.count("tuned") < 35  # both orders occur
    assert s1.order != sorted(s1.order)


def test_simulated_clicks_are_saved_at_once_and_resume_after_a_crash(tmp_path):
    csv_path = tmp_path / "ab_results.csv"
    session = ABSession(_pairs(), csv_path, seed=1, listener="me")
    # a listener who always prefers the fine-tuned model, whichever side it is on
    for _ in range(3):
        pair, wav_a, wav_b = session.current()
        session.judge("A" if "tuned" in wav_a else "B")
    assert len(read_results(csv_path)) == 3  # on disk already, nothing buffered
    with open(csv_path, "a") as f:
        f.write("p9,torn line from a crash")  # a write cut off mid-line
    resumed = ABSession(_pairs(), csv_path, seed=1, listener="me")  # the kernel restarted
    assert resumed.remaining() == 3
    first_left = resumed.current()[0].pair_id
    assert first_left not in {r["pair_id"] for r in read_results(csv_path)}
    resumed.judge("tie")
    resumed.judge("skip")
    pair, wav_a, _ = resumed.current()
    resumed.judge("A" if "tuned" in wav_a else "B")
    assert resumed.current() is None
    with pytest.raises(IndexError):
        resumed.judge("A")
    summary = summarize(read_results(csv_path), "tuned", "base")
    assert (summary["wins"], summary["losses"], summary["ties"], summary["skips"]) == (4, 0, 1, 1)
    assert summary["win_rate"] == 1.0 and summary["binomial_p"] == pytest.approx(0.125)


def test_widget_buttons_drive_the_session(tmp_path):
    import numpy as np
    import soundfile as sf

    from jpop_helpers.listen import ab_widget

    pairs = _pairs(2)
    for p in pairs:
        for model, wav in list(p.wav_by_model.items()):
            p.wav_by_model[model] = str(tmp_path / wav.rsplit("/", 1)[1])
            sf.write(p.wav_by_model[model], np.zeros(800, np.float32), 8000)
    session = ABSession(pairs, tmp_path / "r.csv", seed=0)
    box = ab_widget(session)
    buttons = {b.description: b for b in box.children[1].children}
    buttons["A"].click()
    buttons["tie"].click()
    assert [r["choice"] for r in read_results(tmp_path / "r.csv")] == ["A", "tie"]
    assert all(b.disabled for b in buttons.values())
