import json
import os
import subprocess
import sys

import pytest
import torch

from helpers import ROOT, run_and_kill, run_rdd
from rdd.checkpoint import load_checkpoint
from rdd.config import load_config
from rdd.metrics_log import read_metrics
from rdd.networks import build_model


def weights(path):
    return load_checkpoint(path)["model"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.slow
def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path, tiny_args):
    args = ["train", *tiny_args, "--set", "train.iterations=24", "--set", "train.ckpt_every=5"]
    run_rdd(*args, "--out", str(tmp_path / "straight"))

    out = tmp_path / "killed"
    run_and_kill(args, out, after_lines=12)  # between checkpoints (after step 5 was saved, before 24)
    metrics = out / "metrics.jsonl"
    saved_step = load_checkpoint(out / "train_state.pt")["step"]
    assert 5 <= saved_step < 24

    run_rdd(*args, "--out", str(out), "--resume")
    assert_same_weights(weights(tmp_path / "straight" / "model.pt"), weights(out / "model.pt"))
    assert_same_weights(load_checkpoint(tmp_path / "straight" / "train_state.pt")["model"],
                        load_checkpoint(out / "train_state.pt")["model"])
    steps = [m["step"] for m in read_metrics(metrics)]
    assert steps == list(range(1, 25))  # the resumed log has every step once
    straight = read_metrics(tmp_path / "straight" / "metrics.jsonl")
    assert [m["loss"] for m in straight] == [m["loss"] for m in read_metrics(metrics)]


@pytest.mark.slow
def test_torchrun_two_cpu_processes_hold_identical_weights(tmp_path, tiny_args):
    out = tmp_path / "ddp"
    overrides = [a for a in tiny_args if a != "--set"] + ["train.iterations=4", "train.ckpt_every=100"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "tests" / "ddp_train_worker.py"), str(out), *overrides]
    result = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert_same_weights(rank0, rank1)
    untrained = build_model(load_config(None, overrides).model, load_config(None, overrides).data).state_dict()
    assert any(not torch.equal(rank0[k], untrained[k]) for k in rank0)  # it did train
    assert load_checkpoint(out / "model.pt")["kind"] == "diffusion"
    assert len(read_metrics(out / "metrics.jsonl")) == 4  # only rank 0 writes
    state = load_checkpoint(out / "train_state.pt")
    assert len(state["rng"]) == 2 and not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])


def test_train_writes_checkpoint_grid_and_metrics(tmp_path, tiny_args):
    out = tmp_path / "run"
    run_rdd("train", *tiny_args, "--set", "train.iterations=6", "--set", "train.sample_every=3", "--out", str(out))
    assert (out / "grids" / "step0000003.png").is_file() and (out / "samples.png").is_file()
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == list(range(1, 7)) and all(m["loss"] > 0 for m in lines)
    grid = tmp_path / "grid.png"
    run_rdd("sample", "--ckpt", str(out / "model.pt"), "--steps", "3", "--num", "9", "--out", str(grid), "--npz", str(tmp_path / "s.npz"))
    import numpy as np
    from PIL import Image
    assert Image.open(grid).size == (3 * (4 * 16 + 4) + 4,) * 2  # 16-px images drawn 4x: tiles of 64 px, 4-px padding
    images = np.load(tmp_path / "s.npz")["images"]
    assert images.shape == (9, 16, 16, 3) and images.dtype == np.uint8


def test_a_stage_summary_names_only_files_it_wrote(tmp_path):
    """A dry run (train.num_grid 0) draws no grid; its summary once named a samples.png that did not exist."""
    from rdd.distill import summary_line

    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 2, "loss": 0.25}) + "\n")
    line = summary_line(tmp_path, 4, 2, 61)
    assert "final loss 0.25, 1m01s" in line and "samples.png" not in line and "no sample grid" in line
    (tmp_path / "samples.png").write_bytes(b"png")
    assert f"samples {tmp_path / 'samples.png'}" in summary_line(tmp_path, 4, 2, 61)
