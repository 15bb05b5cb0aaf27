import os
import subprocess
import sys

import pytest
import torch

from helpers import ROOT, TINY_OVERRIDES
from rdd.checkpoint import load_checkpoint
from rdd.config import load_config
from rdd.diffusion import ddim_sample
from rdd.distill import run_progressive, run_stage
from rdd.distributed import DistContext
from rdd.errors import RddError
from rdd.methods import METHODS
from rdd.model_io import load_diffusion_model

pytestmark = pytest.mark.slow  # every test here trains a model or starts torchrun

CPU = DistContext(0, 1, torch.device("cpu"))
TINY = TINY_OVERRIDES + ["train.batch_size=32", "train.num_grid=8", "train.ema_decay=0.0", "train.ckpt_every=1000"]


@pytest.fixture
def distill_config(small_fmnist):
    def make(*overrides):
        return load_config(ROOT / "configs/fmnist/distill.yaml", TINY + [f"data.root={small_fmnist}", *overrides])
    return make


def test_pd_stage_brings_one_student_step_closer_to_two_teacher_steps(teacher, tmp_path, distill_config):
    cfg = distill_config("distill.method=pd", "distill.teacher_steps=2", "distill.iterations=[80]", "train.lr=5e-4")
    student_path = run_stage(cfg, teacher, tmp_path / "pd", CPU)
    teacher_model, _, _ = load_diffusion_model(teacher)
    student, _, meta = load_diffusion_model(student_path)
    assert meta["sampling_steps"] == 1 and meta["teacher_steps"] == 2
    noise = torch.randn(256, 1, 16, 16, generator=torch.Generator().manual_seed(12345))  # held out: never seen in training
    target = ddim_sample(teacher_model, noise, 2)
    before = (ddim_sample(teacher_model, noise, 1) - target).pow(2).mean()  # the initial copy
    after = (ddim_sample(student, noise, 1) - target).pow(2).mean()
    assert after < 0.7 * before, (float(before), float(after))


def test_progressive_runs_every_method_down_to_one_step(teacher, classifier, tmp_path, distill_config):
    import torchvision

    vgg = tmp_path / "vgg16.pth"
    torch.save(torchvision.models.vgg16().state_dict(), vgg)  # offline stand-in for the ImageNet backbone
    for method in METHODS:
        cfg = distill_config(f"distill.method={method}", "distill.teacher_steps=4", "distill.iterations=[3]",
                             "train.batch_size=8", f"classifier.checkpoint={classifier}", f"distill.lpips_weights={vgg}",
                             "distill.queue_size=64", "distill.num_contrast=16", "distill.push_per_step=8")
        models = run_progressive(cfg, teacher, tmp_path / method, CPU)
        assert [p.parent.name for p in models] == ["stage-4to2", "stage-2to1"]
        for path in models:
            assert (path.parent / "samples.png").is_file() and (path.parent / "metrics.jsonl").is_file()
        log = (models[-1].parent / "metrics.jsonl").read_text()
        for term, _ in METHODS[method]:
            assert f"loss_{term}" in log


def test_progressive_resumes_at_the_first_unfinished_stage(teacher, tmp_path, distill_config):
    cfg = distill_config("distill.method=pd", "distill.teacher_steps=4", "distill.iterations=[3]")
    first, second = run_progressive(cfg, teacher, tmp_path, CPU)
    stamp = first.stat().st_mtime_ns
    second.unlink()
    run_progressive(cfg, teacher, tmp_path, CPU)
    assert first.stat().st_mtime_ns == stamp and second.is_file()


def test_step_counts_that_do_not_halve_are_refused(teacher, tmp_path, distill_config):
    with pytest.raises(RddError, match="does not halve"):
        run_progressive(distill_config("distill.teacher_steps=6", "distill.method=pd"), teacher, tmp_path, CPU)


def test_classifier_methods_need_a_classifier(teacher, tmp_path, distill_config):
    with pytest.raises(RddError, match="classifier.checkpoint"):
        run_stage(distill_config("distill.method=rcfd", "distill.teacher_steps=4", "classifier.checkpoint=null"), teacher, tmp_path, CPU)


def test_a_student_must_be_distilled_at_its_own_step_count(teacher, tmp_path, distill_config):
    cfg = distill_config("distill.method=pd", "distill.teacher_steps=4", "distill.iterations=[2]")
    student = run_stage(cfg, teacher, tmp_path / "s", CPU)
    with pytest.raises(RddError, match="distill.teacher_steps=2"):
        run_stage(cfg, student, tmp_path / "t", CPU)


def test_rdd_stage_under_torchrun_keeps_weights_queue_and_head_equal_on_both_ranks(teacher, classifier, small_fmnist, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "tests" / "ddp_distill_worker.py"), str(teacher), str(tmp_path), f"classifier.checkpoint={classifier}",
           f"data.root={small_fmnist}", *TINY]
    result = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for key in rank0["student"]:
        assert torch.equal(rank0["student"][key], rank1["student"][key]), key
    assert torch.equal(rank0["queue"], rank1["queue"])
    for key in rank0["head"]:  # one projection head trained on both ranks' gradients, BatchNorm statistics included
        assert torch.equal(rank0["head"][key], rank1["head"][key]), key
    assert int(rank0["filled"]) == 3 * 8  # 3 steps, K = 8 pixels per step drawn from both ranks' maps (push_scope global)
    state = load_checkpoint(tmp_path / "stage" / "train_state.pt")
    assert torch.equal(state["objective"]["m_p2p.queue.queue"], rank0["queue"])  # the queue travels with the checkpoint
