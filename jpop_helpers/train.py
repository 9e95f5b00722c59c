"""One explicit training loop for full and LoRA fine-tuning of MusicGen's language model.

The two modes differ only in which parameters train (all LM weights, or LoRA adapters injected with
peft on out_proj / linear1 / linear2 and the packed attention in_proj_weight) and in what a checkpoint
stores. EnCodec and the text encoder stay frozen; audio is read as cached tokens (tokens.py).

Per step: pick a batch (a pure function of the step, so resuming needs only the step number), drop
the description with probability `cfg_dropout` (classifier-free guidance, as MusicGen trains), compute
the per-codebook masked cross-entropy exactly as audiocraft's solver does, accumulate, unscale, clip,
step, schedule. Validation CE/PPL on the valid split every `eval_every` steps; checkpoints every
`save_every` steps and at the end; metrics as JSON lines.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from .checkpoint import load_latest, rng_state, save_checkpoint, set_rng_state
from .colab import progress
from .io import append_jsonl, read_json, read_jsonl, write_json, write_jsonl
from .tokens import TokenItem

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    model: str = "facebook/musicgen-small"  # a pretrained name, a local folder, or "tiny"
    mode: str = "full"  # "full" | "lora"
    steps: int = 1000  # optimizer steps
    batch_size: int = 2  # clips per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float | None = None  # default: 1e-5 full, 1e-4 LoRA
    weight_decay: float = 0.01
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1  # cosine decays to lr * this
    max_grad_norm: float = 1.0
    precision: str = "auto"  # auto (bf16 if supported, else fp16 on GPU; fp32 on CPU) | fp32 | fp16 | bf16
    cfg_dropout: float = 0.3  # probability of training a clip without its description
    activation_checkpointing: bool = False  # audiocraft's checkpointing="torch" on every layer
    optimizer: str = "adamw"  # "adamw" | "adamw8bit" (bitsandbytes)
    lora_rank: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=lambda: ["out_proj", "linear1", "linear2"])
    lora_target_parameters: list[str] = field(default_factory=lambda: ["in_proj_weight"])
    eval_every: int = 100
    max_eval_batches: int | None = None  # None: the whole valid split
    save_every: int = 100
    keep_last: int = 2
    log_every: int = 10
    seed: int = 0

    def resolved_lr(self) -> float:
        return self.lr if self.lr is not None else (1e-4 if self.mode == "lora" else 1e-5)


# ---------------------------------------------------------------- loss (shared with evaluation)
def codebook_ce(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Masked cross-entropy per codebook, as audiocraft's MusicGen solver computes it.

    Args:
        logits: [B, K, T, card]; NaN at positions the delay pattern leaves invalid (masked out here).
        targets: [B, K, T] codes.
        mask: [B, K, T] bool, True where the target is a real, valid token.
    Returns:
        ce: scalar, mean over codebooks of each codebook's mean CE (the training loss);
        ce_sum: [K] summed CE per codebook (float64, detached), for exact aggregation over batches;
        n_tokens: [K] number of valid tokens per codebook.
    """
    K = targets.shape[1]
    ce = logits.new_zeros((), dtype=torch.float32)
    sums, counts = [], []
    for k in range(K):
        m = mask[:, k]
        lk = logits[:, k][m].float()  # [N, card]: select first, so NaN logits never reach the loss
        tk = targets[:, k][m].long()
        q_sum = F.cross_entropy(lk, tk, reduction="sum")
        n = tk.numel()
        ce = ce + q_sum / max(n, 1)
        sums.append(q_sum.detach().double())
        counts.append(n)
    return ce / K, torch.stack(sums), torch.tensor(counts, dtype=torch.long)


class LMLoss(torch.nn.Module):
    """One forward pass and its loss as a module, so DistributedDataParallel can wrap it (the LM is
    otherwise driven through condition_provider / compute_predictions, which DDP would not see)."""

    def __init__(self, lm: torch.nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, codes: torch.Tensor, pad: torch.Tensor, attrs: list):
        """codes, pad: [B, K, T]. Returns codebook_ce's (ce, ce_sum [K], n_tokens [K])."""
        cond = self.lm.condition_provider(self.lm.condition_provider.tokenize(attrs))
        out = self.lm.compute_predictions(codes, [], cond)
        return codebook_ce(out.logits, codes, pad & out.mask)


# ---------------------------------------------------------------- distributed (torchrun)
def dist_info() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) otherwise."""
    import os

    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def init_distributed(device: str) -> str:
    """Join the process group when launched by torchrun; returns this process's device."""
    import torch.distributed as dist

    rank, world, local = dist_info()
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    if world > 1 and device.startswith("cuda"):
        torch.cuda.set_device(local)
        return f"cuda:{local}"
    return device


# ---------------------------------------------------------------- data
def batch_indices(step_micro: int, n_items: int, batch_size: int, seed: int) -> list[int]:
    """Indices of micro-batch number `step_micro`: a seeded permutation per epoch, last partial batch
    dropped. A pure function, so a resumed run sees exactly the batches the uninterrupted one would."""
    per_epoch = max(n_items // batch_size, 1)
    epoch, j = divmod(step_micro, per_epoch)
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n_items, generator=g).tolist()
    return perm[j * batch_size : (j + 1) * batch_size] if n_items >= batch_size else perm


def collate(items: list[TokenItem], texts: list[str | None], device) -> tuple[torch.Tensor, torch.Tensor, list]:
    """codes [B, K, T] long, padding mask [B, K, T] bool, ConditioningAttributes list."""
    from audiocraft.modules.conditioners import ConditioningAttributes

    codes = torch.stack([it.codes.long() for it in items]).to(device)
    mask = torch.zeros_like(codes, dtype=torch.bool)
    for i, it in enumerate(items):
        mask[i, :, : it.valid_frames] = True
    attrs = [ConditioningAttributes(text={"description": t}) for t in texts]
    return codes, mask, attrs


def step_texts(items: list[TokenItem], step_micro: int, seed: int, cfg_dropout: float) -> list[str | None]:
    """One caption variant per clip, or None (dropped for classifier-free guidance), seeded by step."""
    g = torch.Generator().manual_seed(seed * 7919 + step_micro)
    out = []
    for it in items:
        pick = int(torch.randint(len(it.descriptions), (1,), generator=g))
        drop = float(torch.rand((), generator=g)) < cfg_dropout
        out.append(None if drop else it.descriptions[pick])
    return out


# ---------------------------------------------------------------- model setup
def choose_precision(config: TrainConfig, device: str) -> torch.dtype:
    if config.precision != "auto":
        return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[config.precision]
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16  # T4: fp16
    return torch.float32


def add_lora(lm: torch.nn.Module, config: TrainConfig):
    """Wrap the LM in a peft LoRA model; only adapter weights train.

    audiocraft's attention keeps q/k/v in one packed `in_proj_weight` used through F.linear (no
    nn.Linear to wrap, the reason LoRA was judged infeasible); peft's `target_parameters` adapts that
    parameter directly. Attribute access (condition_provider, compute_predictions) passes through.
    """
    import peft

    lora = peft.LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                           target_modules=list(config.lora_targets),
                           target_parameters=list(config.lora_target_parameters) or None)
    return peft.get_peft_model(lm, lora)


def setup_trainable(lm: torch.nn.Module, config: TrainConfig, device: str, dtype: torch.dtype):
    """Choose what trains. Full: every LM weight, in fp32 (master weights for mixed precision). LoRA:
    the frozen base stays in half precision on a GPU (large is 12.4 GiB of weights in fp32, 6.2 in
    half) and only the adapters, in fp32, train.

    Returns:
        the module to train (the LM, or its peft wrapper) and the list of trainable parameters.
    """
    if config.mode == "full":
        lm = lm.float()
        for name, p in lm.named_parameters():
            # The text encoder (T5 in the real models) stays frozen; its output projection trains.
            p.requires_grad = ".t5." not in name
    elif config.mode == "lora":
        half = dtype if dtype in (torch.float16, torch.bfloat16) else torch.float32
        lm = add_lora(lm.to(half) if device.startswith("cuda") else lm.float(), config)
        for p in lm.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    else:
        raise ValueError(f"mode must be 'full' or 'lora', not {config.mode!r}")
    return lm, [p for p in lm.parameters() if p.requires_grad]


def trainable_state(lm: torch.nn.Module, mode: str) -> dict:
    """What a checkpoint stores of the model: every LM weight (full) or only the adapters (LoRA)."""
    if mode == "lora":
        import peft

        return peft.get_peft_model_state_dict(lm)
    return lm.state_dict()


def load_trainable_state(lm: torch.nn.Module, mode: str, state: dict) -> None:
    if mode == "lora":
        import peft

        result = peft.set_peft_model_state_dict(lm, state)
        if getattr(result, "unexpected_keys", None):
            raise RuntimeError(f"adapter keys do not match this model: {result.unexpected_keys[:3]}")
    else:
        lm.load_state_dict(state)


def make_optimizer(params, config: TrainConfig):
    if config.optimizer == "adamw8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, lr=config.resolved_lr(), weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.resolved_lr(), weight_decay=config.weight_decay, betas=(0.9, 0.95))


def lr_lambda(config: TrainConfig):
    """Linear warm-up, then cosine decay to min_lr_ratio, as a LambdaLR multiplier."""
    def f(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        t = (step - config.warmup_steps) / max(config.steps - config.warmup_steps, 1)
        return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    return f


# ---------------------------------------------------------------- evaluation (also used by stage 05)
@torch.no_grad()
def evaluate_ce(lm, items: list[TokenItem], batch_size: int, device: str, dtype: torch.dtype = torch.float32,
                max_batches: int | None = None) -> dict:
    """CE and perplexity over a split, with each clip's first description (no CFG dropout).

    Returns:
        {"ce": mean over codebooks of per-codebook mean CE, "ppl": exp(ce), "ce_q1".."ce_qK",
         "tokens": valid tokens per codebook}
    """
    was_training = lm.training
    lm.eval()
    sums, counts = None, None
    n_batches = math.ceil(len(items) / batch_size)
    for b in range(n_batches if max_batches is None else min(n_batches, max_batches)):
        batch = items[b * batch_size : (b + 1) * batch_size]
        codes, pad, attrs = collate(batch, [it.descriptions[0] for it in batch], device)
        with torch.autocast(device_type=device.split(":")[0], dtype=dtype, enabled=dtype != torch.float32):
            cond = lm.condition_provider(lm.condition_provider.tokenize(attrs))
            out = lm.compute_predictions(codes, [], cond)
        _, s, c = codebook_ce(out.logits, codes, pad & out.mask)
        sums = s if sums is None else sums + s
        counts = c if counts is None else counts + c
    lm.train(was_training)
    per_q = (sums / counts.clamp(min=1)).tolist()
    ce = sum(per_q) / len(per_q)
    return {"ce": ce, "ppl": math.exp(ce), **{f"ce_q{k + 1}": v for k, v in enumerate(per_q)},
            "tokens": int(counts[0])}


# ---------------------------------------------------------------- the loop
@dataclass
class TrainResult:
    run_dir: Path
    step: int
    metrics: list[dict]
    final_valid: dict | None


def train(config: TrainConfig, run_dir: str | Path, train_items: list[TokenItem], valid_items: list[TokenItem],
          model=None, device: str | None = None, stop_after: int | None = None,
          callback: Callable[[list[dict]], None] | None = None) -> TrainResult:
    """Train (or resume) a run in `run_dir`.

    Args:
        model: an audiocraft MusicGen whose `.lm` is trained in place (loaded from config.model if None).
        stop_after: stop after this many optimizer steps in this call (simulates a disconnect in tests).
        callback: called with all metric rows so far after each log and validation (live plots).
    Raises:
        ValueError: the run folder holds a run with a different mode or model.
    """
    from .model import default_device, load_musicgen

    import torch.distributed as dist

    if config.mode not in ("full", "lora"):
        raise ValueError(f"mode must be 'full' or 'lora', not {config.mode!r}")
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    device = init_distributed(device or default_device())
    rank, world, _ = dist_info()
    main_process = rank == 0
    cfg_path = run_dir / "config.json"
    if cfg_path.exists():
        saved = read_json(cfg_path)
        for k in ("mode", "model"):
            if saved.get(k) != getattr(config, k):
                raise ValueError(f"{run_dir} holds a run with {k}={saved.get(k)!r}, not {getattr(config, k)!r}: "
                                 "use another run folder")
    run_dir.mkdir(parents=True, exist_ok=True)
    if main_process:
        write_json(cfg_path, dataclasses.asdict(config))
    if len(train_items) == 0:
        raise ValueError("no training clips")

    torch.manual_seed(config.seed)
    model = model or load_musicgen(config.model, device)
    lm = model.lm.to(device)
    model.compression_model.eval()
    dtype = choose_precision(config, device)
    if config.activation_checkpointing:
        # audiocraft's StreamingTransformer wraps every layer in torch.utils.checkpoint: activations
        # are recomputed in backward instead of stored (what lets medium/large fit a T4).
        lm.transformer.checkpointing = "torch"
    lm, params = setup_trainable(lm, config, device, dtype)
    lm.train()
    step_module = LMLoss(lm)
    if world > 1:
        # Each rank trains on its own slice of every global batch; DDP averages the gradients.
        # find_unused_parameters: with CFG dropout a batch may use no description at all.
        step_module = torch.nn.parallel.DistributedDataParallel(
            step_module, device_ids=[torch.device(device).index] if device.startswith("cuda") else None,
            find_unused_parameters=True)
    optimizer = make_optimizer(params, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config))
    scaler = torch.amp.GradScaler(device.split(":")[0], enabled=dtype == torch.float16)

    step, skipped = 0, 0
    state, path = load_latest(ckpt_dir, map_location=device)
    if state is not None:
        load_trainable_state(lm, config.mode, state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        step, skipped = state["step"], state.get("skipped_steps", 0)
        log.info("resumed %s from %s (step %d)", run_dir, path.name, step)
    metrics_path = run_dir / "metrics.jsonl"
    rows = read_jsonl(metrics_path)
    # Steps after the checkpoint we resume from will be trained again (and a run with no checkpoint
    # starts over): drop their old rows so no step is logged twice.
    kept = [r for r in rows if step and r.get("step", 0) <= step]
    if main_process and len(kept) != len(rows):
        write_jsonl(metrics_path, kept)

    def checkpoint():
        if not main_process:
            return
        save_checkpoint(ckpt_dir, step, {
            "model": trainable_state(lm, config.mode), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "rng": rng_state(),
            "step": step, "skipped_steps": skipped, "config": dataclasses.asdict(config)}, config.keep_last)

    def validate() -> dict:
        v = evaluate_ce(lm, valid_items, config.batch_size, device, dtype, config.max_eval_batches)
        row = {"step": step, "valid/ce": v["ce"], "valid/ppl": v["ppl"], "valid/tokens": v["tokens"],
               **{f"valid/{k}": v[k] for k in v if k.startswith("ce_q")}}
        append_jsonl(metrics_path, row)
        return row

    def barrier():
        if world > 1:
            dist.barrier()

    if step == 0 and valid_items and main_process:
        validate()  # the starting point of the curve
    barrier()
    last_valid = None
    end = config.steps if stop_after is None else min(config.steps, step + stop_after)
    bar = progress(total=config.steps, initial=step, desc=f"train ({config.mode})", unit="step", **({} if main_process else {"disable": True}))
    t_last, clips_since = time.perf_counter(), 0
    while step < end:
        optimizer.zero_grad(set_to_none=True)
        ce_acc, q_sums, q_counts = 0.0, 0, 0
        for micro in range(config.grad_accum):
            m = step * config.grad_accum + micro
            global_batch = batch_indices(m, len(train_items), config.batch_size * world, config.seed)
            batch = [train_items[i] for i in global_batch[rank * config.batch_size : (rank + 1) * config.batch_size]]
            codes, pad, attrs = collate(batch, step_texts(batch, m, config.seed, config.cfg_dropout), device)
            last_micro = micro == config.grad_accum - 1
            sync = step_module.no_sync() if (world > 1 and not last_micro) else contextlib.nullcontext()
            with sync:
                with torch.autocast(device_type=device.split(":")[0], dtype=dtype, enabled=dtype != torch.float32):
                    ce, s, c = step_module(codes, pad, attrs)
                scaler.scale(ce / config.grad_accum).backward()
            ce_acc += float(ce.detach()) / config.grad_accum
            q_sums, q_counts = q_sums + s, q_counts + c
            clips_since += len(batch)
        scaler.unscale_(optimizer)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm))
        scale_before = scaler.get_scale() if scaler.is_enabled() else 1.0
        scaler.step(optimizer)  # skipped by the scaler when grads hold inf/NaN (fp16 overflow)
        scaler.update()
        if scaler.is_enabled() and scaler.get_scale() < scale_before:
            skipped += 1
        scheduler.step()
        step += 1
        bar.update(1)
        if world > 1:  # log the CE of the whole global batch, not only rank 0's slice
            t = torch.tensor([ce_acc], dtype=torch.float64, device=device)
            dist.all_reduce(t)
            ce_acc = float(t) / world
        if main_process and (step % config.log_every == 0 or step == end):
            now = time.perf_counter()
            row = {"step": step, "lr": scheduler.get_last_lr()[0], "train/ce": ce_acc,
                   **{f"train/ce_q{k + 1}": float(v) for k, v in enumerate(q_sums / q_counts.clamp(min=1))},
                   "grad_norm": grad_norm, "scale": scaler.get_scale() if scaler.is_enabled() else 1.0,
                   "skipped_steps": skipped, "clips_per_s": clips_since / max(now - t_last, 1e-9)}
            if device.startswith("cuda"):
                row["gpu_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
            append_jsonl(metrics_path, row)
            bar.set_postfix(ce=f"{ce_acc:.3f}")
            t_last, clips_since = now, 0
        if valid_items and main_process and (step % config.eval_every == 0 or step == config.steps):
            last_valid = validate()
        if callback is not None and main_process and (step % config.log_every == 0 or step % config.eval_every == 0):
            callback(read_jsonl(metrics_path))
        if step % config.save_every == 0 or step == end:
            checkpoint()
            barrier()
    bar.close()
    if world > 1:
        # DDP keeps replicas identical; record that it did (0.0), so a broken setup cannot go unnoticed.
        divergence = torch.zeros((), dtype=torch.float64, device=device)
        for p in params:
            ref = p.detach().clone()
            dist.broadcast(ref, 0)
            divergence = torch.maximum(divergence, (p.detach() - ref).abs().max().double())
        dist.all_reduce(divergence, op=dist.ReduceOp.MAX)
        if main_process:
            append_jsonl(metrics_path, {"step": step, "ddp/world_size": world, "ddp/max_param_divergence": float(divergence)})
        barrier()
    return TrainResult(run_dir, step, read_jsonl(metrics_path), last_valid)


def run_training(root, run_dir, config, device=None, callback=None):
    """Encode (cached) train/valid tokens, train or resume, write curves. Returns the TrainResult."""
    import torch.distributed as dist

    from .model import default_device, load_musicgen
    from .plots import save_training_curves
    from .tokens import encode_split

    device = init_distributed(device or default_device())  # under torchrun: one process per GPU
    rank, world, _ = dist_info()
    model = load_musicgen(config.model, device)
    if world > 1 and rank > 0:
        dist.barrier()  # rank 0 fills the token cache first; the others then read it
    train_items = encode_split(model, root, "train", config.model)
    valid_items = encode_split(model, root, "valid", config.model)
    if world > 1 and rank == 0:
        dist.barrier()
    result = train(config, run_dir, train_items, valid_items, model=model, device=device, callback=callback)
    if rank == 0:
        save_training_curves(run_dir)
    return result
