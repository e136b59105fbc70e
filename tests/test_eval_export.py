"""`rats eval`, `rats sample`, `rats export` and run-folder loading, end to end on toy runs.

Two toy runs are trained once per module (a full fine-tune that writes base.safetensors, and a LoRA
run that does not, so both ways of getting the base weights are exercised); every test then works
on them through the CLI entry point, as a user would.
"""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from rats_core.training import checkpoint as ckpt
from rats_core.cli import main
from rats_core.config import load_config
from rats_core.errors import CheckpointError, RunFolderError
from rats_core.evaluation.runs import load_run
from rats_core.training.trainer import train
from rats_plugins.toy import ToyDenoiser

RUN_CONFIG = """\
seed: 0
output_dir: {out}
backbone: {{name: toy, resolution: 8}}
student: {{steps: 2{lora}}}
teacher: {{kind: ema, steps: 8, ema_decay: 0.5}}
rewards:
  - {{name: toy-brightness, weight: 10}}
  - {{name: toy-smoothness, weight: 0}}
gate: {{name: sigmoid, tau: 0.01}}
train: {{steps: 4, batch_size: 2, lr: 0.02, checkpoint_every: 2, progress: false, device: cpu}}
data: {{prompts: ["a cat", "a dog", "a bird"]}}
eval: {{prompts: ["a cat", "a fish", "a cow"], at_end: {at_end}}}
"""


def _train(root: Path, name: str, lora: bool, at_end: bool) -> Path:
    out = root / name
    cfg_path = root / f"{name}.yaml"
    cfg_path.write_text(RUN_CONFIG.format(out=out, lora=", lora: {rank: 4}" if lora else "",
                                          at_end="true" if at_end else "false"))
    train(load_config(cfg_path))
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return {"full": _train(root, "full", lora=False, at_end=True),
            "lora": _train(root, "lora", lora=True, at_end=False),
            "root": root}


def rats(*argv) -> int:
    return main([str(a) for a in argv])


def _png(path: Path) -> Image.Image:
    with Image.open(path) as im:
        im.load()
        return im


# ----------------------------------------------------------------------------- load_run


def test_load_run_returns_the_checkpoint_student(runs):
    cfg, components, student, teacher, base_state = load_run(runs["full"])
    saved = load_file(str(ckpt.latest_checkpoint(runs["full"]) / "student.safetensors"))
    params = dict(student.named_parameters())
    assert saved and all(torch.equal(params[n], t) for n, t in saved.items())
    assert cfg.student.steps == 2 and teacher is not None
    assert not all(torch.equal(base_state[n], t) for n, t in saved.items())  # training moved the weights
    older = load_run(runs["full"], checkpoint=2, teacher=False, base=False)
    assert older.step == 2 and older.teacher is None and older.base_state is None


# ----------------------------------------------------------------------------- rats eval


def test_eval_writes_table_json_plot_and_grid(runs, tmp_path, capsys):
    out = tmp_path / "ev"
    assert rats("eval", runs["full"], "--steps", "1,2,4", "-o", out, "--no-progress") == 0
    for name in ("eval.json", "eval.md", "reward_vs_nfe.png", "grid.png"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "eval.json").read_text())
    res = summary["results"]
    assert set(res) == {"base", "teacher", "student"}
    assert set(res["student"]) == {"1", "2", "4"} and set(res["base"]) == {"1", "2", "4", "8"}
    assert set(res["teacher"]) == {"8"}
    for model, cells in res.items():
        for nfe, cell in cells.items():
            for reward in ("reward", "toy-brightness", "toy-smoothness"):
                stats = cell["rewards"][reward]
                assert {"mean", "ci95", "n"} <= set(stats) and stats["n"] == 3, (model, nfe, reward)
    md = (out / "eval.md").read_text()
    assert "| RATS student | 2 |" in md and "±" in md
    assert _png(out / "reward_vs_nfe.png").size[0] > 300


def test_eval_same_noise_gives_identical_base_rows(runs, tmp_path):
    """Across calls, and between a run (base.safetensors) and its config (the backbone as built)."""
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert rats("eval", runs["full"], "--steps", "2", "-o", a, "--no-progress") == 0
    assert rats("eval", runs["full"], "--steps", "1,2", "-o", b, "--no-progress") == 0
    assert rats("eval", runs["root"] / "full.yaml", "--steps", "2", "-o", c, "--no-progress") == 0
    ra, rb, rc = (json.loads((p / "eval.json").read_text())["results"] for p in (a, b, c))
    assert ra["base"]["2"] == rb["base"]["2"] == rc["base"]["2"]
    assert ra["base"]["8"] == rc["base"]["8"]
    assert set(rc) == {"base"}  # a config measures the base model only
    # a LoRA run without base.safetensors: its base (B = 0 adapters) is the same toy base model
    d = tmp_path / "d"
    assert rats("eval", runs["lora"], "--steps", "2", "-o", d, "--no-progress") == 0
    assert json.loads((d / "eval.json").read_text())["results"]["base"]["2"] == ra["base"]["2"]
    assert ra["student"]["2"]["rewards"]["reward"]["mean"] != ra["base"]["2"]["rewards"]["reward"]["mean"]


def test_eval_prompt_sets(runs, tmp_path):
    out = tmp_path / "d"
    assert rats("eval", runs["full"], "--prompts", "default", "--steps", "2", "-o", out, "--no-progress") == 0
    assert json.loads((out / "eval.json").read_text())["prompts"]["count"] == 8
    jsonl = tmp_path / "hpd.jsonl"
    jsonl.write_text('{"prompt": "a red car"}\n"a blue house"\n')
    out2 = tmp_path / "j"
    assert rats("eval", runs["full"], "eval.images_per_prompt=2", "--prompts", jsonl, "--steps", "2", "-o", out2,
                "--no-progress", "--save-images") == 0
    s = json.loads((out2 / "eval.json").read_text())
    assert s["prompts"] == {"source": f"`{jsonl}`", "count": 2, "images_per_prompt": 2, "images": 4}
    index = [json.loads(x) for x in (out2 / "images" / "index.jsonl").read_text().splitlines()]
    assert len(index) == 4 * 4  # base@2, base@8, teacher@8, student@2
    assert _png(out2 / "images" / index[0]["file"]).size == (8, 8)


def test_compare_scores_metrics_and_the_report_draws_them(tmp_path):
    """Set-level metrics (eval.metrics) get their own column and panel; no training needed."""
    from rats_core.evaluation.compare import compare
    from rats_core.evaluation.evaluate import Variant
    from rats_core.evaluation.report import write_eval_report
    from rats_core.method.rewards import RewardSet, WeightedReward
    from rats_plugins.toy import Brightness, ToyBackbone

    bb = ToyBackbone()
    rewards = RewardSet([WeightedReward("toy-brightness", Brightness())])
    variants = [Variant("base", bb.denoiser, s) for s in (1, 4)]
    metric = ("spread", lambda images, prompts: {"pixel_std": float(images.std())})
    comp = compare(bb, rewards, variants, ["a", "b", "c"], metrics=[metric], images_per_prompt=2, batch_size=4, keep=4)
    cell = comp.results["base"][4]
    assert cell["rewards"]["toy-brightness"]["n"] == 6 and "pixel_std" in cell["metrics"]
    assert comp.images["base@1"].shape == (4, 3, 8, 8) and comp.prompts == ["a", "a", "b", "b", "c", "c"]
    summary = {"kind": "config", "source": "x.yaml", "backbone": "toy", "teacher_steps": 4, "teacher_kind": "ema",
               "prompts": {"source": "test", "count": 3, "images_per_prompt": 2, "images": 6}, "seed": 0,
               "rewards": [{"name": "toy-brightness", "weight": 1.0, "normalize": "none"}],
               "reward_names": ["toy-brightness"], "metric_names": ["pixel_std"],
               "results": {m: {str(k): v for k, v in c.items()} for m, c in comp.results.items()}}
    rows = {"base@1": "base\n1 step", "base@4": "base\n4 steps"}
    paths = write_eval_report(tmp_path, summary, comp.images, rows, comp.scores, comp.prompts[:4])
    assert "pixel_std" in paths["markdown"].read_text()
    assert _png(paths["plot"]).size[0] > _png(paths["grid"]).size[0] / 4


# ----------------------------------------------------------------------------- rats sample


def test_sample_one_prompt_and_batch(runs, tmp_path):
    one = tmp_path / "cat.png"
    assert rats("sample", runs["full"], "a cat", "--steps", "2", "-o", one, "--seed", "3") == 0
    assert _png(one).size == (8, 8) and _png(one).mode == "RGB"
    again = tmp_path / "again.png"
    assert rats("sample", runs["full"], "a cat", "-o", again, "--seed", "3") == 0  # default: trained K=2
    assert one.read_bytes() == again.read_bytes()
    assert rats("sample", runs["full"], "a cat", "-o", tmp_path / "four.png", "--n", "4") == 0
    assert sorted(p.name for p in tmp_path.glob("four-*.png")) == [f"four-{i}.png" for i in range(4)]

    prompts = tmp_path / "p.txt"
    prompts.write_text("# comment\na cat\na dog on a mat\n")
    folder = tmp_path / "batch"
    assert rats("sample", runs["full"], "--prompts", prompts, "-o", folder) == 0
    index = [json.loads(x) for x in (folder / "index.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in index] == ["a cat", "a dog on a mat"]
    assert (folder / "0000-a-cat.png").read_bytes() != (folder / "0001-a-dog-on-a-mat.png").read_bytes()


# ----------------------------------------------------------------------------- rats export


def test_export_full_run_equals_trained_student(runs, tmp_path):
    out = tmp_path / "exp"
    assert rats("export", runs["full"], "-o", out) == 0
    exported = load_file(str(out / "denoiser.safetensors"))
    trained = load_file(str(ckpt.latest_checkpoint(runs["full"]) / "student.safetensors"))
    assert exported.keys() == trained.keys()
    assert all(torch.equal(exported[k], trained[k]) for k in trained)
    assert json.loads((out / "config.json").read_text())["steps"] == 2
    ToyDenoiser().load_state_dict(exported)  # reloadable as a plain network
    assert rats("export", runs["full"], "-o", out) == 2  # never overwrites silently
    assert rats("export", runs["full"], "-o", out, "--overwrite", "--checkpoint", "2") == 0
    assert json.loads((out / "rats_export.json").read_text())["run"]["checkpoint_step"] == 2


def test_export_lora_run_merges_or_writes_the_adapter(runs, tmp_path):
    merged_dir, lora_dir = tmp_path / "merged", tmp_path / "lora"
    assert rats("export", runs["lora"], "-o", merged_dir) == 0
    merged = ToyDenoiser()
    merged.load_state_dict(load_file(str(merged_dir / "denoiser.safetensors")))  # strict: plain keys only

    run = load_run(runs["lora"], teacher=False, base=False)
    x = torch.randn(2, 3, 8, 8)
    text = run.components.backbone.encode_prompts(["a cat", "a dog"])
    sigma = torch.tensor(0.5)
    with torch.no_grad():
        assert torch.allclose(merged(x, sigma, text), run.student(x, sigma, text), atol=1e-5)
        base = ToyDenoiser()  # same seed as the toy backbone's base weights
        assert not torch.allclose(base(x, sigma, text), merged(x, sigma, text), atol=1e-5)

    assert rats("export", runs["lora"], "-o", lora_dir, "--lora-only") == 0
    adapter = load_file(str(lora_dir / "lora.safetensors"))
    assert adapter and all("lora_" in k for k in adapter)
    assert json.loads((lora_dir / "rats_export.json").read_text())["run"]["content"] == "lora"


# ----------------------------------------------------------------------------- user mistakes


def _no_checkpoint_run(root: Path) -> Path:
    d = root / "fresh"
    d.mkdir(exist_ok=True)
    shutil.copy(root / "full" / "config.yaml", d / "config.yaml")
    return d


def _wrong_shape_checkpoint(root: Path) -> Path:
    src = ckpt.latest_checkpoint(root / "full")
    d = root / "wrong" / src.name
    if not d.exists():
        shutil.copytree(src, d)
        tensors = load_file(str(d / "student.safetensors"))
        tensors["mid.weight"] = torch.zeros(4, 4, 3, 3)
        save_file(tensors, str(d / "student.safetensors"))
    return d


ERROR_CASES = {
    "missing run dir": (["eval", "{root}/nope"], "no such run folder"),
    "not a run dir": (["sample", "{root}", "a cat", "-o", "{tmp}/x.png"], "not a rats run folder"),
    "config given to sample": (["sample", "{root}/full.yaml", "a", "-o", "{tmp}/x.png"], "expected a run folder"),
    "no checkpoint": (["export", "{root}/fresh", "-o", "{tmp}/e"], "has no checkpoint"),
    "unknown checkpoint": (["eval", "{root}/full", "--checkpoint", "7"], "not found"),
    "checkpoint of a LoRA run": (["eval", "{root}/full", "--checkpoint", "{lora_ckpt}"], "LoRA"),
    "checkpoint of another shape": (["export", "{root}/full", "-o", "{tmp}/e", "--checkpoint", "{wrong}"], "shape"),
    "empty prompt file": (["eval", "{root}/full", "--prompts", "{tmp}/empty.txt"], "has no prompts"),
    "non-UTF-8 prompt file": (["eval", "{root}/full", "--prompts", "{tmp}/latin1.txt"], "not UTF-8"),
    "missing prompt file": (["sample", "{root}/full", "--prompts", "{tmp}/none.txt", "-o", "{tmp}/o"],
                            "does not exist"),
    "bad --steps": (["eval", "{root}/full", "--steps", "1,two"], "not a positive whole number"),
    "zero --steps": (["sample", "{root}/full", "a", "-o", "{tmp}/x.png", "--steps", "0"], "positive whole number"),
    "unwritable -o (eval)": (["eval", "{root}/full", "-o", "{tmp}/afile/out"], "cannot write"),
    "unwritable -o (sample)": (["sample", "{root}/full", "a", "-o", "{tmp}/afile/x.png"], "cannot write"),
    "sample -o not a png": (["sample", "{root}/full", "a", "-o", "{tmp}/x.jpg"], ".png"),
    "prompt and --prompts": (["sample", "{root}/full", "a", "--prompts", "{tmp}/p.txt", "-o", "{tmp}/o"], "not both"),
    "--lora-only on a full run": (["export", "{root}/full", "-o", "{tmp}/e", "--lora-only"], "--lora-only"),
    "bad override": (["eval", "{root}/full", "eval.seed=[", "--steps", "2"], "override"),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_user_mistakes_exit_2_with_one_message(case, runs, tmp_path, capsys):
    root = runs["root"]
    _no_checkpoint_run(root)
    (tmp_path / "empty.txt").write_text("\n# nothing\n")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    (tmp_path / "p.txt").write_text("a cat\n")
    (tmp_path / "afile").write_text("a file, not a folder")
    argv, expected = ERROR_CASES[case]
    fill = {"root": root, "tmp": tmp_path, "lora_ckpt": ckpt.latest_checkpoint(runs["lora"]),
            "wrong": _wrong_shape_checkpoint(root)}
    capsys.readouterr()
    assert rats(*[a.format(**fill) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_load_run_errors_are_rats_errors(runs, tmp_path):
    with pytest.raises(RunFolderError):
        load_run(tmp_path)
    with pytest.raises(CheckpointError, match="another"):
        load_run(runs["full"], checkpoint=ckpt.latest_checkpoint(runs["lora"]))


# ----------------------------------------------------------------------------- plain diffusers


SD15 = Path(__file__).resolve().parent.parent / "plugins" / "backbones" / "sd15.py"
TINY = Path(__file__).resolve().parent / "plugins" / "tiny_pipelines.py"

LOAD_WITHOUT_RATS = textwrap.dedent(
    """
    import sys, os, json
    import torch
    from diffusers import DiffusionPipeline
    pipe = DiffusionPipeline.from_pretrained(sys.argv[1])
    steps = json.load(open(os.path.join(sys.argv[1], "rats_export.json")))["num_inference_steps"]
    image = pipe("a photo of a cat", num_inference_steps=steps, generator=torch.Generator().manual_seed(0),
                 output_type="pil").images[0]
    assert "rats_core" not in sys.modules and "rats_plugins" not in sys.modules
    image.save(sys.argv[2])
    print(type(pipe).__name__, image.size)
    """
)


@pytest.mark.slow
@pytest.mark.skipif(not (SD15.is_file() and TINY.is_file()), reason="needs the sd15 backbone and tiny_pipelines")
def test_tiny_sd15_export_loads_in_plain_diffusers(tmp_path, run_without_rats):
    """The "no test-time overhead" claim: the exported student is an ordinary diffusers pipeline."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("tiny_pipelines", TINY)
    tiny = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tiny)
    base = tiny.build_sd15(tmp_path / "tiny-sd15")
    cfg = tmp_path / "sd15.yaml"
    cfg.write_text(textwrap.dedent(f"""\
        seed: 0
        output_dir: {tmp_path / 'run'}
        backbone: {{name: sd15, path: {base}, resolution: {tiny.RESOLUTION}}}
        student: {{steps: 2, lora: {{rank: 2}}}}
        teacher: {{steps: 4}}
        rewards: [{{name: toy-brightness}}]
        train: {{steps: 1, batch_size: 1, progress: false, device: cpu, export: false}}
        data: {{prompts: ["a photo of a cat"]}}
        eval: {{at_end: false}}
        """))
    assert rats("run", cfg) == 0
    out = tmp_path / "pipeline"
    assert rats("export", tmp_path / "run", "-o", out) == 0
    manifest = json.loads((out / "rats_export.json").read_text())
    assert manifest["num_inference_steps"] == 2 and manifest["lora_merged"] is True
    assert manifest["run"]["checkpoint_step"] == 1 and manifest["run"]["content"] == "merged lora"
    png = tmp_path / "plain.png"
    proc = run_without_rats(LOAD_WITHOUT_RATS, out, png, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _png(png).size == (tiny.RESOLUTION, tiny.RESOLUTION)
