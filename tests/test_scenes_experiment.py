"""The scenes experiment: a short end-to-end run of
`rats-run experiments/scenes.yaml` through the stock sd15 backbone and pickscore reward on the shipped
weights, whose report opens with its verdict and whose export plain diffusers loads and samples (slow).
The verdict's rules are tested in tests/test_verdict.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "plugins" / "scenes" / "weights"


@pytest.mark.slow
@pytest.mark.skipif(not (WEIGHTS / "pipeline" / "model_index.json").is_file(), reason="scenes weights not built")
def test_scenes_experiment_short_run_verdict_and_plain_diffusers_export(tmp_path, capsys):
    import torch
    from diffusers import StableDiffusionPipeline

    from rats_core.cli import run_main

    out = tmp_path / "scenes"
    rc = run_main([
        str(ROOT / "experiments" / "scenes.yaml"),
        f"output_dir={out}", "train.steps=2", "train.batch_size=2", "train.progress=false", "eval.every=0",
        "teacher.steps=8", "eval.images_per_prompt=1", "eval.steps=[1,2]",
        "eval.prompts=[two red triangles, a red circle left of a blue square, a purple circle, "
        "a green square above a cyan circle]",
    ])
    assert rc == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    held = report["held_out"]
    for who in ("base", "teacher", "student"):
        for key in ("reward", "judge_accuracy", "fid", "judge_count", "judge_colour", "judge_shape"):
            assert isinstance(held[who][key], float), (who, key)
    assert held["base_1"]["steps"] == 1 and held["student_1"]["steps"] == 1
    v = report["verdict"]
    assert set(v) >= {"reward", "judge", "realism", "reward_hacking", "summary", "bottom_line"}
    assert v["bottom_line"]["status"] in ("supported", "not supported", "not testable")
    # the scene judge grades each image: the judge criterion is paired
    assert v["judge"]["test"].startswith("McNemar") and len(report["per_image"]["judge_right"]["student"]) == 4
    md = (out / "report.md").read_text().splitlines()
    assert md[2].startswith("Verdict: ") and any(line.startswith("## Verdict (student at K steps") for line in md)
    # the export is a StableDiffusionPipeline folder plain diffusers samples
    pipe = StableDiffusionPipeline.from_pretrained(str(out / "export"), safety_checker=None)
    image = pipe("two red circles", num_inference_steps=2, guidance_scale=3.0, height=32, width=32,
                 generator=torch.Generator().manual_seed(0), output_type="np").images[0]
    assert image.shape == (32, 32, 3) and 0 <= image.min() and image.max() <= 1
