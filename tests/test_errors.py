"""Each bad input gives one line on stderr that names the problem and the fix, and a non-zero exit."""
import os
import pickle
import shutil

import pytest
import torch

from helpers import ROOT, TINY, assert_one_line, run_cli
from rdd.checkpoint import load_checkpoint, save_checkpoint
from rdd.cli import main
from rdd.errors import RddError

TWO_STEP = str(ROOT / "assets/fmnist/two_step.pt")
EVALNET = str(ROOT / "assets/fmnist/evalnet.pt")


def test_unknown_key_names_the_closest_valid_key(capsys, tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("train:\n  iteratons: 10\n")
    assert_one_line(*run_cli(capsys, "train", "--config", str(cfg), "--out", str(tmp_path / "o")), "train.iteratons", "iterations")


def test_unknown_override_key(capsys, tmp_path):
    assert_one_line(*run_cli(capsys, "train", "--set", "modle.name=tiny", "--out", str(tmp_path)), "modle", "model")


def test_wrong_type(capsys, tmp_path):
    assert_one_line(*run_cli(capsys, "train", "--set", "train.lr=fast", "--out", str(tmp_path)), "train.lr", "float")


def test_missing_config_file(capsys, tmp_path):
    assert_one_line(*run_cli(capsys, "train", "--config", str(tmp_path / "nope.yaml"), "--out", str(tmp_path)), "not found")


def test_missing_data(capsys, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, err = run_cli(capsys, "train", "--set", "data.dataset=imagenet64", "--set", "data.channels=3", "--set", f"data.root={empty}",
                        "--out", str(tmp_path / "o"))
    assert_one_line(code, err, "ImageNet", "data.root")
    code, err = run_cli(capsys, "train", "--set", "data.dataset=cifar100", "--out", str(tmp_path / "o"))
    assert_one_line(code, err, "cifar100", "fashion_mnist")


def test_missing_checkpoint(capsys, tmp_path):
    assert_one_line(*run_cli(capsys, "sample", "--ckpt", str(tmp_path / "none.pt"), "--out", str(tmp_path / "g.png")), "not found")


def test_corrupt_checkpoint(capsys, tmp_path):
    path = tmp_path / "model.pt"
    save_checkpoint({"model": {"w": torch.randn(1000)}}, path)
    path.write_bytes(path.read_bytes()[:500])  # truncated, as by a copy that died
    assert_one_line(*run_cli(capsys, "sample", "--ckpt", str(path), "--out", str(tmp_path / "g.png")), "corrupt")


class Payload:
    def __reduce__(self):
        import os
        return (os.system, ("echo pwned > /dev/null",))


def test_unsafe_pickle_is_refused(capsys, tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "config": {}, "x": Payload()}, path)
    code, err = run_cli(capsys, "sample", "--ckpt", str(path), "--out", str(tmp_path / "g.png"))
    assert_one_line(code, err, "unsafe")
    with open(tmp_path / "plain.pkl", "wb") as f:
        pickle.dump(Payload(), f)
    with pytest.raises(RddError, match="unsafe|corrupt"):
        load_checkpoint(tmp_path / "plain.pkl")


def test_mismatched_checkpoint(capsys, tmp_path):
    path = tmp_path / "model.pt"
    save_checkpoint({"kind": "diffusion", "model": {"conv.weight": torch.zeros(3)}, "config": {"model": {"name": "tiny"}}}, path)
    assert_one_line(*run_cli(capsys, "sample", "--ckpt", str(path), "--out", str(tmp_path / "g.png")), "does not match")


def test_interrupted_save_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "state.pt"
    save_checkpoint({"step": 1, "w": torch.ones(3)}, path)

    class Unpicklable:
        def __reduce__(self):
            raise KeyboardInterrupt  # a kill arriving in the middle of torch.save

    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"step": 2, "w": torch.zeros(3), "bad": Unpicklable()}, path)
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]  # no temporary file left behind


@pytest.mark.parametrize("override, key", [
    ("train.lr=0", "train.lr"), ("train.lr=-1e-3", "train.lr"), ("train.lr=.nan", "train.lr"), ("train.lr=.inf", "train.lr"),
    ("train.batch_size=0", "train.batch_size"), ("train.iterations=0", "train.iterations"),
    ("train.log_every=0", "train.log_every"), ("train.ckpt_every=0", "train.ckpt_every"),
    ("train.sample_every=-1", "train.sample_every"), ("train.ema_decay=1", "train.ema_decay"),
    ("train.ema_decay=.nan", "train.ema_decay"), ("train.lr_schedule=linear", "train.lr_schedule"),
    ("train.warmup=-1", "train.warmup"), ("train.grad_clip=-1", "train.grad_clip"), ("train.grad_clip=.inf", "train.grad_clip"),
    ("data.channels=2", "data.channels"), ("data.resolution=12", "data.resolution"), ("data.resolution=0", "data.resolution"),
    ("data.holdout=-1", "data.holdout"), ("distill.iterations=[]", "distill.iterations"),
    ("distill.iterations=[100,0]", "distill.iterations[1]"), ("distill.tau_cfd=[]", "distill.tau_cfd"),
    ("distill.tau_cfd=[0]", "distill.tau_cfd[0]"), ("distill.tau_cfd=[.nan]", "distill.tau_cfd[0]"),
    ("distill.tau_m=0", "distill.tau_m"), ("distill.push_per_step=0", "distill.push_per_step"),
    ("distill.queue_size=64", "distill.queue_size"), ("distill.num_contrast=30000", "distill.queue_size"),
    ("classifier.epochs=0", "classifier.epochs"), ("classifier.ckpt_every=0", "classifier.ckpt_every"),
    ("eval.num_samples=1", "eval.num_samples"), ("eval.batch_size=0", "eval.batch_size"),
])
def test_out_of_range_values_are_refused_when_the_config_loads(capsys, tmp_path, override, key):
    code, err = run_cli(capsys, "train", "--set", override, "--out", str(tmp_path / "run"))
    assert_one_line(code, err, f"{key} is ")
    assert "allowed" in err or "choose one of" in err
    assert not (tmp_path / "run").exists()  # refused before any work


def test_a_zero_temperature_is_refused_before_distilling(capsys, tmp_path):
    code, err = run_cli(capsys, "distill", "--config", str(ROOT / "configs/fmnist/distill.yaml"), "--teacher", TWO_STEP,
                        "--set", "distill.tau_cfd=[0]", "--out", str(tmp_path / "run"))
    assert_one_line(code, err, "distill.tau_cfd[0] is 0.0", "> 0")


@pytest.fixture
def no_sampling(monkeypatch):
    """Bad arguments must be refused before the (long) sampling starts."""
    def refuse(*args, **kwargs):
        raise AssertionError("sampling started")
    monkeypatch.setattr("rdd.sampling.generate", refuse)


@pytest.mark.parametrize("argv, needle", [
    (["sample", "--num", "0"], "--num-samples 0"),  # a bare --num still works: argparse's abbreviation
    (["sample", "--batch-size", "0"], "--batch-size 0"),
    (["eval", "--num-samples", "0"], "--num-samples 0"),  # once silently 10,000
    (["eval", "--num", "1"], "at least 10 samples"),
    (["eval", "--batch-size", "0"], "--batch-size 0"),
])
def test_bad_sample_and_eval_arguments(capsys, tmp_path, no_sampling, argv, needle):
    target = ["--out", str(tmp_path / "g.png")] if argv[0] == "sample" else ["--evalnet", EVALNET]
    assert_one_line(*run_cli(capsys, *argv, "--ckpt", TWO_STEP, *target), needle)


def test_a_missing_or_wrong_evalnet_is_refused_before_sampling(capsys, tmp_path, no_sampling):
    code, err = run_cli(capsys, "eval", "--ckpt", TWO_STEP, "--evalnet", str(tmp_path / "none.pt"), "--num", "16")
    assert_one_line(code, err, "none.pt", "not found", "rdd train-evalnet")
    assert_one_line(*run_cli(capsys, "eval", "--ckpt", TWO_STEP, "--evalnet", TWO_STEP, "--num", "16"), "not an evaluation network")


def test_an_output_that_cannot_be_written_is_refused_before_sampling(capsys, tmp_path, no_sampling):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert_one_line(*run_cli(capsys, "sample", "--ckpt", TWO_STEP, "--out", str(blocker / "g.png")), "not a writable folder")
    assert_one_line(*run_cli(capsys, "sample", "--ckpt", TWO_STEP, "--npz", str(tmp_path)), "--npz", "is a folder")
    code, err = run_cli(capsys, "eval", "--ckpt", TWO_STEP, "--evalnet", EVALNET, "--json", str(blocker / "r.json"))
    assert_one_line(code, err, "--json", "not a writable folder")
    assert_one_line(*run_cli(capsys, "train", "--out", str(blocker / "run")), "cannot write the run folder", "another --out")


def test_world_size_without_torchrun(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    for command in ("train", "train-classifier", "train-evalnet"):  # every training command runs under torchrun
        assert_one_line(*run_cli(capsys, command, "--out", str(tmp_path / command)), "WORLD_SIZE=2", "MASTER_ADDR", "torchrun")


def test_damaged_fashion_mnist_files_and_a_missing_data_root(capsys, tmp_path, small_fmnist):
    root = tmp_path / "fmnist"
    shutil.copytree(small_fmnist, root)
    images = root / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:5000])  # a copy that died half way
    code, err = run_cli(capsys, "train", "--set", f"data.root={root}", "--out", str(tmp_path / "a"))
    assert_one_line(code, err, str(images), "truncated or corrupt", "apt-get install --reinstall dataset-fashion-mnist")
    (root / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b" + os.urandom(500))  # read before the plain file
    code, err = run_cli(capsys, "train", "--set", f"data.root={root}", "--out", str(tmp_path / "b"))
    assert_one_line(code, err, "train-images-idx3-ubyte.gz", "truncated or corrupt")
    code, err = run_cli(capsys, "train", "--set", f"data.root={tmp_path / 'nowhere'}", "--out", str(tmp_path / "c"))
    assert_one_line(code, err, "data.root", "nowhere", "not a folder")


def test_malformed_sha256sums_and_bad_lpips_weights(capsys, tmp_path):
    assets = tmp_path / "assets"
    assets.mkdir()
    (assets / "SHA256SUMS").write_text("this is not a checksum\n")
    code, err = run_cli(capsys, "demo", "--assets", str(assets), "--out", str(tmp_path / "demo"))
    assert_one_line(code, err, "SHA256SUMS", "line 1 is malformed")

    distill = ["distill", "--config", str(ROOT / "configs/fmnist/distill.yaml"), "--teacher", TWO_STEP, "--method", "pd_lpips"]
    noise, wrong = tmp_path / "noise.pth", tmp_path / "wrong.pth"
    noise.write_bytes(os.urandom(2000))
    torch.save({"features.0.weight": torch.zeros(3)}, wrong)
    for weights, needle in ((noise, "corrupt"), (wrong, "not torchvision's VGG16 state dict")):
        code, err = run_cli(capsys, *distill, "--set", f"distill.lpips_weights={weights}", "--out", str(tmp_path / "run"))
        assert_one_line(code, err, needle)


def test_benchmark_config_errors_are_found_before_the_first_stage(capsys, tmp_path):
    config = tmp_path / "benchmark.yaml"
    config.write_text("name: toy\nout: [unclosed\n")
    assert_one_line(*run_cli(capsys, "benchmark", str(config)), "not valid YAML")
    config.write_text(f"out: {tmp_path / 'runs'}\nteacher_config: {tmp_path / 'missing.yaml'}\n")
    assert_one_line(*run_cli(capsys, "benchmark", str(config)), "teacher_config", "missing.yaml", "not found")
    bad = tmp_path / "teacher.yaml"
    bad.write_text("train:\n  lr: 0\n")
    config.write_text(f"out: {tmp_path / 'runs'}\nteacher_config: {bad}\n")
    assert_one_line(*run_cli(capsys, "benchmark", str(config)), "teacher_config", "train.lr is 0.0")
    assert not (tmp_path / "runs").exists()


def test_the_interrupt_hint_fits_the_command(capsys, monkeypatch):
    def interrupted(args):
        raise KeyboardInterrupt

    for command in ("cmd_train", "cmd_progressive"):
        monkeypatch.setattr(f"rdd.cli.{command}", interrupted)
    assert main(["train", "--out", "x"]) == 130
    assert "resume with the same command and --resume" in capsys.readouterr().err
    assert main(["progressive", "--teacher", "t.pt", "--out", "x"]) == 130
    err = capsys.readouterr().err
    assert "run the same command again to resume" in err and "--resume" not in err


def test_torchrun_passes_every_option_of_every_command_to_rdd(capsys):
    """torchrun's own parser reads the whole command line: an rdd option that could be one of torchrun's
    (a bare --num was its --numa-binding) stops every `torchrun ... -m rdd` command that uses it."""
    import argparse

    from torch.distributed.run import get_args_parser

    from rdd.cli import build_parser

    torchrun = get_args_parser()
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    refused = []
    for name, parser in commands.items():
        for option in (s for action in parser._actions for s in action.option_strings):
            try:
                passed = torchrun.parse_args(["--nproc-per-node", "1", "-m", "rdd", name, option, "1"]).training_script_args
            except SystemExit:
                passed = None
            if passed != [name, option, "1"]:
                refused.append(f"{name} {option}")
    capsys.readouterr()
    assert not refused, f"torchrun does not pass these to rdd: {refused}"


@pytest.mark.parametrize("settings, needle", [
    (["data.dataset=cifar10", "data.channels=1"], "set data.channels=3"),
    (["data.dataset=imagenet64", "data.channels=3", "data.resize=pad"], "leave data.resize at bilinear"),
])
def test_settings_a_data_set_cannot_honour_are_refused(capsys, tmp_path, settings, needle):
    """Once ignored: ImageNet was resized whatever data.resize said; CIFAR-10 read as grey crashed in the network."""
    code, err = run_cli(capsys, "train", *[a for s in settings for a in ("--set", s)], "--set", f"data.root={tmp_path}",
                        "--out", str(tmp_path / "run"))
    assert_one_line(code, err, needle)
    assert not (tmp_path / "run").exists()


EIGHT_STEP = str(ROOT / "assets/fmnist/eight_step.pt")
DISTILL_ARGS = ["--config", "configs/fmnist/distill.yaml", "--teacher", EIGHT_STEP]


@pytest.mark.parametrize("argv, needles", [
    (["distill", *DISTILL_ARGS, "--set", "distill.target_steps=2"], ["sets distill.target_steps", "rdd progressive --to"]),
    (["progressive", *DISTILL_ARGS, "--to", "2", "--set", "distill.target_steps=4"], ["--to 2", "disagree"]),
    (["progressive", *DISTILL_ARGS, "--set", "train.snapshot_at=[5]", "distill.iterations=[2]"], ["train.snapshot_at 5"]),
    (["distill", *DISTILL_ARGS, "--set", "distill.queue_size=1000"], ["distill.queue_size", "2048"]),
    (["sweep", *DISTILL_ARGS, "--evalnet", EVALNET, "--set", "train.seed=7"], ["sets train.seed", "--seeds"]),
    (["sweep", *DISTILL_ARGS, "--evalnet", EVALNET, "--grid", "data.holdout=100,200"], ["--grid data.holdout", "--holdout"]),
    (["sweep", *DISTILL_ARGS, "--evalnet", EVALNET, "--set", "train.snapshot_at=[5]"], ["--eval-at"]),
    (["sweep", *DISTILL_ARGS, "--evalnet", EVALNET, "--set", "eval.num_samples=100"], ["sets eval", "--eval-samples"]),
    (["sweep", *DISTILL_ARGS, "--evalnet", EVALNET, "--grid", "distill.beta=0.1", "--grid", "distill.beta=0.2"], ["twice"]),
    (["sweep", *DISTILL_ARGS, "--evalnet", EVALNET, "--grid", "method=pd,rcfd", "--set", "distill.method=rdd"], ["pass one"]),
    (["sweep", *DISTILL_ARGS, "--evalnet", EVALNET, "--set", "distill.iterations=[100,500]", "--eval-at", "200"],
     ["--eval-at 200", "(100)"]),
    (["demo", "--set", "distill.method=pd"], ["sets distill.method", "pd, rcfd and rdd"]),
    (["benchmark", "configs/fmnist/benchmark.yaml", "--set", "distill.iterations=[5]"], ["chain_iterations"]),
    (["benchmark", "configs/fmnist/benchmark.yaml", "--set", "eval.num_samples=100"], ["eval_samples"]),
    (["train-evalnet", "--set", "classifier.arch=densenet201"], ["evalnet-cnn"]),
    (["eval", "--ckpt", str(ROOT / "assets/fmnist/eps_teacher"), "--evalnet", EVALNET], ["diffusers folder", "data.dataset"]),
    (["eval", "--ckpt", TWO_STEP, "--evalnet", EVALNET, "--set", "eval.num_samples=100"], ["eval.num_samples"]),
])
def test_settings_a_command_would_override_or_ignore_are_refused(capsys, tmp_path, argv, needles):
    """Each of these once ran, with the setting silently overwritten, ignored, or (eval) measured against the wrong data."""
    out = ["--out", str(tmp_path / "o")] if argv[0] not in ("eval", "benchmark") else []
    assert_one_line(*run_cli(capsys, *argv, *out), *needles)
    assert not (tmp_path / "o").exists()


def test_flags_and_set_that_agree_are_taken():
    """--to/--method beside the same value under --set are one request, compared as parsed values, not strings (" 2" and 2 agree)."""
    from rdd.cli import _distill_config, build_parser

    args = build_parser().parse_args(["progressive", *DISTILL_ARGS, "--out", "o", "--to", "2", "--method", "pd",
                                      "--set", "distill.target_steps= 2", "distill.method=pd"])
    assert _distill_config(args).distill.method == "pd"


def test_a_negative_stage_index_is_refused(capsys, tmp_path):
    """--stage -1 once picked the second-to-last per-stage value."""
    with pytest.raises(SystemExit) as stop:
        main(["distill", *DISTILL_ARGS, "--stage", "-1", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and "--stage: -1 is outside 0..1,000" in err and len(err.splitlines()) == 1


def test_a_sweep_trains_on_its_teachers_data(tmp_path):
    """As rdd distill does, a sweep whose config leaves the data set unnamed takes the teacher's (it once
    trained and scored on Fashion-MNIST whatever the teacher learned from)."""
    from rdd.checkpoint import save_checkpoint
    from rdd.sweep import SweepSpec, expand, run_config

    state = load_checkpoint(ROOT / "assets/fmnist/eight_step.pt")
    state["config"]["data"].update(dataset="folder", root=str(tmp_path), holdout=5)
    save_checkpoint(state, tmp_path / "teacher.pt")
    spec = SweepSpec(config=None, teacher=str(tmp_path / "teacher.pt"), out=str(tmp_path / "sweep"), grid=[], seeds=[0],
                     holdout=7)
    data = run_config(spec, expand(spec)[0]).data
    assert (data.dataset, data.root, data.holdout) == ("folder", str(tmp_path), 7)  # --holdout is the sweep's own


@pytest.mark.slow  # it trains (two iterations)
def test_bf16_on_a_cpu_is_said_not_silently_dropped(capsys, tmp_path):
    code = main(["train", *TINY, "--set", "train.iterations=2", "train.bf16=true", "--out", str(tmp_path / "run")])
    assert code == 0 and "train.bf16 autocasts on CUDA only; this run on cpu trains in float32" in capsys.readouterr().out


def test_scale_without_a_grid_is_refused(capsys, tmp_path, no_sampling):
    """--scale once did nothing when only --npz was written."""
    assert_one_line(*run_cli(capsys, "sample", "--ckpt", TWO_STEP, "--scale", "2", "--npz", str(tmp_path / "x.npz")), "--scale", "--out")
    assert not (tmp_path / "x.npz").exists()


def test_report_sample_count_without_an_evaluation_network_is_refused(capsys, tmp_path):
    """--num-samples once did nothing without --evalnet: nothing is measured."""
    assert_one_line(*run_cli(capsys, "report", str(tmp_path), "--num-samples", "500"), "--num-samples", "--evalnet")
