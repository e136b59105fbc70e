"""Reading a finished (or running) training run back: its config, student, teacher and base weights.

A run folder is what ``rats-run`` writes into ``output_dir``::

    config.yaml                     the resolved configuration
    base.safetensors                the base model's trainable weights (written when eval.at_end)
    checkpoints/step_XXXXXXXX/      student.safetensors, teacher.safetensors, optimizer/, state.json

``rats eval``, ``rats sample`` and ``rats export`` start from :func:`load_run`.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from rats_core.config import RatsConfig, check_components, load_config
from rats_core.errors import CheckpointError, RatsError, RunFolderError
from rats_core.method.teacher import Teacher
from rats_core.training import checkpoint as ckpt
from rats_core.training.precision import upcast_trainable


@dataclass
class LoadedRun:
    """What :func:`load_run` returns; unpacks as ``cfg, components, student, teacher, base_state``."""

    cfg: RatsConfig
    components: Any
    #: the trained network (LoRA adapters injected for LoRA runs), in eval mode, on ``device``
    student: nn.Module
    #: the EMA (or frozen) teacher of the checkpoint; ``None`` when not requested
    teacher: nn.Module | None
    #: the base model's values of the student's trainable tensors; ``None`` when not requested
    base_state: dict[str, torch.Tensor] | None
    run_dir: Path
    checkpoint: Path
    #: the checkpoint's state.json (``step``, ``trainable``, ``student_steps``, ...)
    state: dict[str, Any]
    device: torch.device

    def __iter__(self) -> Iterator[Any]:
        return iter((self.cfg, self.components, self.student, self.teacher, self.base_state))

    @property
    def step(self) -> int:
        return int(self.state.get("step", 0))

    @property
    def is_lora(self) -> bool:
        return self.cfg.student.lora is not None

    @property
    def trained_steps(self) -> int:
        """K, the number of sampler steps the student was trained for."""
        return int(self.state.get("student_steps") or self.cfg.student.steps)


def pick_device(requested: str | None = None, cfg: RatsConfig | None = None) -> torch.device:
    """``requested``, else the config's ``train.device``, else cuda when available."""
    name = requested or (cfg.train.device if cfg is not None else None)
    if not name:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise RatsError(f"device '{name}': not a torch device (use cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RatsError(f"device '{name}': CUDA is not available on this machine; use --device cpu")
    return device


def check_run_dir(run_dir: str | Path) -> Path:
    """The run folder as a resolved path; RunFolderError when it is missing or not a run."""
    path = Path(run_dir).expanduser()
    if not path.exists():
        raise RunFolderError(f"{path}: no such run folder (give the output_dir of a rats-run training)")
    if not path.is_dir():
        raise RunFolderError(f"{path}: is a file, expected a run folder (the output_dir of a rats-run training)")
    if not (path / "config.yaml").is_file():
        raise RunFolderError(
            f"{path}: not a rats run folder (no config.yaml inside); give the output_dir of a rats-run training"
        )
    return path.resolve()


def resolve_checkpoint(run_dir: Path, checkpoint: str | Path | None) -> Path:
    """The latest complete checkpoint, or ``checkpoint`` given as a folder, a step folder's name
    (``step_00000100``) or a step number (``100``)."""
    if checkpoint is None or str(checkpoint) == "":
        latest = ckpt.latest_checkpoint(run_dir)
        if latest is None:
            raise CheckpointError(
                f"{run_dir}: has no checkpoint yet (nothing complete under checkpoints/); "
                "wait for the training to save one, or pass --checkpoint PATH"
            )
        return latest
    text = str(checkpoint)
    candidates = [Path(text).expanduser(), ckpt.checkpoint_dir(run_dir) / text]
    if text.isdigit():
        candidates.append(ckpt.checkpoint_dir(run_dir) / ckpt.step_name(int(text)))
    for c in candidates:
        if c.is_dir():
            if not (c / "state.json").is_file():
                raise CheckpointError(f"{c}: not a rats checkpoint folder (no state.json inside)")
            return c.resolve()
    available = ", ".join(p.name for _, p in ckpt.list_checkpoints(run_dir)) or "none"
    raise CheckpointError(f"checkpoint '{text}': not found (checkpoints of {run_dir}: {available})")


def load_run(
    run_dir: str | Path,
    checkpoint: str | Path | None = None,
    *,
    overrides: Sequence[str] = (),
    teacher: bool = True,
    base: bool = True,
    rewards: bool = True,
    device: str | torch.device | None = None,
) -> LoadedRun:
    """Rebuild a run's components from its ``config.yaml`` and load a checkpoint's student.

    ``checkpoint`` defaults to the latest one. ``teacher=False`` / ``base=False`` skip the teacher
    copy and the base weights (each a full copy of the trainable weights) when they are not needed;
    ``rewards=False`` builds no reward model (exports need none).
    The base weights come from ``base.safetensors`` when the run wrote it, otherwise from the freshly
    built backbone before the checkpoint is loaded (the same weights unless the backbone's source
    changed since training).

    Usage::

        cfg, components, student, teacher, base_state = load_run("runs/digits")
    """
    from rats_core.training.components import apply_lora, build_components

    run_dir = check_run_dir(run_dir)
    cfg = load_config(run_dir / "config.yaml", list(overrides))
    check_components(cfg, source=str(run_dir / "config.yaml"))
    folder = resolve_checkpoint(run_dir, checkpoint)
    state = ckpt.read_state(folder)
    if state.get("backbone") not in (None, cfg.backbone.name):
        raise CheckpointError(
            f"{folder}: written by a run of backbone '{state['backbone']}', but {run_dir} uses "
            f"'{cfg.backbone.name}' (checkpoint of another architecture)"
        )
    if bool(state.get("lora", cfg.student.lora is not None)) != (cfg.student.lora is not None):
        kind = "a LoRA" if state.get("lora") else "a full fine-tuning"
        raise CheckpointError(
            f"{folder}: written by {kind} run, but {run_dir}/config.yaml "
            f"{'has no' if cfg.student.lora is None else 'has a'} student.lora section (checkpoint of another run)"
        )
    dev = device if isinstance(device, torch.device) else pick_device(device, cfg)

    # Seeded like the trainer, without disturbing the caller's RNG, so randomly initialised parts
    # (LoRA A matrices, toy models) come out as they did in training.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        components = build_components(cfg, rewards=rewards)
        backbone = components.backbone
        student = backbone.denoiser
        if cfg.student.lora is not None:
            student = apply_lora(student, cfg.student.lora, list(getattr(backbone, "lora_target_modules", [])))
            backbone.denoiser = student
        else:
            student.requires_grad_(True)
        upcast_trainable(student)  # as in training: trained tensors are float32 (rats_core/training/precision.py)
    names = [n for n, p in student.named_parameters() if p.requires_grad]
    trained = state.get("trainable")
    if trained is not None and list(trained) != names:
        extra = sorted(set(trained) - set(names))[:1] or sorted(set(names) - set(trained))[:1]
        raise CheckpointError(
            f"{folder}: trained a different set of parameters than {run_dir}/config.yaml builds "
            f"(e.g. '{extra[0] if extra else '?'}'): a checkpoint of another architecture or LoRA setting"
        )

    base_state = None
    if base:
        base_file = run_dir / "base.safetensors"
        if base_file.is_file():
            base_state = ckpt.load_tensor_file(base_file)
            missing = [n for n in names if n not in base_state]
            if missing:
                raise CheckpointError(f"{base_file}: lacks '{missing[0]}' (written by another configuration?)")
        else:
            base_state = {n: p.detach().clone().cpu() for n, p in student.named_parameters() if n in set(names)}

    student_file = folder / "student.safetensors"
    ckpt.load_into(student, ckpt.load_tensor_file(student_file), student_file, names)
    student.requires_grad_(False)
    student.eval()
    student.to(dev)

    teacher_module = None
    if teacher:
        for n, p in student.named_parameters():
            p.requires_grad_(n in set(names))  # Teacher tracks the trainable tensors
        t = Teacher(student, kind=cfg.teacher.kind, decay=cfg.teacher.ema_decay)
        student.requires_grad_(False)
        teacher_file = folder / "teacher.safetensors"
        try:
            t.load_state_dict(ckpt.load_tensor_file(teacher_file))
        except KeyError as exc:
            raise CheckpointError(f"{teacher_file}: {exc.args[0]}") from None
        except RuntimeError as exc:  # shape mismatch in copy_
            raise CheckpointError(f"{teacher_file}: does not fit the model ({exc})") from None
        teacher_module = t.module.to(dev).eval()

    if components.rewards is not None:
        components.rewards.to(dev)
    return LoadedRun(cfg, components, student, teacher_module, base_state, run_dir, folder, state, dev)


@contextlib.contextmanager
def swapped_state(module: nn.Module, state: dict[str, torch.Tensor]) -> Iterator[nn.Module]:
    """Temporarily copy ``state`` into ``module``'s parameters of the same names (e.g. the base
    weights into the student), restoring the module's own values afterwards."""
    params = dict(module.named_parameters())
    names = [n for n in state if n in params]
    saved = {n: params[n].detach().clone() for n in names}
    with torch.no_grad():
        for n in names:
            params[n].copy_(state[n].to(params[n].dtype))
    try:
        yield module
    finally:
        with torch.no_grad():
            for n in names:
                params[n].copy_(saved[n])


def check_output_path(path: str | Path, *, folder: bool, what: str = "-o") -> Path:
    """Create the parent (or the folder) of an output and check it can be written; UsageError otherwise."""
    from rats_core.errors import UsageError

    p = Path(path).expanduser()
    target = p if folder else p.parent
    if not folder and p.is_dir():
        raise UsageError(f"{what} {p}: is a directory, expected a file name")
    if folder and p.exists() and not p.is_dir():
        raise UsageError(f"{what} {p}: is a file, expected a folder")
    try:
        target.mkdir(parents=True, exist_ok=True)
        probe = target / f".rats_write_test_{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"{what} {p}: cannot write there ({exc.strerror or exc})") from None
    return p
