"""Same command, same weights: every random choice of an RDD run (head, queue, data order, t, noise)
comes from train.seed, and a killed run resumes to the bit (docs/reliability.md)."""
import pytest
import torch

from helpers import TINY_STAGE, run_and_kill, run_rdd
from rdd.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow


def rdd_args(teacher, classifier, small_fmnist, *extra):
    return ["distill", "--config", "configs/fmnist/distill.yaml", "--teacher", str(teacher), "--method", "rdd",
            *TINY_STAGE, "--set", f"data.root={small_fmnist}", "--set", f"classifier.checkpoint={classifier}",
            "--set", "distill.queue_size=256", "--set", "distill.num_contrast=32", "--set", "distill.push_per_step=8",
            "--set", "distill.teacher_steps=2", *extra]


def assert_same_tensors(a: dict, b: dict, where: str):
    assert a.keys() == b.keys(), where
    for key in a:
        if isinstance(a[key], dict):
            assert_same_tensors(a[key], b[key], f"{where}.{key}")
        elif isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), f"{where}.{key}"


def assert_same_run(a, b):
    assert_same_tensors(load_checkpoint(a / "model.pt")["model"], load_checkpoint(b / "model.pt")["model"], "model")
    state_a, state_b = load_checkpoint(a / "train_state.pt"), load_checkpoint(b / "train_state.pt")
    for part in ("model", "ema", "objective", "optimizer", "objective_optimizer"):
        if state_a[part] is not None:
            assert_same_tensors(state_a[part], state_b[part], part)
    assert any(k.startswith("m_p2p.head.") for k in state_a["objective"])  # the projection head is compared too


def test_the_same_rdd_command_twice_gives_the_same_weights_head_and_queue(teacher, classifier, small_fmnist, tmp_path):
    for fidelity in ("paper", "official"):  # joint and separate head optimisers
        args = rdd_args(teacher, classifier, small_fmnist, "--set", "distill.iterations=[4]", "--set", f"distill.fidelity={fidelity}")
        run_rdd(*args, "--out", str(tmp_path / f"{fidelity}-a"))
        run_rdd(*args, "--out", str(tmp_path / f"{fidelity}-b"))
        assert_same_run(tmp_path / f"{fidelity}-a", tmp_path / f"{fidelity}-b")


def test_a_killed_rdd_run_resumes_bit_exact(teacher, classifier, small_fmnist, tmp_path):
    args = rdd_args(teacher, classifier, small_fmnist, "--set", "distill.iterations=[30]", "--set", "train.ckpt_every=4",
                    "--set", "distill.fidelity=official")
    run_rdd(*args, "--out", str(tmp_path / "straight"))
    killed = tmp_path / "killed"
    run_and_kill(args, killed, after_lines=10)
    assert 4 <= load_checkpoint(killed / "train_state.pt")["step"] < 30
    run_rdd(*args, "--out", str(killed), "--resume")
    assert_same_run(tmp_path / "straight", killed)
