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
    assert not (songs["valid"] & songs["test"])
    assert (root / "reports" / "data_summary.png").exists()


@pytest.mark.parametrize("name,mode", [("03_full_finetune.ipynb", "full"), ("04_lora_attempt.ipynb", "lora")])
def test_03_and_04_train_resume_and_export_the_tiny_model(data_copy, tmp_path, name, mode):
    params = dict(DATA_ROOT=str(data_copy), RUNS_DIR=str(tmp_path / "runs"), USE_DRIVE=False, RUN_NAME=mode,
                  MODEL="tiny", STEPS=12, BATCH_SIZE=4, GRAD_ACCUM=1, LR=3e-3, WARMUP_STEPS=2, EVAL_EVERY=6,
                  SAVE_EVERY=6, LOG_EVERY=3, ACTIVATION_CHECKPOINTING=True)
    out = run_notebook(name, tmp_path, **params)
    run = tmp_path / "runs" / mode
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 12 and summary["valid_ce_end"] < 0.8 * summary["valid_ce_start"]
    assert (run / "curves.png").exists() and (run / "export" / "state_dict.bin").exists()
    assert (run / "export" / "adapter" / "adapter_model.safetensors").exists() == (mode == "lora")
    nb = json.loads(out.read_text())
    assert any(o.get("output_type") == "display_data" and "image/png" in o.get("data", {})
               for c in nb["cells"] for o in c.get("outputs", []))  # the live curve was drawn
    # Re-running the notebook (as after a Colab disconnect) resumes: nothing left to train, and
    # nothing already written is redone (a retrain from scratch would rewrite both checkpoints).
    files = lambda: {str(p): (p.stat().st_mtime_ns, p.read_bytes()) for p in (run / "checkpoints").rglob("*") if p.is_file()}
    ckpts = files()
    metrics = (run / "metrics.jsonl").read_bytes()
    run_notebook(name, tmp_path, **params)
    again = json.loads((run / "summary.json").read_text())
    assert again["resumed_from"] == 12 and summary["resumed_from"] == 0
    assert again["valid_ce_end"] == summary["valid_ce_end"]
    assert files() == ckpts
    assert (run / "metrics.jsonl").read_bytes() == metrics


def test_05_evaluates_a_run_and_writes_the_report(data_copy, run_copy, tmp_path):
    runs = run_copy.parent
    run_notebook("05_eval_listen.ipynb", tmp_path, DATA_ROOT=str(data_copy), RUNS_DIR=str(runs), USE_DRIVE=False,
                 RUN_NAME="tiny-full", N_PROMPTS=2, USER_PROMPTS=["a test prompt"], DURATION=1.0,
                 CLAP_CHECKPOINT="")
    ev = runs / "tiny-full" / "eval"
    summary = json.loads((ev / "summary.json").read_text())
    assert {r["model"] for r in summary["ce"]} == {"base", "finetuned"}
    assert len(list((ev / "generated").glob("*/*.wav"))) == 6
    assert "Blind A/B" in (ev / "report.md").read_text()
