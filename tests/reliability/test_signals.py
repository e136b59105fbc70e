"""Faults from outside, on real processes: SIGTERM/SIGINT mid-step and mid-save, ``kill -9`` at
random moments, and a second run started on a folder in use. The run stops cleanly (exit 130 and a
usable checkpoint, or nothing half-written), and resuming ends with exactly the weights of an
uninterrupted run (CPU, fp32).

``slow_run.py`` is ``rats-run`` with hooks that widen the moment a signal should hit and mark it
with a file, so the tests do not depend on timing luck.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rats_core.training import checkpoint as ckpt
from rats_reliability import (
    BASE,
    assert_same_weights,
    final_weights,
    metric_lines,
    run_proc,
    script,
    start_proc,
    wait_for,
    write_config,
)

SLOW_RUN = str(Path(__file__).with_name("slow_run.py"))
STEPS = BASE["train"]["steps"]


def _slow(cfg: Path, marks: Path, step_delay: float = 0.0, save_delay: float = 0.0, *overrides: str):
    marks.mkdir(exist_ok=True)
    return start_proc([sys.executable, SLOW_RUN, str(cfg), *overrides], RATS_TEST_MARKS=str(marks),
                      RATS_TEST_STEP_DELAY=str(step_delay), RATS_TEST_SAVE_DELAY=str(save_delay))


def _finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def _resume_to_the_end(cfg: Path) -> str:
    res = run_proc([*script("rats-run"), str(cfg)])
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stderr


def _steps(run: Path) -> list[int]:
    return [s for s, _ in ckpt.list_checkpoints(run)]


@pytest.mark.parametrize("sig", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)],
                         ids=lambda s: s.name)
def test_signal_mid_step_saves_and_resume_matches(tmp_path, reference_run, sig):
    cfg = write_config(tmp_path)
    marks = tmp_path / "marks"
    proc = _slow(cfg, marks, step_delay=0.5)
    wait_for(lambda: (marks / "step_3").exists(), proc=proc)  # step 3 is between forward and backward
    proc.send_signal(sig)
    rc, err = _finish(proc)
    assert rc == 130, err[-3000:]
    assert "Traceback" not in err
    assert f"{sig.name} received: saving a checkpoint after this step" in err
    assert "error: interrupted at step 3/8; checkpoint saved in" in err and "Run the same command again" in err
    run = tmp_path / "run"
    assert _steps(run) == [2, 3]  # step 3 was finished, then saved
    assert not (run / ".rats.lock").exists() or _lock_is_free(run)
    out = _resume_to_the_end(cfg)
    assert "resumed from" in out and "(step 3/" in out
    assert_same_weights(final_weights(run, STEPS), reference_run)


def _lock_is_free(run: Path) -> bool:
    import fcntl

    with open(run / ".rats.lock", "a+") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        return True


def test_sigint_on_plain_rats_run(tmp_path):
    """The installed ``rats-run``, no test hooks: Ctrl-C while it trains; exit 130, a checkpoint,
    and the same command continues from it."""
    cfg = write_config(tmp_path, train={"steps": 400, "checkpoint_every": 0})
    run = tmp_path / "run"
    proc = start_proc([*script("rats-run"), str(cfg)])
    wait_for(lambda: metric_lines(run) >= 3, proc=proc)
    proc.send_signal(signal.SIGINT)
    rc, err = _finish(proc)
    assert rc == 130 and "Traceback" not in err, err[-3000:]
    assert "SIGINT received" in err and "error: interrupted at step" in err
    (step, folder), = ckpt.list_checkpoints(run)
    assert 3 <= step < 400
    res = run_proc([*script("rats-run"), str(cfg), f"train.steps={step + 2}"])
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"resumed from {folder} (step {step}/" in res.stderr
    assert _steps(run) == [step, step + 2]


def test_sigterm_mid_save_finishes_the_save_then_stops(tmp_path, reference_run):
    cfg = write_config(tmp_path)
    marks = tmp_path / "marks"
    proc = _slow(cfg, marks, save_delay=1.0)
    wait_for(lambda: (marks / "save_2").exists(), proc=proc)  # the step-4 checkpoint is being written
    proc.send_signal(signal.SIGTERM)
    rc, err = _finish(proc)
    assert rc == 130 and "Traceback" not in err, err[-3000:]
    assert "interrupted at step 4/8" in err
    run = tmp_path / "run"
    assert _steps(run) == [2, 4]
    assert not any(p.name.startswith((".tmp_", ".old_")) for p in ckpt.checkpoint_dir(run).iterdir())
    _resume_to_the_end(cfg)
    assert_same_weights(final_weights(run, STEPS), reference_run)


def test_second_signal_mid_save_stops_at_once_and_the_previous_checkpoint_is_used(tmp_path, reference_run):
    cfg = write_config(tmp_path)
    marks = tmp_path / "marks"
    proc = _slow(cfg, marks, save_delay=2.0)
    wait_for(lambda: (marks / "save_2").exists(), proc=proc)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)  # impatient: stop now, in the middle of writing step 4
    rc, err = _finish(proc)
    assert rc == 130 and "Traceback" not in err, err[-3000:]
    assert err.rstrip().endswith("interrupted")
    run = tmp_path / "run"
    assert _steps(run) == [2]  # the half-written step 4 is not a checkpoint
    out = _resume_to_the_end(cfg)
    assert "(step 2/" in out
    assert_same_weights(final_weights(run, STEPS), reference_run)


def test_second_process_on_a_folder_in_use_is_refused(tmp_path, reference_run):
    """Two real processes: the second ``rats-run`` on the same output_dir exits 2 at once, naming the
    first one's pid; the first finishes undisturbed with the weights of a run that was alone."""
    cfg = write_config(tmp_path)
    marks = tmp_path / "marks"
    first = _slow(cfg, marks, step_delay=1.0)  # a window wide enough for a second start on a loaded machine
    wait_for(lambda: (marks / "step_1").exists(), proc=first)
    second = run_proc([*script("rats-run"), str(cfg)])
    assert second.returncode == 2, second.stderr[-3000:]
    assert "Traceback" not in second.stderr
    assert f"is in use by a running training (pid {first.pid})" in second.stderr
    rc, err = _finish(first)
    assert rc == 0, err[-3000:]
    run = tmp_path / "run"
    assert metric_lines(run) == STEPS  # the second process appended nothing
    assert_same_weights(final_weights(run, STEPS), reference_run)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [int(x) for x in os.environ.get("RATS_KILL_SEEDS", "0,1,2").split(",")])
def test_kill_9_at_random_moments_then_resume_matches_uninterrupted(tmp_path, reference_run, seed):
    """SIGKILL twice at random moments (during setup, a step, a save, the export), then
    ``train.resume=auto`` to the end: the final weights equal the uninterrupted run's, bit for bit."""
    rng = random.Random(seed)
    cfg = write_config(tmp_path, train={"checkpoint_every": 1})  # a save every step: more to hit
    run = tmp_path / "run"
    kills = []
    for _ in range(2):
        done = max([s for s, _ in ckpt.list_checkpoints(run)], default=0)
        # kill after this process has logged 1..(steps left) steps, plus a random delay: lands in
        # a step, a save (one per step here) or the export
        target = metric_lines(run) + rng.randint(1, max(1, STEPS - done))
        delay = rng.uniform(0.0, 0.25)
        proc = start_proc([*script("rats-run"), str(cfg), "train.resume=auto"])
        try:
            wait_for(lambda: metric_lines(run) >= target or proc.poll() is not None)
            time.sleep(delay)
        finally:
            proc.kill()
            proc.communicate()
        kills.append((target, round(delay, 3), proc.returncode))
    # whatever was hit, every folder named like a checkpoint is a complete one (saves are renamed into
    # place when complete, pruned ones renamed away before deletion)
    for p in ckpt.checkpoint_dir(run).iterdir() if ckpt.checkpoint_dir(run).exists() else []:
        if ckpt.STEP_RE.match(p.name):
            for f in ("state.json", "student.safetensors", "teacher.safetensors", "optimizer/rank_00000.pt"):
                assert (p / f).is_file(), f"{p}/{f} missing after kills {kills}"
    res = run_proc([*script("rats-run"), str(cfg), "train.resume=auto"])
    assert res.returncode == 0, (kills, res.stderr[-3000:])
    assert_same_weights(final_weights(run, STEPS), reference_run)
