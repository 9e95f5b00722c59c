import subprocess
import sys

import pytest

from jpop_helpers.cli import main

VERBS = ["download", "prepare", "demo"]


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as e:
        main([verb, "--help"])
    assert e.value.code == 0 and "--root" in capsys.readouterr().out


def test_module_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "jpop_helpers", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and all(v in out.stdout for v in VERBS)


def test_failure_is_one_line_and_nonzero(tmp_path, capsys):
    assert main(["prepare", "--root", str(tmp_path), "--dsp-only"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: FileNotFoundError") and "no audio files" in err[0]


def test_prepare_cli_on_demo_data(demo_root, tmp_path, capsys):
    import shutil

    root = tmp_path / "r"
    shutil.copytree(demo_root / "raw", root / "raw")
    code = main(["prepare", "--root", str(root), "--dsp-only", "--chunk-seconds", "10", "--min-tail-seconds", "4",
                 "--group-by", "artist", "--valid-fraction", "0.34", "--test-fraction", "0.33"])
    out = capsys.readouterr().out
    assert code == 0 and "prepare:" in out and "data_summary.png" in out
    assert (root / "reports" / "data_summary.png").stat().st_size > 10_000
    import pandas as pd

    df = pd.read_csv(root / "labels.csv")
    assert (df.groupby("artist")["split"].nunique() == 1).all()  # --group-by artist honoured
    assert set(df["split"]) == {"train", "valid", "test"}


def test_download_cli_reports_and_exits_zero_when_some_sources_work(tmp_path, capsys):
    from conftest import ffmpeg_tone

    ffmpeg_tone(tmp_path / "album" / "a.mp3", 2)
    ffmpeg_tone(tmp_path / "album" / "b.mp3", 2)
    ffmpeg_tone(tmp_path / "album" / "c.mp3", 2)
    csv = tmp_path / "s.csv"
    csv.write_text("artist,source,limit\nMe,album,2\nGone,nowhere,\n")
    assert main(["download", "--manifest", str(csv), "--root", str(tmp_path / "root")]) == 0
    out = capsys.readouterr().out
    assert "2 new track(s)" in out and "nowhere" in out  # the limit holds; the bad source is named
    assert len(list((tmp_path / "root" / "raw").glob("*/*.wav"))) == 2


@pytest.mark.slow
def test_export_generate_and_evaluate_cli_on_a_run(demo_root, tiny_run, tmp_path, capsys):
    import shutil

    from audiocraft.models import MusicGen

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("eval"))
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "export")]) == 0
    MusicGen.get_pretrained(str(tmp_path / "export"), device="cpu")
    assert main(["generate", "--run", str(run), "--name", "tuned", "--prompt", "j-pop", "--prompt", "city pop",
                 "--out", str(tmp_path / "gen"), "--duration", "1", "--device", "cpu"]) == 0
    assert len(list((tmp_path / "gen" / "tuned").glob("*.wav"))) == 2
    assert main(["evaluate", "--root", str(demo_root), "--run", str(run), "--n-prompts", "1", "--duration", "1",
                 "--no-clap", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "test      base: CE" in out and "finetuned: CE" in out and "report.md" in out
    assert (run / "eval" / "report.md").exists()


@pytest.mark.slow
def test_the_readme_demo_command_runs_every_stage(tmp_path, capsys):
    """`python -m jpop_helpers demo`, made small: render, download, prepare, train both modes, evaluate."""
    code = main(["demo", "--root", str(tmp_path / "demo"), "--seconds", "14", "--per-artist", "2",
                 "--chunk-seconds", "6", "--min-tail-seconds", "3", "--train-steps", "4"])
    out = capsys.readouterr().out
    assert code == 0
    for stage in ("[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]"):
        assert stage in out
    assert (tmp_path / "demo" / "runs" / "tiny-lora" / "curves.png").exists()
    assert (tmp_path / "demo" / "runs" / "tiny-full" / "eval" / "report.md").exists()
