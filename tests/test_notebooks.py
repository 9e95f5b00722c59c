"""Every notebook runs headless with small parameters (papermill), so none can silently rot; their
parameters, markdown and Colab metadata are checked without running them."""
import ast
import json
import math
import os
from pathlib import Path

import pytest

from conftest import REPO

NOTEBOOKS = REPO / "notebooks"


@pytest.fixture(autouse=True)
def _kernel_imports_this_checkout(monkeypatch):
    """The notebook kernels import jpop_helpers from this checkout, not from wherever it is installed."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))


def run_notebook(name: str, out_dir: Path, **parameters) -> Path:
    import papermill as pm

    out = out_dir / name
    # A cell that never finishes fails the test instead of hanging it (once, 05's A/B widget cell left
    # nbclient waiting on an idle kernel).
    # It happened again with 05 (kernel idle, client still waiting): a timed-out run is retried once, which
    # is safe because every notebook resumes what a previous run wrote; a real failure still fails.
    for attempt in (1, 2):
        try:
            pm.execute_notebook(str(NOTEBOOKS / name), str(out), parameters=parameters, cwd=str(NOTEBOOKS),
                                kernel_name="python3", progress_bar=False, execution_timeout=300)
            return out
        except Exception as e:
            if "Timeout" not in type(e).__name__ or attempt == 2:
                raise
    return out


def load(name: str) -> dict:
    return json.loads((NOTEBOOKS / name).read_text(encoding="utf-8"))


def parameters(name: str) -> dict[str, tuple[object, str]]:
    """The parameters cell of a notebook: NAME -> (value, the comment lines right above it + its own line)."""
    cell = next(c for c in load(name)["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    source = "".join(cell["source"])
    lines = source.splitlines()
    found = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            i, comment = node.lineno - 1, []
            while i > 0 and lines[i - 1].lstrip().startswith("#"):  # Colab forms allow no text after #@param
                i -= 1
                comment.insert(0, lines[i])
            found[node.targets[0].id] = (ast.literal_eval(node.value), "\n".join(comment + [lines[node.lineno - 1]]))
    return found


def markdown(name: str) -> str:
    return "\n".join("".join(c["source"]) for c in load(name)["cells"] if c["cell_type"] == "markdown")


def test_notebooks_are_stripped_and_have_a_parameters_cell():
    for nb_path in sorted(NOTEBOOKS.glob("*.ipynb")):
        nb = json.loads(nb_path.read_text())
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert not any(c.get("outputs") or c.get("execution_count") for c in code), f"{nb_path.name}: outputs"
        assert any("parameters" in c.get("metadata", {}).get("tags", []) for c in code), nb_path.name


TRAIN_FIELDS = ("steps", "batch_size", "grad_accum", "lr", "warmup_steps", "precision", "activation_checkpointing",
                "optimizer", "eval_every", "save_every", "keep_last", "log_every")


@pytest.mark.parametrize("name,mode", [("03_full_finetune.ipynb", "full"), ("04_lora_attempt.ipynb", "lora")])
def test_03_and_04_defaults_agree_with_trainconfig_or_say_why(name, mode):
    """A notebook default may differ from TrainConfig's only with a comment right above it that says
    "differs from TrainConfig.<field> = <TrainConfig's value>: <why>" (so a changed TrainConfig default
    makes the comment fail too); a comment that claims a difference where there is none fails as well."""
    from jpop_helpers.train import TrainConfig

    defaults = TrainConfig(mode=mode)
    expected = {f: getattr(defaults, f) for f in TRAIN_FIELDS} | {"lr": defaults.resolved_lr()}
    if mode == "lora":
        expected |= {"lora.rank": defaults.lora.rank, "lora.alpha": defaults.lora.alpha}
    params = parameters(name)
    wrong = []
    for field, default in expected.items():
        param = field.replace(".", "_").upper()
        if param not in params:
            wrong.append(f"{param}: missing")
            continue
        value, comment = params[param]
        claims = "differs from TrainConfig" in comment
        if value != default and f"differs from TrainConfig.{field} = {default}:" not in comment:
            wrong.append(f"{param} = {value!r}, TrainConfig.{field} = {default!r}, and no comment says why")
        elif value == default and claims:
            wrong.append(f"{param}: the comment claims a difference from TrainConfig that is not there")
    assert not wrong, "\n".join(wrong)


def test_which_notebooks_need_a_gpu_and_where_the_weights_go():
    from jpop_helpers.colab import HUB_DOWNLOAD_GB

    assert "No GPU needed" in markdown("01_download.ipynb") and "CPU runtime" in markdown("01_download.ipynb")
    assert "accelerator" not in load("01_download.ipynb")["metadata"]  # Colab opens it on a CPU runtime
    # 02 removes vocals with Demucs: fast on a GPU, minutes per song on a CPU; without it (KEEP_VOCALS) a CPU runtime
    text, meta = markdown("02_split_label.ipynb"), load("02_split_label.ipynb")["metadata"]
    assert "Runtime > Change runtime type > T4 GPU" in text and meta["accelerator"] == "GPU"
    assert "With `KEEP_VOCALS = True` **No GPU needed**" in text and "CPU runtime" in text
    sizes = [f"{gb:.2f} GB" for gb in HUB_DOWNLOAD_GB.values()]  # the figures hf_cache_report uses
    for name in ("03_full_finetune.ipynb", "04_lora_attempt.ipynb", "05_eval_listen.ipynb"):
        text, meta = markdown(name), load(name)["metadata"]
        assert "Runtime > Change runtime type > T4 GPU" in text
        assert meta["accelerator"] == "GPU" and meta["colab"]["gpuType"] == "T4"
        assert "`~/.cache/huggingface/hub`" in text and "not on Drive" in text
        assert all(size in text for size in sizes), (name, sizes)


def test_01_takes_a_cookies_file_and_says_how_to_make_one():
    assert parameters("01_download.ipynb")["COOKIES_FILE"][0] == ""
    code = "\n".join("".join(c["source"]) for c in load("01_download.ipynb")["cells"] if c["cell_type"] == "code")
    assert "DownloadConfig(cookies_file=COOKIES_FILE or None)" in code
    assert "`COOKIES_FILE`" in markdown("01_download.ipynb") and "`--cookies-file`" in markdown("01_download.ipynb")


def cell_outputs(nb_path: Path, marker: str) -> list[dict]:
    """The outputs of the executed notebook's first code cell whose source contains `marker`."""
    nb = json.loads(nb_path.read_text())
    return next(c["outputs"] for c in nb["cells"] if c["cell_type"] == "code" and marker in "".join(c["source"]))


def text_of(outputs: list[dict]) -> str:
    return "".join("".join(o.get("text", "")) + "".join(o.get("data", {}).get("text/plain", "")) for o in outputs)


@pytest.mark.slow
def test_01_and_02_run_on_the_demo_corpus(tmp_path):
    root = tmp_path / "root"
    cookies = tmp_path / "cookies.txt"
    cookies.write_text("# Netscape HTTP Cookie File\n")
    run_notebook("01_download.ipynb", tmp_path, DATA_ROOT=str(root), USE_DRIVE=False, DEMO=True,
                 DEMO_SECONDS=22, DEMO_PER_ARTIST=2, COOKIES_FILE=str(cookies))
    assert len(list((root / "raw").glob("*/*.wav"))) == 6
    assert "generated by yt-dlp" in cookies.read_text()  # COOKIES_FILE reached yt-dlp (it rewrites the jar)
    # KEEP_VOCALS: the demo corpus is rendered MIDI without vocals, and offline there are no Demucs weights
    run_notebook("02_split_label.ipynb", tmp_path, DATA_ROOT=str(root), USE_DRIVE=False, CHUNK_SECONDS=10.0,
                 MIN_TAIL_SECONDS=4.0, DSP_ONLY=True, KEEP_VOCALS=True)
    summary = json.loads((root / "reports" / "02_summary.json").read_text())
    assert summary["songs"] == 6 and summary["clips"] >= 12 and summary["problems"] == 0
    assert summary["vocals_removed"] is False and summary["energy_removed"] == {} and summary["channels"] == 1
    songs = {split: set(ids) for split, ids in summary["songs_per_split"].items()}
    assert set(songs) == {"train", "valid", "test"}
    assert not (songs["train"] & songs["test"]) and not (songs["train"] & songs["valid"])
    assert not (songs["valid"] & songs["test"])
    assert (root / "reports" / "data_summary.png").exists()


@pytest.mark.slow
@pytest.mark.parametrize("name,mode", [("03_full_finetune.ipynb", "full"), ("04_lora_attempt.ipynb", "lora")])
def test_03_and_04_train_resume_and_export_the_tiny_model(data_copy, tmp_path, monkeypatch, name, mode):
    params = dict(DATA_ROOT=str(data_copy), RUNS_DIR=str(tmp_path / "runs"), USE_DRIVE=False, RUN_NAME=mode,
                  MODEL="tiny", STEPS=12, BATCH_SIZE=4, GRAD_ACCUM=1, LR=3e-3, WARMUP_STEPS=2, EVAL_EVERY=6,
                  SAVE_EVERY=6, LOG_EVERY=3, ACTIVATION_CHECKPOINTING=True)
    monkeypatch.setenv("JPOP_NO_PROGRESS", "0")  # the kernel shows its progress bars, as in Colab
    out = run_notebook(name, tmp_path, **params)
    run = tmp_path / "runs" / mode
    summary = json.loads((run / "summary.json").read_text())
    # the held-out song's CE moves little in 12 steps (test_train checks the fit on the train clips):
    # here, that validation ran at both ends and training moved the model
    assert summary["steps"] == 12 and math.isfinite(summary["valid_ce_end"])
    assert abs(summary["valid_ce_end"] - summary["valid_ce_start"]) > 1e-3
    assert (run / "curves.png").exists() and (run / "export" / "state_dict.bin").exists()
    assert (run / "export" / "adapter" / "adapter_model.safetensors").exists() == (mode == "lora")
    # The live curve is one output updated in place (4 redraws here), below the progress bar and the
    # lines printed before training, which stay (clear_output used to erase them).
    outputs = cell_outputs(out, "finetune_notebook(")
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 1
    assert f"train ({mode})" in text_of(outputs) and "data: " in text_of(outputs)
    # before any GPU work: the device, the weights cache, the memory plan and the checkpoints' disk need
    for line in ("device: cpu", "weights cache: ", "memory plan: ", "checkpoints: ~"):
        assert line in text_of(outputs), line
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


@pytest.mark.slow
def test_05_evaluates_a_run_and_writes_the_report(data_copy, run_copy, tmp_path):
    runs = run_copy.parent
    out = run_notebook("05_eval_listen.ipynb", tmp_path, DATA_ROOT=str(data_copy), RUNS_DIR=str(runs),
                       USE_DRIVE=False, RUN_NAME="tiny-full", N_PROMPTS=2, USER_PROMPTS=["a test prompt"],
                       DURATION=1.0, CLAP_CHECKPOINT="", VGGISH="")
    setup = text_of(cell_outputs(out, "gpu_check("))
    assert "device: cpu" in setup and "weights cache: " in setup  # outside Colab: no GPU warning
    verdict = text_of(cell_outputs(out, "describe_evaluation("))
    assert "finetuned is closer to the held-out genre than the base on" in verdict  # the verdict, first
    ev = runs / "tiny-full" / "eval"
    summary = json.loads((ev / "summary.json").read_text())
    assert {r["model"] for r in summary["ce"]} == {"base", "finetuned"}
    assert len(list((ev / "generated").glob("*/*.wav"))) == 6
    assert "Blind A/B" in (ev / "report.md").read_text()
