import math

import pytest
import torch
import torch.nn.functional as F

from conftest import ffmpeg_tone


def test_evaluate_ce_matches_an_independent_per_clip_computation(tiny_tokens):
    """Batched, masked, aggregated CE == token-by-token CE computed clip by clip here."""
    from audiocraft.modules.conditioners import ConditioningAttributes

    from jpop_helpers.model import load_musicgen
    from jpop_helpers.train import evaluate_ce

    lm = load_musicgen("tiny", "cpu").lm.eval()
    _, items = tiny_tokens
    got = evaluate_ce(lm, items, batch_size=2, device="cpu")
    nll = [[] for _ in range(4)]
    with torch.no_grad():
        for it in items:
            codes = it.codes.long()[None]
            attrs = [ConditioningAttributes(text={"description": it.descriptions[0]})]
            out = lm.compute_predictions(codes, [], lm.condition_provider(lm.condition_provider.tokenize(attrs)))
            logp = F.log_softmax(out.logits[0].double(), dim=-1)  # [K, T, card]
            for k in range(4):
                for t in range(it.valid_frames):
                    if out.mask[0, k, t]:
                        nll[k].append(-float(logp[k, t, codes[0, k, t]]))
    per_q = [sum(v) / len(v) for v in nll]
    assert got["tokens"] == len(nll[0])
    assert [got[f"ce_q{k + 1}"] for k in range(4)] == pytest.approx(per_q, rel=1e-5)
    assert got["ce"] == pytest.approx(sum(per_q) / 4, rel=1e-5)
    assert got["ppl"] == pytest.approx(math.exp(sum(per_q) / 4), rel=1e-5)


def test_evaluate_run_writes_a_report_and_the_ab_summary_updates_it(demo_root, tiny_run, tmp_path):
    from jpop_helpers.evaluate import EvalConfig, evaluate_run, refresh_report
    from jpop_helpers.listen import ABSession

    other = tmp_path / "other"
    for i in range(2):
        ffmpeg_tone(other / f"metal{i}.wav", 6, 110 + 40 * i)
    (other / "broken.mp3").write_bytes(b"not audio at all")
    cfg = EvalConfig(n_prompts=2, user_prompts=["calm city pop at night"], duration=1.0, other_genre_dir=str(other),
                     clap_checkpoint=None,
                     other_genre_prompt="heavy metal")
    with pytest.warns(UserWarning, match="FAD is unstable"):
        summary = evaluate_run(demo_root, tiny_run, cfg)
    ce = {(r["split"], r["model"]): r for r in summary["ce"]}
    assert set(ce) == {(s, m) for s in ("test", "other_genre") for m in ("base", "finetuned")}
    assert ce[("test", "finetuned")]["ce"] < ce[("test", "base")]["ce"]  # it learned the held-out songs
    assert ce[("other_genre", "base")]["clips"] == 2 and ce[("test", "base")]["tokens"] > 0
    problems = (demo_root / "reports" / "evaluate_problems.jsonl").read_text()
    assert "broken.mp3" in problems and "cannot decode" in problems  # named, and the rest evaluated
    assert len(summary["prompts"]) == 3 and summary["prompts"][-1] == "calm city pop at night"
    gen = tiny_run / "eval" / "generated"
    assert len(list(gen.glob("*/*.wav"))) == 6  # 3 prompts x 2 models
    assert {r["model"] for r in summary["fad"]} == {"base", "finetuned"}
    report = (tiny_run / "eval" / "report.md").read_text()
    for section in ("Cross-entropy and perplexity", "other_genre", "Fréchet Audio Distance", "Blind A/B", "No judgments"):
        assert section in report

    session = ABSession(summary["pairs"], tiny_run / "eval" / "ab_results.csv", seed=0)
    while session.current() is not None:  # a listener who prefers the fine-tuned model
        _, wav_a, _ = session.current()
        session.judge("A" if "/finetuned/" in wav_a else "B")
    ab = refresh_report(tiny_run)["ab"]
    assert (ab["wins"], ab["decisive"]) == (3, 3) and ab["binomial_p"] == pytest.approx(0.25)
    assert "preferred in 3 of 3" in (tiny_run / "eval" / "report.md").read_text()
