"""Checkpoints that load nothing with pickle, resume exactly, and cost no hidden Drive space.

checkpoints/ckpt_<step>/      written as a hidden temp folder, renamed into place when complete
    model.safetensors         the trained weights (every LM weight, or only the LoRA adapters)
    state.safetensors         every other tensor: optimizer moments, RNG states
    state.json                every other value (step, config, scheduler, scaler, optimizer groups)

Tensors are safetensors and the rest is JSON, so a crafted checkpoint cannot run code when a run is
resumed, exported or evaluated (torch.load of a pickle can).

Sharded checkpoints (FSDP, distributed.py) replace model.safetensors with
    sharded/shard-<rank+1>-model-00001-of-00001.safetensors   each process's slices of the weights and
                              optimizer moments, written by torch.distributed.checkpoint (DCP), with
                              each slice's offsets in the safetensors header (JSON)
and resume on any number of processes, one included: DCP reads the slices each process needs. DCP's
default FileSystemReader unpickles its `.metadata` file (pickle.load, code execution from a crafted
checkpoint; only its tensors go through torch.load(weights_only=True)); its Hugging Face safetensors
storage (HuggingFaceStorageWriter/Reader) rebuilds the metadata from the safetensors headers instead,
so that is what is used here: nothing is unpickled in either format. The weights can be read without the
optimizer state (`load_weights`), which is what export and evaluation need. Deleting an old checkpoint
first truncates its files: on the Google Drive mount a deleted file goes to Drive's Trash, which still
counts against the quota, while an emptied one costs nothing there.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import random
import re
import shutil
import uuid
from pathlib import Path

import numpy as np
import torch

from .io import discard, read_json, write_json

log = logging.getLogger(__name__)
PATTERN = re.compile(r"^ckpt_(\d{8})$")


# ---------------------------------------------------------------- nested values <-> tensors + JSON
def pack(obj, tensors: dict[str, torch.Tensor], key: str = "t", seen: dict | None = None):
    """A JSON-able skeleton of `obj`; its tensors go into `tensors` under generated keys.

    Handles dicts (any key type), lists, tuples, tensors, numpy arrays and scalars: what optimizer,
    scheduler, scaler and RNG states are made of.
    """
    if torch.is_tensor(obj):
        # One tensor used in several places (bitsandbytes shares its quantisation maps) is stored
        # once, and the places share it again when loaded.
        same = (obj.device.type, obj.untyped_storage().data_ptr(), obj.storage_offset(), tuple(obj.shape),
                tuple(obj.stride()), obj.dtype) if obj.numel() else None
        seen = {} if seen is None else seen
        if same in seen:
            return {"__tensor__": seen[same]}
        tensors[key] = obj.detach().cpu().contiguous()
        if same is not None:
            seen[same] = key
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        seen = {} if seen is None else seen
        return {"__dict__": [[pack(k, tensors, f"{key}.k{i}", seen), pack(v, tensors, f"{key}.{i}", seen)]
                             for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, (list, tuple)):
        seen = {} if seen is None else seen
        items = [pack(v, tensors, f"{key}.{i}", seen) for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} in a checkpoint")


def unpack(skeleton, tensors: dict[str, torch.Tensor]):
    """The inverse of `pack`."""
    if isinstance(skeleton, list):
        return [unpack(v, tensors) for v in skeleton]
    if not isinstance(skeleton, dict):
        return skeleton
    if "__tensor__" in skeleton:
        return tensors[skeleton["__tensor__"]]
    if "__ndarray__" in skeleton:
        return np.array(skeleton["__ndarray__"], dtype=skeleton["dtype"])
    if "__tuple__" in skeleton:
        return tuple(unpack(v, tensors) for v in skeleton["__tuple__"])
    return {unpack(k, tensors): unpack(v, tensors) for k, v in skeleton["__dict__"]}


# ---------------------------------------------------------------- RNG
def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    py = state["python"]  # JSON gives lists where random.setstate wants tuples
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


# ---------------------------------------------------------------- files
def list_checkpoints(folder: str | Path) -> list[Path]:
    """Complete checkpoints in step order, oldest first."""
    folder = Path(folder)
    if not folder.exists():
        return []
    return sorted((p for p in folder.iterdir() if p.is_dir() and PATTERN.match(p.name)),
                  key=lambda p: int(PATTERN.match(p.name)[1]))


def checkpoint_bytes(path: str | Path) -> int:
    return sum(f.stat().st_size for f in Path(path).iterdir() if f.is_file())


def remove_checkpoint(path: str | Path) -> None:
    """Empty every file, then delete them and the folder (so Drive's Trash keeps no bytes of it)."""
    path = Path(path)
    for f in path.iterdir() if path.exists() else []:
        if f.is_file():
            discard(f)
        else:
            shutil.rmtree(f, ignore_errors=True)
    if path.exists():
        path.rmdir()


def save_checkpoint(folder: str | Path, step: int, weights: dict[str, torch.Tensor], state: dict,
                    keep_last: int = 2) -> Path:
    """Write `ckpt_<step>/` (complete or not at all), then remove all but the newest `keep_last`.

    Args:
        weights: name -> tensor, the trained weights.
        state: everything else a resume needs (nested dicts/lists of tensors and plain values).
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(".ckpt_*.tmp"):  # left by a crash mid-save
        remove_checkpoint(stale)
    need = sum(t.numel() * t.element_size() for t in weights.values()) + _tensor_bytes(state)
    free = shutil.disk_usage(folder).free
    if free < need * 1.02 + 2**20:
        raise OSError(errno.ENOSPC, f"no space left on {folder}: a checkpoint needs ~{need / 2**30:.2f} GiB, "
                                    f"{free / 2**30:.2f} GiB free (on Google Drive, empty the Trash too)")
    final = folder / f"ckpt_{step:08d}"
    tmp = folder / f".ckpt_{step:08d}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir()
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, str(tmp / "model.safetensors"))
        tensors: dict[str, torch.Tensor] = {}
        skeleton = pack(state, tensors)
        save_file(tensors, str(tmp / "state.safetensors"))
        write_json(tmp / "state.json", skeleton)
        for f in tmp.iterdir():  # on disk before the rename makes the checkpoint visible
            with open(f, "rb") as handle:
                os.fsync(handle.fileno())
        if final.exists():  # a torn checkpoint of the same step, being redone
            remove_checkpoint(final)
        os.replace(tmp, final)
    except BaseException as e:
        remove_checkpoint(tmp)
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:  # e.g. the disk filled while writing
            raise OSError(errno.ENOSPC, f"no space left on {folder}: a checkpoint needs ~{need / 2**30:.2f} GiB "
                                        "(on Google Drive, empty the Trash too)") from e
        raise
    for old in list_checkpoints(folder)[:-keep_last] if keep_last > 0 else []:
        remove_checkpoint(old)
    return final


def _tensor_bytes(obj) -> int:
    if torch.is_tensor(obj):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def load_weights(path: str | Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Only the trained weights of a checkpoint (no optimizer state: a fraction of the memory); the
    slices of a sharded checkpoint are put together."""
    from safetensors.torch import load_file

    if not (Path(path) / "model.safetensors").exists() and (Path(path) / SHARDED).is_dir():
        return {k[len("model."):]: v.to(device) for k, v in _assemble(Path(path) / SHARDED, "model.").items()}
    return load_file(str(Path(path) / "model.safetensors"), device=device)


def load_state(path: str | Path) -> dict:
    """Everything but the weights (optimizer, scheduler, scaler, RNG, step), on the CPU."""
    from safetensors.torch import load_file

    return unpack(read_json(Path(path) / "state.json"), load_file(str(Path(path) / "state.safetensors")))


def latest_checkpoint(folder: str | Path) -> Path | None:
    """The newest checkpoint whose files are all readable; torn ones (a disk filled, a Drive sync cut
    off) are skipped with a warning."""
    from safetensors import safe_open

    for path in reversed(list_checkpoints(folder)):
        try:
            sharded = sorted((path / SHARDED).glob("*.safetensors")) if (path / SHARDED).is_dir() else []
            for file in sharded or [path / "model.safetensors"]:
                if os.path.getsize(file) < 8:
                    raise ValueError(f"{file.name} is empty")
            for file in [*sharded, path / "state.safetensors"] if sharded else [path / "model.safetensors",
                                                                                path / "state.safetensors"]:
                with safe_open(str(file), framework="pt") as f:
                    for k in f.keys():
                        f.get_slice(k)  # header and offsets intact
            read_json(path / "state.json")
            return path
        except Exception as e:
            log.warning("checkpoint %s is unreadable (%s); trying the previous one", path, e)
    return None


# ---------------------------------------------------------------- sharded (FSDP) checkpoints
SHARDED = "sharded"


def _split_tensors(flat: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {k: v for k, v in flat.items() if torch.is_tensor(v)}
    return tensors, {k: v for k, v in flat.items() if k not in tensors}


def save_sharded(folder: str | Path, step: int, tensors: dict, state: dict, keep_last: int = 2) -> Path:
    """Every process calls this with its shards: `tensors` maps names to tensors or DTensors (plain
    values in it go to JSON); `state` (rank 0's) is stored as in save_checkpoint. Complete or absent,
    as save_checkpoint: written under a temp name, renamed by rank 0 once every process is done.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageWriter

    from .distributed import barrier, dist_info, is_distributed

    folder = Path(folder)
    rank = dist_info()[0]
    final = folder / f"ckpt_{step:08d}"
    tmp = folder / f".ckpt_{step:08d}.sharded.tmp"  # one name every process agrees on
    if rank == 0:
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob(".ckpt_*.tmp"):
            remove_checkpoint(stale)
        (tmp / SHARDED).mkdir(parents=True)
    barrier()
    tensors, plain = _split_tensors(tensors)
    try:
        dcp.save(tensors, storage_writer=HuggingFaceStorageWriter(str(tmp / SHARDED), save_distributed=True),
                 no_dist=not is_distributed())
        barrier()
        if rank == 0:
            from safetensors.torch import save_file

            packed: dict[str, torch.Tensor] = {}
            skeleton = pack({**state, "plain": plain}, packed)
            save_file(packed, str(tmp / "state.safetensors"))
            write_json(tmp / "state.json", skeleton)
            for f in [*tmp.iterdir(), *(tmp / SHARDED).iterdir()]:
                if f.is_file():
                    with open(f, "rb") as handle:
                        os.fsync(handle.fileno())
            if final.exists():
                remove_checkpoint(final)
            os.replace(tmp, final)
            for old in list_checkpoints(folder)[:-keep_last] if keep_last > 0 else []:
                remove_checkpoint(old)
    except BaseException:
        if rank == 0 and tmp.exists():
            remove_checkpoint(tmp)
        raise
    barrier()
    return final


def load_sharded(path: str | Path, tensors: dict) -> tuple[dict, dict]:
    """Fill `tensors` (this process's templates: tensors or DTensors of any sharding) in place from a
    sharded checkpoint, whatever number of processes wrote it.

    Returns:
        (the plain values saved beside the tensors, the state saved by save_sharded's `state`).
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader

    from .distributed import is_distributed

    path = Path(path)
    templates, _ = _split_tensors(tensors)
    dcp.load(templates, storage_reader=HuggingFaceStorageReader(str(path / SHARDED)), no_dist=not is_distributed())
    state = load_state(path)
    return state.pop("plain"), state


def _assemble(folder: Path, prefix: str) -> dict[str, torch.Tensor]:
    """Whole tensors from the slices of a sharded checkpoint (offsets from each file's header)."""
    from safetensors import safe_open

    slices: dict[str, list] = {}
    for file in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as f:
                info = json.loads((f.metadata() or {}).get("DCP_SHARDING_INFO", "{}"))
                for k in f.keys():
                    if k.startswith(prefix):
                        t = f.get_tensor(k)
                        slices.setdefault(k, []).append((info.get(k, {}).get("saved_offsets", [0] * t.dim()), t))
        except Exception as e:  # a truncated or foreign file: say which
            raise ValueError(f"{file}: unreadable checkpoint shard ({type(e).__name__}: {e})") from e
    out = {}
    for k, parts in slices.items():
        shape = [max(o[d] + t.shape[d] for o, t in parts) for d in range(parts[0][1].dim())]
        full = torch.empty(shape, dtype=parts[0][1].dtype)
        filled = torch.zeros(shape, dtype=torch.bool)
        for o, t in parts:
            region = tuple(slice(a, a + n) for a, n in zip(o, t.shape))
            full[region] = t
            filled[region] = True
        if not bool(filled.all()):  # a shard file is missing: its slice would be uninitialised memory
            raise ValueError(f"{folder}: {k} is missing slices (a shard file of this checkpoint is absent)")
        out[k] = full
    return out
