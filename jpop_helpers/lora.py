"""LoRA adapters on MusicGen's LM, owned here by composition: adding them, their state, saving, merging.

audiocraft's attention keeps q/k/v in one packed `in_proj_weight` used through F.linear: there is no
nn.Linear to wrap, the reason LoRA was judged infeasible inside audiocraft. Two public PyTorch
mechanisms cover every site, so no library's internals are touched:
- an nn.Linear (`out_proj`, `linear1`, `linear2`) is replaced by `LoraLinear`, which holds it and adds
  the low-rank path: y = base(x) + scaling * B(A(dropout(x)));
- a bare parameter (`in_proj_weight`, [3D, D]) gets a `torch.nn.utils.parametrize` parametrization,
  `LoraDelta`: every read of the attribute returns W + scaling * B @ A, in W's dtype. Inside
  `torch.nn.utils.parametrize.cached()` (loss.LMLoss's forward, without activation checkpointing) it
  is computed once per forward, so the three slices a cross-attention reads share one copy.

Only the adapters train: every base weight is frozen. Merging folds each update into its weight and
gives back audiocraft's own modules and state-dict keys.

Files: `save_adapter` writes peft's format (`adapter_config.json` + `adapter_model.safetensors`, the
keys and shapes peft 0.17-0.21 give this configuration), so `peft.PeftModel.from_pretrained` loads an
adapter onto the base LM (tests/test_lora.py). peft 0.22 refuses any config that adapts a module inside
an attention whose packed parameter it also adapts ("ParamWrapper has no attribute `out_proj`"), so
with peft 0.22 load it with `load_adapter`. The toolkit itself never imports peft.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.utils import parametrize

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."  # peft's key prefix for the adapted model's modules


@dataclass
class LoraConfig:
    rank: int = 16
    alpha: float = 32.0  # the update is scaled by alpha / rank
    dropout: float = 0.0  # on the inputs of the Linear sites (a packed weight's update has no input of its own)
    targets: list[str] = field(default_factory=lambda: ["out_proj", "linear1", "linear2"])  # nn.Linear names
    target_parameters: list[str] = field(default_factory=lambda: ["in_proj_weight"])  # bare parameters


class LoraLinear(nn.Module):
    """An nn.Linear with a trainable low-rank update: base(x) + scaling * lora_B(lora_A(dropout(x))).

    Args:
        base: the frozen nn.Linear, weight [out, in].
    The adapter is lora_A [rank, in] (Kaiming-uniform, as peft initialises it) and lora_B [out, rank]
    (zeros, so a new adapter changes nothing), in fp32 whatever the base's dtype.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.base_layer = base
        self.lora_A = nn.Linear(base.in_features, rank, bias=False, device=base.weight.device)
        self.lora_B = nn.Linear(rank, base.out_features, bias=False, device=base.weight.device)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.scaling = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., in] -> [..., out], in the base layer's output dtype."""
        y = self.base_layer(x)
        update = self.lora_B(self.lora_A(self.dropout(x.to(self.lora_A.weight.dtype))))
        return y + (update * self.scaling).to(y.dtype)

    def delta_weight(self) -> torch.Tensor:
        """scaling * B @ A: [out, in], what merging adds to the base weight."""
        return self.lora_B.weight @ self.lora_A.weight * self.scaling


class LoraDelta(nn.Module):
    """Parametrization of a packed weight W [out, in]: W + scaling * lora_B @ lora_A, cast to W's dtype.

    lora_A [rank, in] and lora_B [out, rank] are plain Parameters (peft's ParamWrapper shapes).
    """

    def __init__(self, out_features: int, in_features: int, rank: int, alpha: float, device=None):
        super().__init__()
        self.lora_A = nn.Parameter(torch.empty(rank, in_features, device=device))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank, device=device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scaling = alpha / rank

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.delta_weight().to(weight.dtype)

    def delta_weight(self) -> torch.Tensor:
        return self.lora_B @ self.lora_A * self.scaling


def _linear_sites(lm: nn.Module, config: LoraConfig) -> list[str]:
    """Names of the nn.Linear modules whose last name component is a target."""
    return [name for name, m in lm.named_modules()
            if isinstance(m, nn.Linear) and name.rpartition(".")[2] in config.targets]


def _parameter_sites(lm: nn.Module, config: LoraConfig) -> list[tuple[str, str]]:
    """(module name, parameter name) of every bare parameter named as a target (never a Linear's)."""
    sites = []
    for name, m in lm.named_modules():
        if isinstance(m, nn.Linear):
            continue
        for pname, _ in m.named_parameters(recurse=False):
            full = f"{name}.{pname}" if name else pname
            if any(full == t or full.endswith("." + t) for t in config.target_parameters):
                sites.append((name, pname))
    return sites


def add_lora(lm: nn.Module, config: LoraConfig) -> nn.Module:
    """Add adapters to `lm` in place and freeze everything else.

    Args:
        lm: an audiocraft LMModel (any module tree with the targeted Linears and parameters).
    Returns:
        the same module, with LoraLinear in place of each targeted Linear and a LoraDelta on each
        targeted parameter; its only trainable parameters are the adapters (fp32).
    Raises:
        ValueError: the LM already has adapters, or no target matches anything in it.
    """
    if has_lora(lm):
        raise ValueError("this LM already has LoRA adapters (merge_lora them first)")
    linears, params = _linear_sites(lm, config), _parameter_sites(lm, config)
    if not linears and not params:
        raise ValueError(f"no LoRA target matches this model: {config.targets} / {config.target_parameters}")
    for p in lm.parameters():
        p.requires_grad_(False)
    for name in linears:
        parent, _, attr = name.rpartition(".")
        owner = lm.get_submodule(parent)
        setattr(owner, attr, LoraLinear(getattr(owner, attr), config.rank, config.alpha, config.dropout))
    for module_name, pname in params:
        owner = lm.get_submodule(module_name)
        out_features, in_features = getattr(owner, pname).shape
        delta = LoraDelta(out_features, in_features, config.rank, config.alpha, device=getattr(owner, pname).device)
        parametrize.register_parametrization(owner, pname, delta)
    return lm


def _adapters(lm: nn.Module) -> dict[str, nn.Module]:
    """{peft's module path of the adapter: the module holding lora_A / lora_B}.

    peft nests a Linear adapter inside an attention whose packed parameter it adapts under
    `<attention>.base_layer.` (its ParamWrapper replaces the attention); the paths mirror that, so the
    saved keys are the ones peft writes and reads.
    """
    packed = {name for name, m in lm.named_modules() if parametrize.is_parametrized(m)}
    out = {}
    for name, m in lm.named_modules():
        if isinstance(m, LoraLinear):
            parent, _, attr = name.rpartition(".")
            out[f"{parent}.base_layer.{attr}" if parent in packed else name] = m
        elif parametrize.is_parametrized(m):
            for plist in m.parametrizations.values():
                for p in plist:
                    if isinstance(p, LoraDelta):
                        out[name] = p
    return out


def has_lora(lm: nn.Module) -> bool:
    return bool(_adapters(lm))


def _weights(adapter: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(adapter, LoraLinear):
        return adapter.lora_A.weight, adapter.lora_B.weight
    return adapter.lora_A, adapter.lora_B


def adapter_state(lm: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter weights only, under peft's keys (`base_model.model.<path>.lora_A.weight`, ...)."""
    state = {}
    for path, adapter in _adapters(lm).items():
        a, b = _weights(adapter)
        state[f"{PREFIX}{path}.lora_A.weight"] = a.detach()
        state[f"{PREFIX}{path}.lora_B.weight"] = b.detach()
    return state


def load_adapter_state(lm: nn.Module, state: dict[str, torch.Tensor], source: str = "the adapter state") -> None:
    """Copy adapter weights saved by `adapter_state` into the LM's adapters.

    Raises:
        ValueError: the keys or shapes are not this model's adapters (another rank, other targets,
            another model, or a full run's weights), naming `source` and the first differences.
    """
    expected = adapter_state(lm)
    missing, unexpected = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    if missing or unexpected:
        raise ValueError(f"{source} does not fit this model's adapters: {len(missing)} missing "
                         f"(e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]}); "
                         "was it written by another kind of run (LoRA targets, a full run, another model)?")
    wrong = [f"{k}: {tuple(state[k].shape)} here {tuple(v.shape)}" for k, v in expected.items()
             if state[k].shape != v.shape]
    if wrong:
        raise ValueError(f"{source} has adapters of other shapes (another LoRA rank or model?): {wrong[:2]}")
    with torch.no_grad():
        for k, v in expected.items():
            v.copy_(state[k])


def save_adapter(lm: nn.Module, config: LoraConfig, folder: str | Path, base_model: str | None = None) -> Path:
    """Write the adapter in peft's format: adapter_model.safetensors + adapter_config.json.

    Args:
        base_model: the base model's name, recorded as base_model_name_or_path.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in adapter_state(lm).items()}
    save_file(state, str(folder / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    peft_config = {"peft_type": "LORA", "task_type": None, "base_model_name_or_path": base_model,
                   "r": config.rank, "lora_alpha": config.alpha, "lora_dropout": config.dropout,
                   "target_modules": list(config.targets), "target_parameters": list(config.target_parameters),
                   "bias": "none", "fan_in_fan_out": False, "inference_mode": True, "init_lora_weights": True,
                   "use_rslora": False, "use_dora": False, "modules_to_save": None}
    (folder / ADAPTER_CONFIG).write_text(json.dumps(peft_config, indent=2) + "\n")
    return folder


def read_adapter_config(folder: str | Path) -> LoraConfig:
    """The LoraConfig of an adapter folder written by `save_adapter` (or peft, for these fields).

    Raises:
        ValueError: the file is missing, unreadable, or not a LoRA adapter config (naming it).
    """
    path = Path(folder) / ADAPTER_CONFIG
    try:
        cfg = json.loads(path.read_text())
        if cfg.get("peft_type", "LORA") != "LORA":
            raise ValueError(f"peft_type {cfg.get('peft_type')!r}, not LORA")
        return LoraConfig(rank=int(cfg["r"]), alpha=float(cfg["lora_alpha"]), dropout=float(cfg.get("lora_dropout", 0.0)),
                          targets=list(cfg.get("target_modules") or []),
                          target_parameters=list(cfg.get("target_parameters") or []))
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as e:
        raise ValueError(f"{path}: not a readable LoRA adapter config ({type(e).__name__}: {e})") from None


def load_adapter(lm: nn.Module, folder: str | Path) -> nn.Module:
    """Add the adapter saved in `folder` (peft's format, safetensors only: no pickle) to `lm`.

    Raises:
        ValueError: the config or weights are unreadable or do not fit the model (naming the file).
    """
    folder = Path(folder)
    config = read_adapter_config(folder)
    try:
        state = load_file(str(folder / ADAPTER_WEIGHTS))
    except Exception as e:  # safetensors raises its own error types for a damaged file
        raise ValueError(f"{folder / ADAPTER_WEIGHTS}: unreadable ({type(e).__name__}: {e})") from None
    add_lora(lm, config)
    load_adapter_state(lm, state, source=str(folder / ADAPTER_WEIGHTS))
    return lm


@torch.no_grad()
def merge_lora(lm: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight, in place; returns the LM with audiocraft's own modules.

    A packed parameter keeps exactly the weight its parametrization computed (W + delta in W's dtype);
    a Linear gets W + scaling * B @ A, which equals its two-path forward up to float rounding.
    """
    for name, m in list(lm.named_modules()):
        if parametrize.is_parametrized(m):
            for pname in list(m.parametrizations.keys()):
                if any(isinstance(p, LoraDelta) for p in m.parametrizations[pname]):
                    parametrize.remove_parametrizations(m, pname, leave_parametrized=True)
    for name, m in list(lm.named_modules()):
        if isinstance(m, LoraLinear):
            base = m.base_layer
            base.weight += m.delta_weight().to(base.weight.dtype)
            parent, _, attr = name.rpartition(".")
            setattr(lm.get_submodule(parent), attr, base)
    return lm


def packed_adapter(module: nn.Module, name: str) -> tuple[torch.Tensor, LoraDelta | None]:
    """(the stored weight, its LoraDelta or None) of parameter `name` of `module`: the sampler applies a
    packed adapter in low rank instead of reading the full W + delta at every step."""
    if parametrize.is_parametrized(module, name):
        plist = module.parametrizations[name]
        deltas = [p for p in plist if isinstance(p, LoraDelta)]
        if len(deltas) != len(plist):
            raise TypeError(f"{name} has a parametrization other than LoRA: {[type(p).__name__ for p in plist]}")
        if len(deltas) > 1:
            raise TypeError(f"{name} has {len(deltas)} LoRA parametrizations (one expected)")
        return plist.original, deltas[0]
    return getattr(module, name), None
