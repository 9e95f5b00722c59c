"""Loading MusicGen through audiocraft's API, and a tiny offline model.

`load_musicgen("facebook/musicgen-small")` is audiocraft's `MusicGen.get_pretrained` (weights from the
Hugging Face hub, as in Colab). `load_musicgen("tiny")` builds a small model of the same classes, saved
in audiocraft's own checkpoint layout (state_dict.bin + compression_state_dict.bin with 'xp.cfg' and
'best_state'), so that the same loader, `MusicGen.get_pretrained(<folder>)`, reads it: tests and the
offline demo exercise the real loading path. Its text conditioner is a lookup table (no T5 download,
no spaCy model).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch


def tiny_compression_cfg() -> dict:
    """EnCodec-style codec: 32 kHz mono, 4 codebooks of 400 entries at 25 Hz (audiocraft's debug sizes)."""
    return {
        "compression_model": "encodec", "device": "cpu", "dtype": "float32",
        "encodec": {"autoencoder": "seanet", "quantizer": "rvq", "sample_rate": 32000, "channels": 1,
                    "causal": False, "renormalize": False},
        "seanet": {"dimension": 32, "channels": 1, "n_filters": 4, "n_residual_layers": 1, "ratios": [10, 8, 16],
                   "activation": "ELU", "activation_params": {"alpha": 1.0}, "norm": "weight_norm", "norm_params": {},
                   "kernel_size": 7, "last_kernel_size": 7, "residual_kernel_size": 3, "dilation_base": 2,
                   "causal": False, "pad_mode": "constant", "true_skip": True, "compress": 2, "lstm": 0,
                   "disable_norm_outer_blocks": 0, "encoder": {}, "decoder": {"trim_right_ratio": 1.0}},
        "rvq": {"n_q": 4, "q_dropout": False, "bins": 400, "decay": 0.99, "kmeans_init": True,
                "kmeans_iters": 50, "threshold_ema_dead_code": 2, "orthogonal_reg_weight": 0.0,
                "orthogonal_reg_active_codes_only": False},
    }


def tiny_lm_cfg(dim: int = 64, num_layers: int = 2, num_heads: int = 4) -> dict:
    """A MusicGen-shaped LM (delay pattern, cross-attention to the description, CFG dropout 0.3)."""
    return {
        "lm_model": "transformer_lm", "device": "cpu", "dtype": "float32",
        "dataset": {"segment_duration": 30.0},
        "transformer_lm": {"n_q": 4, "card": 400, "dim": dim, "num_heads": num_heads, "num_layers": num_layers,
                           "hidden_scale": 4, "norm": "layer_norm", "norm_first": True, "bias_ff": False,
                           "bias_attn": False, "bias_proj": False, "causal": True, "custom": False,  # memory_efficient -> packed in_proj_weight, as the real models
                          
                           "memory_efficient": True, "attention_as_float32": False, "layer_scale": None,
                           "positional_embedding": "sin", "xpos": False, "checkpointing": "none",
                           "weight_init": "gaussian", "depthwise_init": "current", "zero_bias_init": True,
                           "cross_attention": True, "dropout": 0.0, "emb_lr": None, "past_context": None},
        "codebooks_pattern": {"modeling": "delay", "delay": {"delays": [0, 1, 2, 3], "flatten_first": 0,
                                                             "empty_initial": 0}},
        "conditioners": {"description": {"model": "lut", "lut": {"n_bins": 256, "dim": dim, "tokenizer": "noop"}}},
        "fuser": {"cross_attention_pos_emb": False, "cross_attention_pos_emb_scale": 1,
                  "sum": [], "prepend": [], "cross": ["description"], "input_interpolate": []},
        "classifier_free_guidance": {"training_dropout": 0.3, "inference_coef": 3.0},
        "attribute_dropout": {},
    }


def build_tiny(folder: str | Path, seed: int = 0) -> Path:
    """Write a randomly initialised tiny MusicGen to `folder` in audiocraft's checkpoint layout."""
    from audiocraft.models import builders
    from omegaconf import OmegaConf

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    ccfg, lcfg = OmegaConf.create(tiny_compression_cfg()), OmegaConf.create(tiny_lm_cfg())
    codec = builders.get_compression_model(ccfg)
    from .codec_fit import fit_audio, fit_codebooks

    fit_codebooks(codec, fit_audio(seed=seed), seed=seed)  # codes that carry music, not noise (codec_fit.py)
    lm = builders.get_lm_model(lcfg)
    from .io import atomic_path

    # The LM's weights are stored in fp16, as in the released checkpoints (and our exports).
    lm_state = {k: v.half() if v.is_floating_point() else v for k, v in lm.state_dict().items()}
    for name, cfg, state in (("compression_state_dict.bin", ccfg, codec.state_dict()), ("state_dict.bin", lcfg, lm_state)):
        with atomic_path(folder / name) as tmp:
            torch.save({"xp.cfg": OmegaConf.to_yaml(cfg), "best_state": state}, tmp)
    return folder


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def tiny_dir() -> Path:
    return Path(os.environ.get("JPOP_TINY_MODEL_DIR", Path.home() / ".cache" / "jpop-musicgen" / "tiny-musicgen-2"))  # 2: fitted codebooks


def resolve_model_name(name: str) -> str:
    """What audiocraft's loaders take: "tiny" becomes its local folder (built on first use)."""
    if name != "tiny":
        return name
    folder = tiny_dir()
    if not (folder / "state_dict.bin").exists():
        build_tiny(folder)
    return str(folder)


def checkpoint_files(name: str) -> tuple[Path, Path]:
    """A model's audiocraft checkpoint files (LM, compression): a folder's, or the Hugging Face
    cache's (downloaded on first use), resolved as audiocraft's loaders resolve them."""
    from audiocraft.models.loaders import get_audiocraft_cache_dir
    from huggingface_hub import hf_hub_download

    name = resolve_model_name(name)
    if Path(name).is_dir():
        return Path(name) / "state_dict.bin", Path(name) / "compression_state_dict.bin"
    files = [hf_hub_download(repo_id=name, filename=f, cache_dir=get_audiocraft_cache_dir())
             for f in ("state_dict.bin", "compression_state_dict.bin")]
    return Path(files[0]), Path(files[1])


def load_musicgen(name: str, device: str | None = None):
    """audiocraft MusicGen for a pretrained name, a local folder (e.g. an export), or "tiny".

    Returns:
        audiocraft.models.MusicGen; its `.lm` is the language model we fine-tune and its
        `.compression_model` the (frozen) EnCodec.
    """
    from audiocraft.models import MusicGen

    device = device or default_device()
    model = MusicGen.get_pretrained(resolve_model_name(name), device=device)
    if device == "cpu":
        model.lm.float()
    return model


def weights_fingerprint(module: torch.nn.Module) -> str:
    """A short hash of a module's weights: different after any training step or for another model.

    Reads a strided sample of every tensor (at most 4096 values each) plus its float64 sum, so it
    costs little even for the large model.
    """
    h = hashlib.sha1()
    for name, t in sorted(module.state_dict().items()):
        flat = t.detach().flatten()
        sample = flat[:: max(1, flat.numel() // 4096)].float().cpu().numpy()
        h.update(name.encode())
        h.update(sample.tobytes())
        h.update(repr(float(flat.double().sum())).encode())
    return h.hexdigest()[:12]
