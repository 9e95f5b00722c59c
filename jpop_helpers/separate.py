"""Vocal removal with Demucs (`htdemucs`): load the separator safely, split a song into stems.

MusicGen was trained on music whose vocals HT-Demucs had removed, and it cannot sing; stage 02 feeds it
the instrumental mix (drums + bass + other) of each song, as audiocraft's own data pipeline did.

Loading. demucs 4.1 publishes its models on the Hugging Face hub (`adefossez/HTDemucs`: `htdemucs.yaml`
listing the model signatures, and one `<sig>.safetensors` per model whose metadata holds the model
class and its init arguments as JSON; see demucs's tools/export_hf.py). `demucs.hf` imports and calls
whatever class that metadata names, so a crafted file would run code: `load_separator` reads the
metadata first and refuses any class outside `ALLOWED_CLASSES`, then hands the very file it checked to
demucs's own loader (`demucs.hf.load_safetensors_model`). It never falls back to demucs's legacy
repository of pickled `.th` files (which `demucs.pretrained.get_model` tries when the hub fails).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

# The demucs model classes a released bag may name (module.qualname, as export_hf.py writes them).
ALLOWED_CLASSES = frozenset({
    "demucs.htdemucs.HTDemucs",  # htdemucs, htdemucs_ft, htdemucs_6s
    "demucs.hdemucs.HDemucs",  # hdemucs_mmi, mdx*
    "demucs.demucs.Demucs",  # the older waveform models in some bags
})
SOURCES = ("drums", "bass", "other", "vocals")  # htdemucs's model.sources, in its output order
INSTRUMENTAL = ("drums", "bass", "other")  # what MusicGen learns from: every stem but the vocals
_NAME = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/)?[A-Za-z0-9][A-Za-z0-9_-]{0,95}$")
_SIG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


class SeparatorError(ValueError):
    """A separator model that must not (or cannot) be loaded; the message names the file."""


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_model_file(path: str | Path) -> dict:
    """Validate a demucs `.safetensors` file's metadata WITHOUT importing anything it names.

    Reads only the header (safetensors' JSON). Checks that 'klass' is in ALLOWED_CLASSES, that
    'args'/'kwargs' are JSON, and that every `{"_class": ...}` node of the optional 'structure'
    (diffq-quantized states) is in ALLOWED_CLASSES too (so quantized bags, which name diffq classes,
    are refused). Returns the metadata.

    Raises:
        SeparatorError: naming the file and the problem.
    """
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # not a safetensors file, truncated header...
        raise SeparatorError(f"{path}: not a readable safetensors file ({e})") from None
    klass = meta.get("klass")
    if klass not in ALLOWED_CLASSES:
        raise SeparatorError(f"{path}: model class {klass!r} is not an allowed demucs class "
                             f"({', '.join(sorted(ALLOWED_CLASSES))}); refusing to import it")
    for key in ("args", "kwargs"):
        try:
            json.loads(meta[key])
        except (KeyError, TypeError, ValueError):
            raise SeparatorError(f"{path}: metadata '{key}' is missing or not JSON") from None
    if "structure" in meta:
        try:
            structure = json.loads(meta["structure"])
        except ValueError:
            raise SeparatorError(f"{path}: metadata 'structure' is not JSON") from None
        for name in _class_nodes(structure):
            if name not in ALLOWED_CLASSES:
                raise SeparatorError(f"{path}: its state names the class {name!r}, not an allowed demucs class "
                                     "(quantized models are not supported); refusing to import it")
    return meta


def _class_nodes(node) -> list:
    """Every value of a '_class' key in a JSON structure (any depth)."""
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "_class":
                out.append(v)
            else:
                out += _class_nodes(v)
    elif isinstance(node, list):
        for v in node:
            out += _class_nodes(v)
    return out


def _read_bag(path: Path) -> dict:
    """The bag yaml (`models`: signatures, optional `weights` per model x source, `segment`), checked."""
    import yaml

    try:
        bag = yaml.safe_load(Path(path).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise SeparatorError(f"{path}: not a readable bag definition ({e})") from None
    sigs = bag.get("models") if isinstance(bag, dict) else None
    if not isinstance(sigs, list) or not sigs or not all(isinstance(s, str) and _SIG.match(s) for s in sigs):
        raise SeparatorError(f"{path}: 'models' must be a non-empty list of model signatures (letters, digits, - _)")
    weights = bag.get("weights")
    if weights is not None and not (isinstance(weights, list) and len(weights) == len(sigs) and all(
            isinstance(w, list) and all(isinstance(x, (int, float)) for x in w) for w in weights)):
        raise SeparatorError(f"{path}: 'weights' must be one list of numbers per model")
    segment = bag.get("segment")
    if segment is not None and not (isinstance(segment, (int, float)) and segment > 0):
        raise SeparatorError(f"{path}: 'segment' must be a positive number of seconds")
    return {"models": sigs, "weights": weights, "segment": segment}


def load_separator(name: str = "htdemucs", device: str | None = None, folder: str | Path | None = None):
    """Load a pretrained demucs bag of models, safely, through demucs 4.1's Hugging Face format.

    Args:
        name: a demucs model name (`htdemucs`, `htdemucs_ft`, ...), optionally `namespace/name`; its hub
            repository is demucs's own mapping (`adefossez/HTDemucs` for `htdemucs`).
        device: where the model lives (default: cuda when available, else cpu).
        folder: a local model repository holding `<name>.yaml` and its `<sig>.safetensors` files (as
            the hub repository does); default: the Hugging Face hub (cache first; HF_HUB_OFFLINE works).

    Returns:
        demucs.apply.BagOfModels in eval mode: `.sources` (drums, bass, other, vocals), `.samplerate`
        (44100), `.audio_channels` (2). Use with `demucs.apply.apply_model` or `separate`.

    Raises:
        SeparatorError: a model file names a class outside ALLOWED_CLASSES, or the bag is malformed.
        FileNotFoundError: a file missing from `folder`; huggingface_hub's errors when not in the hub.
    """
    from demucs.apply import BagOfModels
    from demucs.hf import DEFAULT_NAMESPACE, hf_repo_name, load_safetensors_model

    if not _NAME.match(name):
        raise SeparatorError(f"invalid separator name {name!r}")
    namespace, short = name.split("/", 1) if "/" in name else (DEFAULT_NAMESPACE, name)
    if folder is not None:
        folder = Path(folder)

        def fetch(filename: str) -> Path:
            path = folder / filename
            if not path.is_file():
                raise FileNotFoundError(f"{path}: missing from the separator folder {folder}")
            return path
    else:
        from huggingface_hub import hf_hub_download

        repo_id = f"{namespace}/{hf_repo_name(short)}"

        def fetch(filename: str) -> Path:
            return Path(hf_hub_download(repo_id, filename))

    bag = _read_bag(fetch(f"{short}.yaml"))
    models = []
    for sig in bag["models"]:
        path = fetch(f"{sig}.safetensors")
        check_model_file(path)
        models.append(load_safetensors_model(path))  # demucs's own loader, on the file just checked
    model = BagOfModels(models, bag["weights"], bag["segment"])
    return model.to(device or default_device()).eval()
