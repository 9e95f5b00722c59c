import json

import pytest
import torch

from jpop_helpers.loss import evaluate_ce
from jpop_helpers.model import load_musicgen
from jpop_helpers.runs import load_run_lm
from jpop_helpers.train import TrainConfig, train


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_export_loads_with_musicgen_get_pretrained_and_generates(tiny_tokens, tmp_path, mode):
    from audiocraft.models import MusicGen

    from jpop_helpers.export import export_run

    train_items, valid_items = tiny_tokens
    cfg = TrainConfig(model="tiny", mode=mode, steps=6, batch_size=4, grad_accum=1, lr=3e-3, warmup_steps=1, eval_every=6,
                      save_every=6)
    run = train(cfg, tmp_path / "run", train_items, valid_items, device="cpu")
    out = export_run(tmp_path / "run", tmp_path / "export")
    model = MusicGen.get_pretrained(str(out), device="cpu")
    ce = evaluate_ce(model.lm, valid_items, 4, "cpu")["ce"]
    # What evaluate/generate score (load_run_lm) is exactly what the export holds (fp16 weights) ...
    evaluated, _ = load_run_lm(tmp_path / "run")
    assert evaluate_ce(evaluated.lm, valid_items, 4, "cpu")["ce"] == pytest.approx(ce, abs=1e-6)
    # ... and that is the trained model (rounded to fp16), not the base
    assert ce == pytest.approx(run.final_valid["valid/ce"], abs=2e-3)
    base_ce = evaluate_ce(load_musicgen("tiny", "cpu").lm, valid_items, 4, "cpu")["ce"]
    assert abs(ce - base_ce) > 50 * abs(ce - run.final_valid["valid/ce"])
    assert all(v.dtype == torch.float16 for v in torch.load(out / "state_dict.bin", weights_only=True)["best_state"].values()
               if v.is_floating_point())
    model.set_generation_params(duration=1.0, top_k=50)
    wav = model.generate(["upbeat j-pop with piano"])
    assert wav.shape == (1, 1, 32000) and torch.isfinite(wav).all()
    if mode == "lora":
        from safetensors.torch import load_file

        adapter = load_file(out / "adapter" / "adapter_model.safetensors")
        assert adapter and all("lora_" in k for k in adapter)  # the adapters alone, no base weight
        # the saved adapter names its base model (it was null), so users know what to load it onto
        assert json.loads((out / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == "tiny"
        # base + adapter gives the merged export's model, up to its fp16 rounding
        from jpop_helpers.lora import load_adapter

        base = load_musicgen("tiny", "cpu")
        base.lm = load_adapter(base.lm, out / "adapter").eval()
        assert evaluate_ce(base.lm, valid_items, 4, "cpu")["ce"] == pytest.approx(ce, abs=2e-3)
