"""Every command of the paper's protocol under torchrun: a classifier trained by two processes and
killed (agent and workers, as when a node dies) resumes to the weights of a run never interrupted, two
nodes of one process each train the same weights as one node with two processes, and an evaluation
shared by two processes measures what one does (docs/reliability.md)."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from helpers import ROOT, TINY
from rdd.checkpoint import load_checkpoint
from rdd.metrics_log import read_metrics

pytestmark = pytest.mark.slow

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
ONE_NODE = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def run(command: list[str]) -> None:
    result = subprocess.run(command, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def assert_same_tensors(a: dict, b: dict, where: str) -> None:
    assert a.keys() == b.keys(), where
    for key in a:
        if isinstance(a[key], dict):
            assert_same_tensors(a[key], b[key], f"{where}.{key}")
        elif isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), f"{where}.{key}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_after_checkpoint(command: list[str], state_path, step: int) -> None:
    """Start `command` in a process group of its own; SIGKILL the whole group once a checkpoint of
    `step` or later is on disk."""
    proc = subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline, seen = time.time() + 300, None
    while time.time() < deadline and proc.poll() is None:
        if state_path.exists() and state_path.stat().st_mtime_ns != seen:
            seen = state_path.stat().st_mtime_ns
            if load_checkpoint(state_path)["step"] >= step:
                break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def classifier_args(small_fmnist, out) -> list[str]:
    # 192 images in batches of 32 over 2 processes: 6 steps an epoch, 12 in all, a checkpoint every 2.
    # The last 500 training images are held out, so the best epoch's weights travel in the checkpoint.
    return ["-m", "rdd.cli", "train-classifier", "--config", "configs/fmnist/classifier.yaml", "--out", str(out),
            "--set", f"data.root={small_fmnist}", "data.holdout=500", "classifier.train_limit=192",
            "classifier.batch_size=32", "classifier.epochs=2", "classifier.ckpt_every=2"]


def test_a_killed_classifier_under_torchrun_resumes_to_the_weights_of_an_uninterrupted_run(small_fmnist, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run([*ONE_NODE, *classifier_args(small_fmnist, straight)])
    kill_after_checkpoint([*ONE_NODE, *classifier_args(small_fmnist, killed)], killed / "classifier-state.pt", step=8)
    state = load_checkpoint(killed / "classifier-state.pt")
    assert 8 <= state["step"] < 12 and not (killed / "classifier.pt").exists()  # killed in the second epoch
    assert state["hooks"]["best_weights"] is not None and len(state["rng"]) == 2

    run([*ONE_NODE, *classifier_args(small_fmnist, killed), "--resume"])
    a, b = load_checkpoint(straight / "classifier.pt"), load_checkpoint(killed / "classifier.pt")
    assert_same_tensors(a["model"], b["model"], "classifier")
    assert a["test_accuracy"] == b["test_accuracy"]
    def measured(log):  # every logged value but the wall and CPU times
        return [{k: v for k, v in r.items() if not k.endswith("seconds_per_iteration")} for r in read_metrics(log)]

    rows = measured(killed / "classifier-metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2] and rows == measured(straight / "classifier-metrics.jsonl")
    a, b = load_checkpoint(straight / "classifier-state.pt"), load_checkpoint(killed / "classifier-state.pt")
    for part in ("model", "optimizer", "scheduler"):
        assert_same_tensors(a[part], b[part], part)


def test_two_nodes_of_one_process_train_the_weights_of_one_node_with_two(small_fmnist, tmp_path):
    args = ["-m", "rdd.cli", "train", *TINY, "--set", f"data.root={small_fmnist}", "train.iterations=3"]
    port, two_nodes = free_port(), tmp_path / "two-nodes"
    logs = [open(tmp_path / f"node{rank}.log", "w") for rank in (0, 1)]
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={rank}",
                               "--nproc_per_node=1", "--master_addr=127.0.0.1", f"--master_port={port}", *args,
                               "--out", str(two_nodes)], cwd=ROOT, env=ENV, stdout=logs[rank], stderr=subprocess.STDOUT)
             for rank in (0, 1)]
    codes = [node.wait(timeout=300) for node in nodes]
    for log in logs:
        log.close()
    assert codes == [0, 0], (tmp_path / "node0.log").read_text()[-2000:] + (tmp_path / "node1.log").read_text()[-2000:]
    run([*ONE_NODE, *args, "--out", str(tmp_path / "one-node")])

    a, b = load_checkpoint(two_nodes / "train_state.pt"), load_checkpoint(tmp_path / "one-node" / "train_state.pt")
    assert a["step"] == b["step"] == 3 and len(a["rng"]) == 2
    for part in ("model", "ema", "optimizer"):
        assert_same_tensors(a[part], b[part], part)
    for rank in (0, 1):  # each rank's random state: node 1's process is rank 1 of the one node
        assert_same_tensors(a["rng"][rank], b["rng"][rank], f"rng[{rank}]")
    assert_same_tensors(load_checkpoint(two_nodes / "model.pt")["model"],
                        load_checkpoint(tmp_path / "one-node" / "model.pt")["model"], "model.pt")


def test_eval_under_torchrun_shares_the_sampling_and_measures_what_one_process_does(tmp_path):
    args = ["-m", "rdd.cli", "eval", "--ckpt", "assets/fmnist/two_step.pt", "--evalnet", "assets/fmnist/evalnet.pt",
            "--num-samples", "40", "--batch-size", "10"]  # 4 batches: 2 for each process
    run([sys.executable, *args, "--json", str(tmp_path / "one.json")])
    run([*ONE_NODE, *args, "--json", str(tmp_path / "two.json")])
    one, two = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("one", "two"))
    assert one.pop("sampling_seconds") > 0 and two.pop("sampling_seconds") > 0
    assert one == two and one["num_samples"] == 40
