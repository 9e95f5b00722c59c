"""Plans before any GPU work: will this model, mode, batch and clip length fit the GPU, and will the
run's checkpoints fit the disk (Google Drive's 15 GB in Colab)?

The memory estimate is arithmetic on the model's real configuration (read from its checkpoint's stored
`xp.cfg`, so every MusicGen variant is covered) and the run's choices:

    static    weights: fp32 master copies + their half-precision autocast copies (full), or the frozen
              base in half precision (LoRA); gradients (full: fp32); optimizer state (AdamW: 8 bytes
              per trained weight, 8-bit AdamW: 2); the frozen T5 text encoder (fp32), unless its outputs
              are cached (TrainConfig.text_encoder="cached": T5 leaves the GPU)
    dynamic   activations kept for backward: ACT_BYTES x positions x dim x layers per clip, or with
              activation checkpointing only each layer's input plus one layer's activations. Positions
              are the clip's frames plus what the fuser prepends: a melody model's chroma (one position
              per chroma hop of the clip: 235 for 30 s) and its prepended description
    overhead  CUDA context and allocator slack (OVERHEAD_GIB)

FSDP (`parallel="fsdp"` over N GPUs) keeps 1/N of the fp32 weights, gradients and AdamW state on each
GPU, plus the layers it has gathered whole (FSDP_GATHERED_LAYERS, fp32 weights and gradients). The half
copies autocast makes are made from the gathered weights and saved for backward, so they stay whole.

ACT_BYTES is calibrated on H100 measurements (torch.cuda.max_memory_allocated, random-init weights of
the real architecture, 30-s clips) made before this project had a GPU of its own: an
audiocraft-solver-style full fine-tune of small (fp16 autocast, AdamW) peaked at 11.1 / 22.2 / 37.0
GiB at batch 2 / 8 / 16, a straight line of 1.85 GiB per clip over 7.46 GiB of weights, gradients,
AdamW state, autocast copies and T5, which the static terms here reproduce; LoRA (small, batch 2, no
checkpointing) peaked at 4.1 GiB. The checkpointing term and every medium/large figure are not
calibrated yet (bench/train_gpu.py measures them on a GPU), nor are the melody prefix and FSDP terms:
hence MARGIN. A plan is refused when estimate x (1 + MARGIN) exceeds the GPU's memory.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

GIB = 2**30
ACT_BYTES = {"full": 50.5, "lora": 38.9}  # bytes per (frame x dim x layer) of one clip kept for backward
CKPT_BYTES = 4.0  # with activation checkpointing: each layer's fp32 input, per frame x dim
LOGIT_BYTES = 10.0  # per (codebook x card x frame): fp16 logits, their fp32 copy for the loss, its grad
OVERHEAD_GIB = 0.6  # CUDA context, cuBLAS workspace, allocator slack (not in the measured peaks)
MARGIN = 0.25  # uncalibrated parts (see the module docstring)
FSDP_GATHERED_LAYERS = 2  # layers held whole at once under FSDP: the one computing and the one prefetched
T5_PREFIX_TOKENS = 64  # a prepended T5 description's positions (captions of ~15-40 words; not measured)
T5_PARAMS = {"t5-small": 35.3e6, "t5-base": 109.6e6, "t5-large": 334.9e6, "t5-3b": 1.24e9, "t5-11b": 4.76e9}


@dataclass(frozen=True)
class Arch:
    """What memory depends on in a MusicGen LM."""

    dim: int
    layers: int
    codebooks: int
    card: int
    frame_rate: float  # token frames per second of audio
    text_encoder_params: float  # frozen T5 on the GPU (0 for a lookup-table conditioner)
    cross_attention: bool = True  # False in the melody models: their conditions are all prepended
    chroma_hop_seconds: float = 0.0  # a prepended melody's chroma hop (0: no melody prefix)
    text_prefix: int = 0  # positions of a prepended description

    @property
    def lm_params(self) -> float:
        """Per layer 12 dim^2 (packed q/k/v + out, a 4x feed-forward) and 4 dim^2 more for
        cross-attention; per codebook an embedding and an output head; the text projection."""
        per_layer = (16 if self.cross_attention else 12) * self.dim**2
        return per_layer * self.layers + self.codebooks * (2 * self.card + 1) * self.dim + 768 * self.dim

    def lora_params(self, rank: int) -> float:
        """Adapters on in_proj_weight and out_proj (self, and cross when there is one), linear1 and linear2."""
        d = self.dim
        attention = (d + 3 * d) + (2 * d)  # in_proj_weight, out_proj
        return self.layers * rank * ((2 if self.cross_attention else 1) * attention + (d + 4 * d) + (4 * d + d))

    def prefix(self, clip_seconds: float) -> int:
        """Positions the fuser prepends to a clip's frames: the melody's chroma frames (audiocraft's
        ChromaExtractor: a centred STFT, 1 + samples // hop frames) and a prepended description."""
        chroma = 1 + int(clip_seconds / self.chroma_hop_seconds + 1e-9) if self.chroma_hop_seconds else 0
        return chroma + self.text_prefix


def read_arch(model_name: str) -> Arch:
    """The architecture of a pretrained name, a local folder or "tiny", from the stored configs
    (memory-mapped: the weights are not read)."""
    import torch
    from omegaconf import OmegaConf

    from .model import checkpoint_files

    lm_file, codec_file = checkpoint_files(model_name)
    lm = OmegaConf.create(torch.load(lm_file, map_location="cpu", mmap=True, weights_only=True)["xp.cfg"])
    codec = OmegaConf.create(torch.load(codec_file, map_location="cpu", mmap=True, weights_only=True)["xp.cfg"])
    t = lm.transformer_lm
    hop = 1
    for r in codec.seanet.ratios:
        hop *= r
    desc = lm.conditioners.get("description", {})
    t5 = T5_PARAMS.get(desc.get("t5", {}).get("name", ""), 0.0) if desc.get("model") == "t5" else 0.0
    fuser = lm.get("fuser") or {}
    prepend = list(fuser.get("prepend") or [])
    # audiocraft's builder turns cross-attention on whenever the fuser cross-attends a condition
    cross = bool(fuser.get("cross")) or bool(t.get("cross_attention", False))
    chroma_hop = 0.0
    melody = lm.conditioners.get("self_wav", {})
    if "self_wav" in prepend and melody.get("model") == "chroma_stem":
        c = melody.chroma_stem  # as ChromaStemConditioner builds its ChromaExtractor
        winlen = c.get("winlen") or 2 ** int(c.get("radix2_exp", 12))
        chroma_hop = (c.get("winhop") or winlen // 4) / float(c.sample_rate)
    text_prefix = (T5_PREFIX_TOKENS if desc.get("model") == "t5" else 1) if "description" in prepend else 0
    return Arch(int(t.dim), int(t.num_layers), int(t.n_q), int(t.card), codec.encodec.sample_rate / hop, t5,
                cross, chroma_hop, text_prefix)


@dataclass
class MemoryPlan:
    """A plan's numbers (GiB) and verdict."""

    mode: str
    batch_size: int
    clip_seconds: float
    optimizer: str
    activation_checkpointing: bool
    weights: float
    gradients: float
    optimizer_state: float
    text_encoder: float
    activations: float
    overhead: float
    capacity: float | None  # the GPU's memory; None on CPU
    prefix: int = 0  # positions prepended to each clip's frames (a melody model's chroma and description)
    shards: int = 1  # GPUs the weights, gradients and optimizer state are split over (FSDP)

    @property
    def allocated(self) -> float:
        """What torch.cuda.max_memory_allocated would report (the overhead is not in it)."""
        return self.total - self.overhead

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer_state + self.text_encoder + self.activations + self.overhead

    @property
    def fits(self) -> bool:
        return self.capacity is None or self.total * (1 + MARGIN) <= self.capacity

    def describe(self) -> str:
        cap = f" of {self.capacity:.1f} GiB" if self.capacity else ""
        verdict = "" if self.capacity is None else (" - fits" if self.fits else " - does NOT fit")
        return (f"memory plan: ~{self.total:.1f} GiB (+{MARGIN:.0%} margin: {self.total * (1 + MARGIN):.1f}){cap}"
                f"{verdict} [{self.mode}, batch {self.batch_size}, {self.clip_seconds:g}-s clips, {self.optimizer}, "
                f"activation checkpointing {'on' if self.activation_checkpointing else 'off'}"
                f"{f', {self.prefix} prefix positions' if self.prefix else ''}"
                f"{f', FSDP over {self.shards} GPUs' if self.shards > 1 else ''}: weights "
                f"{self.weights:.1f}, gradients {self.gradients:.1f}, optimizer {self.optimizer_state:.1f}, "
                f"T5 {self.text_encoder:.1f}, activations {self.activations:.1f}, overhead {self.overhead:.1f}]")


def estimate(arch: Arch, mode: str, batch_size: int, clip_seconds: float, optimizer: str = "adamw",
             activation_checkpointing: bool = False, lora_rank: int = 16, capacity: float | None = None,
             text_encoder: str = "live", shards: int = 1) -> MemoryPlan:
    """Peak GPU memory of one training step (GiB), as the loop in train.py runs it.

    Args:
        text_encoder: TrainConfig.text_encoder: "cached" keeps T5 off the GPU.
        shards: GPUs that FSDP splits the full model's weights, gradients and AdamW state over (1: no FSDP).
    """
    p = arch.lm_params
    frames = clip_seconds * arch.frame_rate
    prefix = arch.prefix(clip_seconds)
    if mode == "full":
        # fp32 masters (split over FSDP's shards, plus the layers gathered whole) + autocast's half copies
        # (made from the gathered weights: whole); fp32 gradients (split likewise)
        gathered = FSDP_GATHERED_LAYERS * p / arch.layers if shards > 1 else 0.0
        weights, grads = 4 * (p / shards + gathered) + 2 * p, 4 * (p / shards + gathered)
        trained = p / shards
    else:
        trained = arch.lora_params(lora_rank)
        weights, grads = 2 * p + 4 * trained, 4 * trained  # half-precision frozen base, fp32 adapters
    opt = (2 if optimizer == "adamw8bit" and mode == "full" else 8) * trained
    per_layer = (frames + prefix) * arch.dim  # the prefix runs through every layer; no logits on it
    if activation_checkpointing:
        act = (CKPT_BYTES * per_layer * arch.layers + ACT_BYTES[mode] * per_layer) * batch_size
    else:
        act = ACT_BYTES[mode] * per_layer * arch.layers * batch_size
    act += LOGIT_BYTES * arch.codebooks * arch.card * frames * batch_size
    t5 = 4 * arch.text_encoder_params if text_encoder == "live" else 0.0
    return MemoryPlan(mode, batch_size, clip_seconds, optimizer, activation_checkpointing, weights / GIB,
                      grads / GIB, opt / GIB, t5 / GIB, act / GIB, OVERHEAD_GIB, capacity, prefix, shards)


def plan_training(arch: Arch, config, clip_seconds: float, capacity: float | None,
                  world_size: int = 1) -> tuple[MemoryPlan, object]:
    """The plan for a TrainConfig, turning activation checkpointing on when that is what makes it fit.

    Args:
        world_size: GPUs the run uses (FSDP splits the model over them; DDP holds it whole on each).
    Returns:
        (plan, config to train with: the same, or with activation_checkpointing="on")
    Raises:
        MemoryError: nothing in reach of this config fits; the message says what would.
    """
    checkpointing = config.activation_checkpointing == "on"
    kw = dict(optimizer=config.resolved_optimizer(), lora_rank=config.lora.rank, capacity=capacity,
              text_encoder=config.text_encoder, shards=world_size if config.parallel == "fsdp" else 1)
    plan = estimate(arch, config.mode, config.batch_size, clip_seconds, activation_checkpointing=checkpointing, **kw)
    if plan.fits:
        return plan, config
    if config.activation_checkpointing == "auto":
        plan = estimate(arch, config.mode, config.batch_size, clip_seconds, activation_checkpointing=True, **kw)
        if plan.fits:
            return plan, replace(config, activation_checkpointing="on")
    raise MemoryError(f"{plan.describe()}. {config.model} in {config.mode} mode with batch {config.batch_size} "
                      f"cannot fit this GPU. {suggest(arch, config, clip_seconds, capacity, kw['shards'])}")


def suggest(arch: Arch, config, clip_seconds: float, capacity: float, shards: int = 1) -> str:
    """What would fit instead, best first: the same effective batch in smaller micro-batches, 8-bit
    AdamW, LoRA (notebook 04)."""
    tries = []
    for batch in sorted({config.batch_size // 2, 1} - {0}, reverse=True):
        tries.append((f"batch_size={batch} with grad_accum={config.grad_accum * config.batch_size // batch} "
                      f"(the same effective batch) and activation checkpointing", config.mode, batch, config.resolved_optimizer()))
    if config.mode == "full":
        if config.parallel != "fsdp":  # FSDP takes AdamW only
            tries.append(("optimizer='adamw8bit', batch_size=1, activation checkpointing", "full", 1, "adamw8bit"))
        tries.append((f"LoRA instead (notebook 04, --mode lora{' --parallel ddp' if config.parallel == 'fsdp' else ''}), "
                      "batch_size=1, activation checkpointing", "lora", 1, "adamw"))
    for text, mode, batch, opt in tries:
        plan = estimate(arch, mode, batch, clip_seconds, opt, True, config.lora.rank, capacity, config.text_encoder,
                        shards if mode == "full" and opt == "adamw" else 1)
        if plan.fits:
            return f"Try: {text} (~{plan.total:.1f} GiB)."
    return "Nothing in reach fits: use a GPU with more memory, or a smaller model."


def gpu_capacity(device: str) -> float | None:
    """The GPU's total memory in GiB (None on CPU)."""
    if not device.startswith("cuda"):
        return None
    import torch

    return torch.cuda.get_device_properties(torch.device(device)).total_memory / GIB


def clip_seconds_of(root: str | Path, split: str = "train") -> float:
    """The length of a split's clips (the first one's: stage 02 cuts them all alike)."""
    from .manifest import split_clips

    clips = split_clips(root, split)
    return clips[0].duration if clips else 30.0


def checkpoint_gib(arch: Arch, mode: str, optimizer: str, lora_rank: int = 16) -> float:
    """Size of one checkpoint: fp32 trained weights + optimizer state (8-bit AdamW: 2 bytes a weight)."""
    trained = arch.lm_params if mode == "full" else arch.lora_params(lora_rank)
    state = 2 if (optimizer == "adamw8bit" and mode == "full") else 8
    return (4 + state) * trained / GIB


def check_disk(run_dir: str | Path, checkpoint_size_gib: float, keep_last: int) -> str:
    """Refuse a run whose checkpoints cannot fit where they are written.

    During a save, `keep_last` old checkpoints and the new one exist together. On the Google Drive
    mount the free space is the Drive quota's, and files in Drive's Trash still count against it.

    Returns:
        a line saying what the checkpoints need and what is free.
    Raises:
        OSError: not enough free space; the message says how much is needed and how to get it.
    """
    import shutil

    from .checkpoint import checkpoint_bytes, list_checkpoints

    run_dir = Path(run_dir)
    folder = run_dir / "checkpoints"
    existing = sum(checkpoint_bytes(p) for p in list_checkpoints(folder)) / GIB
    peak = (keep_last + 1) * checkpoint_size_gib
    probe = next(p for p in (folder, run_dir, *run_dir.parents) if p.exists())
    free = shutil.disk_usage(probe).free / GIB
    line = (f"checkpoints: ~{checkpoint_size_gib:.2f} GiB each, keep_last={keep_last}: up to {peak:.2f} GiB during a "
            f"save; {free:.1f} GiB free on {probe}")
    if free + existing < peak:
        raise OSError(f"{line}: not enough. Free {peak - existing - free:.1f} GiB (on Google Drive also empty the "
                      "Trash, which counts against the quota), lower keep_last, or use LoRA (tiny checkpoints).")
    return line


T4_GIB = 14.7  # what torch reports for a Colab T4 ("15 GB")
PUBLISHED = {"small": Arch(1024, 24, 4, 2048, 50.0, 109.6e6), "medium": Arch(1536, 48, 4, 2048, 50.0, 109.6e6),
             "large": Arch(2048, 48, 4, 2048, 50.0, 109.6e6)}  # facebook/musicgen-{size}'s stored configs


def plan_table(batch_size: int = 2, clip_seconds: float = 30.0, capacity: float = T4_GIB) -> str:
    """The README's table: every size x mode at the default optimizer, with and without activation
    checkpointing, against a T4, plus each checkpoint's size."""
    rows = ["| model | mode | optimizer | no checkpointing | activation checkpointing | one checkpoint | "
            "Drive during a save (keep_last=1) |", "|---|---|---|---|---|---|---|"]
    for size, arch in PUBLISHED.items():
        for mode in ("full", "lora"):
            opt = "adamw8bit" if mode == "full" else "adamw"
            cells = []
            for ckpt in (False, True):
                p = estimate(arch, mode, batch_size, clip_seconds, opt, ckpt, capacity=capacity)
                cells.append(f"{p.total:.1f} GiB {'fits' if p.fits else 'refused'}")
            size_gib = checkpoint_gib(arch, mode, opt)
            rows.append(f"| {size} | {mode} | {opt} | {cells[0]} | {cells[1]} | {size_gib:.2f} GiB | "
                        f"{2 * size_gib:.2f} GiB |")
    return "\n".join(rows)
