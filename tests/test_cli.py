import re
import subprocess
import sys

import pytest

from jpop_helpers.cli import main

VERBS = ["download", "prepare", "train", "plan", "export", "evaluate", "generate", "demo"]


def _help(verb, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main([verb, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_has_help(verb, capsys):
    out = _help(verb, capsys)
    assert out.startswith("usage: python -m jpop_helpers " + verb)
    assert {"export": "--run", "generate": "--out", "plan": "--gpu-gib"}.get(verb, "--root") in out


def _options(cls, prefix=""):
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _options(hints[f.name], f"{prefix}{f.name}_")
        else:
            yield "--" + getattr(cls, "CLI_NAMES", {}).get(f.name, prefix + f.name).replace("_", "-")


def test_cli_options_are_the_config_fields(capsys):
    """The CLI is derived from the configs, so a setting added to a config cannot be missing here."""
    from jpop_helpers.chunking import ChunkConfig
    from jpop_helpers.evaluate import EvalConfig
    from jpop_helpers.generate import GenerateConfig
    from jpop_helpers.labeling import LabelConfig
    from jpop_helpers.split import SplitConfig
    from jpop_helpers.train import TrainConfig

    for verb, configs in (("train", [TrainConfig]), ("prepare", [ChunkConfig, SplitConfig, LabelConfig]),
                          ("evaluate", [EvalConfig]), ("generate", [GenerateConfig])):
        out = _help(verb, capsys)
        missing = [o for cls in configs for o in _options(cls) if o not in out]
        assert not missing, (verb, missing)
    assert "--lora-rank" in _help("train", capsys) and "{auto,fp32,fp16,bf16}" in _help("train", capsys)


def test_a_typo_in_a_choice_is_refused_with_the_allowed_values(capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["train", "--root", str(tmp_path), "--run", str(tmp_path / "r"), "--optimizer", "adam"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "invalid choice: 'adam'" in err and "adamw8bit" in err


def test_module_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "jpop_helpers", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and all(v in out.stdout for v in VERBS)


def test_failure_is_one_line_and_nonzero(tmp_path, capsys):
    assert main(["prepare", "--root", str(tmp_path), "--dsp-only"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: FileNotFoundError") and "no audio files" in err[0]


def test_generate_cli_follows_a_melody_file_and_names_what_it_refuses(tmp_path, capsys):
    """`generate --melody` on tiny-melody: the mp3 (decoded through ffmpeg) conditions the clip, which is
    generate_set's clip for the same melody (and not another tune's); a model that takes no melody, a
    missing file and an undecodable one are refused, each named."""
    import numpy as np
    import soundfile as sf
    from conftest import ffmpeg_tone

    from jpop_helpers.generate import GenerateConfig, generate_set
    from jpop_helpers.melody import melody_input
    from jpop_helpers.model import load_musicgen

    tune = ffmpeg_tone(tmp_path / "tune.mp3", 2.0, freq=330)
    other = ffmpeg_tone(tmp_path / "other.wav", 2.0, freq=523)
    args = ["generate", "--model", "tiny-melody", "--prompt", "calm piano", "--duration", "0.5", "--top-k", "50",
            "--device", "cpu"]
    assert main([*args, "--melody", str(tune), "--out", str(tmp_path / "cli")]) == 0
    assert "melody tune" in capsys.readouterr().out
    (cli_clip,) = (tmp_path / "cli" / "model").glob("*.wav")

    model = load_musicgen("tiny-melody", "cpu")
    cfg = GenerateConfig(duration=0.5, top_k=50)
    same, moved = (generate_set({"api": model}, ["calm piano"], tmp_path / f"api-{m.stem}", cfg,
                                melodies=[melody_input(m, model.sample_rate)])[0] for m in (tune, other))
    assert same["melody"] == "tune"
    assert np.array_equal(sf.read(cli_clip)[0], sf.read(same["path"])[0])
    assert not np.array_equal(sf.read(cli_clip)[0], sf.read(moved["path"])[0])

    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"not audio at all" * 100)
    for model_name, melody, expected in (("tiny", tune, "model 'tiny' takes no melody"),
                                         ("tiny-melody", tmp_path / "nowhere.flac", "melody file not found: .*nowhere.flac"),
                                         ("tiny-melody", bad, "broken.wav: cannot decode audio")):
        args[2] = model_name
        assert main([*args, "--melody", str(melody), "--out", str(tmp_path / "refused")]) == 1
        err = capsys.readouterr().err
        assert re.search(expected, err), err
    assert not (tmp_path / "refused").exists()


def test_prepare_cli_on_demo_data(demo_root, tmp_path, capsys):
    import shutil

    root = tmp_path / "r"
    shutil.copytree(demo_root / "raw", root / "raw")
    code = main(["prepare", "--root", str(root), "--dsp-only", "--keep-vocals", "--chunk-seconds", "10", "--min-tail-seconds", "4",
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

    for name, freq in (("a", 330), ("b", 440), ("c", 550)):  # three recordings (equal files are one song)
        ffmpeg_tone(tmp_path / "album" / f"{name}.mp3", 2, freq)
    csv = tmp_path / "s.csv"
    csv.write_text("artist,source,limit\nMe,album,2\nGone,nowhere,\n")
    assert main(["download", "--manifest", str(csv), "--root", str(tmp_path / "root")]) == 0
    out = capsys.readouterr().out
    assert "2 new track(s)" in out and "nowhere" in out  # the limit holds; the bad source is named
    assert len(list((tmp_path / "root" / "raw").glob("*/*.wav"))) == 2


@pytest.mark.slow
def test_export_generate_and_evaluate_cli_on_a_run(data_copy, run_copy, tmp_path, capsys):
    from audiocraft.models import MusicGen

    run = run_copy
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "export")]) == 0
    MusicGen.get_pretrained(str(tmp_path / "export"), device="cpu")
    assert main(["generate", "--run", str(run), "--name", "tuned", "--prompt", "j-pop", "--prompt", "city pop",
                 "--out", str(tmp_path / "gen"), "--duration", "1", "--device", "cpu"]) == 0
    assert len(list((tmp_path / "gen" / "tuned").glob("*.wav"))) == 2
    assert main(["evaluate", "--root", str(data_copy), "--run", str(run), "--n-prompts", "1", "--duration", "1",
                 "--clap-checkpoint", "", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "test      base: CE" in out and "finetuned: CE" in out and "report.md" in out
    assert (run / "eval" / "report.md").exists()


def test_plan_cli_refuses_what_cannot_fit_and_prints_what_fits(capsys):
    assert main(["plan", "--model", "tiny", "--mode", "full", "--gpu-gib", "14.7"]) == 0
    assert "fits" in capsys.readouterr().out
    assert main(["plan", "--model", "tiny", "--mode", "full", "--batch-size", "64", "--gpu-gib", "1.2",
                 "--activation-checkpointing", "off"]) == 1
    err = capsys.readouterr().err
    assert "MemoryError" in err and "Try:" in err


def test_every_command_line_in_the_readme_parses():
    """The README's examples use the options the CLI really has (it is derived from the configs)."""
    import re
    import shlex

    from conftest import REPO
    from jpop_helpers.cli import build_parser

    readme = (REPO / "README.md").read_text()
    commands = [shlex.split(line.split("#")[0].split("-m jpop_helpers", 1)[1])
                for block in re.findall(r"```bash\n(.*?)```", readme, re.S)
                for line in block.replace("\\\n", " ").splitlines() if "-m jpop_helpers" in line]
    assert len(commands) >= 8
    for args in commands:
        build_parser().parse_args(args)  # SystemExit (argparse's error) fails the test


def test_demo_refuses_a_root_built_from_another_corpus_or_settings(tmp_path, capsys):
    """Rendering, download and prepare skip files that exist by name: a demo re-run into a root built with
    other settings (or an older corpus) would mix old pieces in, so the root is refused before anything
    is written. The same settings again are accepted (a re-run resumes)."""
    from jpop_helpers.demo import STAMP, claim_root

    root = tmp_path / "demo"
    claim_root(root, 20.0, None)
    assert claim_root(root, 20.0, None) == root / STAMP  # the same settings: accepted
    before = sorted(p.name for p in root.iterdir())
    assert main(["demo", "--root", str(root)]) == 1  # the default --seconds is another corpus
    assert "another corpus" in capsys.readouterr().err and sorted(p.name for p in root.iterdir()) == before
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "raw").mkdir()  # a root of an earlier demo, from before the stamp
    assert main(["demo", "--root", str(tmp_path / "old")]) == 1 and "no demo stamp" in capsys.readouterr().err
    assert main(["demo", "--root", str(tmp_path / "x"), "--base-steps", "0"]) == 1
    assert "--base-steps" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_a_bad_demo_spec_row_is_named(tmp_path):
    from jpop_helpers.demo import read_spec

    spec = tmp_path / "spec.csv"
    spec.write_text("family,artist,title,piece,program,bpm,seconds,format\n"
                    "genre,A,One,bach/bwv269,0,72,30,ogg\ngenre,A,Two,bach/bwv269,piano,72,30,ogg\n")
    with pytest.raises(ValueError, match=r"spec\.csv: piece 2: ValueError"):
        read_spec(spec)
    spec.write_text("artist,title\nA,One\n")
    with pytest.raises(ValueError, match=r"spec\.csv: piece 1: KeyError"):
        read_spec(spec)
