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
