"""The RATS training recipe on a DeepSpeed engine.

``Trainer`` follows the recipe protocol ``setup() → train() → save_checkpoint() → cleanup()``;
:func:`train` runs it for a config. One process on a CPU needs no launcher; ``deepspeed`` or
``torchrun`` launching ``rats-run`` runs data parallel, each rank on its slice of every global batch.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rats_core.config import RatsConfig
from rats_core.errors import CheckpointError, ConfigError, PluginError, RatsError, TrainingError
from rats_core.method.objective import ObjectiveSettings, RatsObjective
from rats_core.method.teacher import Teacher, TeacherCache
from rats_core.parallel import zero
from rats_core.parallel.distributed import (
    DistInfo,
    all_reduce_mean,
    any_rank,
    barrier,
    ranks_text,
    set_collective_timeout,
    setup,
)
from rats_core.parallel.peers import PeerWatch
from rats_core.prompts import PromptSampler, load_prompts
from rats_core.timing import PhaseTimer
from rats_core.training import checkpoint as ckpt
from rats_core.training import precision, ranks
from rats_core.training.callbacks import CallbackList, RunState, build_callbacks
from rats_core.training.components import Components, apply_lora, build_components  # noqa: F401  (re-exported)
from rats_core.training.engine import (
    deepspeed_config,
    lr_lambda,
    partition_teacher,
    quiet_deepspeed_logs,
    zero3_load_options,
)
from rats_core.training.gate_check import GateCheck
from rats_core.training.run_folder import RunFolder, RunLock  # noqa: F401  (RunLock re-exported)
from rats_core.training.signals import StopRequest

log = logging.getLogger("rats")


class TrainingInterrupted(RatsError):
    """SIGINT/SIGTERM: a checkpoint was saved and the run can be resumed."""

    exit_code = 130


def batch_noise(backbone: Any, seed: int, index: int, global_batch: int, rank: int, per_rank: int) -> torch.Tensor:
    """Initial noise for this rank's slice of global batch ``index``: it depends only on (seed, index),
    so resumed and multi-rank runs draw exactly the noise an uninterrupted one-rank run draws."""
    g = torch.Generator().manual_seed(seed * 7919 + index * 104729 + 17)
    full = torch.randn(backbone.latent_shape(global_batch), generator=g)
    return full[rank * per_rank : (rank + 1) * per_rank]


# ----------------------------------------------------------------------------- trainer


@dataclass
class TrainResult:
    output_dir: Path
    steps: int
    history: list[dict[str, float]] = field(default_factory=list)
    export_dir: Path | None = None
    report: dict[str, Any] | None = None


class Trainer:
    """The RATS recipe: ``setup()``, ``train()``, ``save_checkpoint()``, ``cleanup()``."""

    def __init__(self, cfg: RatsConfig):
        self.cfg = cfg
        self.output_dir = Path(cfg.output_dir).expanduser().resolve()
        self.dist: DistInfo | None = None
        self.step = 0
        self.history: list[dict[str, float]] = []
        #: the steps at which this run was resumed after an interruption, oldest first (kept in checkpoints)
        self.resumed_at: list[int] = []
        self.folder = RunFolder(self.output_dir)
        self.stop = StopRequest()
        self.callbacks: CallbackList | None = None
        self.state: RunState | None = None
        self.timings: dict[str, float] = {}
        self.base_state: dict[str, torch.Tensor] | None = None
        self._setup_done = False
        #: the step of the newest checkpoint this process saved (None: none yet)
        self._saved_step: int | None = None
        #: heartbeats and the watch on another rank (several ranks only; rats_core/parallel/peers.py)
        self.watch: PeerWatch | None = None

    # -- setup

    def setup(self) -> None:
        cfg = self.cfg
        # setup (rendezvous, loading models, rank 0 writing the base weights) runs under the long bound;
        # the training steps' collectives get train.collective_timeout at the end of setup
        self.dist = setup(cfg.train.device, timeout=cfg.train.save_timeout, long_timeout=cfg.train.save_timeout)
        d = self.dist
        self.watch = ranks.start_watch(self)
        from rats_core.training.threads import apply_threads

        self.thread_policy = apply_threads(cfg.train.threads, verbose=self.dist.is_main)
        if cfg.train.batch_size <= 0:
            raise ConfigError("train.batch_size must be positive")
        self.stop.announce = d.is_main
        ranks.claim_shared_folder(self)

        resume_from = self.folder.resume_target(cfg)
        # built first: a bad callbacks section fails before any model loads
        self.callbacks = build_callbacks(cfg, d.rank)
        self.state = RunState(cfg, self.output_dir, cfg.train.steps, d.rank, d.world_size, trainer=self)
        torch.manual_seed(cfg.seed)
        device = d.device
        self.zero_stage = int((cfg.deepspeed.get("zero_optimization") or {}).get("stage", 0))
        zero3 = self.zero_stage == 3
        precision.enable_tf32(device, cfg.train.tf32)
        self.components = build_components(cfg, backbone_options=zero3_load_options(cfg, device))
        c = self.components
        self.backbone = c.backbone
        self.rewards = c.rewards.to(device)

        student = self.backbone.denoiser
        if cfg.student.lora is not None:
            student = apply_lora(student, cfg.student.lora, list(getattr(self.backbone, "lora_target_modules", [])))
            self.backbone.denoiser = student
        else:
            student.requires_grad_(True)
        upcast = precision.upcast_trainable(student)
        if upcast and d.is_main:
            log.info("precision: %d trainable tensors stored in float32 (loaded as %s)", len(upcast),
                     cfg.backbone.options.get("denoiser_dtype", "a 16-bit dtype"))
        self._move_to_device(student, device, denoiser=not zero3)
        student.train()
        self.trainable_names = [n for n, p in student.named_parameters() if p.requires_grad]
        if not self.trainable_names:
            raise ConfigError("the student has no trainable parameters")
        # Below ZeRO-3 the teacher shares the student's frozen tensors (a LoRA run's teacher then
        # costs only the adapters). Under ZeRO-3 it is its own copy, partitioned by a second
        # DeepSpeed engine below, so it costs 1/N of the model per rank.
        self.teacher = Teacher(student, kind=cfg.teacher.kind, decay=cfg.teacher.ema_decay, share_frozen=not zero3)

        self.prompts = load_prompts(cfg.data.prompts, cfg.base_dir, "data.prompts")
        self.global_batch = cfg.train.batch_size * d.world_size
        self.sampler = PromptSampler(self.prompts, cfg.seed, self.global_batch)
        settings = ObjectiveSettings.from_config(cfg)
        if zero3:  # ZeRO-3 gathers into parameters inside the rollout: no inference tensors there
            settings.teacher_inference_mode = False
        self.objective = RatsObjective(
            self.backbone,
            self.rewards,
            c.gate,
            c.horizons,
            settings,
            gate_name=cfg.gate.name,
            horizons_name=cfg.horizons.name,
        )
        self.timer = PhaseTimer(cfg.train.profile, d.device)
        self.gate_check = GateCheck(cfg, d.is_main)
        self.objective.timer = self.timer
        if not self.objective.schedules.exact:
            log.warning("teacher σ's do not contain every student σ (teacher.alignment=nearest)")

        import deepspeed

        params = [p for p in student.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            params, lr=cfg.train.lr, betas=cfg.train.adam_betas, weight_decay=cfg.train.weight_decay
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
        ds_config = deepspeed_config(cfg, d.world_size)
        self.ds_config = ds_config
        #: fp32 ZeRO-0 clips in the trainer (see _clip_gradients); otherwise DeepSpeed clips
        self.clip_norm = 0.0
        if self.zero_stage == 0 and "gradient_clipping" not in cfg.deepspeed:
            self.clip_norm = float(ds_config["gradient_clipping"])
            ds_config["gradient_clipping"] = 0.0
        quiet_deepspeed_logs()
        try:
            self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
                model=student, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config, model_parameters=params
            )
            self.teacher_engine = partition_teacher(self.teacher.module, ds_config) if zero3 else None
        except (ValueError, AssertionError) as exc:
            raise ConfigError(f"deepspeed: {exc}") from None
        self.student = self.engine.module
        self._trainable_params = [p for p in self.student.parameters() if p.requires_grad]
        if d.world_size == 1 and self.zero_stage == 0:
            # DeepSpeed all-reduces gradients even within a one-rank group; nothing to average here.
            self.engine.enable_backward_allreduce = False
        if not zero3:
            self.teacher.module.to(device)
        if cfg.loss.beta > 0:
            self._check_rewards_differentiable(device)
        #: what the training step calls for the teacher's rollout (the same parameters, compiled or not)
        self.teacher_net = torch.compile(self.teacher.module) if cfg.teacher.compile else self.teacher.module
        self.teacher_cache = TeacherCache() if cfg.teacher.cache else None

        try:
            if cfg.eval.at_end:
                self._keep_base_weights()
        except OSError as exc:
            raise self.write_failed("write base.safetensors", exc) from None
        if resume_from is not None:
            self.load_checkpoint(resume_from)
        if d.is_main:
            try:
                self.folder.write_config(cfg)
            except OSError as exc:
                raise self.write_failed("write the run files (config.yaml)", exc) from None
        self.stop.install()
        self._setup_done = True

    def _move_to_device(self, student: nn.Module, device: torch.device, *, denoiser: bool) -> None:
        """Frozen parts (text encoders, VAE) to ``device``; the denoiser too unless ZeRO-3 will
        partition it from host memory."""
        frozen = getattr(self.backbone, "frozen_modules", None)
        if not denoiser and callable(frozen):
            for m in frozen():
                m.to(device)
            if hasattr(self.backbone, "device"):
                self.backbone.device = device
            return
        if callable(getattr(self.backbone, "to", None)):
            self.backbone.to(device)
        student.to(device)

    def _check_rewards_differentiable(self, device: torch.device) -> None:
        """A weighted reward whose score carries no gradient would make −β·R train nothing, silently;
        check once, on one decoded latent, before the first step (PluginError naming the reward)."""
        with torch.no_grad():
            images = self.backbone.decode(torch.zeros(self.backbone.latent_shape(1), device=device))
        self.rewards.check_differentiable(images, self.prompts[:1])

    def _keep_base_weights(self) -> None:
        """The base model's trainable weights, for the report's "base" rows; stored once per run
        folder so a resumed run still compares against the true base."""
        path = self.output_dir / "base.safetensors"
        fresh = not path.is_file()
        barrier()  # every rank has looked before rank 0 may write it
        if fresh:
            state = self.student_state(rank0_only=True)  # gathered on rank 0 only, a few tensors at a time
            if self.dist.is_main:
                tmp = path.with_name(".base.safetensors.tmp")
                ckpt.save_tensor_file(state, tmp)
                os.replace(tmp, path)
            del state
            barrier()
        # read tensor by tensor when the report swaps them in: no rank holds a copy of the model meanwhile
        self.base_state = ckpt.open_tensor_file(path)

    # -- training

    def train(self) -> TrainResult:
        """The loop: steps until ``train.steps``, events around them (rats_core/training/callbacks.py), a final
        checkpoint, then ``fit_end`` (the built-in export and report run there)."""
        cfg = self.cfg
        d = self.dist
        assert d is not None and self.callbacks is not None
        total = cfg.train.steps
        #: the run had reached train.steps before this process started (a rerun of a finished run)
        self.already_finished = self.step >= total
        if d.is_main and not self.resumed_at and self.step == 0:
            print(f"training: {total} steps on {ranks_text(d.world_size)} ({d.device.type}) in {self.output_dir}",
                  file=sys.stderr)
        self.callbacks.fire("fit_start", self.state)
        if d.world_size > 1:
            # every rank set up and through fit_start (rank 0 opens the loggers): from here on, a training
            # step's collectives wait at most train.collective_timeout for the others
            barrier(long=True)
            set_collective_timeout(cfg.train.collective_timeout)
        if self.watch is not None:
            self.watch.set_phase("train")
        while self.step < total:
            if any_rank(self.stop.requested, d.device):
                self.save_checkpoint()
                raise TrainingInterrupted(
                    f"interrupted at step {self.step}/{total}; checkpoint saved in "
                    f"{ckpt.checkpoint_dir(self.output_dir) / ckpt.step_name(self.step)}. "
                    "Run the same command again to resume."
                )
            values = self.train_step()
            self.thread_policy.tick()
            self.step += 1
            self.after_step(values)
        if self._saved_step != self.step or not ckpt.list_checkpoints(self.output_dir):
            self.save_checkpoint()
        result = TrainResult(self.output_dir, self.step, self.history)
        self.callbacks.fire("fit_end", self.state, result)
        return result

    def after_step(self, values: dict[str, float]) -> None:
        """What follows an optimizer step: the history, then ``step_end`` for every callback (logging,
        periodic evaluation, checkpoints). A plugin's callback that raises stops the run, on every rank,
        after a checkpoint of this step (so nothing trained is lost); its error names it and its plugin."""
        cfg = self.cfg
        if self.step % cfg.train.log_every == 0 or self.step == cfg.train.steps:
            self.history.append({"step": self.step, **values})
        self.gate_check(self.step, values)
        error: BaseException | None = None
        try:
            self.callbacks.fire("step_end", self.state, values)
        except RatsError as exc:
            error = exc
        if any_rank(error is not None, self.dist.device):
            # A plugin's callback failed: keep this step's training. A failed write of the trainer's
            # own (checkpoint, metrics on a full disk) is not retried: its message says what is kept.
            rescue = any_rank(isinstance(error, PluginError), self.dist.device)
            try:
                if rescue and self._saved_step != self.step:
                    self.save_checkpoint()
            except RatsError:
                pass  # the callback's error is the one to report
            if error is None:
                raise TrainingError(f"stopped at step {self.step}: a callback failed on another rank "
                                    "(its message is in that rank's log); a checkpoint of this step was saved")
            raise error

    def train_step(self) -> dict[str, float]:
        cfg = self.cfg
        d = self.dist
        accum = cfg.train.gradient_accumulation
        sums: dict[str, torch.Tensor] = {}
        t0 = time.perf_counter()
        pool = cfg.data.noise_pool
        for micro in range(accum):
            index = self.step * accum + micro
            if pool:  # a fixed pool of (prompts, noise) batches, cycled
                index %= pool
            prompts = self.sampler.batch(index, d.rank, d.world_size)
            noise = batch_noise(
                self.backbone, cfg.seed, index, self.global_batch, d.rank, cfg.train.batch_size
            ).to(d.device)
            cond = teacher_out = None
            with precision.autocast(d.device, cfg.train.precision):
                if self.teacher_cache is not None:
                    teacher_out = self.teacher_cache.get(index)
                    if teacher_out is None:
                        with self.timer.phase("encode_prompts"), torch.no_grad():
                            cond = self.backbone.encode_prompts(prompts)
                        with self.timer.phase("teacher_rollout"):
                            teacher_out = self.objective.teacher_rollout(self.teacher_net, noise, cond, prompts)
                        self.teacher_cache.put(index, teacher_out)
                loss, metrics = self.objective(
                    self.engine, self.teacher_net, prompts, noise, cond=cond, teacher_out=teacher_out
                )
            bad = any_rank(not bool(torch.isfinite(loss)), d.device)
            if bad:
                latest = ckpt.latest_checkpoint(self.output_dir)
                kept = f"the last good checkpoint is {latest}" if latest else "no checkpoint had been saved yet"
                raise TrainingError(
                    f"the loss became non-finite ({loss.item()}) at step {self.step + 1}; stopping without saving, "
                    f"{kept}. Lower train.lr, check the rewards' scales, or try train.precision=fp32."
                )
            with self.timer.phase("backward"):
                self.engine.backward(loss)
            with self.timer.phase("optimizer"):
                if self.clip_norm > 0 and micro == accum - 1:
                    self._clip_gradients()
                self.engine.step()
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0) + v.detach().float()
        with self.timer.phase("ema"):
            self.teacher_update()
        with self.timer.phase("logging"):
            # One stacked tensor: one all-reduce across ranks and one device-to-host read per step,
            # not one of each per metric.
            names = list(sums)
            means = all_reduce_mean(torch.stack([sums[k] for k in names]) / accum).tolist()
            values = dict(zip(names, means))
            values["lr"] = float(self.optimizer.param_groups[0]["lr"])
        values.update(self.timer.pop())
        values["step_time"] = time.perf_counter() - t0
        return values

    def _clip_gradients(self) -> None:
        """Clip by global norm with torch's own ``clip_grad_norm_`` (multi-tensor kernels on GPU).

        Used for fp32 ZeRO-0, where every rank holds the full, already averaged gradients after the
        boundary backward. DeepSpeed's clipping would compute one norm per tensor and all-reduce the
        total (a collective even on one rank) for the same result; with ZeRO-1/2/3 or bf16 DeepSpeed's
        optimizer owns the gradients and clips them itself."""
        torch.nn.utils.clip_grad_norm_(self._trainable_params, self.clip_norm)

    def teacher_update(self) -> None:
        # Under ZeRO-3 each rank moves its own shard of the teacher towards its shard of the student.
        self.teacher.update(self.student)

    # -- checkpoints

    def student_state(self, rank0_only: bool = True) -> dict[str, torch.Tensor]:
        """The trainable weights as full CPU tensors (float32 under the precision policy). Every rank
        must call it; under ZeRO-3 it gathers a few tensors at a time, and with ``rank0_only`` only
        rank 0 keeps them."""
        return zero.gathered_state(self.student, self.trainable_names, rank0_only=rank0_only)

    def teacher_state(self) -> dict[str, torch.Tensor]:
        """The teacher's tracked tensors as full CPU tensors on rank 0 (every rank must call it)."""
        if self.teacher_engine is None:
            return {k: v.cpu() for k, v in self.teacher.state_dict().items()} if self.dist.is_main else {}
        return zero.gathered_state(self.teacher.module, self.teacher.names)

    def save_checkpoint(self) -> Path:
        """Save atomically; a failed write (disk full, read-only folder) stops the run with a
        TrainingError, the partial save removed and the previous checkpoint untouched. The waits for rank 0's
        writes are bounded by ``train.save_timeout``, not the collective timeout."""
        phase = self.watch.phase if self.watch is not None else None
        if self.watch is not None:
            self.watch.set_phase("save")
        try:
            final = self._save_checkpoint()
        except OSError as exc:
            partial = ckpt.checkpoint_dir(self.output_dir) / f".tmp_{ckpt.step_name(self.step)}"
            shutil.rmtree(partial, ignore_errors=True)  # give back the space the partial save took
            raise self.write_failed(f"save checkpoint {ckpt.step_name(self.step)}", exc) from None
        if self.watch is not None and phase is not None:  # not on failure: the message says it was saving
            self.watch.set_phase(phase)
        return final

    def write_failed(self, what: str, exc: OSError) -> TrainingError:
        """The TrainingError for a failed write (disk full, read-only folder), naming what is kept."""
        latest = ckpt.latest_checkpoint(self.output_dir)
        kept = f"the previous checkpoint {latest} is intact" if latest else "no checkpoint had been saved yet"
        return TrainingError(
            f"could not {what}: {exc.strerror or exc}; {kept}. Free some space (or make {self.output_dir} "
            "writable) and run the same command again to resume"
        )

    def _save_checkpoint(self) -> Path:
        d = self.dist
        tmp = None
        if d.is_main:
            tmp = ckpt.begin_save(self.output_dir, self.step)
        barrier(long=True)
        tmp = ckpt.checkpoint_dir(self.output_dir) / f".tmp_{ckpt.step_name(self.step)}"
        student = self.student_state()
        teacher = self.teacher_state()
        opt_state = {
            "optimizer": ckpt.plain_state(self.optimizer.state_dict()),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else {},
            "rng": ckpt.rng_state(d.device),
        }
        ckpt.save_torch_plain(opt_state, tmp / "optimizer" / f"rank_{d.rank:05d}.pt")
        if d.is_main:
            ckpt.save_tensor_file(student, tmp / "student.safetensors")
            ckpt.save_tensor_file(teacher, tmp / "teacher.safetensors")
            state = {
                "step": self.step,
                "world_size": d.world_size,
                "nodes": d.nodes,
                "layout": list(d.layout),
                "zero_stage": self.zero_stage,
                "trainable": self.trainable_names,
                "backbone": self.cfg.backbone.name,
                "lora": self.cfg.student.lora is not None,
                "student_steps": self.cfg.student.steps,
                "precision": self.cfg.train.precision,
                "resumed_at": self.resumed_at,
            }
            (tmp / "state.json").write_text(json.dumps(state, indent=2))
        # every rank's optimizer shard is written before rank 0 commits: a rank that dies before this
        # barrier leaves the temporary folder, never a checkpoint that resume would pick up
        barrier(long=True)
        final = ckpt.checkpoint_dir(self.output_dir) / ckpt.step_name(self.step)
        if d.is_main:
            final = ckpt.commit_save(tmp, self.output_dir, self.step, self.cfg.train.keep_checkpoints)
        barrier(long=True)
        self._saved_step = self.step
        if self.callbacks is not None:
            self.callbacks.fire("checkpoint_saved", self.state, final)
        return final

    def load_checkpoint(self, folder: Path) -> None:
        state = ckpt.read_state(folder)
        if state.get("trainable") != self.trainable_names:
            raise CheckpointError(
                f"{folder}: trained a different set of parameters (backbone or LoRA settings changed); "
                "resume with the config it was written with, or start a new output_dir"
            )
        if state.get("world_size") != self.dist.world_size:
            raise CheckpointError(
                f"{folder}: written by {state.get('world_size')} ranks, now {self.dist.world_size}; "
                "resume with the same number of processes"
            )
        if "layout" in state and tuple(state["layout"]) != self.dist.layout:
            then = DistInfo(0, int(state["world_size"]), 0, self.dist.device, layout=tuple(state["layout"]))
            raise CheckpointError(
                f"{folder}: written by {then.world_size} ranks on {then.layout_text()}, now on "
                f"{self.dist.layout_text()}; resume with the same number of nodes and ranks per node (the "
                "collectives' order of summation follows the layout, so another one would not continue the run "
                "exactly)"
            )
        # read tensor by tensor: a rank holds one full tensor at a time (under ZeRO-3 it keeps its shard of it)
        student = ckpt.open_tensor_file(folder / "student.safetensors")
        teacher = ckpt.open_tensor_file(folder / "teacher.safetensors")
        missing = [n for n in self.teacher.names if n not in teacher]
        if missing:
            raise CheckpointError(f"{folder}/teacher.safetensors: lacks '{missing[0]}'")
        if self.zero_stage == 3:
            ckpt.check_tensors(student, zero.full_shapes(self.student), folder / "student.safetensors",
                               self.trainable_names)
            zero.load_partitioned(self.student, student, self.trainable_names)
            zero.load_partitioned(self.teacher.module, teacher, self.teacher.names)
        else:
            ckpt.load_into(self.student, student, folder / "student.safetensors", self.trainable_names)
            self.teacher.load_state_dict(teacher)
        opt = ckpt.load_torch_plain(folder / "optimizer" / f"rank_{self.dist.rank:05d}.pt")
        if not isinstance(opt, dict) or "optimizer" not in opt:
            raise CheckpointError(f"{folder}: optimizer state is malformed")
        live = self.optimizer.state_dict()
        try:
            merged = ckpt.restore_state(opt["optimizer"], live)
        except CheckpointError as exc:
            raise CheckpointError(f"{folder}: {exc}") from None
        if self.zero_stage in (1, 2, 3):
            # DeepSpeed's ZeRO optimizers take every rank's state as a list indexed by data-parallel
            # rank and read their own entry (written by this rank: the world size is checked above).
            states: list[Any] = [None] * self.dist.world_size
            states[self.dist.rank] = merged
            try:
                self.optimizer.load_state_dict(states, load_optimizer_states=True, load_from_fp32_weights=True)
            except (RuntimeError, KeyError, IndexError, ValueError) as exc:
                raise CheckpointError(
                    f"{folder}: the optimizer state does not fit this run ({type(exc).__name__}: {exc}); resume "
                    "with the DeepSpeed settings it was written with, or start a new output_dir"
                ) from None
        else:
            self.optimizer.load_state_dict(merged)
        if self.scheduler is not None and opt.get("scheduler"):
            self.scheduler.load_state_dict(opt["scheduler"])
        if "rng" in opt:
            ckpt.set_rng_state(opt["rng"], self.dist.device)
        elif self.dist.is_main:
            log.warning("%s: written before checkpoints kept the random number generators' state; the "
                        "resumed run draws different dropout/noise than an uninterrupted one would", folder)
        self.step = int(state["step"])
        self._saved_step = self.step
        self.resumed_at = [int(s) for s in state.get("resumed_at", [])]
        if self.step < self.cfg.train.steps:
            self.resumed_at.append(self.step)
        if self.dist.is_main:
            if self.step >= self.cfg.train.steps:
                print(f"already finished: step {self.step}/{self.cfg.train.steps} in {self.output_dir} "
                      "(nothing to train; raise train.steps to train on)", file=sys.stderr)
            else:
                print(f"resumed from {folder} (step {self.step}/{self.cfg.train.steps}) on "
                      f"{ranks_text(self.dist.world_size)}", file=sys.stderr)

    # -- end of run

    def cleanup(self) -> None:
        self.stop.restore()
        if self.watch is not None:
            self.watch.stop()
        self.folder.release(setup_failed=not self._setup_done)



def train(cfg: RatsConfig) -> TrainResult:
    """Train the student for ``cfg``; the built-in callbacks export it and write the report at the end."""
    trainer = Trainer(cfg)
    try:
        trainer.setup()
        result = trainer.train()
        ranks.finish(trainer)
        if trainer.dist.is_main:
            print(f"done: {result.steps} steps; run folder {trainer.output_dir}", file=sys.stderr)
        return result
    except BaseException as exc:
        # a collective that failed because a rank is gone: one line naming it, not a gloo/NCCL traceback
        lost = ranks.peer_failure(trainer, exc)
        ranks.leave(trainer, lost or exc, interrupted=isinstance(exc, (TrainingInterrupted, KeyboardInterrupt)))
        if trainer.callbacks is not None and trainer.state is not None:
            for problem in trainer.callbacks.fire_quietly("exception", trainer.state, lost or exc):
                log.warning("%s", problem)
        if lost is not None:
            raise lost from None
        raise
    finally:
        trainer.cleanup()
