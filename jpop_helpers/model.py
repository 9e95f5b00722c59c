"""Loading MusicGen through audiocraft's API, and a tiny offline model.

`load_musicgen("facebook/musicgen-small")` is audiocraft's `MusicGen.get_pretrained` (weights from the
Hugging Face hub, as in Colab). `load_musicgen("tiny")` builds a small model of the same classes, saved
in audiocraft's own checkpoint layout (state_dict.bin + compression_state_dict.bin with 'xp.cfg' and
'best_state'), so that the same loader, `MusicGen.get_pretrained(<folder>)`, reads it: tests and the
offline demo exercise the real loading path. Its text conditioner is a lookup table (no T5 download,
no spaCy model).

Two more bundled stand-ins cover the other released families, built the same way:
- "tiny-melody", like facebook/musicgen-melody: audiocraft's ChromaStemConditioner ('self_wav', the
  chroma of the vocals + other stems that Demucs separates) prepended with the description, the
  melody dropped in training with the released attribute dropout (0.5). The conditioner loads Demucs
  (`demucs.pretrained.get_model('htdemucs')`) when it is built, so the folder ships a tiny random
  HTDemucs (`demucs/`: htdemucs.yaml + <sig>.safetensors, demucs's Hugging Face format) and loading
  uses it, never the user's caches.
- "tiny-stereo", like facebook/musicgen-stereo-*: the mono codec wrapped by audiocraft's
  InterleaveStereoCompressionModel (left/right codes interleaved: 8 codebooks [L1, R1, L2, R2, ...])
  and an LM over 8 codebooks with the stereo delays [0, 0, 1, 1, 2, 2, 3, 3].

Every melody model's Demucs is loaded through `separate.load_separator` (its Hugging Face files, the
model class checked against an allowlist before demucs imports it): demucs's own `get_model` would
fall back to unpickling `.th` downloads when the hub fails.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from fractions import Fraction
from pathlib import Path

import torch

TINY_MODELS = ("tiny", "tiny-melody", "tiny-stereo")  # the bundled offline stand-ins
DEMUCS_DIR = "demucs"  # a model folder's own Demucs (tiny-melody and its exports)
# A real demucs.htdemucs.HTDemucs (released htdemucs's sources, depth and 7.8-s segment) made cheap on a
# CPU: 8 kHz audio, a 1024-point STFT, 8 channels, no DConv branches, one transformer layer.
TINY_HTDEMUCS = {"sources": ["drums", "bass", "other", "vocals"], "audio_channels": 2, "samplerate": 8000,
                 "segment": Fraction(39, 5), "channels": 8, "depth": 4, "nfft": 1024, "dconv_mode": 0,
                 "t_layers": 1, "t_heads": 2, "t_dropout": 0.02, "bottom_channels": 0, "multi_freqs": []}


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


def tiny_lm_cfg(dim: int = 64, num_layers: int = 2, num_heads: int = 4, variant: str = "tiny") -> dict:
    """A MusicGen-shaped LM (delay pattern, cross-attention to the description, CFG dropout 0.3).

    variant "tiny-melody": the melody models' conditioning (audiocraft's conditioner/chroma2music.yaml:
    chroma of the clip's stems + description, both prepended; self_wav dropped with p=0.5, CFG 0.2);
    "tiny-stereo": 8 interleaved codebooks with the stereo delays, as audiocraft's stereo grid sets them.
    """
    cfg = _tiny_lm_base_cfg(dim, num_layers, num_heads)
    if variant == "tiny-melody":
        cfg["conditioners"]["self_wav"] = {"model": "chroma_stem", "chroma_stem": {
            "sample_rate": 32000, "n_chroma": 12, "radix2_exp": 14, "argmax": True, "match_len_on_eval": False,
            "eval_wavs": None, "n_eval_wavs": 100, "cache_path": None}}
        cfg["fuser"].update(prepend=["self_wav", "description"], cross=[])
        cfg["transformer_lm"]["cross_attention"] = False
        cfg["attribute_dropout"] = {"args": {"active_on_eval": False}, "text": {}, "wav": {"self_wav": 0.5}}
        cfg["classifier_free_guidance"]["training_dropout"] = 0.2
    elif variant == "tiny-stereo":  # audiocraft/grids/musicgen/musicgen_stereo_finetune_32khz.py
        cfg["transformer_lm"]["n_q"] = 8
        cfg["codebooks_pattern"]["delay"]["delays"] = [0, 0, 1, 1, 2, 2, 3, 3]
        cfg["interleave_stereo_codebooks"] = {"use": True, "per_timestep": False}
        cfg["channels"] = 2
    elif variant != "tiny":
        raise ValueError(f"unknown tiny model {variant!r}: one of {', '.join(TINY_MODELS)}")
    return cfg


def _tiny_lm_base_cfg(dim: int, num_layers: int, num_heads: int) -> dict:
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


class WordTokenizer:
    """audiocraft's WhiteSpaceTokenizer without its spaCy model, for stand-ins with a lookup-table text
    conditioner (tests, benches): one hashed token per word, padded with 0 and masked, so descriptions of
    different lengths give conditions of different lengths (as T5's do).

    Returns (call): tokens [B, W] long, mask [B, W] int.
    """

    def __init__(self, n_bins: int):
        self.n_bins = n_bins

    def __call__(self, texts):
        from audiocraft.utils.utils import hash_trick, length_to_mask

        words = [[] if t is None else t.split() for t in texts]
        width = max(1, max(len(w) for w in words))
        tokens = torch.zeros(len(texts), width, dtype=torch.long)
        for i, w in enumerate(words):
            tokens[i, : len(w)] = torch.tensor([hash_trick(x, self.n_bins) + 1 for x in w], dtype=torch.long)
        return tokens, length_to_mask(torch.tensor([len(w) for w in words]), max_len=width).int()


# What a bundled model's folder was built by (its BUILD_FILE): a folder built by another version is
# rebuilt, so an older tiny model (e.g. with the noise-fitted codebooks) is never reused silently.
TINY_BUILD = "fitted-codebooks-1"
BUILD_FILE = "jpop_build.json"


def build_tiny(folder: str | Path, seed: int = 0, variant: str = "tiny") -> Path:
    """Write a tiny MusicGen to `folder` in audiocraft's checkpoint layout: a random LM and SEANet
    encoder/decoder, with codebooks fitted to music by codec_fit ("tiny"; the melody and stereo variants
    copy its codec), then BUILD_FILE, last.

    Args:
        variant: one of TINY_MODELS; "tiny-melody" also writes its Demucs to `folder/demucs/`.
    """
    from audiocraft.models import builders
    from omegaconf import OmegaConf

    from .io import atomic_path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    lcfg = OmegaConf.create(tiny_lm_cfg(variant=variant))
    if variant == "tiny":
        ccfg = OmegaConf.create(tiny_compression_cfg())
        codec = builders.get_compression_model(ccfg)
        from .codec_fit import fit_audio, fit_codebooks

        fit_codebooks(codec, fit_audio(seed=seed), seed=seed)  # codes that carry music, not noise (codec_fit.py)
        with atomic_path(folder / "compression_state_dict.bin") as tmp:
            torch.save({"xp.cfg": OmegaConf.to_yaml(ccfg), "best_state": codec.state_dict()}, tmp)
    else:
        # The released melody and stereo models share musicgen's 32-kHz EnCodec (the stereo models wrap it,
        # from their LM's config): so do ours, and the codec's k-means runs once.
        codec_file = Path(resolve_model_name("tiny")) / "compression_state_dict.bin"
        with atomic_path(folder / "compression_state_dict.bin") as tmp:
            tmp.write_bytes(codec_file.read_bytes())
    if variant == "tiny-melody":
        write_tiny_demucs(folder / DEMUCS_DIR, seed)
    with demucs_from(folder):
        lm = builders.get_lm_model(lcfg)
    # The LM's weights are stored in fp16, as in the released checkpoints (and our exports).
    lm_state = {k: v.half() if v.is_floating_point() else v for k, v in lm.state_dict().items()}
    with atomic_path(folder / "state_dict.bin") as tmp:
        torch.save({"xp.cfg": OmegaConf.to_yaml(lcfg), "best_state": lm_state}, tmp)
    with atomic_path(folder / BUILD_FILE) as tmp:
        tmp.write_text(json.dumps({"build": TINY_BUILD, "variant": variant, "seed": seed}))
    return folder


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def tiny_dir(name: str = "tiny") -> Path:
    """The folder of a bundled model: JPOP_TINY_MODEL_DIR (or the user cache's tiny-musicgen) for
    "tiny", and beside it `<that folder>-melody` / `-stereo` for the others."""
    base = Path(os.environ.get("JPOP_TINY_MODEL_DIR", Path.home() / ".cache" / "jpop-musicgen" / "tiny-musicgen"))
    return base if name == "tiny" else base.with_name(f"{base.name}-{name.removeprefix('tiny-')}")


def _built_here(folder: Path) -> bool:
    """Whether `folder` holds a bundled model built by this version (BUILD_FILE says TINY_BUILD)."""
    try:
        return json.loads((folder / BUILD_FILE).read_text()).get("build") == TINY_BUILD
    except (OSError, ValueError, AttributeError):
        return False


def resolve_model_name(name: str) -> str:
    """What audiocraft's loaders take: a bundled model's name becomes its local folder (built on first use)."""
    if name not in TINY_MODELS:
        return name
    folder = tiny_dir(name)
    if not (folder / "state_dict.bin").exists() or not _built_here(folder):
        build_tiny(folder, variant=name)
    return str(folder)


# ---------------------------------------------------------------- Demucs for the melody conditioner
def write_tiny_demucs(folder: str | Path, seed: int = 0) -> Path:
    """A local demucs model repository holding a random tiny `demucs.htdemucs.HTDemucs`, in the
    format of demucs's Hugging Face repositories (tools/export_hf.py): `htdemucs.yaml` (the bag:
    `models: [<sig>]`) and `<sig>.safetensors` (half-precision weights; the class and its init
    arguments as JSON metadata). `separate.load_separator(folder=...)` loads it."""
    from demucs.htdemucs import HTDemucs
    from safetensors.torch import save as save_safetensors

    from .io import atomic_path

    def encode(value):  # export_hf.py's JSON encoding of fractions (HTDemucs's segment)
        if isinstance(value, Fraction):
            return {"_type": "fraction", "numerator": value.numerator, "denominator": value.denominator}
        return str(value)

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = HTDemucs(**TINY_HTDEMUCS)
    with torch.no_grad():  # random biases drown the input: every clip's chroma would be the same note
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
    args, kwargs = model._init_args_kwargs  # recorded by demucs's capture_init
    data = save_safetensors(
        {k: v.detach().half().contiguous() for k, v in model.state_dict().items()},
        metadata={"klass": "demucs.htdemucs.HTDemucs", "args": json.dumps(list(args), default=encode),
                  "kwargs": json.dumps(kwargs, default=encode)})
    sig = hashlib.sha256(data).hexdigest()[:8]
    with atomic_path(folder / f"{sig}.safetensors") as tmp:
        tmp.write_bytes(data)
    with atomic_path(folder / "htdemucs.yaml") as tmp:
        tmp.write_text(f"models: ['{sig}']\n")
    return folder


@contextlib.contextmanager
def demucs_from(model_folder: str | Path | None = None):
    """While building a MusicGen: audiocraft's melody conditioner gets its Demucs from
    `separate.load_separator` (separate.safe_demucs_pretrained), from `<model_folder>/demucs/` when
    the folder has one (the bundled tiny-melody and its exports), else from the Hugging Face hub as
    demucs 4.1 names it.

    ChromaStemConditioner calls `demucs.pretrained.get_model('htdemucs')` in its constructor; demucs
    would fall back to its legacy repository of pickled checkpoints when the hub fails, and would
    import whatever class a hub file names: load_separator does neither. The conditioner moves the
    model to its own device.
    """
    from .separate import safe_demucs_pretrained

    local = Path(model_folder) / DEMUCS_DIR if model_folder is not None else None
    with safe_demucs_pretrained("cpu", local if local is not None and local.is_dir() else None):
        yield


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
    """audiocraft MusicGen for a pretrained name, a local folder (e.g. an export), or a bundled
    model ("tiny", "tiny-melody", "tiny-stereo").

    Returns:
        audiocraft.models.MusicGen; its `.lm` is the language model we fine-tune and its
        `.compression_model` the (frozen) EnCodec.
    """
    from audiocraft.models import MusicGen

    device = device or default_device()
    name = resolve_model_name(name)
    with demucs_from(name if Path(name).is_dir() else None):  # melody models only build a Demucs
        model = MusicGen.get_pretrained(name, device=device)
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
