"""Two nodes simulated on one machine: two ``torchrun --nnodes 2 --node_rank {0,1} --nproc_per_node 1`` agents
meeting at a c10d rendezvous on localhost (two agents count as two nodes), the toy backbone under ZeRO-2.

* train 2 steps, SIGTERM both agents, resume to 3 == a 3-step run, bit for bit; the start banner says the world
  size and the nodes; resuming on another layout (one node, two ranks) is refused, clearly;
* each "node" given its own run folder: every rank stops at start with the shared-folder message, nothing written.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from rats_core.training import checkpoint as ckpt
from rats_reliability import assert_same_weights, final_weights, start_proc, wait_for, write_config

pytestmark = pytest.mark.slow  # each launch is two agents and two ranks (~15-25 s on 2 CPU cores)

RANK_RUN = str(Path(__file__).with_name("rank_run.py"))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_nodes(cfg: Path, marks: Path, *overrides: str, per_node: tuple[list[str], list[str]] = ([], []),
              **env: str) -> list[subprocess.Popen]:
    """One torchrun agent per simulated node, each with one rank, meeting at a rendezvous on localhost."""
    marks.mkdir(exist_ok=True)
    endpoint = f"127.0.0.1:{free_port()}"
    return [start_proc([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(node),
                        "--nproc_per_node", "1", "--rdzv_backend", "c10d", "--rdzv_endpoint", endpoint,
                        "--rdzv_id", "two-nodes", RANK_RUN, str(cfg), *overrides, *per_node[node]],
                       RATS_TEST_MARKS=str(marks), PYTHONWARNINGS="ignore", **env)
            for node in range(2)]


def finish(procs: list[subprocess.Popen]) -> list[tuple[int, str]]:
    out = []
    for p in procs:
        _, err = p.communicate(timeout=400)
        out.append((p.returncode, err))
    return out


def succeed(procs: list[subprocess.Popen]) -> str:
    results = finish(procs)
    assert [rc for rc, _ in results] == [0, 0], "\n----\n".join(err[-3000:] for _, err in results)
    return "".join(err for _, err in results)


def config(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return write_config(folder, train={"steps": 3, "checkpoint_every": 0, "collective_timeout": 60},
                        deepspeed={"zero_optimization": {"stage": 2}})


def test_two_nodes_train_sigterm_resume_equals_an_uninterrupted_run(tmp_path):
    cfg = config(tmp_path)
    run = tmp_path / "run"
    marks = tmp_path / "marks"
    agents = two_nodes(cfg, marks, RATS_TEST_STEP_DELAY="2")
    wait_for(lambda: (marks / "rank0_step_2").is_file() and (marks / "rank1_step_2").is_file(), timeout=300,
             proc=agents[0])
    for agent in agents:  # what a scheduler does to a job: SIGTERM to every node's launcher
        os.kill(agent.pid, signal.SIGTERM)
    results = finish(agents)
    err = "".join(e for _, e in results)
    assert all(rc != 0 for rc, _ in results), err[-3000:]
    assert "ranks: 2 on 2 nodes × 1 rank per node; run folder" in err
    assert "training: 3 steps on 2 ranks (cpu)" in err
    assert "interrupted at step 2/3" in err, err[-3000:]
    saved = ckpt.latest_checkpoint(run)
    assert saved == ckpt.checkpoint_dir(run) / ckpt.step_name(2)
    state = ckpt.read_state(saved)
    assert (state["world_size"], state["nodes"], state["layout"]) == (2, 2, [1, 1])

    resumed = succeed(two_nodes(cfg, tmp_path / "marks2"))
    assert f"resumed from {saved} (step 2/3) on 2 ranks" in resumed

    reference = tmp_path / "reference"
    succeed(two_nodes(config(reference), tmp_path / "marks3"))
    assert_same_weights(final_weights(run, 3), final_weights(reference / "run", 3))

    # the same folder on one node with two ranks: refused with the layouts named, nothing changed
    one_node = start_proc([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "rats_core.cli", "run", str(cfg), "train.steps=4"], PYTHONWARNINGS="ignore")
    _, err = one_node.communicate(timeout=400)
    assert one_node.returncode != 0
    assert ("written by 2 ranks on 2 nodes × 1 rank per node, now on 1 node × 2 ranks per node; resume with the "
            "same number of nodes and ranks per node") in err, err[-3000:]
    assert ckpt.latest_checkpoint(run) == ckpt.checkpoint_dir(run) / ckpt.step_name(3)


def test_two_nodes_with_different_run_folders_stop_at_start(tmp_path):
    cfg = config(tmp_path)
    folders = (tmp_path / "node0" / "run", tmp_path / "node1" / "run")
    results = finish(two_nodes(cfg, tmp_path / "marks", per_node=([f"output_dir={folders[0]}"],
                                                                   [f"output_dir={folders[1]}"]),
                               RATS_SHARED_FOLDER_WAIT="2"))
    assert all(rc != 0 for rc, _ in results)
    for _, err in results:
        lines = [line for line in err.splitlines() if line.startswith("error: output_dir must be one folder")]
        assert len(lines) == 1, err[-3000:]
        # c10d numbers the agents itself: either folder may be rank 0's
        line = lines[0]
        assert ("node 1 (host " in line and ", rank 1) does not see " in line
                and any(f"{f}/.rats.start, which rank 0 on node 0 (host " in line for f in folders)), line
        assert line.endswith("nothing was trained")
    assert not (tmp_path / "marks" / "rank0_step_1").exists() and not (tmp_path / "marks" / "rank1_step_1").exists()
    assert not folders[0].exists() and not folders[1].exists()  # rank 0's claim undone
