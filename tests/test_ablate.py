"""`rats ablate` on the toy backbone: every variant trains and lands in one table."""

from __future__ import annotations

import json
import math

import pytest
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
    md = (root / "ablation.md").read_text()
    assert "| paper |" in md and " ± " in md  # mean ± sd over the two seeds
    # two seeds are two trainings (not one run counted twice): each ran with its seed, their students'
    # rewards differ, and the table's mean and sd are theirs (sd of two values: |a − b| / √2)
    runs = data["runs"]["paper"]
    assert [r["seed"] for r in runs] == [0, 1]
    for seed in (0, 1):
        assert yaml.safe_load((root / "paper" / f"seed{seed}" / "config.yaml").read_text())["seed"] == seed
    r0, r1 = (r["student_reward"] for r in runs)
    assert r0 != r1
    assert data["summary"]["paper"]["student_reward"] == pytest.approx((r0 + r1) / 2)
    assert data["summary"]["paper"]["student_reward_sd"] == pytest.approx(abs(r0 - r1) / math.sqrt(2))
    assert data["summary"]["paper"]["student_reward_sd"] > 0
    capsys.readouterr()

    # a second call reuses the finished runs (nothing trains again) and writes the same table
    stamp = (root / "paper" / "seed0" / "metrics.jsonl").stat().st_mtime_ns
    assert main(["ablate", str(path), "--variants", str(variants), "--seeds", "0,1", "train.threads=1"]) == 0
    err = capsys.readouterr().err
    assert err.count("reusing its report.json") == 4
    assert (root / "paper" / "seed0" / "metrics.jsonl").stat().st_mtime_ns == stamp
    assert json.loads((root / "ablation.json").read_text())["summary"] == data["summary"]

    # a finished run of another configuration in the same folder is refused, naming the difference
    assert main(["ablate", str(path), "--variants", str(variants), "--seeds", "0", "train.lr=0.02"]) == 2
    err = capsys.readouterr().err
    assert "another configuration" in err and "train.lr" in err and "Traceback" not in err


def test_ablate_resumes_an_interrupted_run(tmp_path, capsys):
    """A run folder with checkpoints but no report (a killed ablation) continues from its checkpoint."""
    cfg = {
        "seed": 0, "output_dir": str(tmp_path / "run"), "backbone": {"name": "toy"}, "student": {"steps": 2},
        "teacher": {"steps": 8}, "rewards": [{"name": "toy-brightness"}],
        "train": {"steps": 4, "batch_size": 2, "checkpoint_every": 2, "progress": False},
        "data": {"prompts": ["a cat"]}, "eval": {"prompts": ["a cow", "a bee"]},
    }
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["ablate", str(path), "--only", "rats"]) == 0
    run = tmp_path / "run" / "ablation" / "rats" / "seed0"
    full = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    # pretend the run was killed after step 2: drop what came later
    import shutil
    (run / "report.json").unlink()
    shutil.rmtree(run / "checkpoints" / "step_00000004")
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in full if r.get("step", 0) <= 2))
    capsys.readouterr()
    assert main(["ablate", str(path), "--only", "rats"]) == 0
    assert "resumed from" in capsys.readouterr().err
    again = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in again if "loss" in r] == [r["step"] for r in full if "loss" in r]
    assert (run / "report.json").is_file()


def test_ablate_rejects_unknown_variant_before_training(tmp_path, capsys):
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump({"backbone": {"name": "toy"}, "rewards": [{"name": "toy-brightness"}],
                                    "output_dir": str(tmp_path / "run")}))
    assert main(["ablate", str(path), "--only", "nope"]) == 2
    assert "unknown variants" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
