"""One explicit training loop for full and LoRA fine-tuning of MusicGen's language model.

The two modes differ only in which parameters train (every LM weight, or LoRA adapters: lora.py) and
in what a checkpoint stores. EnCodec and the text encoder stay frozen; audio arrives as cached tokens
(tokens.py), so training never re-encodes.

setup:  the run folder, the model, what trains, optimizer + schedule + loss scaler, resume
train:  per step, `grad_accum` micro-batches (batches.py: a pure function of the step) -> the
        per-codebook masked CE (loss.py) -> backward -> unscale, clip, step, schedule; log every
        `log_every` steps, validate every `eval_every`, checkpoint every `save_every`
save:   the last checkpoint and the metrics (JSON lines) stay in the run folder (runs.py)
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar

import torch

from .batches import batch_indices, collate, step_conditions
from .checkpoint import latest_checkpoint, load_state, load_weights, rng_state, save_checkpoint, set_rng_state
from .colab import progress
from .distributed import barrier, dist_info, init_distributed, mean_over_ranks, replica_divergence
from .io import append_jsonl, read_json, read_jsonl, write_json, write_jsonl
from .lora import LoraConfig, adapter_state, add_lora, load_adapter_state
from .loss import LMLoss, evaluate_ce
from .melody import melody_dropout
from .optim import OPTIMIZERS, make_optimizer, warmup_cosine
from .precision import PRECISIONS, choose_precision
from .runs import RunLayout
from .tokens import TokenItem

log = logging.getLogger(__name__)

MODES = ("full", "lora")


@dataclass
class TrainConfig:
    model: str = "facebook/musicgen-small"  # a pretrained name, a local folder, or a bundled offline model: tiny, tiny-melody, tiny-stereo
    mode: str = "full"  # full: every LM weight trains; lora: adapters only
    steps: int = 2000  # optimizer steps
    batch_size: int = 2  # clips per micro-batch
    grad_accum: int = 4  # micro-batches per optimizer step (a T4 holds ~2 clips of 30 s; 4 x 2 = 8 clips a step)
    lr: float | None = None  # default: 1e-5 full, 1e-4 LoRA
    weight_decay: float = 0.01
    warmup_steps: int = 100  # 5 % of the steps
    min_lr_ratio: float = 0.1  # cosine decays to lr * this
    max_grad_norm: float = 1.0
    max_bad_steps: int = 20  # stop after this many steps in a row with a non-finite loss or gradient
    precision: str = "auto"  # auto: bf16 on GPUs that run it natively, fp16 + loss scaling on a T4, fp32 on CPU
    cfg_dropout: float = 0.3  # probability of training a clip without its description
    # on: recompute each layer's activations in backward (less memory); auto: on when the plan needs it
    activation_checkpointing: str = "auto"
    # auto: adamw8bit for full runs (2 bytes of state per weight, not 8: full small fits a T4 and a
    # free Drive), adamw for LoRA (its state is tiny)
    optimizer: str = "auto"
    lora: LoraConfig = field(default_factory=LoraConfig)  # used in lora mode
    eval_every: int = 200  # validation CE/PPL every N steps
    max_eval_batches: int | None = None  # None: the whole valid split
    save_every: int = 200  # checkpoint every N steps (each is GBs written to Drive for full runs)
    keep_last: int = 1  # checkpoints kept (a new one is complete before the old one goes)
    log_every: int = 10  # a metrics row every N steps
    seed: int = 0

    CHOICES: ClassVar[dict] = {"mode": MODES, "precision": PRECISIONS, "optimizer": ("auto", *OPTIMIZERS),
                               "activation_checkpointing": ("auto", "on", "off")}

    def __post_init__(self):
        if isinstance(self.lora, dict):  # read back from config.json
            self.lora = LoraConfig(**self.lora)
        if isinstance(self.activation_checkpointing, bool):
            self.activation_checkpointing = "on" if self.activation_checkpointing else "off"
        for name, allowed in self.CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, not {getattr(self, name)!r}")
        for name in ("steps", "batch_size", "grad_accum", "eval_every", "save_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)!r}")

    def resolved_lr(self) -> float:
        return self.lr if self.lr is not None else (1e-4 if self.mode == "lora" else 1e-5)

    def resolved_optimizer(self) -> str:
        if self.optimizer != "auto":
            return self.optimizer
        return "adamw8bit" if self.mode == "full" else "adamw"


@dataclass
class TrainResult:
    run_dir: Path
    start_step: int  # the step this call resumed from (0: a fresh run)
    step: int  # the step it ended at
    metrics: list[dict]  # every row of metrics.jsonl
    final_valid: dict | None  # the last validation row of this call


def setup_trainable(lm: torch.nn.Module, config: TrainConfig, device: str, dtype: torch.dtype):
    """Choose what trains.

    full: every LM weight, in fp32 (the master weights mixed precision needs). The T5 text encoder is
    not part of the LM's module tree in audiocraft, so it stays frozen; its output projection trains.
    lora: the frozen base stays in half precision on a GPU (large is 12.4 GiB of weights in fp32, 6.2
    in half) and only the adapters train, in fp32.

    Returns:
        the module to train (the LM, or its peft wrapper) and the list of trainable parameters.
    """
    if config.mode == "full":
        lm = lm.float()
        for p in lm.parameters():
            p.requires_grad = True
    else:
        half = dtype if dtype in (torch.float16, torch.bfloat16) else torch.float32
        lm = add_lora(lm.to(half) if device.startswith("cuda") else lm.float(), config.lora, base_model=config.model)
        for p in lm.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    return lm, [p for p in lm.parameters() if p.requires_grad]


def _claim_run_folder(run: RunLayout, config: TrainConfig, write: bool) -> None:
    """Refuse a folder that holds another kind of run; record this run's config."""
    if run.config.exists():
        saved = read_json(run.config)
        for k in ("mode", "model"):
            if saved.get(k) != getattr(config, k):
                raise ValueError(f"{run.dir} holds a run with {k}={saved.get(k)!r}, not {getattr(config, k)!r}: "
                                 "use another run folder")
    run.dir.mkdir(parents=True, exist_ok=True)
    if write:
        write_json(run.config, dataclasses.asdict(config))


def _save(run: RunLayout, config, step, skipped, lm, optimizer, scheduler, scaler) -> None:
    """Everything a resume needs: the trained weights (all, or the adapters), optimizer, scheduler,
    scaler and RNG states, and the step (the data order is a function of it)."""
    weights = adapter_state(lm) if config.mode == "lora" else lm.state_dict()
    save_checkpoint(run.checkpoints, step, weights, {
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
        "rng": rng_state(), "step": step, "skipped_steps": skipped, "config": dataclasses.asdict(config)},
        config.keep_last)


def _resume(run: RunLayout, config, lm, optimizer, scheduler, scaler) -> tuple[int, int]:
    """Restore the newest readable checkpoint; returns (step, skipped steps), (0, 0) for a new run.

    Everything is read to the CPU and copied into the live tensors, so no second copy of the
    checkpoint stays on the GPU.
    """
    path = latest_checkpoint(run.checkpoints)
    if path is None:
        return 0, 0
    weights, state = load_weights(path), load_state(path)
    if config.mode == "lora":
        load_adapter_state(lm, weights)
    else:
        lm.load_state_dict(weights)
    optimizer.load_state_dict(state["optimizer"])  # copies its tensors to the parameters' device
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    log.info("resumed %s from %s (step %d)", run.dir, path.name, state["step"])
    return state["step"], state.get("skipped_steps", 0)


def _validate(lm, valid_items, config, device, dtype, step) -> dict:
    v = evaluate_ce(lm, valid_items, config.batch_size, device, dtype, config.max_eval_batches, split="valid")
    return {"step": step, "valid/ce": v["ce"], "valid/ppl": v["ppl"], "valid/tokens": v["tokens"],
            **{f"valid/{k}": v[k] for k in v if k.startswith("ce_q")}}


def train(config: TrainConfig, run_dir: str | Path, train_items: list[TokenItem], valid_items: list[TokenItem],
          model=None, device: str | None = None, stop_after: int | None = None,
          callback: Callable[[list[dict]], None] | None = None) -> TrainResult:
    """Train (or resume) a run in `run_dir`.

    Args:
        model: an audiocraft MusicGen whose `.lm` is trained in place (loaded from config.model if None).
        stop_after: stop after this many optimizer steps in this call (simulates a disconnect in tests).
        callback: called with all metric rows so far after each log and validation (live plots).
    Raises:
        ValueError: no training clips, or the run folder holds a run with a different mode or model.
    """
    from .model import default_device, load_musicgen

    # ---------------------------------------------------------------- setup
    run = RunLayout(run_dir)
    device = init_distributed(device or default_device())
    rank, world, _ = dist_info()
    main_process = rank == 0
    _claim_run_folder(run, config, write=main_process)
    if not train_items:
        raise ValueError("the train split has no clips: run the prepare stage (notebook 02) first")
    if not valid_items:
        log.warning("the valid split has no clips: training without validation CE (prepare --valid-fraction)")

    torch.manual_seed(config.seed)
    model = model or load_musicgen(config.model, device)
    lm = model.lm.to(device)
    model.compression_model.eval()
    melody_p = melody_dropout(lm)  # melody models: the solver's probability of dropping the melody
    dtype = choose_precision(config.precision, device)
    if config.activation_checkpointing == "on":  # "auto" was decided by the memory plan (plan.py)
        # audiocraft's StreamingTransformer wraps every layer in torch.utils.checkpoint: activations
        # are recomputed in backward instead of stored (what lets medium/large fit a T4).
        lm.transformer.checkpointing = "torch"
    lm, params = setup_trainable(lm, config, device, dtype)
    lm.train()
    step_module = LMLoss(lm)
    if world > 1:
        # find_unused_parameters: with CFG dropout a batch may use no description at all.
        step_module = torch.nn.parallel.DistributedDataParallel(
            step_module, device_ids=[torch.device(device).index] if device.startswith("cuda") else None,
            find_unused_parameters=True)
    optimizer = make_optimizer(params, config.resolved_optimizer(), config.resolved_lr(), config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(config.warmup_steps, config.steps, config.min_lr_ratio))
    scaler = torch.amp.GradScaler(device.split(":")[0], enabled=dtype == torch.float16)
    autocast = dict(device_type=device.split(":")[0], dtype=dtype, enabled=dtype != torch.float32)

    start_step, skipped = _resume(run, config, lm, optimizer, scheduler, scaler)
    step = start_step
    # Steps after the checkpoint we resume from will be trained again (and a run with no checkpoint
    # starts over): drop their old rows so no step is logged twice.
    rows = read_jsonl(run.metrics)
    kept = [r for r in rows if step and r.get("step", 0) <= step]
    if main_process and len(kept) != len(rows):
        write_jsonl(run.metrics, kept)
    if step == 0 and valid_items and main_process:
        append_jsonl(run.metrics, _validate(lm, valid_items, config, device, dtype, step))  # the curve's start
    barrier()

    # ---------------------------------------------------------------- train
    last_valid = None
    end = config.steps if stop_after is None else min(config.steps, step + stop_after)
    bar = progress(total=config.steps, initial=step, desc=f"train ({config.mode})", unit="step",
                   **({} if main_process else {"disable": True}))
    t_last, clips_since, bad_in_a_row = time.perf_counter(), 0, 0
    while step < end:
        optimizer.zero_grad(set_to_none=True)
        ce_step, q_sums, q_counts = 0.0, 0, 0
        for micro in range(config.grad_accum):
            m = step * config.grad_accum + micro
            # audiocraft's T5 word dropout draws from Python's `random`: seed it per micro-batch, so
            # a run is a function of its config and a resumed run sees the same dropout.
            random.seed((config.seed * 1_000_003 + m) * 1024 + rank)
            global_batch = batch_indices(m, len(train_items), config.batch_size * world, config.seed)
            batch = [train_items[i] for i in global_batch[rank * config.batch_size : (rank + 1) * config.batch_size]]
            texts, melody = step_conditions(batch, m, config.seed, config.cfg_dropout, melody_p)
            codes, valid, attrs = collate(batch, texts, device, melody)
            # Under DDP, gradients are averaged across processes only on the last micro-batch.
            last_micro = micro == config.grad_accum - 1
            with step_module.no_sync() if (world > 1 and not last_micro) else contextlib.nullcontext():
                with torch.autocast(**autocast):
                    ce, s, c = step_module(codes, valid, attrs)
                scaler.scale(ce / config.grad_accum).backward()
            ce_step += float(ce.detach()) / config.grad_accum
            q_sums, q_counts = q_sums + s, q_counts + c
            clips_since += len(batch)
        scaler.unscale_(optimizer)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm))
        # A non-finite loss or gradient never reaches the weights, in any precision: the step is
        # skipped and counted (fp16: the scaler also lowers its scale), and too many in a row stop
        # the run with its last checkpoint intact (it was saved before the first bad step).
        finite = math.isfinite(grad_norm) and math.isfinite(ce_step)
        if finite:
            scaler.step(optimizer)
            bad_in_a_row = 0
        else:
            skipped, bad_in_a_row = skipped + 1, bad_in_a_row + 1
        scaler.update()
        if bad_in_a_row >= config.max_bad_steps:
            raise FloatingPointError(
                f"{bad_in_a_row} steps in a row had a non-finite loss or gradient (step {step + 1}); the weights "
                f"were not changed by them and {run.checkpoints} keeps the last good checkpoint. Lower the "
                f"learning rate ({config.resolved_lr():g}), or use precision='fp32' / 'bf16' if fp16 overflows.")
        scheduler.step()
        step += 1
        bar.update(1)
        ce_step = mean_over_ranks(ce_step, device)  # the CE of the whole global batch, not rank 0's slice

        if main_process and (step % config.log_every == 0 or step == end):
            now = time.perf_counter()
            row = {"step": step, "lr": scheduler.get_last_lr()[0], "train/ce": ce_step,
                   **{f"train/ce_q{k + 1}": float(v) for k, v in enumerate(q_sums / q_counts.clamp(min=1))},
                   "grad_norm": grad_norm, "scale": scaler.get_scale() if scaler.is_enabled() else 1.0,
                   "skipped_steps": skipped, "clips_per_s": clips_since / max(now - t_last, 1e-9)}
            if device.startswith("cuda"):
                row["gpu_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
            append_jsonl(run.metrics, row)
            bar.set_postfix(ce=f"{ce_step:.3f}")
            t_last, clips_since = now, 0
        if valid_items and main_process and (step % config.eval_every == 0 or step == config.steps):
            last_valid = _validate(lm, valid_items, config, device, dtype, step)
            append_jsonl(run.metrics, last_valid)
        if callback is not None and main_process and (step % config.log_every == 0 or step % config.eval_every == 0):
            callback(read_jsonl(run.metrics))
        if step % config.save_every == 0 or step == end:
            if main_process:
                _save(run, config, step, skipped, lm, optimizer, scheduler, scaler)
            barrier()
    bar.close()

    # ---------------------------------------------------------------- save
    if world > 1:
        # DDP keeps replicas identical; record that it did (0.0), so a broken setup cannot go unnoticed.
        divergence = replica_divergence(params, device)
        if main_process:
            append_jsonl(run.metrics, {"step": step, "ddp/world_size": world, "ddp/max_param_divergence": divergence})
        barrier()
    return TrainResult(run.dir, start_step, step, read_jsonl(run.metrics), last_valid)
