"""The shipped paper configs carry every number of the paper's §5.1 and appendix A, and the public code's settings."""
import pytest

from helpers import ROOT, run_rdd
from rdd.benchmark import load_benchmark_config
from rdd.config import ConfigError, load_config
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


# Every shipped config and the commands it is written for (README, study.sh, benchmark.yaml, the demo).
SHIPPED = {
    "fmnist/teacher.yaml": ["train"], "fmnist/benchmark-teacher.yaml": ["train"], "cifar10/base.yaml": ["train"],
    "imagenet64/base.yaml": ["train"], "fmnist/classifier.yaml": ["train-classifier"],
    "cifar10/classifier.yaml": ["train-classifier"], "imagenet64/classifier.yaml": ["train-classifier"],
    "fmnist/evalnet.yaml": ["train-evalnet"], "fmnist/demo.yaml": ["demo"],
    **{path: ["distill", "progressive", "sweep"] for path in (
        "fmnist/distill.yaml", "fmnist/benchmark-distill.yaml", "fmnist/diffusers.yaml", "paper-distill.yaml",
        "cifar10/distill.yaml", "cifar10/pd-1024to8.yaml", "imagenet64/distill.yaml", "imagenet64/pd-1024to8.yaml")},
}


def test_every_shipped_config_loads_for_the_commands_it_is_written_for():
    shipped = {str(p.relative_to(ROOT / "configs")) for p in (ROOT / "configs").rglob("*.yaml")}
    benchmarks = {"fmnist/benchmark.yaml", "cifar10/benchmark.yaml", "imagenet64/benchmark.yaml"}
    assert shipped == set(SHIPPED) | benchmarks, "a new config: say which commands it is for"
    for path in benchmarks:  # their sub-configs, each for its own command; a real CIFAR-10 / ImageNet run also needs Inception
        load_benchmark_config(ROOT / "configs" / path, dry_run=True)
    for path, commands in SHIPPED.items():
        for command in commands:
            load_config(ROOT / "configs" / path, command=command)


@pytest.mark.parametrize("argv, meant", [
    (["distill", "--config", "configs/fmnist/distill.yaml", "--set", "train.iterations=50"], "did you mean distill.iterations?"),
    (["progressive", "--set", "model.name=tiny"], "it reads only model.dropout"),
    (["sweep", "--config", "configs/fmnist/distill.yaml", "--grid", "classifier.epochs=1,2"], "it reads only classifier.checkpoint"),
    (["train", "--set", "distill.iterations=[50]"], "did you mean train.iterations?"),
    (["train-classifier", "--set", "train.lr=0.1"], "did you mean classifier.lr?"),
    (["train-evalnet", "--config", "configs/fmnist/evalnet.yaml", "--set", "eval.num_samples=100"], "it reads no eval settings"),
])
def test_a_setting_the_command_does_not_read_is_refused_naming_the_one_meant(capsys, tmp_path, argv, meant):
    from helpers import assert_one_line, run_cli

    stage = ["--teacher", str(ROOT / "assets/fmnist/two_step.pt")] if argv[0] in ("distill", "progressive", "sweep") else []
    code, err = run_cli(capsys, *argv, *stage, "--out", tmp_path / "run")
    key = argv[-1].split("=")[0]
    assert_one_line(code, err, f"rdd {argv[0]} does not read {key} (on the command line)", meant)
    assert not (tmp_path / "run").exists()  # refused before any work


def test_keys_of_the_named_file_are_checked_and_those_it_inherits_through_base_are_not(tmp_path):
    (tmp_path / "shared.yaml").write_text("train: {iterations: 50}\ndistill: {iterations: [20]}\n")  # a teacher's and a stage's
    (tmp_path / "stage.yaml").write_text("base: shared.yaml\ndistill: {method: pd}\n")
    (tmp_path / "teacher.yaml").write_text("base: shared.yaml\nmodel: {name: tiny}\n")
    (tmp_path / "wrong.yaml").write_text("base: shared.yaml\nclassifier: {epochs: 3}\n")
    assert load_config(tmp_path / "stage.yaml", command="distill").distill.iterations == [20]
    assert load_config(tmp_path / "teacher.yaml", command="train").train.iterations == 50
    with pytest.raises(ConfigError, match=r"rdd distill does not read classifier.epochs \(in '.*wrong.yaml'\)"):
        load_config(tmp_path / "wrong.yaml", command="distill")
    with pytest.raises(ConfigError, match="did you mean distill.iterations"):
        load_config(tmp_path / "shared.yaml", command="distill")


def test_run_record_keeps_only_what_the_run_used_and_old_records_still_compare_equal():
    from rdd.config import to_dict
    from rdd.rundir import defining_settings, manifest

    cfg = load_config(ROOT / "configs/fmnist/distill.yaml")
    record = manifest(cfg, {"method": "pd", "sampling_steps": 1}, 300)
    assert "iterations" not in record["config"]["train"] and "sample_steps" not in record["config"]["train"]
    assert record["config"]["classifier"] == {"checkpoint": "assets/fmnist/classifier.pt"}
    assert record["config"]["model"] == to_dict(cfg)["model"]  # the network the stage trains
    old = {**record, "config": to_dict(cfg)}  # a run.json from before: every key
    assert defining_settings(old) == defining_settings(record)
    assert "sample_steps" in manifest(load_config(None), {"method": "base"}, 300)["config"]["train"]


def test_paper_protocols_take_their_numbers_from_the_stage_configs_and_need_inception_for_a_real_run():
    for dataset, paper in (("cifar10", {"rdd": {1: [8.16, 8.95]}}), ("imagenet64", {"rdd": {1: [11.97, 23.12]}})):
        bc = load_benchmark_config(ROOT / "configs" / dataset / "benchmark.yaml", dry_run=True)
        pd, chain = (load_config(ROOT / "configs" / dataset / name) for name in ("pd-1024to8.yaml", "distill.yaml"))
        assert (bc.teacher_steps, bc.pd_to, bc.pd_iterations) == (1024, 8, pd.distill.iterations)
        assert bc.chain_iterations == chain.distill.iterations and bc.eval_samples == 50000 and 1024 in bc.teacher_ddim_steps
        assert bc.paper_results["rdd"][1] == paper["rdd"][1]
        with pytest.raises(ConfigError, match="inception_weights"):
            load_benchmark_config(ROOT / "configs" / dataset / "benchmark.yaml")
    stage_keys = load_benchmark_config(ROOT / "configs/cifar10/benchmark.yaml", ["data.root=/data", "dry_run.iterations=3"], dry_run=True)
    assert stage_keys.overrides == ["data.root=/data"] and stage_keys.dry_run.iterations == 3


def test_one_set_flag_takes_several_overrides():
    from rdd.cli import build_parser

    args = build_parser().parse_args(["train", "--set", "train.lr=1e-3", "train.iterations=7", "--set", "model.name=tiny",
                                      "--out", "x"])
    assert args.overrides == ["train.lr=1e-3", "train.iterations=7", "model.name=tiny"]
    c = load_config(None, args.overrides)
    assert (c.train.lr, c.train.iterations, c.model.name) == (1e-3, 7, "tiny")


def test_every_option_has_help_and_help_shows_defaults():
    import argparse

    from rdd import __version__
    from rdd.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    missing = [f"{name} {'/'.join(a.option_strings) or a.dest}" for name, sub in commands.items() for a in sub._actions
               if not a.help]
    assert not missing, missing
    text = " ".join(commands["sample"].format_help().split())
    assert "number of images (default: 64)" in text and "(default: ddim)" in text and "(default: None)" not in text
    assert f"rdd {__version__}" in run_rdd("--version").stdout
