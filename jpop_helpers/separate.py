"""Vocal removal with Demucs (`htdemucs`): load the separator safely, split a song into stems.

MusicGen was trained on music whose vocals HT-Demucs had removed, and it cannot sing; stage 02 feeds it
the instrumental mix (drums + bass + other) of each song (its model card: the training music had its
vocals removed with HT-Demucs).

Loading. demucs 4.1 publishes its models on the Hugging Face hub (`adefossez/HTDemucs`: `htdemucs.yaml`
listing the model signatures, and one `<sig>.safetensors` per model whose metadata holds the model
class and its init arguments as JSON; see demucs's tools/export_hf.py). `demucs.hf` imports and calls
whatever class that metadata names, so a crafted file would run code: `load_separator` reads the
metadata first and refuses any class outside `ALLOWED_CLASSES`, then hands the very file it checked to
demucs's own loader (`demucs.hf.load_safetensors_model`). It never falls back to demucs's legacy
repository of pickled `.th` files (which `demucs.pretrained.get_model` tries when the hub fails).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
from pathlib import Path

import numpy as np

# The demucs model classes a released bag may name (module.qualname, as export_hf.py writes them).
ALLOWED_CLASSES = frozenset({
    "demucs.htdemucs.HTDemucs",  # htdemucs, htdemucs_ft, htdemucs_6s
    "demucs.hdemucs.HDemucs",  # hdemucs_mmi, mdx*
    "demucs.demucs.Demucs",  # the older waveform models in some bags
})
log = logging.getLogger(__name__)
SOURCES = ("drums", "bass", "other", "vocals")  # htdemucs's model.sources, in its output order
INSTRUMENTAL = ("drums", "bass", "other")  # what MusicGen learns from: every stem but the vocals
_NAME = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/)?[A-Za-z0-9][A-Za-z0-9_-]{0,95}$")
_SIG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


class SeparatorError(ValueError):
    """A separator model that must not (or cannot) be loaded; the message names the file."""


def default_device() -> str:
    import torch

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
    model.signatures = list(bag["models"])  # which weights these are (recorded with cached stems)
    return model.to(device or default_device()).eval()


@contextlib.contextmanager
def safe_demucs_pretrained(device: str | None = "cpu", folder: str | Path | None = None):
    """While the block runs, `demucs.pretrained.get_model(name)` loads through `load_separator` (class
    allowlist first; never the pickled `.th` fallback). For code that calls demucs itself, e.g. the
    melody conditioner of audiocraft (ChromaStemConditioner: `pretrained.get_model('htdemucs')`):

        with safe_demucs_pretrained():
            model = MusicGen.get_pretrained("facebook/musicgen-melody")
    """
    from demucs import pretrained

    original = pretrained.get_model

    def get_model(name: str, repo: Path | None = None):
        if repo is not None:
            raise SeparatorError(f"demucs model repository {repo}: only Hugging Face-format folders load here "
                                 "(load_separator(folder=...)); legacy .th files are pickles")
        return load_separator(name.removeprefix("hf://"), device, folder)

    pretrained.get_model = get_model
    try:
        yield
    finally:
        pretrained.get_model = original


# ---------------------------------------------------------------- separating a song
def _as_stereo(wav: np.ndarray, channels: int) -> np.ndarray:
    """[T] or [C, T] -> [channels, T]: mono is repeated, extra channels dropped (as demucs does)."""
    wav = np.atleast_2d(wav)
    if wav.shape[0] == channels:
        return wav
    if wav.shape[0] == 1:
        return np.repeat(wav, channels, axis=0)
    if wav.shape[0] > channels:
        return wav[:channels]
    raise ValueError(f"cannot make {channels} channels from {wav.shape[0]}")


def separate(model, wav: np.ndarray, sample_rate: int, device: str | None = None, overlap: float = 0.25,
             progress: bool = False) -> dict[str, np.ndarray]:
    """Split a mix into the model's stems with `demucs.apply.apply_model`.

    As demucs's own separator does (demucs/api.py), the mix is standardised by the mean and std of
    its mono mix-down before the model and restored after. Split into the model's segments with
    `overlap`; no random shifts, so a song always gives the same stems.

    Args:
        model: from `load_separator` (BagOfModels; `.samplerate`, `.audio_channels`, `.sources`).
        wav: float32 [C, T] (or mono [T]) at `sample_rate` == model.samplerate.
        device: where the model computes (the song itself stays in CPU memory); default: the model's.
        progress: demucs's own progress bar over the song's segments.
    Returns:
        source name -> float32 [model.audio_channels, T] at `sample_rate`, in model.sources order.
    """
    import torch
    from demucs.apply import apply_model

    if sample_rate != model.samplerate:
        raise ValueError(f"the separator runs at {model.samplerate} Hz, got audio at {sample_rate} Hz")
    mix = torch.from_numpy(_as_stereo(np.asarray(wav, np.float32), model.audio_channels).copy())
    ref = mix.mean(0)
    mean, std = ref.mean(), ref.std() + 1e-8
    device = device or str(next(model.parameters()).device)
    with torch.no_grad():
        out = apply_model(model, ((mix - mean) / std)[None], device=device, shifts=0, split=True, overlap=overlap,
                          progress=progress)[0]  # [S, C, T]
    out = out.cpu() * std + mean
    return {name: out[i].numpy() for i, name in enumerate(model.sources)}


def instrumental_of(stems: dict[str, np.ndarray]) -> np.ndarray:
    """drums + bass + other: the mix without its vocals. [C, T] float32."""
    missing = [s for s in INSTRUMENTAL if s not in stems]
    if missing:
        raise ValueError(f"the separator has no {', '.join(missing)} stem (it gives {', '.join(stems)})")
    return np.sum([stems[s] for s in INSTRUMENTAL], axis=0, dtype=np.float32)


def match_level(audio: np.ndarray, reference: np.ndarray, peak: float = 0.99, max_gain_db: float = 6.0) -> float:
    """The gain that gives `audio` the RMS level of `reference` (the song's full mix), limited so that
    its peak stays below `peak` and it is raised by at most `max_gain_db`.

    Chunking judges silence on an absolute scale (ChunkConfig.silence_db, dBFS) and clips are written
    as 16-bit PCM (clipped at full scale): both were set for mastered songs. Removing the vocals
    lowers the level by a few dB and a sum of stems can exceed full scale, so the instrumental is
    brought back to the mix's level, one gain per song (a quiet intro stays quiet; a vocal-only
    passage becomes near-silent and chunking drops it). The cap: removing the vocals of a pop song
    takes a few dB; a song that loses more than 6 dB (75% of its energy) is mostly voice, and raising
    what is left (accompaniment and separation bleed) to full level would make it louder than it is.
    """
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
    ref = float(np.sqrt(np.mean(np.square(reference, dtype=np.float64))))
    top = float(np.max(np.abs(audio))) if audio.size else 0.0
    if rms < 1e-9 or top < 1e-9:
        return 1.0
    return min(ref / rms, peak / top, 10 ** (max_gain_db / 20))


# ---------------------------------------------------------------- the stems cache of a data root
class SeparatorUnavailable(RuntimeError):
    """The separator model could not be loaded: no song can be separated (not one song's fault)."""


def file_digest(path: str | Path) -> str:
    """sha1 of a file's bytes (a copied or re-synced file keeps its cached stems; a replaced one does not)."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _energy(x: np.ndarray) -> float:
    return float(np.sum(np.square(x, dtype=np.float64)))


class StemCache:
    """The instrumental of each song, separated once: `<folder>/<song_id>.flac` + `<song_id>.json`.

    What is kept, and why: a Colab user's Google Drive holds 15 GB, shared with the raw songs, the
    clips, the token cache and checkpoints. Of the four stems only their use is kept: the instrumental
    mix (drums + bass + other), at the clips' sample rate (32 kHz: MusicGen never sees more), in stereo
    (mono clips mix it down; stereo models use both channels), as 16-bit FLAC (exact for 16-bit clips):
    7.7 MB per minute before compression, ~4-5 after (estimate), against ~85 MB per minute for the four
    float32 stems at 44.1 kHz. The vocals are not
    kept (clips with vocals, `keep_vocals`, come from the original file); what separation removed is kept
    as numbers in the JSON. Delete the folder to reclaim the space: clips already made stay valid.

    A cached instrumental is reused while the song file's bytes, the separator name and the sample rate
    are unchanged; the model is loaded only when a song has to be separated.
    """

    def __init__(self, folder: str | Path, name: str = "htdemucs", model_folder: str | Path | None = None,
                 device: str | None = None, progress: bool = True):
        self.folder = Path(folder)
        self.name, self.model_folder, self.device, self.progress = name, model_folder, device, progress
        self._model = None

    def model(self):
        if self._model is None:
            try:
                self._model = load_separator(self.name, self.device, self.model_folder)
            except Exception as e:
                where = self.model_folder or f"the Hugging Face hub ({self.name})"
                raise SeparatorUnavailable(
                    f"cannot load the vocal separator {self.name!r} from {where}: {type(e).__name__}: {e}. "
                    "Without it no song can be separated: check the network (or set the separator folder to a "
                    "local copy of its .yaml + .safetensors), or keep the vocals (keep_vocals / --keep-vocals)") from e
        return self._model

    def paths(self, song_id: str) -> tuple[Path, Path]:
        return self.folder / f"{song_id}.flac", self.folder / f"{song_id}.json"

    def instrumental(self, song_id: str, path: str | Path, sample_rate: int) -> tuple[np.ndarray, dict]:
        """The song's instrumental, from the cache or separated now (then cached).

        Returns:
            (float32 [2, T] at `sample_rate`, info: separator, models, energy_removed (fraction of the
            mix's energy that separation removed), vocals_energy (the vocal stem's energy over the mix's),
            gain_db (level matching, see match_level), seconds, cached (bool)).
        Raises:
            SeparatorUnavailable: the model cannot be loaded. ValueError: undecodable audio (names the file).
        """
        import soundfile as sf

        from .io import atomic_path, load_audio, read_json, write_json

        flac, meta = self.paths(song_id)
        key = {"source_sha1": file_digest(path), "separator": self.name, "sample_rate": sample_rate}
        if flac.exists() and meta.exists():
            try:
                info = read_json(meta)
                if all(info.get(k) == v for k, v in key.items()):
                    audio, sr = sf.read(flac, dtype="float32", always_2d=True)
                    if sr == sample_rate and audio.shape[0] == info.get("frames"):
                        return np.ascontiguousarray(audio.T), {**info, "cached": True}
            except Exception as e:  # a damaged cache entry is redone, never trusted
                log.warning("%s: unreadable cached stems (%s); separating again", flac, e)
        model = self.model()
        mix = _as_stereo(load_audio(path, model.samplerate, mono=False), model.audio_channels)
        stems = separate(model, mix, model.samplerate, self.device, progress=self.progress)
        instrumental = instrumental_of(stems)
        e_mix = _energy(mix)
        info = {**key, "models": getattr(model, "signatures", None),
                "energy_removed": round(1.0 - _energy(instrumental) / e_mix, 4) if e_mix > 0 else 0.0,
                "vocals_energy": round(_energy(stems["vocals"]) / e_mix, 4) if e_mix > 0 and "vocals" in stems else None,
                "seconds": round(mix.shape[1] / model.samplerate, 3)}
        # to the clips' rate with the resampler load_audio uses; the length of a direct decode at that rate
        import librosa

        out = librosa.resample(instrumental, orig_sr=model.samplerate, target_sr=sample_rate, res_type="soxr_hq")
        ref = librosa.resample(mix, orig_sr=model.samplerate, target_sr=sample_rate, res_type="soxr_hq")
        gain = match_level(out, ref)
        out = (out * gain).astype(np.float32)
        info.update(gain_db=round(20 * np.log10(gain), 2), frames=int(out.shape[1]))
        with atomic_path(flac) as tmp:
            sf.write(tmp, out.T, sample_rate, subtype="PCM_16", format="FLAC")
        write_json(meta, info)  # after the audio: a JSON always has its FLAC
        # what later runs will read (16-bit), so a first run and a re-run make the same clips
        out = np.ascontiguousarray(sf.read(flac, dtype="float32", always_2d=True)[0].T)
        return out, {**info, "cached": False}
