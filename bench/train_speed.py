"""Training speed: our step against an audiocraft-solver-style step, in one process on one GPU.

Same random-init model of the real architecture (MusicGen small 1024x24 / medium 1536x48 / large
2048x48, 4 x 2048 codes, delay pattern; T5-base-shaped text encoder with random weights; EnCodec
32 kHz), same clips (30 s), same captions:

  baseline  what audiocraft's MusicGen solver does per step: EnCodec-encode the audio, run T5 on the
            captions, fp16 autocast + GradScaler, torch's default (unfused) AdamW, loss and gradient
            norm read on the host every step
  ours      jpop_helpers' loop step: cached tokens and cached T5 outputs (conditions.py), bf16 autocast
            where native (fp16 + scaler on a T4), fused AdamW, non-finite steps skipped on the device
            (optim.step_if_finite), nothing read on the host, fused SDPA kernels only
            (train.attention_kernels); `+compile`: each layer torch.compile'd (train.compile_layers)

One table: clips/s, peak memory, model FLOP utilisation (MFU: 6 x matmul weights x tokens + causal
attention, LoRA 4 x for frozen weights, over the GPU's dense bf16/fp16 peak), ratio ours/baseline.
Also recorded: which SDPA kernels the step ran (profiler op names), the LoRA packed-projection adapter
(lora.LoraDelta on in_proj_weight) against adapters on the Linears only, and the measured peaks of
full / LoRA runs with and without activation checkpointing beside jpop_helpers.plan's estimate (the
numbers plan.py's ACT_BYTES / CKPT_BYTES and its medium/large terms are calibrated from). Peaks are
of the training steps (optimizer state included): the model's build before them is not counted,
as the plan does not count it (a LoRA run's base built in fp32 and then halved would otherwise be the peak).

--t4: a T4 stand-in for the README's "Running on a free Colab T4" table (jpop_helpers.plan.plan_table:
every size and mode, 30-s clips, batch 2, the default optimizer, activation checkpointing off and on).
What a T4 run does differently is forced: fp16 autocast with loss scaling (no native bf16), SDPA's
memory-efficient kernel only (a T4, sm75, has no flash or cuDNN attention; the loop never allows the
math one), and PyTorch's allocator capped at the T4's 14.7 GiB
(torch.cuda.set_per_process_memory_fraction). Each row gives the measured peak and whether it ran
under the cap, beside the plan's estimate and verdict. On CPU the same code runs with the cap and the
kernel choice as no-ops. What it does not reproduce is stated in the JSON (T4_NOT_REPRODUCED).

    python bench/train_speed.py --out bench/results/train_speed_<gpu>.json   # GPU, < 3 min on an H200
    python bench/train_speed.py --t4 --out bench/results/t4_standin_<gpu>.json
    python bench/train_speed.py --tiny --device cpu                            # CPU smoke (tests)
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(Path(__file__).parent)]

from train_gpu import ARCH, real_codec_cfg, real_lm_cfg  # noqa: E402

ROW_GROUPS = ("ratio", "sizes", "peaks", "compile")  # --rows: what bench/gpu_all.sh runs in which step
T4_NOT_REPRODUCED = [
    "speed: this GPU's fp16 tensor cores and memory are many times a T4's (65 TFLOP/s, 320 GB/s): clips/s and "
    "step times here say nothing about a T4",
    "kernels: the same SDPA backend (memory-efficient) and dtypes, so the same tensors, but this GPU's builds of "
    "the kernels and of cuBLAS, whose workspaces (taken from PyTorch's allocator) differ from sm75's by MiB",
    "the CUDA context (a few hundred MiB on a T4) lies outside PyTorch's allocator and is not under the cap: a "
    "peak within ~0.6 GiB of the cap (plan.OVERHEAD_GIB) may still fail on a real T4",
    "the host: Colab's ~12 GiB of RAM and 2 CPU cores (loading the model, the data loader) are not modelled",
    "bitsandbytes' 8-bit AdamW runs its sm90 kernels; its state has the same size on a T4",
]
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L4": 121.0, "A10": 125.0, "T4": 65.0, "V100": 125.0}
CAPTIONS = ["Upbeat j-pop song with bright synths and piano, 128 bpm.", "Calm ballad with strings, key of A minor.",
            "City pop track featuring electric guitar, bass and drums, nostalgic mood.",
            "Energetic anime opening theme, female vocals, fast tempo at 170 BPM."]


def peak_flops(device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(0)
    return next((v * 1e12 for k, v in PEAK_TFLOPS.items() if k in name), None)


def step_flops(dim: int, layers: int, frames: int, batch: int, mode: str, n_q: int = 4, card: int = 2048) -> float:
    """Model FLOPs of one training step (forward + backward; recomputation not counted).

    Per layer and token: 12 d^2 weights in matmuls (q/k/v/out 4 d^2, cross-attention q/out 2 d^2 + its
    k/v on the few text tokens, feed-forward 8 d^2), x 2 FLOPs a multiply-add; the heads 4 x d x card.
    Backward is 2x forward for trained weights, 1x (input gradients only) for frozen ones (LoRA).
    Causal self-attention: 2 x 2 x T^2 x d / 2 per layer forward.
    """
    matmul = layers * 14 * dim * dim + n_q * dim * card  # (12 + cross-attention's q/out 2) d^2
    fwd = 2 * matmul * frames + layers * 2 * frames * frames * dim
    back = (2 if mode == "full" else 1) * 2 * matmul * frames + 2 * layers * 2 * frames * frames * dim
    return batch * (fwd + back)


# ---------------------------------------------------------------- models
def t5_conditioner(output_dim: int, device: str, tmp: Path, num_layers: int | None = None):
    """audiocraft's T5Conditioner over a t5-base-shaped encoder with random weights (the real ones
    cannot be downloaded here), loaded from an offline Hugging Face cache built in `tmp`; `num_layers`
    fewer than t5-base's 12 for a quick CPU run."""
    import os

    sys.path.insert(0, str(REPO / "tests"))
    from hub_standin import build_t5  # noqa: E402

    cache = tmp / "hf"
    cache.mkdir(exist_ok=True)
    build_t5(cache, num_layers=num_layers)
    from huggingface_hub import constants

    os.environ.update(HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    constants.HF_HUB_CACHE, constants.HF_HUB_OFFLINE = str(cache), True
    from audiocraft.modules.conditioners import T5Conditioner

    return T5Conditioner("t5-base", output_dim=output_dim, finetune=False, device=device, word_dropout=0.0)


def build(size: str, device: str, t5):
    """(lm, codec) on `device`; the LM's description conditioner is `t5` when given."""
    from audiocraft.models import builders
    from omegaconf import OmegaConf

    if size == "tiny":
        from jpop_helpers.model import load_musicgen

        m = load_musicgen("tiny", device)
        lm, codec = m.lm, m.compression_model
    else:
        torch.manual_seed(0)
        lm = builders.get_lm_model(OmegaConf.create({**real_lm_cfg(size), "device": device}))
        codec = builders.get_compression_model(OmegaConf.create({**real_codec_cfg(), "device": device}))
    if t5 is not None:
        t5.output_proj, t5.output_dim = torch.nn.Linear(t5.dim, lm.dim).to(device), lm.dim
        lm.condition_provider.conditioners["description"] = t5
    return lm, codec.eval()


# ---------------------------------------------------------------- one variant
def t4_kernels(device: str):
    """The attention a T4 runs in the loop: of train.attention_kernels' fused kernels (flash,
    memory-efficient, cuDNN) an sm75 GPU has only the memory-efficient one. Nothing to choose on the CPU."""
    if not device.startswith("cuda"):
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION])


def run_variant(size, mode, variant, batch, steps, warmup, device, seconds, t5=None, act_ckpt=False,
                lora_targets=None, profile=False, t4=False) -> dict:
    """Time `steps` steps after `warmup` of one variant; peak memory of those steps.

    t4: as a T4 runs the loop: fp16 with loss scaling, the memory-efficient attention kernel only, and
    the loop's default optimizer (8-bit AdamW for full fine-tuning).
    """
    from audiocraft.modules.conditioners import ConditioningAttributes

    from jpop_helpers.conditions import use_cached_text
    from jpop_helpers.lora import LoraConfig
    from jpop_helpers.loss import LMLoss
    from jpop_helpers.optim import make_optimizer, step_if_finite
    from jpop_helpers.precision import choose_precision
    from jpop_helpers.train import TrainConfig, attention_kernels, compile_layers, setup_trainable

    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.empty_cache()
    lm, codec = build(size, device, t5)
    baseline = variant == "baseline"
    if t4:
        dtype = torch.float16  # choose_precision("auto") on a T4 (compute capability 7.5: no native bf16)
    else:
        dtype = torch.float32 if not cuda else (torch.float16 if baseline else choose_precision("auto", device))
    texts = [CAPTIONS[i % len(CAPTIONS)] for i in range(batch)]
    restore = use_cached_text(lm, CAPTIONS, folder=None) if not baseline else (lambda: None)
    if act_ckpt:
        lm.transformer.checkpointing = "torch"
    lora = LoraConfig() if lora_targets is None else LoraConfig(target_parameters=lora_targets)
    config = TrainConfig(mode=mode, lora=lora)
    lm, params = setup_trainable(lm, config, device, dtype)  # the loop's own choice
    lm.train()
    if variant.endswith("+compile"):
        compile_layers(lm)
    step_module = LMLoss(lm)
    if cuda:  # from here on, what plan.estimate counts: the built model, optimizer state, the steps
        torch.cuda.reset_peak_memory_stats()
    opt = (torch.optim.AdamW(params, lr=1e-5, betas=(0.9, 0.95), foreach=True) if baseline
           else make_optimizer(params, config.resolved_optimizer() if t4 else "adamw", 1e-5, 0.01))
    scaler = torch.amp.GradScaler(device.split(":")[0], enabled=dtype == torch.float16)
    frame_rate = 50 if size != "tiny" else 25
    frames = int(seconds * frame_rate)
    torch.manual_seed(1)
    audio = torch.randn(batch, 1, int(seconds * 32000), device=device) * 0.1
    codes = torch.randint(lm.card, (batch, 4, frames), device=device)
    valid = torch.ones_like(codes, dtype=torch.bool)
    attrs = [ConditioningAttributes(text={"description": t}) for t in texts]
    autocast = dict(device_type=device.split(":")[0], dtype=dtype, enabled=dtype != torch.float32)
    kernels = contextlib.nullcontext if baseline else (lambda: (t4_kernels if t4 else attention_kernels)(device))
    encodes, t0, sdpa_ops = 0, None, {}
    prof = None
    for i in range(warmup + steps):
        if i == warmup:
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        if profile and i == warmup - 1:
            prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]).__enter__()
        if baseline:  # the solver encodes the audio every step
            with torch.no_grad():
                codes, _ = codec.encode(audio)
            encodes += 1
        with torch.autocast(**autocast), kernels():
            ce, _, _ = step_module(codes, valid, attrs)
        scaler.scale(ce).backward()
        scaler.unscale_(opt)
        norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        if baseline:
            float(ce), float(norm)  # the solver's per-step host reads (metrics, skip decision)
            scaler.step(opt)
        else:
            step_if_finite(opt, torch.isfinite(norm) & torch.isfinite(ce.detach()))
        scaler.update()
        opt.zero_grad(set_to_none=True)
        if prof is not None and i == warmup - 1:
            prof.__exit__(None, None, None)
            sdpa_ops = {e.key: e.count for e in prof.key_averages() if "scaled_dot_product" in e.key}
            prof = None
    if cuda:
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    dim, layers = lm.dim, len(lm.transformer.layers)
    restore()
    out = {"size": size, "mode": mode, "variant": variant, "batch": batch, "seconds_per_clip": seconds,
           "precision": str(dtype).replace("torch.", ""), "activation_checkpointing": act_ckpt,
           "optimizer": "torch AdamW (foreach)" if baseline else (config.resolved_optimizer() if t4 else "adamw"),
           "clips_per_s": round(batch * steps / dt, 3), "step_ms": round(1000 * dt / steps, 2),
           "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3) if cuda else None, "encodes": encodes}
    peak = peak_flops(device)
    if peak:
        out["mfu"] = round(step_flops(dim, layers, frames, batch, mode) * steps / dt / peak, 4)
    if sdpa_ops:
        out["sdpa_ops"] = sdpa_ops
    if lora_targets is not None:
        out["lora_target_parameters"] = lora_targets
    del lm, codec, opt, step_module
    return out


def plan_for(size: str, mode: str, batch: int, seconds: float, act_ckpt: bool, text_encoder: str,
             optimizer: str = "adamw"):
    """jpop_helpers.plan's MemoryPlan for the same run, against a T4 (the README table's archs; the tiny
    model's from its stored config)."""
    from jpop_helpers.plan import PUBLISHED, T4_GIB, estimate, read_arch

    arch = read_arch("tiny") if size == "tiny" else PUBLISHED[size]
    return estimate(arch, mode, batch, seconds, optimizer, act_ckpt, capacity=T4_GIB, text_encoder=text_encoder)


def table(rows: list[dict]) -> str:
    cols = ["size", "mode", "variant", "batch", "activation_checkpointing", "clips_per_s", "step_ms", "peak_gib",
            "plan_gib", "mfu", "ours_vs_baseline", "plan_fits_t4", "fits_under_cap"]
    lines = [" | ".join(cols), " | ".join("---" for _ in cols)]
    for r in rows:
        lines.append(" | ".join("" if r.get(c) is None else str(r.get(c)) for c in cols))
    return "\n".join(lines)


def comparison_jobs(a) -> list[dict]:
    """The timed comparisons and calibration peaks, in order of value; each job tagged with its --rows group."""
    sized = (lambda size: "tiny") if a.tiny else (lambda size: size)  # --tiny: every row, on the tiny model
    small = sized("small")
    timed, peak_only = dict(steps=a.steps, warmup=a.warmup), dict(steps=1, warmup=1)  # peak memory needs one step
    jobs = [dict(group="ratio", size=small, mode="full", variant="baseline", batch=a.batch, **timed),
            dict(group="ratio", size=small, mode="full", variant="ours", batch=a.batch, profile=True, **timed)]
    # LoRA: the packed q/k/v adapter (lora.LoraDelta on in_proj_weight) against adapters on the Linears only
    jobs += [dict(group="ratio", size=small, mode="lora", variant="ours", batch=a.batch, **timed),
             dict(group="ratio", size=small, mode="lora", variant="ours, no in_proj adapter", batch=a.batch,
                  lora_targets=[], **timed)]
    jobs += [dict(group="sizes", size=sized(size), mode="lora", variant="ours", batch=2, **timed)
             for size in ("medium", "large")]
    # plan.py's calibration: peaks with activation checkpointing off/on, medium/large full
    jobs += [dict(group="peaks", size=sized(size), mode=mode, variant="ours", batch=2, act_ckpt=act, **peak_only)
             for size, mode, act in [("small", "full", False), ("small", "full", True), ("small", "lora", False),
                                     ("medium", "lora", True), ("large", "lora", True),
                                     ("medium", "full", True), ("large", "full", True)]]
    if not a.no_compile:  # last: compiling takes the longest, and every row before is kept
        jobs.append(dict(group="compile", size=small, mode="full", variant="ours+compile", batch=a.batch, **timed))
    jobs = [j for group in a.rows for j in jobs if j["group"] == group]  # in the order --rows names them
    if a.tiny:  # the sizes all map to the tiny model: run each distinct row once
        jobs = list({json.dumps(j, sort_keys=True): j for j in jobs}.values())
    return jobs


def t4_jobs(a) -> list[dict]:
    """The README T4 table's rows (plan.plan_table: batch 2, checkpointing off and on), small first."""
    sizes = ["tiny"] if a.tiny else ["small", "medium", "large"]
    return [dict(group="t4", size=size, mode=mode, variant="ours", batch=2, act_ckpt=act, steps=1, warmup=1, t4=True)
            for size in sizes for mode in ("full", "lora") for act in (False, True)]


def become_t4(device: str) -> float | None:
    """Make this process's GPU a T4 where it matters for memory: PyTorch's allocator capped at a T4's
    memory, and no flash or cuDNN attention anywhere (a T4 has neither; t4_kernels covers the forward,
    this also the recomputation that activation checkpointing runs in backward, outside the forward's
    context). Returns the cap in GiB; None on the CPU (no cap, nothing to choose)."""
    if not device.startswith("cuda"):
        return None
    from jpop_helpers.plan import GIB, T4_GIB

    total = torch.cuda.get_device_properties(torch.device(device)).total_memory
    torch.cuda.set_per_process_memory_fraction(T4_GIB * GIB / total, torch.device(device))
    torch.backends.cuda.enable_flash_sdp(False)
    torch.backends.cuda.enable_cudnn_sdp(False)
    return T4_GIB


def run_job(job: dict, a, t5, cap: float | None) -> dict:
    """One row: measured (or the error it raised: an OOM is a result too), beside the plan's estimate."""
    # ours keeps T5 off the GPU (its outputs are cached): no text-encoder term in its plan
    t4 = job.get("t4", False)
    text_encoder = "live" if t5 is not None and job["variant"] == "baseline" else "cached"
    plan = plan_for(job["size"], job["mode"], job["batch"], a.seconds, job.get("act_ckpt", False), text_encoder,
                    "adamw8bit" if t4 and job["mode"] == "full" else "adamw")
    static = plan.weights + plan.gradients + plan.optimizer_state + plan.text_encoder
    if t4 and cap is not None and static > cap:
        r = {k: job.get(k) for k in ("size", "mode", "variant", "batch")}
        r["skipped"] = f"weights, gradients and optimizer state alone are {static:.1f} GiB, over the {cap} GiB cap"
    else:
        try:
            r = run_variant(device=a.device, seconds=a.seconds, t5=t5, **{k: v for k, v in job.items() if k != "group"})
        except Exception as e:  # an OOM or a compile failure is a result too; the rest still runs
            r = {k: job.get(k) for k in ("size", "mode", "variant", "batch")}
            r["error"] = f"{type(e).__name__}: {str(e)[:300]}"
            if a.device.startswith("cuda"):
                torch.cuda.empty_cache()
    r.setdefault("activation_checkpointing", job.get("act_ckpt", False))
    r["plan_gib"] = round(plan.allocated, 3)
    if t4:
        r["plan_total_gib"], r["plan_fits_t4"] = round(plan.total, 2), plan.fits  # the README table's cells
        if cap is not None and "clips_per_s" in r:
            r["fits_under_cap"] = r["peak_gib"] <= cap
        elif cap is not None and "OutOfMemoryError" in r.get("error", ""):
            r["fits_under_cap"] = False
        else:  # no cap (CPU), not run, or another error: no verdict
            r["fits_under_cap"] = None
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="the tiny model only (CPU smoke test)")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--batch", type=int, default=8, help="batch of the small comparison")
    ap.add_argument("--rows", nargs="+", choices=ROW_GROUPS, default=list(ROW_GROUPS),
                    help="which rows, in this order: ratio: small's comparison and LoRA; sizes: medium/large "
                         "LoRA; peaks: plan.py's calibration; compile: the torch.compile variant")
    ap.add_argument("--t4", action="store_true", help="the T4 stand-in rows instead (see the docstring)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    ap.add_argument("--no-t5", action="store_true", help="a lookup-table text conditioner instead of T5")
    ap.add_argument("--out", default=None, help="write the JSON here (bench/results/... when asked)")
    a = ap.parse_args()

    if a.tiny:  # the compile row checks the code path: inductor's CPU build takes minutes (as tests/test_train.py)
        import jpop_helpers.train

        jpop_helpers.train.COMPILE_BACKEND = "eager"
    jobs = t4_jobs(a) if a.t4 else comparison_jobs(a)
    cap = become_t4(a.device) if a.t4 else None
    rows = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        t5 = None
        if not a.no_t5:  # one layer on the tiny model: the same code path, quickly
            t5 = t5_conditioner(ARCH["small"][0], a.device, Path(tmp), num_layers=1 if a.tiny else None)
        for job in jobs:
            rows.append(run_job(job, a, t5, cap))
            print(json.dumps(rows[-1]), flush=True)
            report = summarise(rows, a.device, started)
            if a.t4:
                report["t4_standin"] = {
                    "cap_gib": cap, "precision": "float16", "not_reproduced": T4_NOT_REPRODUCED,
                    "attention": "memory-efficient SDPA" if cap else "the CPU's (no choice there)",
                    "text_encoder": "cached (the loop's default); the README table counts T5 on the GPU: "
                                    "4 bytes x t5-base's 109.6 M parameters (0.41 GiB) more"}
            if a.out:  # after every row: a run cut short by its time limit still leaves its results
                Path(a.out).parent.mkdir(parents=True, exist_ok=True)
                Path(a.out).write_text(json.dumps(report, indent=2) + "\n")
    print(table(rows))


def summarise(rows: list[dict], device: str, started: float) -> dict:
    """The JSON report: device, date, versions, and the rows with each one's ratio to the baseline."""
    import audiocraft
    import transformers

    base = {(r["size"], r["batch"]): r["clips_per_s"] for r in rows if r["variant"] == "baseline" and "clips_per_s" in r}
    for r in rows:
        if r["variant"] != "baseline" and (r["size"], r["batch"]) in base and "clips_per_s" in r:
            r["ours_vs_baseline"] = round(r["clips_per_s"] / base[(r["size"], r["batch"])], 2)
    return {"device": torch.cuda.get_device_name(0) if device.startswith("cuda") else f"cpu ({platform.machine()})",
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "versions": {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
                         "audiocraft": audiocraft.__version__, "transformers": transformers.__version__},
            "peak_tflops": (peak_flops(device) or 0) / 1e12 or None, "wall_s": round(time.perf_counter() - started, 1),
            "results": rows}


if __name__ == "__main__":
    main()
