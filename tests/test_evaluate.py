import pytest

from conftest import ffmpeg_tone


def test_evaluate_run_writes_a_report_and_the_ab_summary_updates_it(data_copy, run_copy, tmp_path):
    from jpop_helpers.evaluate import EvalConfig, evaluate_run
    from jpop_helpers.listen import ABSession
    from jpop_helpers.report import refresh_report

    demo_root, tiny_run = data_copy, run_copy
    other = tmp_path / "other"
    for i in range(2):
        ffmpeg_tone(other / f"metal{i}.wav", 6, 110 + 40 * i)
    (other / "broken.mp3").write_bytes(b"not audio at all")
    cfg = EvalConfig(n_prompts=2, user_prompts=["calm city pop at night"], duration=1.0, other_genre_dir=str(other),
                     clap_checkpoint=None, vggish=str(tmp_path / "no-vggish.pth"),
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
    assert "VGGish not available" in report and "CLAP skipped" in report  # each missing embedder is named

    session = ABSession(summary["pairs"], tiny_run / "eval" / "ab_results.csv", seed=0)
    while session.current() is not None:  # a listener who prefers the fine-tuned model
        _, wav_a, _ = session.current()
        session.judge("A" if "/finetuned/" in wav_a else "B")
    [ab] = refresh_report(tiny_run)["ab"]
    assert (ab["model"], ab["wins"], ab["decisive"]) == ("finetuned", 3, 3) and ab["binomial_p"] == pytest.approx(0.25)
    report = (tiny_run / "eval" / "report.md").read_text()
    assert "preferred in 3 of 3" in report and "listening: not distinguishable" in report  # 3 of 3: Wilson reaches below 50 %
    assert (tiny_run / "eval" / "ab.png").exists()


def test_re_evaluating_after_more_training_judges_only_the_new_clips(data_copy, run_copy, tiny_tokens):
    """Stale clips and stale judgments stay out: more training makes new clips and new pairs."""
    from jpop_helpers.evaluate import EvalConfig, evaluate_run
    from jpop_helpers.listen import ABSession
    from jpop_helpers.report import refresh_report
    from jpop_helpers.runs import read_run_config
    from jpop_helpers.train import TrainConfig, train

    cfg = EvalConfig(n_prompts=1, duration=0.5, clap_checkpoint=None, vggish=None)
    with pytest.warns(UserWarning):
        first = evaluate_run(data_copy, run_copy, cfg)
    session = ABSession(first["pairs"], run_copy / "eval" / "ab_results.csv")
    session.judge("A")
    assert refresh_report(run_copy)["ab"][0]["decisive"] == 1
    more = TrainConfig(**{**read_run_config(run_copy), "steps": 22})
    train(more, run_copy, *tiny_tokens, device="cpu")  # two more steps
    with pytest.warns(UserWarning):
        second = evaluate_run(data_copy, run_copy, cfg)
    tuned = lambda s: {p.wav_by_model["finetuned"] for p in s["pairs"]}
    base = lambda s: {p.wav_by_model["base"] for p in s["pairs"]}
    assert tuned(second).isdisjoint(tuned(first)) and base(second) == base(first)  # the base did not change
    assert {p.pair_id for p in second["pairs"]}.isdisjoint(p.pair_id for p in first["pairs"])
    assert second["ab"] is None and refresh_report(run_copy)["ab"] is None  # the old judgment is not theirs


def test_an_empty_test_split_is_named(data_copy, run_copy):
    from jpop_helpers.evaluate import EvalConfig, evaluate_run
    from jpop_helpers.loss import EmptySplitError

    (data_copy / "manifests" / "test" / "data.jsonl").write_text("")
    with pytest.raises(EmptySplitError, match="the test split has no clips"):
        evaluate_run(data_copy, run_copy, EvalConfig(n_prompts=1, duration=0.5, clap_checkpoint=None, vggish=None))


def test_any_number_of_models_and_a_forgetting_token_set(data_copy, run_copy, tiny_tokens, tmp_path):
    """Interface 4: base + a full and a LoRA run, CE/PPL of every model on a held-out token set of
    another family, one A/B pair per prompt and run, and a verdict per run."""
    from jpop_helpers.evaluate import EvalConfig, evaluate_models, folder_items
    from jpop_helpers.model import load_musicgen
    from jpop_helpers.runs import load_run_lm
    from jpop_helpers.train import TrainConfig, train

    lora_run = tmp_path / "runs" / "tiny-lora"
    train(TrainConfig(model="tiny", mode="lora", steps=3, batch_size=4, grad_accum=1, lr=3e-3, warmup_steps=1,
                      eval_every=3, save_every=3), lora_run, *tiny_tokens, device="cpu")
    base = load_musicgen("tiny", "cpu")
    models = {"full": load_run_lm(run_copy)[0], "base": base, "lora": load_run_lm(lora_run)[0]}
    other = tmp_path / "other"
    for i in range(3):
        ffmpeg_tone(other / f"organ{i}.wav", 4, 150 + 70 * i)
    forgetting = folder_items(base, other, "organ music")
    out = tmp_path / "eval"
    with pytest.warns(UserWarning, match="indicative only"):
        s = evaluate_models(data_copy, out, models, EvalConfig(n_prompts=2, duration=1.0, clap_checkpoint=None, vggish=None, n_boot=20),
                            codec_name="tiny", forgetting=forgetting, info={"title": "demo"})
    assert s["models"] == ["base", "full", "lora"]  # the base first, whatever the order given
    ce = {(r["split"], r["model"]): r for r in s["ce"]}
    assert set(ce) == {(sp, m) for sp in ("test", "other_genre") for m in ("base", "full", "lora")}
    assert all(ce[("other_genre", m)]["clips"] == 3 for m in s["models"])
    assert ce[("test", "full")]["ce"] < ce[("test", "base")]["ce"]
    clips = s["ce_clips"]["other_genre"]
    assert {m: len(v) for m, v in clips.items()} == {"base": 3, "full": 3, "lora": 3}
    assert set(s["verdict"]["models"]) == {"full", "lora"}
    assert all(v["forgetting"] is not None for v in s["verdict"]["models"].values())
    assert len(s["pairs"]) == 4 and {tuple(sorted(p.wav_by_model)) for p in s["pairs"]} == {("base", "full"), ("base", "lora")}
    assert {(r["model"], r["clips_a"]) for r in s["fad"]} == {("base", 2), ("full", 2), ("lora", 2)}
    assert {f["embedder"] for f in s["fad_floor"]} == {r["embedder"] for r in s["fad"]}
    report = (out / "report.md").read_text()
    assert report.index("## Verdict") < report.index("## Cross-entropy")
    assert "**full** is closer to the held-out genre" in report and "**lora** is closer" in report
    assert "Indicative only" in report and "offline fallback" in report
    assert {p.name for p in out.glob("*.png")} == {"ce_per_codebook.png", "fad.png"}


def test_an_undecodable_real_clip_is_named_and_fad_uses_the_others(data_copy, run_copy):
    from jpop_helpers.evaluate import EvalConfig, evaluate_run
    from jpop_helpers.manifest import split_clips

    clips = split_clips(data_copy, "test")
    assert len(clips) >= 2
    clips[0].path.write_bytes(b"not audio")  # e.g. a clip damaged by an interrupted Drive sync
    cfg = EvalConfig(n_prompts=2, duration=1.0, clap_checkpoint=None, vggish=None, n_boot=20)
    with pytest.warns(UserWarning, match="FAD is unstable"):
        summary = evaluate_run(data_copy, run_copy, cfg)
    assert summary["real_clips"] == len(clips) - 1 and {r["model"] for r in summary["fad"]} == {"base", "finetuned"}
    assert str(clips[0].path) in (data_copy / "reports" / "evaluate_problems.jsonl").read_text()
