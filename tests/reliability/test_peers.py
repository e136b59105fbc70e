"""The heartbeat watch (rats_core/parallel/peers.py) in one process: two ranks' watches over one in-memory store,
a rank "dying" by stopping its beats without a word. Quick; the real processes are in test_rank_faults.py."""

from __future__ import annotations

import time

import pytest
import torch.distributed as dist

from rats_core.parallel.distributed import DistInfo
from rats_core.parallel.peers import PeerWatch, Verdict
from rats_core.training.run_folder import RunFolder, unshared_message

INTERVAL = 0.05


class Store:
    """A HashStore that can be made to stop answering, as a TCP store whose host died."""

    def __init__(self):
        self.inner = dist.HashStore()
        self.broken = False

    def __getattr__(self, name):
        fn = getattr(self.inner, name)

        def call(*args):
            if self.broken:
                raise RuntimeError("Broken pipe")
            return fn(*args)

        return call


def pair(store, collective_timeout=1.0, save_timeout=100.0):
    seen: dict[int, list[Verdict]] = {0: [], 1: []}
    watches = [PeerWatch(r, 2, collective_timeout=collective_timeout, save_timeout=save_timeout, store=store,
                         where=f"node 0, host h{r}", interval=INTERVAL, on_verdict=seen[r].append)
               for r in range(2)]
    for w in watches:
        assert w.start()
        w.set_phase("train")
    return watches, seen


def wait_until(cond, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return False


@pytest.fixture
def store():
    return Store()


def test_a_rank_that_stops_beating_is_named_by_its_watcher(store):
    (w0, w1), seen = pair(store, collective_timeout=2.0)  # silent for 1 s in training: gone
    try:
        time.sleep(5 * INTERVAL)
        w1.stop()  # killed: no word, no more beats
        assert wait_until(lambda: seen[0], 4.0)
        v = seen[0][0]
        assert v.vanished == [1] and not v.failed and not v.store_lost
        assert v.silent_for >= 1.0 and v.where == {1: "node 0, host h1"}
        assert v.text().startswith("rank 1 (node 0, host h1) vanished (no heartbeat for ")
    finally:
        w0.stop()


def test_after_a_failed_collective_three_missing_beats_suffice(store):
    (w0, w1), seen = pair(store, collective_timeout=60.0)  # would wait 30 s of silence otherwise
    try:
        time.sleep(5 * INTERVAL)
        w1.stop()
        start = time.monotonic()
        v = w0.verdict()
        assert v is not None and v.vanished == [1]
        assert time.monotonic() - start < 2.0
        assert seen[0] == []  # the main thread reports it, not the watching thread
    finally:
        w0.stop()


def test_a_rank_writing_a_checkpoint_may_be_silent_for_longer(store):
    (w0, w1), seen = pair(store, collective_timeout=0.4, save_timeout=3.0)  # 0.2 s training, 1.5 s saving
    try:
        w1.set_phase("save")
        time.sleep(5 * INTERVAL)
        w1.stop()
        assert not wait_until(lambda: seen[0], 0.8)
        assert wait_until(lambda: seen[0], 3.0)
        assert seen[0][0].vanished == [1]
    finally:
        w0.stop()


def test_a_rank_that_stops_on_an_error_is_named_with_it(store):
    (w0, w1), seen = pair(store)
    try:
        w1.leave("reward 'x' raised ValueError: bad", error=True)
        assert wait_until(lambda: seen[0], 2.0)
        v = seen[0][0]
        assert v.failed == {1: "reward 'x' raised ValueError: bad"} and not v.vanished
        assert v.text() == "rank 1 (node 0, host h1) stopped with an error (reward 'x' raised ValueError: bad)"
    finally:
        w0.stop()


def test_a_rank_that_finishes_is_no_failure(store):
    (w0, w1), seen = pair(store)
    try:
        w1.leave("done")
        assert not wait_until(lambda: seen[0], 1.5)
    finally:
        w0.stop()


def test_every_rank_reads_the_first_verdict(store):
    watches = [PeerWatch(r, 3, collective_timeout=1.0, save_timeout=100.0, store=store, interval=INTERVAL,
                         on_verdict=lambda v: None) for r in range(3)]
    for w in watches:
        w.start()
        w.set_phase("train")
    try:
        time.sleep(5 * INTERVAL)
        watches[1].stop()  # rank 0 watches it; rank 2 watches rank 0 and learns it from the store
        assert wait_until(lambda: watches[2]._verdict is not None, 3.0)
        assert watches[2]._verdict.vanished == [1] == watches[0]._verdict.vanished
    finally:
        for w in watches:
            w.stop()


def test_a_store_that_stops_answering_is_a_verdict_once_a_collective_failed(store):
    (w0, w1), _ = pair(store, collective_timeout=60.0)
    try:
        time.sleep(3 * INTERVAL)
        store.broken = True  # rank 0 held it (env:// launch) and died
        v = w0.verdict()
        assert v is not None and v.store_lost
        assert v.text().startswith("the launcher's store stopped answering: rank 0")
    finally:
        w0.stop()
        w1.stop()


def test_no_watch_on_one_rank_or_without_a_store(monkeypatch):
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    assert not PeerWatch(0, 1, collective_timeout=1, save_timeout=1).start()
    w = PeerWatch(0, 2, collective_timeout=1, save_timeout=1)
    assert not w.start()
    assert w.verdict() is None
    w.leave("done")  # harmless


def test_verdicts_travel_through_the_store_unchanged():
    v = Verdict(vanished=[3, 4], failed={7: "boom"}, silent_for=2.5, where={3: "node 1, host b"})
    assert Verdict.loads(v.dumps()) == v
    assert v.ranks() == [3, 4, 7]
    assert v.text() == ("rank 3 (node 1, host b), rank 4 vanished (no heartbeat for 2.5 s: killed, or its machine "
                        "went away); rank 7 stopped with an error (boom)")


def test_layouts_read_as_nodes_times_ranks():
    cpu = __import__("torch").device("cpu")
    assert DistInfo(0, 1, 0, cpu).layout_text() == "1 node × 1 rank per node"
    assert DistInfo(0, 16, 0, cpu, layout=(8, 8)).layout_text() == "2 nodes × 8 ranks per node"
    odd = DistInfo(0, 6, 0, cpu, layout=(4, 2))
    assert odd.ranks_per_node is None and odd.layout_text() == "2 nodes with 4 + 2 ranks"


def test_the_unshared_folder_message_names_the_node_and_the_path(tmp_path):
    reports = [{"seen": True, "node": 0, "host": "a", "path": "/shared/run"},
               {"seen": True, "node": 0, "host": "a", "path": "/shared/run"},
               {"seen": False, "node": 1, "host": "b", "path": "/local/run"},
               {"seen": False, "node": 1, "host": "b", "path": "/local/run"}]
    assert unshared_message(reports) == (
        "output_dir must be one folder that every node sees: node 1 (host b, ranks 2, 3) does not see "
        "/local/run/.rats.start, which rank 0 on node 0 (host a) has just written into /shared/run. Put output_dir "
        "on a filesystem every node mounts at the same path (NFS, Lustre, a cluster's shared home); nothing was "
        "trained")
    folder = RunFolder(tmp_path)
    token = folder.write_start_token()
    assert folder.sees_start_token(token, wait=0)
    assert not folder.sees_start_token("another job's", wait=0.3)
    assert not RunFolder(tmp_path / "elsewhere").sees_start_token(token, wait=0)
