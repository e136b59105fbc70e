"""The arguments of the ``rats`` subcommands implemented in other modules (evaluation, sampling, export,
ablation, estimation).

Declared here, apart from their implementations, so that ``rats --help`` and ``rats COMMAND --help``
import neither torch nor the modules that need it: each command imports its module when it runs.
"""

from __future__ import annotations

import argparse

from rats_core.cli.commands import arg, command


@command("eval", "compare the student at several step counts with the base model and the teacher")
@arg("target", help="a run folder (the output_dir of rats-run), or an experiment YAML to measure its base model")
@arg("overrides", nargs="*", help="key.sub=value config overrides, e.g. eval.images_per_prompt=4 eval.seed=7")
@arg("--prompts", metavar="FILE_OR_SET",
     help="'default' (built-in list) or a .txt/.jsonl file, one prompt per line; default: the config's eval prompts")
@arg("--steps", metavar="K,K,...", help="student step counts (NFE), e.g. 1,2,4,8; default: eval.steps, else 1,2,4,8")
@arg("--teacher-steps", metavar="N",
     help="steps of the base model's reference row and the teacher; default: eval.teacher_steps, else teacher.steps")
@arg("-o", "--output", metavar="OUT", help="output folder; default: RUN_DIR/eval, or ./eval-<config name> for a config")
@arg("--checkpoint", metavar="PATH_OR_STEP", help="a checkpoint folder or step number; default: the latest")
@arg("--grid-prompts", metavar="N", default="8", help="prompts (columns) in grid.png (default 8)")
@arg("--save-images", action="store_true", help="also write every sample as a PNG under OUT/images/")
@arg("--device", help="cpu, cuda, cuda:N; default: train.device, else cuda when available")
@arg("--no-progress", action="store_true", help="no progress bar")
def cmd_eval(args: argparse.Namespace) -> int:
    from rats_core.evaluation.compare import cmd_eval as run

    return run(args)


@command("sample", "generate images (or videos) with a trained student (or its teacher / base model)")
@arg("run_dir", help="a run folder (the output_dir of rats-run)")
@arg("prompt", nargs="?", help="the prompt (or use --prompts FILE for many)")
@arg("--prompts", metavar="FILE", help="a .txt/.jsonl file, one prompt per line; -o is then a folder")
@arg("-o", "--output", metavar="OUT", required=True,
     help="a .png file for one prompt (with --n > 1: OUT-0.png, OUT-1.png, ...), a folder with --prompts; "
          "videos: .gif (animated) or .png (first, middle and last frame side by side), .gif in a folder")
@arg("--steps", metavar="K", help="sampler steps; default: the number the student was trained for")
@arg("--n", metavar="N", default="1", help="images per prompt (default 1)")
@arg("--seed", metavar="S", default="0", help="noise seed (default 0); the same seed gives the same images")
@arg("--model", choices=("student", "teacher", "base"), default="student",
     help="which network to sample (default: the trained student)")
@arg("--guidance-scale", metavar="G", type=float, help="default: the config's student.guidance_scale")
@arg("--checkpoint", metavar="PATH_OR_STEP", help="a checkpoint folder or step number; default: the latest")
@arg("--device", help="cpu, cuda, cuda:N; default: train.device, else cuda when available")
@arg("--scale", metavar="S", default="1",
     help="write each image S times larger, nearest-neighbour (e.g. 16 for digits' 16 px images; default 1)")
def cmd_sample(args: argparse.Namespace) -> int:
    from rats_core.evaluation.export import cmd_sample as run

    return run(args)


@command("export", "write the trained student as a standalone model (a diffusers pipeline folder, or a LoRA)")
@arg("run_dir", help="a run folder (the output_dir of rats-run)")
@arg("-o", "--output", metavar="DIR", required=True, help="folder to create")
@arg("--lora-only", action="store_true", help="LoRA runs: write only the adapter weights instead of a merged model")
@arg("--checkpoint", metavar="PATH_OR_STEP", help="a checkpoint folder or step number; default: the latest")
@arg("--overwrite", action="store_true", help="replace DIR if it exists")
@arg("--device", default="cpu", help="where to load and merge the weights (default cpu)")
@arg("--dtype", choices=("fp32", "bf16", "fp16"),
     help="save every pipeline component in this dtype (default fp32, which loads with a plain from_pretrained; "
          "a 16-bit export halves the size and loads with torch_dtype=torch.bfloat16 / float16)")
def cmd_export(args: argparse.Namespace) -> int:
    from rats_core.evaluation.export import cmd_export as run

    return run(args)


@command("ablate", "train a config under the paper's ablation variants (and seeds) and compare them")
@arg("config", help="experiment YAML")
@arg("overrides", nargs="*", help="key=value overrides applied to every variant")
@arg("--variants", default=None, help="YAML file: variant name -> list of overrides (default: the paper's ablations)")
@arg("--only", default=None, help="comma-separated variant names to run")
@arg("--seeds", default="0", help="comma-separated seeds, e.g. 0,1,2")
def cmd_ablate(args: argparse.Namespace) -> int:
    from rats_core.evaluation.ablate import cmd_ablate as run

    return run(args)


@command("estimate", "per-rank GPU memory of a training run (ZeRO 0-3), from the architecture; offline")
@arg("config", help="experiment YAML")
@arg("overrides", nargs="*", help="key.sub=value overrides (values parsed as YAML)")
@arg("--ranks", type=int, default=None,
     help="number of data-parallel ranks (GPUs) the run will use; default: the launcher's WORLD_SIZE when set, "
          "else the table for 1 and for 8 ranks (ZeRO-2/3 only pay off on several)")
@arg("--json", action="store_true", help="print JSON for machines")
@arg("--markdown", action="store_true", help="print the will-it-fit table (1, 2, 8 GPUs) as docs/backbones.md has it")
def cmd_estimate(args: argparse.Namespace) -> int:
    from rats_core.estimate.tables import cmd_estimate as run

    return run(args)
