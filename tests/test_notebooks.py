"""Every notebook runs headless with small parameters (papermill), so none can silently rot."""
import json
from pathlib import Path

import pytest

from conftest import REPO

NOTEBOOKS = REPO / "notebooks"
pytestmark = pytest.mark.slow


def run_notebook(name: str, out_dir: Path, **parameters) -> Path:
    import papermill as pm

    out = out_dir / name
    pm.execute_notebook(str(NOTEBOOKS / name), str(out), parameters=parameters, cwd=str(NOTEBOOKS),
                        kernel_name="python3", progress_bar=False)
    return out


def test_notebooks_are_stripped_and_have_a_parameters_cell():
    for nb_path in sorted(NOTEBOOKS.glob("*.ipynb")):
        nb = json.loads(nb_path.read_text())
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert not any(c.get("outputs") or c.get("execution_count") for c in code), f"{nb_path.name}: outputs"
        assert any("parameters" in c.get("metadata", {}).get("tags", []) for c in code), nb_path.name


def test_01_and_02_run_on_the_demo_corpus(tmp_path):
    root = tmp_path / "root"
    run_notebook("01_download.ipynb", tmp_path, DATA_ROOT=str(root), USE_DRIVE=False, DEMO=True,
                 DEMO_SECONDS=22, DEMO_PER_ARTIST=2)
    assert len(list((root / "raw").glob("*/*.wav"))) == 6
    run_notebook("02_split_label.ipynb", tmp_path, DATA_ROOT=str(root), USE_DRIVE=False, CHUNK_SECONDS=10.0,
                 MIN_TAIL_SECONDS=4.0, DSP_ONLY=True)
    summary = json.loads((root / "reports" / "02_summary.json").read_text())
    assert summary["songs"] == 6 and summary["clips"] >= 12 and summary["problems"] == 0
    songs = {split: set(ids) for split, ids in summary["songs_per_split"].items()}
    assert set(songs) == {"train", "valid", "test"}
    assert not (songs["train"] & songs["test"]) and not (songs["train"] & songs["valid"])
    assert (root / "reports" / "data_summary.png").exists()
