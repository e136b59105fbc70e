"""`rats ablate` on the toy backbone: every variant trains and lands in one table."""

from __future__ import annotations

import json

import yaml

from rats_core.cli import main


def test_ablate_runs_variants_and_writes_one_table(tmp_path, capsys):
    cfg = {
        "seed": 0,
        "output_dir": str(tmp_path / "run"),
        "backbone": {"name": "toy"},
        "student": {"steps": 2},
        "teacher": {"steps": 8, "ema_decay": 0.9},
        "rewards": [{"name": "toy-brightness", "weight": 10.0}],
        "train": {"steps": 3, "batch_size": 2, "lr": 0.01, "checkpoint_every": 0, "progress": False},
        "data": {"prompts": ["a cat", "a dog"]},
        "eval": {"prompts": ["a cow", "a bee"]},
    }
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(cfg))
    variants = tmp_path / "variants.yaml"
    variants.write_text(yaml.safe_dump({"paper": [], "reward-only": ["gate={name: constant, c: 0.0}"]}))
    assert main(["ablate", str(path), "--variants", str(variants), "--seeds", "0,1"]) == 0
    root = tmp_path / "run" / "ablation"
    data = json.loads((root / "ablation.json").read_text())
    assert set(data["summary"]) == {"paper", "reward-only"}
    assert data["summary"]["paper"]["runs"] == 2
    for name in ("paper", "reward-only"):
        for seed in (0, 1):
            assert (root / name / f"seed{seed}" / "report.json").is_file()
    # the reward-only variant really ran with a zero gate
    rows = [json.loads(x) for x in (root / "reward-only" / "seed0" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["gate_mean"] == 0.0 for r in rows)
    assert "| paper |" in (root / "ablation.md").read_text()


def test_ablate_rejects_unknown_variant_before_training(tmp_path, capsys):
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump({"backbone": {"name": "toy"}, "rewards": [{"name": "toy-brightness"}],
                                    "output_dir": str(tmp_path / "run")}))
    assert main(["ablate", str(path), "--only", "nope"]) == 2
    assert "unknown variants" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
