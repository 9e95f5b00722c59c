"""LoRA adapters on MusicGen's LM (peft): adding them, their state, saving them, merging them.

audiocraft's attention keeps q/k/v in one packed `in_proj_weight` used through F.linear: there is no
nn.Linear to wrap, the reason LoRA was judged infeasible inside audiocraft. peft's
`target_parameters` adapts that parameter directly; out_proj, linear1 and linear2 are plain Linears.

peft applies such an adapter by registering a torch parametrization on every forward call and removing
it afterwards (module class surgery, a new class each call; 48 calls a step for small, twice that with
activation checkpointing's recomputation, and a new class defeats torch.compile's guards). `add_lora`
gives each of those wrappers a forward that computes the same W + scale * B @ A with peft's own
get_delta_weight and lends it to the attention for the call instead: the same numbers (tested),
without the surgery. On this project's (loaded, 2-core) CPU, the tiny LM's forward + backward took
22.8 / 45.1 ms with peft's wrapper, 22.3 / 33.2 ms with the lent weight and 21.4 / 24.0 ms with no
adapter on in_proj_weight (two runs, best of 12 each); bench/train_speed.py measures the GPU step.
"""
from __future__ import annotations

import types
from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass
class LoraConfig:
    rank: int = 16
    alpha: float = 32.0  # the update is scaled by alpha / rank
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["out_proj", "linear1", "linear2"])  # nn.Linear names
    target_parameters: list[str] = field(default_factory=lambda: ["in_proj_weight"])  # bare parameters


def add_lora(lm: torch.nn.Module, config: LoraConfig, base_model: str | None = None):
    """Wrap the LM in a peft model whose only trainable weights are the adapters.

    Args:
        base_model: the base model's name, recorded in the saved adapter_config.json.
    Returns:
        peft.PeftModel; attribute access (condition_provider, compute_predictions) passes through.
    """
    import peft

    lora = peft.LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
                           target_modules=list(config.targets),
                           target_parameters=list(config.target_parameters) or None)
    peft_lm = peft.get_peft_model(lm, lora)
    # peft takes the name from a transformers model's config; audiocraft's LM has none, so set it here
    # (it lands in the saved adapter_config.json).
    peft_lm.peft_config["default"].base_model_name_or_path = base_model
    from peft.tuners.lora.layer import ParamWrapper

    for module in peft_lm.modules():
        if isinstance(module, ParamWrapper):
            module.forward = types.MethodType(_lent_weight_forward, module)
    return peft_lm


def _lent_weight_forward(self, x, *args, **kwargs):
    """peft's ParamWrapper.forward for the plain case (one active adapter on an unmerged, non-expert
    parameter): the base layer runs with W + get_delta_weight() in the parameter's place for this call.
    Anything else goes to peft's own forward."""
    active = [a for a in self.active_adapters if a in self.lora_A]
    if (self.disable_adapters or self.merged or len(active) != 1 or self.num_experts != 1
            or kwargs.get("adapter_names") is not None):
        return type(self).forward(self, x, *args, **kwargs)
    owner = self.get_base_layer()
    weight = owner._parameters[self.parameter_name]
    # module attribute lookup reads _parameters: the base layer sees the adapted weight, autograd
    # reaches both W (frozen) and the adapter
    owner._parameters[self.parameter_name] = weight + self.get_delta_weight(active[0])
    try:
        return self.base_layer(x, *args, **kwargs)
    finally:
        owner._parameters[self.parameter_name] = weight


def adapter_state(peft_lm) -> dict:
    """The adapter weights only (what a LoRA checkpoint stores)."""
    import peft

    return peft.get_peft_model_state_dict(peft_lm)


def load_adapter_state(peft_lm, state: dict) -> None:
    """Load adapter weights saved by `adapter_state`.

    Raises:
        RuntimeError: the keys belong to other adapters (another rank, targets or model).
    """
    import peft

    result = peft.set_peft_model_state_dict(peft_lm, state)
    if getattr(result, "unexpected_keys", None):
        raise RuntimeError(f"adapter keys do not match this model: {result.unexpected_keys[:3]}")


def save_adapter(peft_lm, folder: str | Path) -> Path:
    """peft's format: adapter_model.safetensors + adapter_config.json (naming the base model)."""
    peft_lm.save_pretrained(str(folder))
    return Path(folder)


def merge_lora(peft_lm) -> torch.nn.Module:
    """Merge the adapters into the base weights and return the plain LMModel.

    peft's merge_and_unload leaves a LoRA layer nested inside a `target_parameters` wrapper (our
    out_proj sits inside the attention whose in_proj_weight is adapted): those are merged and
    swapped for their base layer here, so the state dict has audiocraft's original keys.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    lm = peft_lm.merge_and_unload()
    for name, module in sorted(lm.named_modules(), key=lambda nm: -nm[0].count(".")):
        if isinstance(module, BaseTunerLayer):
            if not module.merged:
                module.merge()
            parent_name, _, attr = name.rpartition(".")
            setattr(lm.get_submodule(parent_name) if parent_name else lm, attr, module.get_base_layer())
    return lm
