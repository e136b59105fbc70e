"""Every shipped experiment config is a promise: its combination — precision, frozen and denoiser
dtypes, LoRA or full fine-tune, ZeRO stage, gradient checkpointing — trains on a tiny pipeline of the
real diffusers classes, resumes after an interruption, and its export loads and samples with the snippet
docs/eval.md shows, run as written in a process that never imports rats.

Only what cannot be the same on a CPU test is overridden: the weights (a tiny folder), the image size,
step counts, batch size, the reward (a tiny one) and the prompts.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rats_core.training import checkpoint as ckpt

_spec = importlib.util.spec_from_file_location("tiny_pipelines", Path(__file__).with_name("tiny_pipelines.py"))
tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny)

REPO = Path(__file__).resolve().parents[2]
SHIPPED = ("sd15", "sdxl", "pixart", "flux", "sd35")
#: what each shipped config promises (checked against the YAML, so an edited config updates this test)
KEYS = ("backbone.dtype", "backbone.denoiser_dtype", "train.precision", "student.lora", "deepspeed.zero_optimization.stage")

def documented_snippet() -> str:
    """The python block of docs/eval.md that loads an export with plain diffusers."""
    text = (REPO / "docs" / "eval.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    found = [b for b in blocks if "rats_export.json" in b and "DiffusionPipeline.from_pretrained" in b]
    assert found, "docs/eval.md lost its plain-diffusers snippet"
    return found[0]


def _get(cfg: dict, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = (node or {}).get(part)
    return node


def overrides(name: str, folder: Path, out: Path) -> list[str]:
    o = [
        f"backbone.path={folder}", f"backbone.resolution={tiny.RESOLUTION}", "backbone.device=cpu",
        f"output_dir={out}", "train.steps=2", "train.batch_size=1", "train.gradient_accumulation=1",
        "train.device=cpu", "train.progress=false", "train.checkpoint_every=1", "train.warmup_steps=0",
        "teacher.steps=6", "rewards=[{name: toy-brightness, weight: 10.0}]", "eval.at_end=false", "eval.every=0",
        "data.prompts=[a photo of a cat, a red car]", "data.eval_prompts=null",
    ]
    if name in ("pixart", "flux", "sd35"):
        o.append(f"backbone.max_sequence_length={tiny.T5_MAX_LENGTH}")
    return o


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-shipped")
    return lambda name: getattr(tiny, f"build_{name}")(root / name)


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_combination_trains_resumes_and_its_export_loads_with_the_documented_snippet(
        name, tiny_dir, tmp_path, run_without_rats, monkeypatch):
    from rats_core.cli import main, run_main
    from rats_core.training.trainer import Trainer

    path = REPO / "experiments" / f"{name}.yaml"
    from rats_core.config import load_config

    promised = {k: _get(load_config(path).to_dict(), k) for k in KEYS}
    assert promised["train.precision"] == "bf16" and promised["backbone.dtype"] == "bf16"
    out = tmp_path / "run"
    train_step = Trainer.train_step

    def killed_after_step_1(self):  # like kill -9 during step 2, after step 1's checkpoint
        if self.step == 1:
            raise RuntimeError("killed")
        return train_step(self)

    monkeypatch.setattr(Trainer, "train_step", killed_after_step_1)
    with pytest.raises(RuntimeError, match="killed"):
        run_main([str(path), *overrides(name, tiny_dir(name), out)])
    monkeypatch.setattr(Trainer, "train_step", train_step)
    assert run_main([str(path), *overrides(name, tiny_dir(name), out)]) == 0  # resumes from step 1
    assert json.loads((ckpt.latest_checkpoint(out) / "state.json").read_text())["resumed_at"] == [1]

    resolved = load_config(out / "config.yaml").to_dict()
    assert {k: _get(resolved, k) for k in KEYS} == promised, "the test overrode part of the promised combination"
    step = ckpt.latest_checkpoint(out)
    student = load_file(str(step / "student.safetensors"))
    teacher = load_file(str(step / "teacher.safetensors"))
    assert {v.dtype for v in student.values()} == {torch.float32}
    assert {v.dtype for v in teacher.values()} == {torch.float32}

    export = tmp_path / "export"
    assert main(["export", str(out), "-o", str(export)]) == 0
    manifest = json.loads((export / "rats_export.json").read_text())
    assert manifest["dtype"] == "float32" and manifest["run"]["checkpoint_step"] == 2
    script = documented_snippet().replace("sd15-rats-2step", str(export)).replace(
        'image.save("cat.png")', f'image.save({str(tmp_path / "cat.png")!r})')
    proc = run_without_rats(script, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from PIL import Image

    with Image.open(tmp_path / "cat.png") as im:
        assert im.size == (tiny.RESOLUTION, tiny.RESOLUTION)


@pytest.mark.slow
def test_16bit_export_loads_with_the_usage_line_torch_dtype(tiny_dir, tmp_path):
    """``rats export --dtype bf16``: every component bf16, and the manifest's usage (with torch_dtype) works."""
    from diffusers import DiffusionPipeline

    from rats_core.cli import main, run_main

    out = tmp_path / "run"
    assert run_main([str(REPO / "experiments" / "sd15.yaml"), *overrides("sd15", tiny_dir("sd15"), out),
                     "train.steps=1", "train.precision=fp32", "backbone.dtype=fp32",
                     "deepspeed={zero_optimization: {stage: 0}}"]) == 0
    export = tmp_path / "export"
    assert main(["export", str(out), "-o", str(export), "--dtype", "bf16"]) == 0
    manifest = json.loads((export / "rats_export.json").read_text())
    assert manifest["dtype"] == "bfloat16" and "torch_dtype=torch.bfloat16" in manifest["usage"]
    for sub in ("unet", "vae", "text_encoder"):
        tensors = load_file(str(next((export / sub).glob("*.safetensors"))))
        assert {v.dtype for v in tensors.values() if v.is_floating_point()} == {torch.bfloat16}, sub
    pipe = DiffusionPipeline.from_pretrained(export, torch_dtype=torch.bfloat16)
    image = pipe("a photo of a cat", **manifest["call"], output_type="pt").images
    assert image.shape == (1, 3, tiny.RESOLUTION, tiny.RESOLUTION) and torch.isfinite(image.float()).all()
