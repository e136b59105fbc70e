"""The experiment configuration: one YAML file, validated by pydantic, with ``key=value`` overrides.

Public keys (stable names): ``backbone.name``, ``backbone.path``, ``backbone.resolution``,
``student.steps`` (K), ``teacher.steps`` (N), ``teacher.kind`` (``ema`` | ``frozen``), ``gate.name``,
``horizons.name``, ``rewards``, ``train.steps``, ``train.batch_size``, ``output_dir``, ``seed``.
Every section is documented field by field below and in docs/config.md.

This module is the schema: every section as a pydantic model (``extra="forbid"``); ``loading`` reads files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Margins(BaseModel):
    """How far a "not worse" criterion may fall behind and still hold (config key ``eval.verdict``)."""

    model_config = ConfigDict(extra="forbid")

    #: judge accuracy: the student holds when its accuracy is not below the other's by this much (95 %)
    judge: float = Field(default=0.02, ge=0)
    #: FID: a fraction of the teacher's mean FID the student's may exceed it by (over seeds)
    fid: float = Field(default=0.02, ge=0)
    #: resamples of the paired reward bootstrap
    resamples: int = Field(default=2000, ge=100)
    #: seed of the bootstrap (fixed: the same numbers give the same interval)
    seed: int = 0


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class _Component(BaseModel):
    """``{name: ..., **options}``; the options are checked against the component's own schema."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())
    name: str

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class BackboneConfig(_Component):
    #: hub id or local folder of the pretrained model; ``null`` lets the plugin use its default
    path: str | None = None
    #: image side in pixels
    resolution: int | None = Field(default=None, gt=0)

    @property
    def options(self) -> dict[str, Any]:
        opts = dict(self.model_extra or {})
        if self.path is not None:
            opts["path"] = self.path
        if self.resolution is not None:
            opts["resolution"] = self.resolution
        return opts


class RewardConfig(_Component):
    #: weight of this reward in the combined reward (may be 0 to only log it)
    weight: float = 1.0
    #: ``fixed`` standardises the score as ``(score − mean) / std`` before weighting
    normalize: Literal["none", "fixed"] = "none"
    mean: float = 0.0
    std: float = Field(default=1.0, gt=0)
    #: videos: an image reward scores the mean over this many evenly spaced frames (first and last
    #: included; ``null``: every frame); rewards that declare ``scores_video`` get the whole clip
    frames: int | None = Field(default=8, gt=0)

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class GateConfig(_Component):
    name: str = "sigmoid"


class HorizonsConfig(_Component):
    name: str = "all"


class LoraConfig(_Strict):
    rank: int = Field(default=16, gt=0)
    alpha: float = Field(default=16.0, gt=0)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    #: module names to adapt; default: the backbone's own ``lora_target_modules``
    target_modules: list[str] | None = None


class StudentConfig(_Strict):
    #: K, the number of sampler steps of the student (1–8 in the paper)
    steps: int = Field(default=4, gt=0)
    #: K_grad: gradient flows through the last K_grad student steps only (DRaFT-K style)
    grad_steps: int = Field(default=1, gt=0)
    guidance_scale: float = Field(default=1.0, ge=0)
    gradient_checkpointing: bool = False
    #: [choice, not in the paper] a matched horizon before the last ``grad_steps`` steps also gets the
    #: gradient of its own network evaluation (input and output detached from the trajectory), so early
    #: horizons shape the student at all. Costs one kept forward graph per such horizon; ``false``
    #: shapes only through the last ``grad_steps`` steps (plain DRaFT-K truncation)
    horizon_gradients: bool = True
    #: ``null`` trains the whole denoiser; a mapping trains a peft LoRA
    lora: LoraConfig | None = None


class TeacherConfig(_Strict):
    #: ``ema``: an EMA of the student (the paper); ``frozen``: a frozen copy of the base model
    kind: Literal["ema", "frozen"] = "ema"
    #: N, the teacher's sampler steps (paper: 50)
    steps: int = Field(default=50, gt=0)
    ema_decay: float = Field(default=0.99, ge=0, le=1)
    guidance_scale: float = Field(default=1.0, ge=0)
    #: ``superset``: the teacher schedule is built to contain every student σ;
    #: ``nearest``: use the backbone's N-step schedule and match the nearest σ (warns when inexact)
    alignment: Literal["superset", "nearest"] = "superset"
    #: what the student's x0-prediction at each matched horizon is compared with [choice]:
    #: ``prediction``: the teacher's own x0-prediction at the same σ (METHOD.md §4, the default);
    #: ``sample``: the teacher's final N-step sample from the same noise, the end of the trajectory
    #: the student should reach (knowledge-distillation style; no extra teacher passes);
    #: ``continuation``: the teacher's sample continued from the *student's own* state at each horizon
    #: (on-policy; one more teacher rollout from each horizon after the first)
    target: Literal["prediction", "sample", "continuation"] = "prediction"
    #: compile the teacher's network with ``torch.compile`` (its N no-gradient forward passes dominate
    #: a step); a one-off compile time for faster steps, mainly on GPUs
    compile: bool = False
    #: reuse the teacher's rollout (x0 at the student's σ's and reward) when a (prompts, noise) batch
    #: comes back; needs ``kind: frozen`` (an EMA teacher changes every step) and ``data.noise_pool``
    #: (otherwise no batch ever repeats)
    cache: bool = False


class LossConfig(_Strict):
    #: α, weight of the gated trajectory-shaping loss
    alpha: float = Field(default=1.0, ge=0)
    #: β, weight of the reward term
    beta: float = Field(default=1.0, ge=0)
    #: λ_cos and λ_2 of the per-horizon distance
    cosine_weight: float = Field(default=1.0, ge=0)
    l2_weight: float = Field(default=1.0, ge=0)


class TrainConfig(_Strict):
    steps: int = Field(default=100, gt=0)
    #: prompts per rank per micro-step
    batch_size: int = Field(default=4, gt=0)
    gradient_accumulation: int = Field(default=1, gt=0)
    lr: float = Field(default=1e-5, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    adam_betas: tuple[float, float] = (0.9, 0.999)
    lr_scheduler: Literal["constant", "cosine", "linear"] = "constant"
    warmup_steps: int = Field(default=0, ge=0)
    #: gradient clipping by global norm; 0 disables it
    max_grad_norm: float = Field(default=1.0, ge=0)
    #: ``bf16``: every network call of a step runs under bf16 autocast while trainable weights, their
    #: gradients, optimizer state and the EMA teacher stay float32 (docs/config.md, "Precision")
    precision: Literal["fp32", "bf16"] = "fp32"
    #: on CUDA, let float32 matmuls/convolutions use TF32 tensor cores
    tf32: bool = True
    #: save a checkpoint every N optimizer steps (and always at the end); 0: only at the end
    checkpoint_every: int = Field(default=100, ge=0)
    keep_checkpoints: int = Field(default=2, gt=0)
    #: ``auto`` continues from the newest checkpoint in output_dir, ``never`` starts fresh
    #: (refusing to overwrite one), or a checkpoint folder
    resume: str = "auto"
    log_every: int = Field(default=1, gt=0)
    #: ``cpu`` or ``cuda``; default: cuda when available
    device: str | None = None
    #: CPU threads of torch: ``auto`` (as many as cores are free of other processes, at least 1, re-checked
    #: every 30 s), N, or 0 for torch's default (one per core; slow on a busy machine, see rats_core/training/threads.py)
    threads: Literal["auto"] | Annotated[int, Field(ge=0)] = "auto"
    progress: bool = True
    #: log the wall time of each phase of a step (teacher/student rollout, reward, backward, optimizer,
    #: EMA, logging) as time/<phase> metrics; adds device synchronisation, so off by default
    profile: bool = False
    #: export the student at the end of training (a diffusers folder, or LoRA file for LoRA runs)
    export: bool = True
    #: seconds one collective of a training step may wait for the other ranks: a rank that vanished is
    #: named and the others stop within it (docs/distributed.md, "When a rank dies")
    collective_timeout: float = Field(default=300.0, gt=0)
    #: seconds the other ranks wait while rank 0 alone writes a checkpoint or the export, and the bound on
    #: setup (rendezvous, loading models)
    save_timeout: float = Field(default=7200.0, gt=0)


class DataConfig(_Strict):
    #: training prompts: a list, or a .txt / .jsonl file (one prompt per line; path relative to the config)
    prompts: list[str] | str = Field(default_factory=lambda: ["a photo of a cat"])
    #: held-out prompts for evaluation (same forms)
    eval_prompts: list[str] | str | None = None
    #: cycle over this many fixed global batches of (prompts, initial noise) instead of drawing fresh
    #: noise every step (``null``, the paper's setting); what lets ``teacher.cache`` hit
    noise_pool: int | None = Field(default=None, gt=0)


class MetricConfig(_Component):
    pass


class CallbackConfig(_Component):
    pass


class EvalConfig(_Strict):
    #: prompts to evaluate on (same forms as data.prompts); default: data.eval_prompts
    prompts: list[str] | str | None = None
    #: set-level metrics the training never sees (`rats plugins` lists them)
    metrics: list[MetricConfig] = Field(default_factory=list)
    #: student step counts to evaluate; default: [student.steps]
    steps: list[Annotated[int, Field(gt=0)]] | None = None
    #: the base model / teacher's step count; default: teacher.steps
    teacher_steps: int | None = Field(default=None, gt=0)
    images_per_prompt: int = Field(default=1, gt=0)
    batch_size: int = Field(default=16, gt=0)
    seed: int = 1234
    #: evaluate held-out prompts every N optimizer steps during training (0: never), for the
    #: reward-over-training curve and the overtaking step
    every: int = Field(default=0, ge=0)
    #: write the report (table, grids, plots, report.json) in the run folder when training ends
    at_end: bool = True
    #: what the evaluation computes in: ``train`` (default) as the training step did (``train.precision``:
    #: bf16 autocast for a bf16 run), ``fp32`` without autocast; the report says which
    precision: Literal["train", "fp32"] = "train"
    #: the verdict's margins and bootstrap (rats_core/evaluation/stats.py): judge, fid, resamples, seed
    verdict: Margins = Field(default_factory=Margins)


class RatsConfig(_Strict):
    seed: int = 0
    output_dir: str = "runs/rats"
    backbone: BackboneConfig
    student: StudentConfig = Field(default_factory=StudentConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    rewards: list[RewardConfig]
    gate: GateConfig = Field(default_factory=GateConfig)
    horizons: HorizonsConfig = Field(default_factory=HorizonsConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    #: training callbacks on top of the built-ins (loggers, trackers such as wandb/mlflow, your own):
    #: a list of ``{name: ..., <options>}``; `rats plugins` lists them
    callbacks: list[CallbackConfig] = Field(default_factory=list)
    #: a DeepSpeed JSON config passed through; batch sizes, precision, optimizer and clipping are
    #: filled in from ``train`` where not given. Default: ZeRO stage 0.
    deepspeed: dict[str, Any] = Field(default_factory=lambda: {"zero_optimization": {"stage": 0}})
    #: evaluation and end-of-run report
    eval: EvalConfig = Field(default_factory=EvalConfig)

    #: folder of the YAML file, for resolving relative paths (not a config key)
    _base_dir: Path = pydantic.PrivateAttr(default_factory=Path.cwd)

    @field_validator("rewards")
    @classmethod
    def _rewards_not_empty(cls, v: list[RewardConfig]) -> list[RewardConfig]:
        if not v:
            raise ValueError("at least one reward is required")
        if all(r.weight == 0 for r in v):
            raise ValueError("all reward weights are 0; give at least one a non-zero weight")
        return v

    @model_validator(mode="after")
    def _steps_consistent(self) -> "RatsConfig":
        if self.student.steps >= self.teacher.steps:
            raise ValueError(
                f"student.steps (K={self.student.steps}) must be smaller than teacher.steps (N={self.teacher.steps})"
            )
        if self.student.grad_steps > self.student.steps:
            raise ValueError(
                f"student.grad_steps ({self.student.grad_steps}) cannot exceed student.steps ({self.student.steps})"
            )
        if self.teacher.cache and self.teacher.kind != "frozen":
            raise ValueError(
                "teacher.cache needs teacher.kind=frozen: the EMA teacher changes after every step, so its "
                "rollouts cannot be reused"
            )
        if self.teacher.cache and self.data.noise_pool is None:
            raise ValueError(
                "teacher.cache needs data.noise_pool (e.g. data.noise_pool=64): with fresh noise every step "
                "no (prompts, noise) batch repeats, so the cache would only grow"
            )
        zero = self.deepspeed.get("zero_optimization") or {}
        if not isinstance(zero, dict):
            raise ValueError(f"deepspeed.zero_optimization must be a mapping such as {{stage: 2}} (got {zero!r})")
        stage = zero.get("stage", 0)
        if stage not in (0, 1, 2, 3):
            raise ValueError(f"deepspeed.zero_optimization.stage must be 0, 1, 2 or 3 (got {stage!r})")
        for key in ("bf16", "fp16", "amp", "torch_autocast"):
            value = self.deepspeed.get(key)
            if isinstance(value, dict) and value.get("enabled", False):
                raise ValueError(
                    f"deepspeed.{key}: precision is set by train.precision (bf16 = autocast with float32 "
                    f"trainable weights; docs/config.md 'Precision'): remove deepspeed.{key}, set train.precision=bf16"
                )
        if stage == 3 and self.teacher.compile:
            raise ValueError("teacher.compile does not work with ZeRO-3 (the teacher's weights are partitioned "
                             "and gathered layer by layer); set teacher.compile=false or use stage 2")
        return self

    @property
    def base_dir(self) -> Path:
        return self._base_dir

    def resolve_path(self, value: str | Path) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else (self._base_dir / p)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")
