"""Stages 03 and 04: encode the clips (cached), train or resume, draw the curves, export.

`run_training` is what the CLI's `train` verb runs; `finetune_notebook` is the whole of notebooks 03
(full) and 04 (LoRA), which differ only in their TrainConfig.
"""
from __future__ import annotations

from pathlib import Path

from .distributed import barrier, dist_info, init_distributed
from .io import write_json
from .model import default_device, load_musicgen
from .plan import check_disk, checkpoint_gib, clip_seconds_of, gpu_capacity, plan_training, read_arch
from .plots import save_training_curves
from .runs import RunLayout
from .tokens import encode_split
from .train import TrainConfig, TrainResult, train


def plan_run(root: str | Path, run_dir: str | Path, config: TrainConfig, device: str) -> TrainConfig:
    """Before any GPU work: print the GPU memory plan and the checkpoints' disk needs, refuse what
    cannot fit (MemoryError / OSError saying what would), and decide "auto" activation checkpointing.

    Returns:
        the config to train with.
    """
    arch = read_arch(config.model)
    gpu, config = plan_training(arch, config, clip_seconds_of(root), gpu_capacity(device), dist_info()[1])
    print(gpu.describe())
    print(check_disk(run_dir, checkpoint_gib(arch, config.mode, config.resolved_optimizer(), config.lora.rank),
                     config.keep_last))
    return config


def run_training(root: str | Path, run_dir: str | Path, config: TrainConfig, device: str | None = None,
                 callback=None) -> TrainResult:
    """Plan, encode (cached) train/valid tokens, train or resume the run, write its curves."""
    device = init_distributed(device or default_device())  # under torchrun: one process per GPU
    rank, world, _ = dist_info()
    config = plan_run(root, run_dir, config, device)
    model = load_musicgen(config.model, device)
    if rank > 0:
        barrier()  # rank 0 fills the token cache first; the others then read it
    train_items = encode_split(model, root, "train", config.model)
    valid_items = encode_split(model, root, "valid", config.model)
    if world > 1 and rank == 0:
        barrier()
    model.compression_model.cpu()  # training reads cached tokens: the codec's GPU memory is free again
    from .conditions import cache_folder  # imports audiocraft (slow): only when training

    result = train(config, run_dir, train_items, valid_items, model=model, device=device, callback=callback,
                   text_cache=cache_folder(root, config.model))  # beside the tokens: shared by every run
    if rank == 0:
        save_training_curves(run_dir)
    return result


def describe_training(result: TrainResult) -> str:
    """Two lines for a terminal: the valid CE from first to last validation, and where the run is."""
    valid = [m for m in result.metrics if "valid/ce" in m]
    lines = [f"valid CE {valid[0]['valid/ce']:.3f} (step {valid[0]['step']}) -> {valid[-1]['valid/ce']:.3f} "
             f"(step {valid[-1]['step']}), perplexity {valid[-1]['valid/ppl']:.2f}"] if valid else []
    return "\n".join(lines + [f"run: {result.run_dir} (metrics.jsonl, curves.png, checkpoints/)"])


def run_summary(result: TrainResult) -> dict:
    """The numbers a notebook shows and records for a run: steps, valid CE at start and end, ..."""
    valid = [m for m in result.metrics if "valid/ce" in m]
    train_rows = [m for m in result.metrics if "train/ce" in m]
    last = train_rows[-1] if train_rows else {}
    return {"steps": result.step, "resumed_from": result.start_step,
            "valid_ce_start": valid[0]["valid/ce"] if valid else None,
            "valid_ce_end": valid[-1]["valid/ce"] if valid else None,
            "valid_ppl_end": valid[-1]["valid/ppl"] if valid else None,
            "skipped_steps": last.get("skipped_steps"), "clips_per_s": last.get("clips_per_s"),
            "gpu_mem_gib": last.get("gpu_mem_gib")}


def finetune_notebook(config: TrainConfig, run_name: str, data_root: str = "", runs_dir: str = "",
                      use_drive: bool = True, export: bool = True) -> dict:
    """Everything notebooks 03 and 04 do after their parameters: place data and runs (Drive in Colab),
    train or resume with live curves, record summary.json, export.

    Returns:
        the run summary (see `run_summary`), also written to <run>/summary.json.
    """
    import json

    from .colab import gpu_check, hf_cache_report, workspace
    from .plots import live_curves

    ws = workspace(root=data_root or None, runs=runs_dir or None, use_drive=use_drive)
    run = RunLayout(ws.runs / run_name)
    device = default_device()
    print(gpu_check(device, "training"), hf_cache_report(config.model), f"data: {ws.root} | run: {run.dir}", sep="\n")
    result = run_training(ws.root, run.dir, config, device, callback=live_curves(run_name))
    summary = run_summary(result)
    if result.start_step:
        print(f"resumed from step {result.start_step}")
    print(json.dumps(summary, indent=1))
    write_json(run.summary, summary)
    if export:
        from .export import export_run

        out = export_run(run.dir, run.export)
        for f in sorted(out.rglob("*")):
            if f.is_file():
                print(f"export: {f.relative_to(out)} {f.stat().st_size / 2**20:.2f} MiB")
    return summary
