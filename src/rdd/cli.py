"""The `rdd` command. Every user error ends in one line on stderr and a non-zero exit."""
from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

from rdd.errors import RddError
from rdd.registry import METHODS, SAMPLERS


def cmd_train(args) -> None:
    from rdd.config import load_config
    from rdd.distributed import init_distributed
    from rdd.training import train_base_model

    ctx = init_distributed()
    train_base_model(load_config(args.config, args.overrides, "train"), args.out, ctx, resume=args.resume, overwrite=args.overwrite)
    if ctx.is_main:
        print(f"wrote {Path(args.out) / 'model.pt'} and {Path(args.out) / 'samples.png'}")


def _distill_config(args):
    from rdd.config import check_not_set_by_command, command_line_values
    from rdd.distill import load_stage_config
    from rdd.registry import check_method

    overrides = list(args.overrides)
    asked = command_line_values(overrides)
    check_not_set_by_command(args.command, list(asked))
    for flag, value, key in (("--to", getattr(args, "to", None), "distill.target_steps"), ("--method", args.method, "distill.method")):
        if value is not None and key in asked and asked[key] != value:
            raise RddError(f"{flag} {value} and --set {key}={asked[key]} disagree; pass one of them")
    if args.method:
        overrides.append(f"distill.method={args.method}")
    cfg = load_stage_config(args.config, overrides, args.teacher, args.command)
    check_method(cfg.distill.method)  # a plugin's method is known by now
    return cfg


def cmd_distill(args) -> None:
    from rdd.distill import per_stage, run_stage
    from rdd.distributed import init_distributed
    from rdd.training import check_snapshot_at

    cfg = _distill_config(args)
    check_snapshot_at(cfg, per_stage(cfg.distill.iterations, args.stage))
    ctx = init_distributed()
    run_stage(cfg, args.teacher, args.out, ctx, stage_index=args.stage, resume=args.resume, overwrite=args.overwrite)


def cmd_progressive(args) -> None:
    from rdd.distill import run_progressive
    from rdd.distributed import init_distributed
    from rdd.training import check_snapshot_at

    cfg = _distill_config(args)
    check_snapshot_at(cfg, min(cfg.distill.iterations))  # every stage takes the snapshots
    if args.to is not None:
        cfg.distill.target_steps = args.to
    ctx = init_distributed()
    models = run_progressive(cfg, args.teacher, args.out, ctx, overwrite=args.overwrite)
    if ctx.is_main:
        print(f"chain done: {len(models)} stages; the last student is {models[-1]}")


def cmd_train_classifier(args) -> None:
    from rdd.classifier import train_classifier
    from rdd.config import load_config
    from rdd.distributed import init_distributed

    cfg = load_config(args.config, args.overrides, "train-classifier")
    ctx = init_distributed()
    result = train_classifier(cfg, args.out, ctx, resume=args.resume, overwrite=args.overwrite)
    if ctx.is_main:
        print(f"test accuracy {result['test_accuracy']:.4f}; wrote {result['path']}")


def cmd_export(args) -> None:
    from rdd.model_io import export_diffusers, export_stock_ddim

    if args.format == "ddim":
        out, steps = export_stock_ddim(args.ckpt, args.out)
        print(f"wrote {out}: DDIMPipeline.from_pretrained({str(out)!r}) samples it as rdd does with "
              f"num_inference_steps={steps or 'N (N dividing the timesteps)'}, use_clipped_model_output=True")
    else:
        print(f"wrote {export_diffusers(args.ckpt, args.out)}")


def cmd_sample(args) -> None:
    import numpy as np

    from rdd.distributed import default_device
    from rdd.files import write_atomic
    from rdd.limits import check_disk
    from rdd.metrics_log import save_grid
    from rdd.model_io import load_diffusion_model
    from rdd.rundir import check_output_path
    from rdd.sampling import GRID_SUFFIXES, generate_labelled, resolve_steps, to_uint8_nhwc

    if not args.out and not args.npz:
        raise RddError("nothing to write: pass --out grid.png and/or --npz samples.npz")
    if args.scale and not args.out:
        raise RddError("--scale sizes the grid's tiles, and no grid is drawn: pass --out grid.png, or drop --scale")
    if args.num_samples < 1:
        raise RddError(f"--num-samples {args.num_samples}: sample at least 1 image")
    if args.batch_size < 1:
        raise RddError(f"--batch-size {args.batch_size}: use at least 1")
    for path, flag, suffixes in ((args.out, "--out", GRID_SUFFIXES), (args.npz, "--npz", (".npz",))):
        if path:
            check_output_path(path, flag, {"checkpoint": args.ckpt}, args.overwrite)
            if Path(path).suffix.lower() not in suffixes:
                raise RddError(f"{flag} '{path}' has an unknown extension; end it in {' or '.join(suffixes)}")
    device = default_device()
    model, cfg, meta = load_diffusion_model(args.ckpt, device)
    steps = resolve_steps(meta, args.steps, args.sampler)
    if args.npz:
        check_disk(args.npz, args.num_samples * cfg.data.resolution ** 2 * 3, "--npz")
    images, labels = generate_labelled(model, cfg, steps, args.num_samples, args.seed, args.batch_size, args.sampler, device,
                                       class_label=args.class_label)
    if args.out:
        scale = args.scale or max(1, GRID_TILE // cfg.data.resolution)
        save_grid(images[:256], args.out, nrow=int(np.ceil(np.sqrt(min(len(images), 256)))), scale=scale)
        print(f"wrote {args.out} ({scale}x)")
    if args.npz:
        arrays = {"images": to_uint8_nhwc(images), **({"labels": labels.numpy()} if labels is not None else {})}
        write_atomic(args.npz, lambda f: np.savez_compressed(f, **arrays))
        print(f"wrote {args.npz} ({len(images)} images{', with their class labels' if labels is not None else ''})")


def cmd_eval(args) -> None:
    from rdd.distributed import init_distributed
    from rdd.files import write_json_atomic
    from rdd.metrics import evaluate_checkpoint, format_result
    from rdd.rundir import check_output_path

    inputs = {"checkpoint": args.ckpt, "evalnet": args.evalnet, "Inception weights": args.inception_weights}
    if args.json:
        check_output_path(args.json, "--json", inputs, args.overwrite)
    if args.reference_cache:  # a cache is rewritten when stale: never one of the inputs
        check_output_path(args.reference_cache, "--reference-cache", inputs)
    ctx = init_distributed()
    result = evaluate_checkpoint(args.ckpt, args.steps, args.sampler, args.num_samples, args.seed, args.batch_size,
                                 args.evalnet, args.inception_weights, args.reference_cache, device=ctx.device,
                                 progress=ctx.is_main, ctx=ctx, data_overrides=args.overrides)
    if result is None:  # another process of torchrun's: the main one measures and writes
        return
    print(format_result(result))
    if args.json:
        write_json_atomic(args.json, result)
        print(f"wrote {args.json}")


def cmd_train_evalnet(args) -> None:
    from rdd.classifier import train_classifier
    from rdd.config import check_not_set_by_command, command_line_keys, load_config
    from rdd.distributed import init_distributed
    from rdd.metrics import EVALNET_SEED_OFFSET

    check_not_set_by_command("train-evalnet", command_line_keys(args.overrides))
    cfg = load_config(args.config, args.overrides, "train-evalnet")
    # A config written for the evaluation network (configs/fmnist/evalnet.yaml) is used as it is; a
    # distillation classifier's config gets another seed, so the two networks never share one.
    seed = cfg.classifier.seed if cfg.classifier.arch == "evalnet-cnn" else cfg.classifier.seed + EVALNET_SEED_OFFSET
    ctx = init_distributed()
    result = train_classifier(cfg, args.out, ctx, arch="evalnet-cnn", seed=seed, resume=args.resume, overwrite=args.overwrite)
    if ctx.is_main:
        print(f"evalnet test accuracy {result['test_accuracy']:.4f} (evalnet-cnn, seed {seed}); wrote {result['path']} "
              "(pass it to rdd eval --evalnet)")


def cmd_report(args) -> None:
    from rdd.report import report_folder

    if args.num_samples is not None and not args.evalnet:
        raise RddError("--num-samples sets how many samples --evalnet measures, and no --evalnet is given: pass one, or drop --num-samples")
    num = 2000 if args.num_samples is None else args.num_samples
    print(f"wrote {report_folder(args.dir, args.evalnet, num, args.seed, args.overwrite)}")


def cmd_sweep(args) -> None:
    from rdd.metrics import check_sample_count
    from rdd.sweep import SweepSpec, parse_grid, parse_ints, run_sweep

    spec = SweepSpec(config=args.config, teacher=args.teacher, out=args.out, grid=parse_grid(args.grid),
                     seeds=parse_ints(args.seeds, "--seeds"), overrides=args.overrides, to=args.to,
                     eval_at=parse_ints(args.eval_at, "--eval-at") if args.eval_at else [],
                     eval_samples=args.eval_samples, eval_seed=args.eval_seed, evalnet=args.evalnet,
                     reference=args.reference, holdout=args.holdout, record=args.record, plugins=args.plugins)
    if args.jobs < 1:
        raise RddError(f"--jobs {args.jobs}: run at least one process")
    check_sample_count(spec.eval_samples, "--eval-samples")
    threads = os.environ.get("OMP_NUM_THREADS", "1")
    if not threads.isdigit() or int(threads) < 1:
        raise RddError(f"OMP_NUM_THREADS={threads!r} is not a thread count; set it to a positive integer (1 per run)")
    out = run_sweep(spec, args.jobs)
    print(f"wrote {out / 'sweep.json'}, {out / 'sweep.md'} and plots")


def cmd_benchmark(args) -> None:
    from rdd.benchmark import load_benchmark_config, run_benchmark
    from rdd.distributed import init_distributed

    bc = load_benchmark_config(args.config, args.overrides, args.dry_run)
    if args.out:
        bc.out = args.out
    ctx = init_distributed()
    path = run_benchmark(bc, ctx, args.results, args.config, args.dry_run)
    if ctx.is_main:
        print(f"wrote {path}")


def cmd_demo(args) -> None:
    from rdd.demo import ASSETS, run_demo

    print(f"wrote {run_demo(args.out, args.overrides, args.num_samples, args.assets or ASSETS)}")


GRID_TILE = 64  # `rdd sample` upscales smaller images to tiles of at least this many pixels
# A --set example each command reads (a key it does not read is refused: docs/data.md).
SET_EXAMPLES = {"train": "train.iterations=100 train.lr=1e-3", "train-classifier": "classifier.epochs=5 classifier.lr=0.05",
                "train-evalnet": "classifier.epochs=5 classifier.lr=0.05", "benchmark": "eval_samples=2000 ablation_seeds=[0]",
                "eval": "data.dataset=cifar10 data.root=DIR"}
STAGE_SET_EXAMPLE = "distill.iterations=[100] train.lr=1e-3"


def _add_overrides(p: argparse.ArgumentParser, command: str) -> None:
    p.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help=f"override config values, e.g. --set {SET_EXAMPLES.get(command, STAGE_SET_EXAMPLE)} (repeatable; "
                        "a key this command does not read is refused)")


def _add_config_args(p: argparse.ArgumentParser, command: str) -> None:
    p.add_argument("--config", help="experiment YAML under configs/")
    _add_overrides(p, command)


def bounded_int(low: int, high: int):
    """An argparse type: an integer in [low, high], refused in one line otherwise."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is outside {low:,}..{high:,}")
        return value
    return parse


SEED = bounded_int(0, 2**31 - 1)


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", required=True, help="model.pt of a teacher or student, or a diffusers folder")
    p.add_argument("--steps", type=bounded_int(1, 10_000), help="sampler steps (default: the student's own, 64 for a teacher)")
    p.add_argument("--sampler", default="ddim", choices=SAMPLERS,
                   help="ddim: rdd's deterministic DDIM; dpm-solver and pndm: diffusers' samplers (docs/diffusers.md)")
    p.add_argument("--seed", type=SEED, default=0, help="noise seed: the same seed gives every model the same noise")


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Each option's help ends with its default, where it has one that its text does not already name."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        unset = action.default is None or action.default is False or action.default == [] or action.default == argparse.SUPPRESS
        if unset or "default" in text or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


class OneLineParser(argparse.ArgumentParser):
    """argparse's refusals as one line that points at --help, like every other rdd error; --help shows defaults."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_training_commands(sub) -> None:
    p = sub.add_parser("train", help="train a base (teacher) diffusion model")
    _add_config_args(p, "train")
    p.add_argument("--out", required=True, help="run folder: checkpoints, grids, metrics.jsonl")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="delete the run already in --out and start over")
    p.set_defaults(func=cmd_train)

    for name, func, text in [("distill", cmd_distill, "distil one stage: an N-step teacher into an N/2-step student"),
                             ("progressive", cmd_progressive, "distil a chain N -> N/2 -> ... -> --to, resuming finished stages")]:
        p = sub.add_parser(name, help=text)
        _add_config_args(p, name)
        p.add_argument("--teacher", required=True,
                       help="model.pt of the teacher (a base model or a student), or a diffusers folder (docs/diffusers.md)")
        p.add_argument("--method", help=f"the loss terms to distil with: {', '.join(METHODS)} or a plugin's "
                                        "(default: distill.method)")
        p.add_argument("--out", required=True, help="run folder")
        if name == "distill":
            p.add_argument("--stage", type=bounded_int(0, 1000), default=0, help="index into the per-stage lists (iterations, tau_cfd)")
            p.add_argument("--resume", action="store_true", help="continue from the folder's last checkpoint")
        else:
            p.add_argument("--to", type=int, help="target step count (default: distill.target_steps)")
        p.add_argument("--overwrite", action="store_true", help="delete the run(s) already in --out and start over")
        p.set_defaults(func=func)

    for name, func, kind, text in [
            ("train-classifier", cmd_train_classifier, "classifier", "train the frozen feature classifier of RCFD/RDD"),
            ("train-evalnet", cmd_train_evalnet, "evalnet", "train the independent evaluation network of the domain FD metric")]:
        p = sub.add_parser(name, help=text)
        _add_config_args(p, name)
        p.add_argument("--out", required=True, help=f"run folder: {kind}.pt, {kind}-metrics.jsonl, {kind}-state.pt")
        p.add_argument("--resume", action="store_true", help="continue from the folder's last checkpoint")
        p.add_argument("--overwrite", action="store_true", help=f"delete the {kind} run already in --out and start over")
        p.set_defaults(func=func)


def _add_sweep_command(sub) -> None:
    p = sub.add_parser("sweep", help="train a stage or chain over a grid of config values x seeds, evaluated along the way",
                       description="Example: rdd sweep --config configs/fmnist/distill.yaml --teacher assets/fmnist/two_step.pt "
                                   "--grid distill.beta=0.01,0.1 --grid distill.tau_m=0.1,0.4 --seeds 0,1,2 --out runs/sweep")
    p.add_argument("--config", help="distillation YAML (the base of every run)")
    _add_overrides(p, "sweep")
    p.add_argument("--teacher", required=True, help="model.pt of the teacher")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="a swept key and its values (repeatable; 'method' sweeps distill.method)")
    p.add_argument("--seeds", default="0", help="training seeds, e.g. 0,1,2 (default 0)")
    p.add_argument("--to", type=int, help="distil a chain down to this many steps (default: one stage)")
    p.add_argument("--eval-at", help="also evaluate snapshots at these iterations, e.g. 150,500,1000")
    p.add_argument("--eval-samples", type=int, default=5000, help="samples per FD evaluation")
    p.add_argument("--eval-seed", type=SEED, default=0, help="noise seed of the evaluation samples")
    p.add_argument("--evalnet", default="assets/fmnist/evalnet.pt", help="evaluation network (rdd train-evalnet)")
    p.add_argument("--reference", default="val", choices=["val", "test"],
                   help="val: held-out training images, for choosing settings; test: for the final report")
    p.add_argument("--holdout", type=int, default=10000, help="training images held out as the val split")
    p.add_argument("--jobs", type=int, default=1, help="runs at once (one process each)")
    p.add_argument("--record", help="also keep each finished run's result (config, seed, FD per snapshot, wall time; "
                                    "no weights) as a small JSON in this folder; a run whose record exists is skipped")
    p.add_argument("--out", required=True, help="sweep folder")
    p.set_defaults(func=cmd_sweep)


# Only the long name: torchrun's own parser sees the whole command line and stops at a bare --num, which
# could be its --numa-binding. Called directly, `rdd sample --num 4` still works (argparse's abbreviation).
NUM_SAMPLES = "--num-samples"


def _add_model_commands(sub) -> None:
    p = sub.add_parser("sample", help="sample a grid and/or an .npz from a checkpoint")
    _add_sampling_args(p)
    p.add_argument(NUM_SAMPLES, type=int, default=64, help="number of images")
    p.add_argument("--batch-size", type=int, default=500, help="images sampled at once")
    p.add_argument("--out", help="PNG grid to write")
    p.add_argument("--scale", type=bounded_int(1, 64),
                   help=f"draw each pixel of the grid as NxN pixels (default: tiles of at least {GRID_TILE} px)")
    p.add_argument("--class", dest="class_label", type=bounded_int(0, 1_000_000),
                   help="class label of every image (class-conditional models; default: labels drawn at random)")
    p.add_argument("--npz", help=".npz of uint8 NHWC images (and a conditional model's labels) to write")
    p.add_argument("--overwrite", action="store_true", help="replace --out and --npz if they exist")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("eval", help="sample from a checkpoint and report FD/IS (evalnet) and/or FID/IS/KID (Inception)")
    _add_sampling_args(p)
    p.add_argument(NUM_SAMPLES, type=int, help="number of samples (default: eval.num_samples, 10000)")
    _add_overrides(p, "eval")
    p.add_argument("--batch-size", type=int, help="sampling and feature batch (default: eval.batch_size, 500; Inception at most 64)")
    p.add_argument("--evalnet", help="checkpoint of `rdd train-evalnet`: domain FD and IS (default: the shipped "
                                     "assets/fmnist/evalnet.pt for 16x16 Fashion-MNIST models)")
    p.add_argument("--inception-weights", help="torch-fidelity's weights-inception-2015-12-05-6726825d.pth, a local file: FID, IS and KID")
    p.add_argument("--reference-cache", help=".npz of the test split's evalnet statistics (default: in $RDD_CACHE or ~/.cache/rdd)")
    p.add_argument("--json", help="write the results to this JSON file")
    p.add_argument("--overwrite", action="store_true", help="replace --json if it exists")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("export", help="write a model as a folder that diffusers loads (docs/diffusers.md)")
    p.add_argument("--ckpt", required=True, help="model.pt of a teacher or student, or a diffusers folder")
    p.add_argument("--format", default="diffusers", choices=["diffusers", "ddim"],
                   help="diffusers: rdd's pipeline, for DiffusionPipeline.from_pretrained(DIR, trust_remote_code=True); "
                        "ddim: diffusers' own DDIMPipeline, for unconditional models on a discrete schedule (docs/diffusers.md)")
    p.add_argument("--out", required=True, help="the folder to write (new or empty)")
    p.set_defaults(func=cmd_export)


def _add_page_commands(sub) -> None:
    p = sub.add_parser("report", help="Markdown page with table, same-noise grids and loss curves of a folder of runs")
    p.add_argument("dir", help="folder holding rdd runs (model.pt files)")
    p.add_argument("--evalnet", help="evaluation network checkpoint: adds FD/IS of every model")
    p.add_argument(NUM_SAMPLES, type=int, help="samples per model for FD/IS (with --evalnet; default 2000)")
    p.add_argument("--seed", type=SEED, default=0, help="noise seed of the samples (the same for every model)")
    p.add_argument("--overwrite", action="store_true", help="replace report.md and report/ if they exist")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("benchmark", help="run the paper's protocol on a data set (resumable)")
    p.add_argument("config", help="benchmark YAML, e.g. configs/fmnist/benchmark.yaml")
    _add_overrides(p, "benchmark")
    p.add_argument("--out", help="run folder (default: the config's out)")
    p.add_argument("--results", help="folder for RESULTS.md, results.json, grids and curves (default: OUT/results)")
    p.add_argument("--dry-run", action="store_true",
                   help="every stage at full width for dry_run.iterations (2) iterations, each row on a few samples: "
                        "prints each stage's parameters, peak memory, checkpoint size and seconds per iteration")
    p.set_defaults(func=cmd_benchmark)

    p = sub.add_parser("demo", help="distil the shipped 2-step model to 1 step with PD, RCFD and RDD, evaluate, report")
    p.add_argument("--out", default="demo", help="output folder")
    p.add_argument(NUM_SAMPLES, type=int, default=2000, help="samples per model for FD/IS")
    p.add_argument("--assets", help="folder of the shipped models and their SHA256SUMS (default: the repository's assets/fmnist)")
    _add_overrides(p, "demo")
    p.set_defaults(func=cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    from rdd import __version__

    parser = OneLineParser(prog="rdd", description="Distil diffusion models into few-step generators (PD, RCFD, RDD).")
    parser.add_argument("--version", action="version", version=f"rdd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    for add_commands in (_add_training_commands, _add_sweep_command, _add_model_commands, _add_page_commands):
        add_commands(sub)
    for p in sub.choices.values():
        p.add_argument("--plugin", dest="plugins", action="append", default=[], metavar="MODULE_OR_FILE",
                       help="import this Python file or module first: its loss terms and methods (docs/extending.md); repeatable")
    return parser


# The commands that take --resume, and the kind of run (rdd.layout.RUN_FILES) each continues.
RESUMABLE = {"train": "train", "distill": "distill", "train-classifier": "classifier", "train-evalnet": "evalnet"}


def require_resumable(args) -> None:
    """--resume of a folder that holds no run of the command's kind (a typo) is refused before any work."""
    from rdd.layout import RUN_FILES
    from rdd.rundir import require_run_to_resume

    if getattr(args, "resume", False):
        require_run_to_resume(args.out, RUN_FILES[RESUMABLE[args.command]])


def resume_hint(args) -> str:
    """How the interrupted command continues; the commands not named here start over."""
    overwrite = getattr(args, "overwrite", False)
    if args.command in RESUMABLE:
        return "; resume with the same command and --resume" + (" instead of --overwrite" if overwrite else "")
    if args.command in ("progressive", "benchmark", "sweep", "demo"):  # they always resume
        return "; run the same command again" + (" without --overwrite" if overwrite else "") + " to resume"
    return ""


def one_line(text: str, limit: int = 400) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def write_trace(command: str) -> Path:
    """The full trace of an unexpected error, in the temporary folder (never beside a user's files)."""
    path = Path(tempfile.gettempdir()) / f"rdd-{command}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    path.write_text(f"rdd {' '.join(sys.argv[1:])}\n\n{traceback.format_exc()}")
    return path


PATH_ARGUMENTS = ("out", "npz", "json", "results", "record", "reference_cache", "config", "teacher", "ckpt", "evalnet", "dir")


def check_path_arguments(args) -> None:
    """Every path a command was given is one a file system takes (not empty, UTF-8, names not too long)."""
    from rdd.files import check_path_text

    for name in PATH_ARGUMENTS:
        value = getattr(args, name, None)
        if isinstance(value, str):
            check_path_text(value, name if name == "dir" else "--" + name.replace("_", "-"))


def _terminated(signum, frame):
    raise KeyboardInterrupt  # a cluster's SIGTERM (preemption, torchrun stopping a job) ends like Ctrl-C


def main(argv: list[str] | None = None) -> int:
    from rdd.plugins import load_plugins, plugins_in

    argv = sys.argv[1:] if argv is None else list(argv)
    try:  # before the parser is built: it lists the plugins' methods
        load_plugins(plugins_in(argv))
    except RddError as e:
        print(f"rdd: error: {one_line(e, 2000)}", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _terminated)
    try:
        check_path_arguments(args)
        require_resumable(args)
        args.func(args)
    except RddError as e:
        print(f"rdd: error: {one_line(e, 2000)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rdd: interrupted{resume_hint(args)}", file=sys.stderr)
        return 130
    except OSError as e:  # the disk, not rdd: full, read-only, a permission, a path that is not there
        where = f" '{e.filename}'" if e.filename else ""
        print(f"rdd: error: {args.command} could not use{where}: {e.strerror or e}; free space, fix the permission "
              "or choose another path", file=sys.stderr)
        return 2
    except Exception as e:  # a bug, or an input nobody foresaw: one line here, the trace in a file
        if os.environ.get("RDD_DEBUG") == "1":
            raise
        trace = write_trace(args.command)
        print(f"rdd: error: {args.command} failed unexpectedly ({type(e).__name__}: {one_line(e)}); "
              f"full trace in {trace} (RDD_DEBUG=1 shows it)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
