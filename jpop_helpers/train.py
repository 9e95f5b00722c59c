"""One explicit training loop for full and LoRA fine-tuning of MusicGen's language model.

The two modes differ only in which parameters train (every LM weight, or LoRA adapters: lora.py) and
in what a checkpoint stores. EnCodec and the text encoder stay frozen; audio arrives as cached tokens
(tokens.py), so training never re-encodes.

setup:  the run folder, the model, the cached text encoder (conditions.py), what trains, the
        processes (DDP or FSDP: distributed.py), optimizer + schedule + loss scaler, resume
train:  per step, `grad_accum` micro-batches (batches.py: a pure function of the step) -> the
        per-codebook masked CE (loss.py) -> backward -> unscale, clip, step, schedule; log every
        `log_every` steps, validate every `eval_every`, checkpoint every `save_every`
save:   the last checkpoint and the metrics (JSON lines) stay in the run folder (runs.py)

Speed: the step never waits for the GPU. Its numbers (CE, gradient norm, skipped steps) stay on the
device and are read once per `log_every` steps; the decision to skip a non-finite step is taken on the
device too (optim.step_if_finite). Attention runs in PyTorch's fused SDPA kernels (flash or
memory-efficient; the slow reference kernel is refused on a GPU), and `compile` compiles each
transformer layer.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar

import torch

from .batches import batch_indices, collate, step_conditions
from .checkpoint import (SHARDED, latest_checkpoint, load_sharded, load_state, load_weights, rng_state,
                         save_checkpoint, save_sharded, set_rng_state)
from .colab import progress
from .distributed import (PARALLEL, barrier, dist_info, gathered, grad_sync, init_distributed, local,
                          replica_divergence, sum_over_ranks, wrap)
from .io import append_jsonl, read_json, read_jsonl, write_json, write_jsonl
from .lora import LoraConfig, adapter_state, add_lora, load_adapter_state
from .loss import LMLoss, evaluate_ce
from .melody import melody_dropout
from .optim import OPTIMIZERS, make_optimizer, step_if_finite, warmup_cosine
from .precision import PRECISIONS, choose_precision
from .runs import RunLayout
from .tokens import TokenItem

log = logging.getLogger(__name__)

MODES = ("full", "lora")
TEXT_ENCODER = ("cached", "live")
COMPILE_BACKEND = "inductor"  # torch.compile's backend for `compile` (tests use a cheaper one)


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
    log_every: int = 10  # a metrics row every N steps (the only time a step's numbers leave the GPU)
    seed: int = 0
    # cached: the frozen T5's outputs computed once per caption and kept on disk (no T5 word dropout:
    # caption variants vary the text); live: T5 on every step, with audiocraft's word dropout
    text_encoder: str = "cached"
    compile: bool = False  # torch.compile each transformer layer (minutes of compiling first; GPU)
    # ddp: every process holds everything; fsdp: weights, gradients and AdamW state split over the
    # processes (full fine-tuning of medium/large on several GPUs; resumable on another GPU count)
    parallel: str = "ddp"

    CHOICES: ClassVar[dict] = {"mode": MODES, "precision": PRECISIONS, "optimizer": ("auto", *OPTIMIZERS),
                               "activation_checkpointing": ("auto", "on", "off"), "text_encoder": TEXT_ENCODER,
                               "parallel": PARALLEL}

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
        if self.parallel == "fsdp" and (self.mode != "full" or self.optimizer == "adamw8bit"):
            raise ValueError("parallel='fsdp' is for full fine-tuning with AdamW (optimizer='adamw'); "
                             "LoRA fits one GPU: use parallel='ddp'")

    def resolved_lr(self) -> float:
        return self.lr if self.lr is not None else (1e-4 if self.mode == "lora" else 1e-5)

    def resolved_optimizer(self) -> str:
        if self.optimizer != "auto":
            return self.optimizer
        return "adamw8bit" if self.mode == "full" and self.parallel == "ddp" else "adamw"


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
        the LM to train (with its adapters in lora mode) and the list of trainable parameters.
    """
    if config.mode == "full":
        lm = lm.float()
        for p in lm.parameters():
            p.requires_grad = True
    else:
        half = dtype if dtype in (torch.float16, torch.bfloat16) else torch.float32
        lm = add_lora(lm.to(half) if device.startswith("cuda") else lm.float(), config.lora)  # adapters in fp32
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


def _sharded_state(lm, optimizer) -> dict:
    """Weights and optimizer state as flat name -> tensor (DTensor under FSDP) dicts, for DCP."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    model_sd, optim_sd = get_state_dict(lm, optimizer, options=StateDictOptions(flatten_optimizer_state_dict=True))
    return {**{f"model.{k}": v for k, v in model_sd.items()}, **{f"optim.{k}": v for k, v in optim_sd.items()}}


def _save(run: RunLayout, config, step, skipped, lm, optimizer, scheduler, scaler) -> None:
    """Everything a resume needs: the trained weights (all, or the adapters), optimizer, scheduler,
    scaler and RNG states, and the step (the data order is a function of it). Called by every process;
    under DDP rank 0 writes, under FSDP each process writes its shards."""
    state = {"scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "rng": rng_state(), "step": step,
             "skipped_steps": skipped, "config": dataclasses.asdict(config)}
    if config.parallel == "fsdp":
        save_sharded(run.checkpoints, step, _sharded_state(lm, optimizer), state, config.keep_last)
        return
    if dist_info()[0] == 0:
        weights = adapter_state(lm) if config.mode == "lora" else lm.state_dict()
        save_checkpoint(run.checkpoints, step, weights, {"optimizer": optimizer.state_dict(), **state}, config.keep_last)
    barrier()


def _resume(run: RunLayout, config, lm, optimizer, scheduler, scaler) -> tuple[int, int]:
    """Restore the newest readable checkpoint; returns (step, skipped steps), (0, 0) for a new run.

    Everything is read to the CPU and copied into the live tensors, so no second copy of the
    checkpoint stays on the GPU.
    """
    path = latest_checkpoint(run.checkpoints)
    if path is None:
        return 0, 0
    if config.parallel == "fsdp" or (path / SHARDED).is_dir():
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        flat = _sharded_state(lm, optimizer)  # this process's templates, in its sharding
        plain, state = load_sharded(path, flat)
        flat.update(plain)
        set_state_dict(lm, optimizer, model_state_dict={k[6:]: v for k, v in flat.items() if k.startswith("model.")},
                       optim_state_dict={k[6:]: v for k, v in flat.items() if k.startswith("optim.")},
                       options=StateDictOptions(flatten_optimizer_state_dict=True))
    else:
        weights, state = load_weights(path), load_state(path)
        if config.mode == "lora":
            load_adapter_state(lm, weights, source=str(path))
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


def attention_kernels(device: str):
    """On a GPU, PyTorch's fused attention only (flash, memory-efficient or cuDNN): the reference
    ("math") kernel stores the whole [T, T] attention matrix of each head, which at 1500 frames is
    gigabytes, so a silent fall-back to it is an error instead. Nothing to choose on the CPU."""
    if not device.startswith("cuda"):
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION])


def compile_layers(lm) -> None:
    """torch.compile each transformer layer in place (same module tree and state-dict keys; the layers
    share one compiled graph). The conditioning and the delay pattern around them stay eager."""
    for layer in lm.transformer.layers:
        layer.compile(backend=COMPILE_BACKEND)


def train(config: TrainConfig, run_dir: str | Path, train_items: list[TokenItem], valid_items: list[TokenItem],
          model=None, device: str | None = None, stop_after: int | None = None,
          callback: Callable[[list[dict]], None] | None = None, text_cache: str | Path | None = None) -> TrainResult:
    """Train (or resume) a run in `run_dir`.

    Args:
        model: an audiocraft MusicGen whose `.lm` is trained in place (loaded from config.model if None).
        text_cache: folder of the cached text-encoder outputs (conditions.cache_folder(root, model):
            beside the tokens); default <run_dir>/text_cache.
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
    if config.text_encoder == "cached":  # T5 runs once per caption here, never in the step
        texts = [d for it in (*train_items, *valid_items) for d in it.descriptions]
        folder = text_cache if text_cache is not None else run.dir / "text_cache"
        if not main_process:
            barrier()  # rank 0 fills the cache first; the others then read it
        from .conditions import use_cached_text  # imports audiocraft's conditioners (~5 s): not for --help

        uncache_text = use_cached_text(lm, texts, folder, write=main_process)
        if main_process:
            barrier()
    if config.activation_checkpointing == "on":  # "auto" was decided by the memory plan (plan.py)
        # audiocraft's StreamingTransformer wraps every layer in torch.utils.checkpoint: activations
        # are recomputed in backward instead of stored (what lets medium/large fit a T4).
        lm.transformer.checkpointing = "torch"
    lm, _ = setup_trainable(lm, config, device, dtype)
    lm.train()
    if config.compile:
        compile_layers(lm)
    step_module = wrap(LMLoss(lm), lm, config.parallel, device)  # FSDP replaces the parameters: collect them after
    params = [p for p in lm.parameters() if p.requires_grad]
    fsdp = hasattr(step_module, "unshard")
    optimizer = make_optimizer(params, config.resolved_optimizer(), config.resolved_lr(), config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(config.warmup_steps, config.steps, config.min_lr_ratio))
    scaler = torch.amp.GradScaler(device.split(":")[0], enabled=dtype == torch.float16)
    autocast = dict(device_type=device.split(":")[0], dtype=dtype, enabled=dtype != torch.float32)

    def validate(step: int) -> dict | None:
        """Validation CE (rank 0; under FSDP every process runs it, as the weights are split)."""
        if not valid_items or not (main_process or fsdp):
            return None
        with gathered(step_module):
            row = _validate(lm, valid_items, config, device, dtype, step)
        if main_process:
            append_jsonl(run.metrics, row)
        return row

    start_step, skipped = _resume(run, config, lm, optimizer, scheduler, scaler)
    step = start_step
    # Steps after the checkpoint we resume from will be trained again (and a run with no checkpoint
    # starts over): drop their old rows so no step is logged twice.
    rows = read_jsonl(run.metrics)
    kept = [r for r in rows if step and r.get("step", 0) <= step]
    if main_process and len(kept) != len(rows):
        write_jsonl(run.metrics, kept)
    if step == 0:
        validate(0)  # the curve's start
    barrier()

    # ---------------------------------------------------------------- train
    last_valid = None
    end = config.steps if stop_after is None else min(config.steps, step + stop_after)
    bar = progress(total=config.steps, initial=step, desc=f"train ({config.mode})", unit="step",
                   **({} if main_process else {"disable": True}))
    # Logged numbers accumulate on the device and are read every log_every steps (the one host sync):
    # the CE summed over finite steps, how many were finite, steps skipped, the longest run of bad steps.
    zero = lambda: torch.zeros((), dtype=torch.float64, device=device)  # noqa: E731
    ce_sum, n_finite, n_skipped, bad_run, worst_run = zero(), zero(), zero(), zero(), zero()
    q_sums, q_counts, grad_norm = 0, 0, zero()
    t_last, clips_since = time.perf_counter(), 0
    while step < end:
        optimizer.zero_grad(set_to_none=True)
        ce_step = zero()
        for micro in range(config.grad_accum):
            m = step * config.grad_accum + micro
            # audiocraft's T5 word dropout draws from Python's `random`: seed it per micro-batch, so
            # a run is a function of its config and a resumed run sees the same dropout.
            random.seed((config.seed * 1_000_003 + m) * 1024 + rank)
            # Clips and captions (and melody dropout) are drawn for the global batch, then sliced: a run
            # is the same on any number of processes (and resumes on another number).
            global_batch = [train_items[i] for i in batch_indices(m, len(train_items), config.batch_size * world,
                                                                    config.seed)]
            texts, melody = step_conditions(global_batch, m, config.seed, config.cfg_dropout, melody_p)
            mine = slice(rank * config.batch_size, (rank + 1) * config.batch_size)
            batch = global_batch[mine]
            codes, valid, attrs = collate(batch, texts[mine], device, melody[mine] if melody is not None else None)
            # With several processes, gradients are averaged across them only on the last micro-batch.
            with grad_sync(step_module, enabled=micro == config.grad_accum - 1):
                with torch.autocast(**autocast), attention_kernels(device):
                    ce, s, c = step_module(codes, valid, attrs)
                scaler.scale(ce / config.grad_accum).backward()
            ce_step += ce.detach() / config.grad_accum
            q_sums, q_counts = q_sums + s, q_counts + c
            clips_since += len(batch)
        scaler.unscale_(optimizer)
        grad_norm = local(torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm))
        # A non-finite loss or gradient never reaches the weights, in any precision: the step is
        # skipped on the device (fp16: the scaler also lowers its scale) and counted, and too many in
        # a row stop the run with its last checkpoint intact (checked at each log and save).
        finite = torch.isfinite(grad_norm) & torch.isfinite(ce_step)
        step_if_finite(optimizer, finite)
        scaler.update()
        bad_run = (bad_run + 1) * (~finite)
        worst_run, n_skipped = torch.maximum(worst_run, bad_run), n_skipped + (~finite)
        ce_sum, n_finite = ce_sum + torch.where(finite, ce_step, 0.0), n_finite + finite
        scheduler.step()
        step += 1
        bar.update(1)

        log_now = step % config.log_every == 0 or step == end
        save_now = step % config.save_every == 0 or step == end
        if log_now or save_now:
            # the CE of the whole global batch, not rank 0's slice; skips and runs are the same on every rank
            totals = sum_over_ranks(torch.stack([ce_sum, n_finite])).tolist()
            worst, new_skips = int(worst_run), int(n_skipped)
            if worst >= config.max_bad_steps:
                raise FloatingPointError(
                    f"{worst} steps in a row had a non-finite loss or gradient (by step {step}); the weights "
                    f"were not changed by them and {run.checkpoints} keeps the last good checkpoint. Lower the "
                    f"learning rate ({config.resolved_lr():g}), or use precision='fp32' / 'bf16' if fp16 overflows.")
            skipped += new_skips
            n_skipped = zero()
        if log_now:
            now = time.perf_counter()
            ce_mean = totals[0] / totals[1] if totals[1] else float("nan")
            if main_process:
                per_q = (q_sums / q_counts.to(device).clamp(min=1)).tolist()  # this process's clips
                row = {"step": step, "lr": scheduler.get_last_lr()[0], "train/ce": ce_mean,
                       **{f"train/ce_q{k + 1}": v for k, v in enumerate(per_q)},
                       "grad_norm": float(grad_norm), "scale": scaler.get_scale() if scaler.is_enabled() else 1.0,
                       "skipped_steps": skipped, "clips_per_s": clips_since / max(now - t_last, 1e-9)}
                if device.startswith("cuda"):
                    row["gpu_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
                append_jsonl(run.metrics, row)
                bar.set_postfix(ce=f"{ce_mean:.3f}")
            t_last, clips_since = now, 0
            ce_sum, n_finite, worst_run, q_sums, q_counts = zero(), zero(), bad_run.clone(), 0, 0
        if step % config.eval_every == 0 or step == config.steps:
            last_valid = validate(step) or last_valid
        if callback is not None and main_process and (step % config.log_every == 0 or step % config.eval_every == 0):
            callback(read_jsonl(run.metrics))
        if save_now:
            _save(run, config, step, skipped, lm, optimizer, scheduler, scaler)
    bar.close()

    # ---------------------------------------------------------------- save
    if world > 1 and not fsdp:
        # DDP keeps replicas identical; record that it did (0.0), so a broken setup cannot go unnoticed.
        divergence = replica_divergence(params, device)
        if main_process:
            append_jsonl(run.metrics, {"step": step, "ddp/world_size": world, "ddp/max_param_divergence": divergence})
        barrier()
    if config.text_encoder == "cached":
        uncache_text()  # the model is handed back with its own T5 conditioner
    return TrainResult(run.dir, start_step, step, read_jsonl(run.metrics), last_valid)
