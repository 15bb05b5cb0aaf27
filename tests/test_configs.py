"""The shipped paper configs carry every number of the paper's §5.1 and appendix A, and the public code's settings."""
import pytest

from helpers import ROOT
from rdd.benchmark import load_benchmark_config
from rdd.config import load_config
from rdd.fidelity import resolve_fidelity

METHODS = ["pd", "pd_lpips", "rcfd", "rdd"]


def cfg(path, overrides=None):
    return load_config(ROOT / "configs" / path, overrides)


def test_cifar10_base():
    c = cfg("cifar10/base.yaml")
    assert (c.model.name, c.model.dropout, c.model.num_classes) == ("paper-cifar10", 0.1, 0)
    assert (c.data.dataset, c.data.resolution, c.data.hflip) == ("cifar10", 32, True)
    t = c.train
    assert (t.lr, t.warmup, t.batch_size, t.ema_decay, t.grad_clip, t.iterations) == (2e-4, 5000, 128, 0.9999, 1.0, 800000)


def test_imagenet64_base():
    c = cfg("imagenet64/base.yaml")
    assert (c.model.name, c.model.dropout, c.model.num_classes) == ("paper-imagenet64", 0.0, 1000)
    assert (c.data.dataset, c.data.resolution) == ("imagenet64", 64)
    t = c.train
    assert (t.lr, t.warmup, t.batch_size, t.ema_decay, t.grad_clip, t.iterations) == (1e-4, 5000, 512, 0.9999, 1.0, 1000000)


@pytest.mark.parametrize("method", METHODS)
def test_cifar10_distillation(method):
    c = cfg("cifar10/distill.yaml", [f"distill.method={method}"])
    d, t = c.distill, c.train
    assert (d.method, d.teacher_steps, d.target_steps) == (method, 8, 1)
    assert d.iterations == [20000, 20000, 40000] and d.tau_cfd == [0.9, 1.0, 0.85]
    assert (d.alpha, d.beta, d.tau_is, d.tau_m, d.queue_size, d.push_per_step) == (1.0, 0.1, 1.0, 0.1, 20000, 128)
    assert (t.lr, t.lr_schedule, t.batch_size, t.grad_clip, t.ema_decay, c.model.dropout) == (5e-5, "cosine", 128, 1.0, 0.0, 0.0)
    # Tables 1-3 came from the public code: its queue, V = 4,096, no teacher clip, fp32.
    fid = resolve_fidelity(d)
    assert (d.fidelity, fid.num_contrast, fid.queue_layout, fid.teacher_clip, t.bf16) == ("official", 4096, "flat_view", False, False)
    assert resolve_fidelity(cfg("cifar10/distill.yaml", ["distill.fidelity=paper"]).distill).num_contrast == 2048


@pytest.mark.parametrize("method", METHODS)
def test_imagenet64_distillation(method):
    c = cfg("imagenet64/distill.yaml", [f"distill.method={method}"])
    d, t = c.distill, c.train
    assert (d.method, d.teacher_steps, d.target_steps) == (method, 8, 1)
    assert d.iterations == [50000, 50000, 100000] and d.tau_cfd == [0.85]
    assert (d.alpha, d.beta, d.tau_is, d.tau_m, d.queue_size) == (100.0, 0.1, 1.0, 0.1, 20000)
    assert (t.lr, t.batch_size, t.grad_clip, t.bf16) == (1e-4, 256, 1.0, False)
    assert (c.data.dataset, c.data.resolution, c.data.channels) == ("imagenet64", 64, 3)
    assert d.fidelity == "official"


def test_base_chain_merges_mappings_and_replaces_lists(tmp_path):
    (tmp_path / "parent.yaml").write_text("train: {lr: 0.5, batch_size: 8}\ndistill: {iterations: [1, 2]}\n")
    (tmp_path / "child.yaml").write_text("base: parent.yaml\ntrain: {lr: 0.25}\ndistill: {iterations: [3]}\n")
    c = load_config(tmp_path / "child.yaml")
    assert (c.train.lr, c.train.batch_size, c.distill.iterations) == (0.25, 8, [3])


@pytest.mark.parametrize("dataset", ["cifar10", "imagenet64"])
def test_pd_chain_from_1024_to_8(dataset):
    d = cfg(f"{dataset}/pd-1024to8.yaml").distill
    assert (d.method, d.teacher_steps, d.target_steps) == ("pd", 1024, 8)


def test_cifar10_classifier_recipe():
    c = cfg("cifar10/classifier.yaml")
    cc = c.classifier
    assert (cc.arch, cc.lr, cc.momentum, cc.epochs, cc.autoaugment) == ("densenet201", 0.1, 0.9, 300, True)
    assert (cc.stem, cc.weight_decay, c.data.holdout) == ("public", 5e-4, 5000)


@pytest.mark.parametrize("path", ["cifar10/base.yaml", "cifar10/distill.yaml", "imagenet64/base.yaml", "imagenet64/distill.yaml"])
def test_paper_protocol_evaluates_50k_samples(path):
    assert cfg(path).eval.num_samples == 50000


def test_every_shipped_config_loads():
    for path in (ROOT / "configs").rglob("*.yaml"):
        if path.name == "benchmark.yaml":
            load_benchmark_config(path)
        else:
            load_config(path)


def test_one_set_flag_takes_several_overrides():
    from rdd.cli import build_parser

    args = build_parser().parse_args(["train", "--set", "train.lr=1e-3", "train.iterations=7", "--set", "model.name=tiny",
                                      "--out", "x"])
    assert args.overrides == ["train.lr=1e-3", "train.iterations=7", "model.name=tiny"]
    c = load_config(None, args.overrides)
    assert (c.train.lr, c.train.iterations, c.model.name) == (1e-3, 7, "tiny")
