"""Generation speed: our sampler against audiocraft's LMModel.generate and transformers' MusicGen, in one run.

For each MusicGen size (random-init weights of the real architectures: small 1024x24, medium 1536x48;
4 codebooks of 2048, delay pattern, gelu, pre-norm, cross-attention to the description) and batch size,
on the same device and with the same sampling (CFG 3, top-k 250, temperature 1), measures audio-seconds
generated per wall-second and peak GPU memory of
  ours         jpop_helpers.sampler.generate_tokens (batched CFG, static KV cache, CUDA-graph decode)
  audiocraft   LMModel.generate under fp16 autocast, one batched call (what MusicGen.generate runs)
  transformers MusicgenForConditionalGeneration.generate, built from its config with random weights,
               fp16 weights on a GPU (its generate also runs the T5 encoder and decodes the audio: a few
               ms of a run that takes seconds)
The text condition is a lookup table of one token per word (T5 cannot be downloaded here): the
cross-attention sees as many positions as a T5 encoding of the same description would, for audiocraft
and ours alike. Baselines may be timed on a shorter clip (--baseline-seconds) to fit a short GPU
lease: their per-step cost grows with the length, so their rate at 10 s is at most the one measured on a
shorter clip, and the ratio reported is a lower bound.

T4 estimate, from our measured per-step cost: a decode step reads the LM's fp16 weights and the filled
part of the key/value cache (bytes_per_step, counted). The measured step time minus that traffic at
this device's measured copy bandwidth is the step's fixed cost (kernel latencies, graph launch); on a T4
the step is estimated as the traffic at 240 GB/s (what copies reach on its 320 GB/s) plus 1.5x that
fixed cost (its lower clocks). An estimate from this run's measurements, not a T4 measurement.

    python bench/generate_speed.py                                  # GPU: small + medium, batch 1 and 8, 10 s
    python bench/generate_speed.py --out bench/results/generate_speed_<gpu>.json
    python bench/generate_speed.py --tiny --device cpu --seconds 0.4 --batches 1 2   # smoke (tests)
    python bench/generate_speed.py --sizes small --device cpu --seconds 1 --batches 1 # CPU ratios
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's jpop_helpers, not an installed one

ARCH = {"small": (1024, 24, 16), "medium": (1536, 48, 24), "tiny": (64, 2, 4)}
T4_COPY_GBPS = 240.0
T4_FIXED_COST_FACTOR = 1.5
DESCRIPTIONS = ["upbeat j-pop song with bright synths piano and a catchy female vocal chorus",
                "sad piano ballad with strings and soft male vocals at night",
                "energetic anime opening theme with electric guitar drums and bass",
                "calm lofi city pop with warm electric piano and a slow groove"]


def lm_cfg(size: str, device: str) -> dict:
    from jpop_helpers.model import tiny_lm_cfg

    dim, layers, heads = ARCH[size]
    cfg = tiny_lm_cfg(dim=dim, num_layers=layers, num_heads=heads)
    if size != "tiny":  # MusicGen's LM (audiocraft's config/model/lm/musicgen_lm.yaml + model_scale)
        cfg["transformer_lm"].update(card=2048, bias_proj=False, activation="gelu")
    cfg["conditioners"]["description"]["lut"].update(dim=dim, n_bins=4096)
    cfg["device"] = device
    cfg["dtype"] = "float16" if device.startswith("cuda") else "float32"  # as audiocraft loads it
    return cfg


def build_lm(size: str, device: str):
    from audiocraft.models import builders
    from omegaconf import OmegaConf

    from jpop_helpers.model import WordTokenizer

    torch.manual_seed(0)
    lm = builders.get_lm_model(OmegaConf.create(lm_cfg(size, device)))
    lm.condition_provider.conditioners["description"].tokenizer = WordTokenizer(4095)
    return lm.eval()


def build_hf(size: str, device: str):
    """transformers' MusicGen of the same decoder size, random weights (fp16 on a GPU)."""
    from transformers import EncodecConfig, MusicgenConfig, MusicgenDecoderConfig, MusicgenForConditionalGeneration, T5Config

    dim, layers, heads = ARCH[size]
    tiny = size == "tiny"
    card = 400 if tiny else 2048
    decoder = MusicgenDecoderConfig(vocab_size=card, hidden_size=dim, num_hidden_layers=layers, num_attention_heads=heads,
                                    ffn_dim=4 * dim, num_codebooks=4, pad_token_id=card, bos_token_id=card,
                                    max_position_embeddings=2048, dropout=0.0)
    text = T5Config(d_model=32, d_ff=64, num_layers=1, num_heads=2, d_kv=16, vocab_size=200) if tiny else T5Config(
        d_model=768, d_ff=3072, num_layers=12, num_heads=12, d_kv=64, vocab_size=32128)
    audio = EncodecConfig(sampling_rate=32000, audio_channels=1, codebook_size=512 if tiny else card,  # a power of 2 codebook_dim=32 if tiny else 128,
                          hidden_size=32 if tiny else 128, num_filters=4 if tiny else 64, num_lstm_layers=1 if tiny else 2,
                          upsampling_ratios=[16, 8, 10] if tiny else [8, 5, 4, 4], target_bandwidths=[2.2],
                          normalize=False, use_causal_conv=False)
    config = MusicgenConfig(text_encoder=text.to_dict(), audio_encoder=audio.to_dict(), decoder=decoder.to_dict())
    torch.manual_seed(0)
    with torch.device(device):
        model = MusicgenForConditionalGeneration(config)
    if device.startswith("cuda"):
        model = model.half()
    model.eval()
    gc = model.generation_config
    gc.decoder_start_token_id = gc.pad_token_id = gc.bos_token_id = card
    return model


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def copy_gbps(device: str) -> float:
    """Device-to-device copy bandwidth (bytes read + written per second), GB/s."""
    n = (1 << 28) if device.startswith("cuda") else (1 << 24)
    a = torch.empty(n, dtype=torch.float32, device=device)
    b = torch.empty_like(a)
    b.copy_(a)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(5):
        b.copy_(a)
    sync(device)
    return 5 * 2 * a.numel() * 4 / (time.perf_counter() - t0) / 1e9


def timed(fn, device: str):
    """(seconds, peak GiB or None) of one call."""
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    sync(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        fn()
    sync(device)
    dt = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
    return dt, peak


def run_size(size: str, device: str, batches: list[int], seconds: float, baseline_seconds: float, with_hf: bool,
             warmup_seconds: float) -> list[dict]:
    from audiocraft.modules.conditioners import ConditioningAttributes

    from jpop_helpers.sampler import SamplingParams, generate_tokens

    rate = 25 if size == "tiny" else 50  # codec frames per second
    params = SamplingParams(top_k=250, temp=1.0, cfg_coef=3.0)
    autocast = torch.autocast("cuda", dtype=torch.float16) if device.startswith("cuda") else torch.autocast("cpu", enabled=False)
    lm = build_lm(size, device)
    rows = []

    def attrs(b):
        return [ConditioningAttributes(text={"description": DESCRIPTIONS[i % len(DESCRIPTIONS)]}) for i in range(b)]

    def ours(b, secs):
        return lambda: generate_tokens(lm, attrs(b), list(range(b)), int(secs * rate), params)

    def audiocraft(b, secs):
        def go():
            with autocast:
                lm.generate(None, attrs(b), max_gen_len=int(secs * rate), use_sampling=True, temp=1.0, top_k=250,
                            cfg_coef=3.0)
        return go

    variants = [("ours", ours, seconds), ("audiocraft", audiocraft, baseline_seconds)]
    weight_bytes = 2 * sum(p.numel() for n, p in lm.named_parameters() if not n.startswith("condition_provider"))
    hf = None
    if with_hf:
        hf = build_hf(size, device)

        def transformers_(b, secs):
            g = torch.Generator().manual_seed(0)
            ids = torch.randint(2, hf.config.text_encoder.vocab_size, (b, 14), generator=g).to(device)
            mask = torch.ones_like(ids)
            return lambda: hf.generate(input_ids=ids, attention_mask=mask, do_sample=True, top_k=250, temperature=1.0,
                                       guidance_scale=3.0, max_new_tokens=int(secs * rate) + 3)
        variants.append(("transformers", transformers_, baseline_seconds))

    for name, make, secs in variants:
        try:
            make(1, warmup_seconds)()  # first-call costs (kernels, cuBLAS handles) out of the timing
            for b in batches:
                dt, peak = timed(make(b, secs), device)
                steps = int(secs * rate) + 3
                rows.append({"size": size, "variant": name, "batch": b, "audio_seconds": secs, "steps": steps,
                             "wall_s": round(dt, 3), "audio_s_per_s": round(b * secs / dt, 3),
                             "ms_per_step": round(1000 * dt / steps, 3), "peak_gib": None if peak is None else round(peak, 2)})
                if name == "ours":  # fp16 weights + on average half of the key/value cache [2b rows, 2 x layers]
                    rows[-1]["bytes_per_step"] = weight_bytes + 2 * 2 * len(lm.transformer.layers) * 2 * b * (steps / 2) * lm.dim
        except Exception as e:  # a failing variant (an OOM, the CUDA graph) is a result too; the others still run
            done = {r["batch"] for r in rows if r["variant"] == name}
            rows += [{"size": size, "variant": name, "batch": b, "error": f"{type(e).__name__}: {str(e)[:300]}"}
                     for b in batches if b not in done]
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
    return rows


def add_ratios_and_t4(rows: list[dict], device_gbps: float) -> None:
    for r in rows:
        if r["variant"] != "ours" or "error" in r:
            continue
        for base in ("audiocraft", "transformers"):
            b = [x for x in rows if x["variant"] == base and x["size"] == r["size"] and x["batch"] == r["batch"]
                 and "error" not in x]
            if b:
                r[f"x_vs_{base}"] = round(r["audio_s_per_s"] / b[0]["audio_s_per_s"], 2)
        step = r["ms_per_step"] / 1000
        fixed = max(0.0, step - r["bytes_per_step"] / (device_gbps * 1e9))
        t4_step = r["bytes_per_step"] / (T4_COPY_GBPS * 1e9) + T4_FIXED_COST_FACTOR * fixed
        r["t4_estimate_audio_s_per_s"] = round(r["batch"] * r["audio_seconds"] / (t4_step * r["steps"]), 2)


def table(rows: list[dict]) -> str:
    head = ["size", "variant", "batch", "audio_seconds", "audio_s_per_s", "ms_per_step", "peak_gib", "x_vs_audiocraft",
            "x_vs_transformers", "t4_estimate_audio_s_per_s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join("" if r.get(h) is None else str(r[h]) for h in head) + " |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--sizes", nargs="+", default=["small", "medium"], choices=list(ARCH))
    ap.add_argument("--tiny", action="store_true", help="smoke run: the tiny architecture only")
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--seconds", type=float, default=10.0, help="audio per clip, ours")
    ap.add_argument("--baseline-seconds", type=float, default=None,
                    help="audio per clip for the baselines (default: 2 s on a GPU, else --seconds)")
    ap.add_argument("--warmup-seconds", type=float, default=0.2)
    ap.add_argument("--no-transformers", action="store_true")
    ap.add_argument("--out", default=None, help="write the results as JSON here (e.g. bench/results/...)")
    a = ap.parse_args(argv)
    sizes = ["tiny"] if a.tiny else a.sizes
    baseline_seconds = a.baseline_seconds or (min(2.0, a.seconds) if a.device.startswith("cuda") else a.seconds)
    gbps = copy_gbps(a.device)
    import transformers

    import audiocraft

    device_name = torch.cuda.get_device_name() if a.device.startswith("cuda") else (platform.processor() or platform.machine())
    print(f"{device_name}, copy bandwidth {gbps:.0f} GB/s, torch {torch.__version__}")
    rows = []
    for size in sizes:
        rows += run_size(size, a.device, a.batches, a.seconds, baseline_seconds, not a.no_transformers, a.warmup_seconds)
        if a.device.startswith("cuda"):  # this size's models are gone: give their memory back
            torch.cuda.empty_cache()
        add_ratios_and_t4(rows, gbps)
        report = {"device": device_name, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  "versions": {"torch": torch.__version__, "audiocraft": audiocraft.__version__,
                               "transformers": transformers.__version__, "python": platform.python_version()},
                  "threads": torch.get_num_threads(), "copy_gbps": round(gbps, 1), "results": rows}
        if a.out:  # after every size: a run cut short by its time limit keeps the sizes done
            Path(a.out).parent.mkdir(parents=True, exist_ok=True)
            Path(a.out).write_text(json.dumps(report, indent=2) + "\n")
    print(table(rows))
    return report


if __name__ == "__main__":
    main()
