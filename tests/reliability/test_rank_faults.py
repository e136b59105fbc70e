"""One rank of a two-rank job dies (``kill -9``), hangs (SIGSTOP) or dies while a checkpoint is written; rank 0's
export outlasts the collective timeout. CPU, gloo, the toy backbone under ZeRO-2.

The job stops in bounded time: the surviving rank exits non-zero within ``train.collective_timeout`` (plus a
margin for a Python process with torch and DeepSpeed to end on a busy machine) with one ``error:`` line naming
the rank that is gone, the step, and the last complete checkpoint; nothing half-written is ever "latest"; the
same command resumes; under ``torchrun --max-restarts 1`` the job restarts itself and ends with the weights of
an uninterrupted run resumed from the same checkpoint.

Ranks are started as ``srun`` or ``mpirun`` start them (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT, no
agent that would stop the survivor for us), except where torchrun's restarts are the point. ``rank_run.py``
marks each rank's steps and saves with files (holding the process id), so the kills land where they should.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rats_core.training import checkpoint as ckpt
from rats_reliability import assert_same_weights, final_weights, start_proc, wait_for, write_config

pytestmark = pytest.mark.slow  # every test here launches two ranks (~15-25 s a launch on 2 CPU cores)

RANK_RUN = str(Path(__file__).with_name("rank_run.py"))
#: train.collective_timeout of these runs, seconds
TIMEOUT = 10
#: what "bounded" allows beyond it: the end of a Python process with torch and DeepSpeed on a busy machine
MARGIN = 15
STEPS = 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config(folder: Path, **train) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return write_config(folder, train={"steps": STEPS, "collective_timeout": TIMEOUT, "keep_checkpoints": 10,
                                       **train},
                        deepspeed={"zero_optimization": {"stage": 2}})


def two_ranks(cfg: Path, marks: Path, *overrides: str, **env: str) -> list[subprocess.Popen]:
    """Rank 0 and rank 1 of a job, each a plain process (rank 0 holds the store, as under srun)."""
    marks.mkdir(exist_ok=True)
    port = str(free_port())
    return [start_proc([sys.executable, RANK_RUN, str(cfg), *overrides], RANK=str(r), WORLD_SIZE="2",
                       LOCAL_RANK=str(r), MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RATS_TEST_MARKS=str(marks),
                       PYTHONWARNINGS="ignore", **env)
            for r in range(2)]


def torchrun(argv: list[str], marks: Path, **env: str) -> subprocess.Popen:
    marks.mkdir(exist_ok=True)
    return start_proc([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *argv],
                      RATS_TEST_MARKS=str(marks), PYTHONWARNINGS="ignore", **env)


def pid_at(marks: Path, name: str, procs: list[subprocess.Popen], timeout: float = 240) -> int:
    """Wait for the mark ``name`` (while every process still runs) and return the process id in it."""
    path = marks / name

    def ready() -> bool:
        for p in procs:
            if p.poll() is not None:
                _, err = p.communicate()
                raise AssertionError(f"a rank ended (rc {p.returncode}) before {name}:\n{err[-3000:]}")
        return path.is_file() and path.read_text().strip().isdigit()

    wait_for(ready, timeout=timeout)
    return int(path.read_text())


def survivor(proc: subprocess.Popen, since: float) -> tuple[int, str, float]:
    """The surviving rank's exit status, stderr and seconds from the fault to its end."""
    _, err = proc.communicate(timeout=TIMEOUT + MARGIN + 120)
    return proc.returncode, err, time.monotonic() - since


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err[-4000:]
    assert "Traceback" not in err, err[-4000:]
    return lines[0]


def finish_all(procs: list[subprocess.Popen]) -> list[tuple[int, str]]:
    out = []
    for p in procs:
        _, err = p.communicate(timeout=300)
        out.append((p.returncode, err))
    return out


def test_kill_9_of_one_rank_mid_step_stops_the_other_in_bounded_time_and_the_command_resumes(tmp_path):
    cfg = config(tmp_path)
    run = tmp_path / "run"
    procs = two_ranks(cfg, tmp_path / "marks", RATS_TEST_STEP_DELAY="0.3")
    os.kill(pid_at(tmp_path / "marks", "rank1_step_5", procs), signal.SIGKILL)
    since = time.monotonic()
    rc, err, took = survivor(procs[0], since)
    procs[1].wait(timeout=30)

    assert rc != 0, err[-3000:]
    assert took < TIMEOUT + MARGIN, f"rank 0 took {took:.1f} s to stop"
    line = one_error_line(err)
    latest = ckpt.checkpoint_dir(run) / ckpt.step_name(4)
    assert line.startswith("error: rank 1 (node 0, host ") and " vanished (no heartbeat for " in line, line
    assert "during step 5/8" in line, line
    assert f"The last complete checkpoint is {latest} (step 4)" in line, line

    # the last complete checkpoint is whole and loads
    assert ckpt.latest_checkpoint(run) == latest
    assert ckpt.read_state(latest)["step"] == 4
    for part in ("student", "teacher"):
        assert ckpt.load_tensor_file(latest / f"{part}.safetensors")
    for rank in range(2):
        assert "optimizer" in ckpt.load_torch_plain(latest / "optimizer" / f"rank_{rank:05d}.pt")

    # the same command resumes and finishes
    results = finish_all(two_ranks(cfg, tmp_path / "marks2"))
    assert [rc for rc, _ in results] == [0, 0], results[0][1][-3000:] + results[1][1][-3000:]
    assert f"resumed from {latest} (step 4/8)" in results[0][1]
    assert ckpt.latest_checkpoint(run) == ckpt.checkpoint_dir(run) / ckpt.step_name(STEPS)


def test_a_hung_rank_stops_the_other_within_the_timeout(tmp_path):
    """A rank that stops answering without its sockets closing (a frozen machine; on GPUs, a peer NCCL would
    wait for until its own timeout): the survivor's watch on its heartbeat stops it, with the same line."""
    cfg = config(tmp_path)
    procs = two_ranks(cfg, tmp_path / "marks", RATS_TEST_STEP_DELAY="0.3")
    hung = pid_at(tmp_path / "marks", "rank1_step_3", procs)
    os.kill(hung, signal.SIGSTOP)
    since = time.monotonic()
    try:
        rc, err, took = survivor(procs[0], since)
    finally:
        os.kill(hung, signal.SIGKILL)
        procs[1].wait(timeout=30)
    assert rc != 0, err[-3000:]
    assert took < TIMEOUT + MARGIN, f"rank 0 took {took:.1f} s to stop"
    line = one_error_line(err)
    assert "rank 1 (node 0, host " in line and " vanished " in line and "during step 3/8" in line, line
    assert f"The last complete checkpoint is {ckpt.checkpoint_dir(tmp_path / 'run') / ckpt.step_name(2)}" in line


@pytest.mark.parametrize("victim", [0, 1])
def test_a_kill_during_a_checkpoint_write_leaves_the_previous_checkpoint_as_latest(victim, tmp_path):
    """Rank 0 is killed while writing the student weights of the checkpoint of step 4 (it holds the store), or
    rank 1 is killed while rank 0 writes them: step 2 stays the latest, the partial save is invisible, and the
    survivor says so."""
    cfg = config(tmp_path)
    run = tmp_path / "run"
    marks = tmp_path / "marks"
    procs = two_ranks(cfg, marks, RATS_TEST_SAVE_DELAY="3")
    writer = pid_at(marks, "rank0_save_2", procs)  # the second checkpoint: step 4, half-written
    os.kill(writer if victim == 0 else int((marks / "rank1_step_4").read_text()), signal.SIGKILL)
    since = time.monotonic()
    rc, err, took = survivor(procs[1 - victim], since)
    procs[victim].wait(timeout=30)

    assert rc != 0, err[-3000:]
    assert took < TIMEOUT + MARGIN, f"rank {1 - victim} took {took:.1f} s to stop"
    previous = ckpt.checkpoint_dir(run) / ckpt.step_name(2)
    line = one_error_line(err)
    gone = "the launcher's store stopped answering: rank 0" if victim == 0 else "rank 1 (node 0, host "
    assert line.startswith(f"error: {gone}"), line
    assert "while checkpoint step_00000004 was being written (it is not kept)" in line, line
    assert f"The last complete checkpoint is {previous} (step 2)" in line, line
    assert ckpt.latest_checkpoint(run) == previous
    assert (ckpt.checkpoint_dir(run) / f".tmp_{ckpt.step_name(4)}").is_dir()  # the partial save, unused
    assert [s for s, _ in ckpt.list_checkpoints(run)] == [2]

    if victim == 0:  # the same command resumes from step 2, and the partial save is cleared away
        results = finish_all(two_ranks(cfg, tmp_path / "marks2"))
        assert [rc for rc, _ in results] == [0, 0], results[0][1][-3000:] + results[1][1][-3000:]
        assert f"resumed from {previous} (step 2/8)" in results[0][1]
        assert not [p for p in ckpt.checkpoint_dir(run).iterdir() if p.name.startswith(".tmp_")]


def test_torchrun_max_restarts_finishes_the_run_by_itself_as_if_resumed_by_hand(tmp_path):
    """Under ``torchrun --max-restarts 1`` a rank killed mid-step costs nothing: the agent stops the other,
    starts both again, they resume from the last complete checkpoint and finish; the final weights equal those
    of an uninterrupted run resumed from that same checkpoint."""
    cfg = config(tmp_path)
    run = tmp_path / "run"
    # the relaunched rank 1 is slow to start: rank 0 must not take the dead rank 1's address for its own
    proc = torchrun(["--max-restarts=1", RANK_RUN, str(cfg)], tmp_path / "marks", RATS_TEST_STEP_DELAY="0.3",
                    RATS_TEST_RELAUNCH_DELAY="3")
    os.kill(pid_at(tmp_path / "marks", "rank1_step_5", [proc]), signal.SIGKILL)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-4000:]
    found = re.search(r"resumed from (\S+) \(step (\d+)/8\)", err)
    assert found, err[-4000:]
    resumed_from, step = Path(found.group(1)), int(found.group(2))
    assert step == 4 and resumed_from == ckpt.checkpoint_dir(run) / ckpt.step_name(4)
    assert ckpt.latest_checkpoint(run) == ckpt.checkpoint_dir(run) / ckpt.step_name(STEPS)

    # the reference: a fresh folder holding only that checkpoint, resumed by an uninterrupted job
    reference = tmp_path / "reference"
    shutil.copytree(resumed_from, ckpt.checkpoint_dir(reference / "run") / resumed_from.name)
    ref = torchrun(["-m", "rats_core.cli", "run", str(config(reference))], tmp_path / "marks_ref")
    _, ref_err = ref.communicate(timeout=600)
    assert ref.returncode == 0, ref_err[-4000:]
    assert f"resumed from {ckpt.checkpoint_dir(reference / 'run') / resumed_from.name} (step 4/8)" in ref_err
    assert_same_weights(final_weights(run, STEPS), final_weights(reference / "run", STEPS))


def test_an_export_slower_than_the_collective_timeout_finishes(tmp_path):
    """Issue 29: rank 0 exports alone while rank 1 waits; the wait is bounded by train.save_timeout, not by the
    (here 3 s) collective timeout, so a 10 s export finishes the run."""
    cfg = config(tmp_path, steps=2, collective_timeout=3)
    marks = tmp_path / "marks"
    proc = torchrun([RANK_RUN, str(cfg)], marks, RATS_TEST_EXPORT_DELAY="10")
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-4000:]
    took = float((marks / "rank0_export_end").read_text()) - float((marks / "rank0_export_start").read_text())
    assert took >= 10  # the collective timeout is 3 s
    export = tmp_path / "run" / "export"
    assert (export / "denoiser.safetensors").is_file()
    assert json.loads((export / "rats_export.json").read_text())["run"]["checkpoint_step"] == 2
    assert "done: 2 steps" in err
