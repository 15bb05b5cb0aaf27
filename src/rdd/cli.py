"""The `rdd` command. Every user error ends in one line on stderr and a non-zero exit."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rdd.errors import RddError


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="experiment YAML under configs/")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.iterations=100 (repeatable)")


def cmd_train(args) -> None:
    from rdd.config import load_config
    from rdd.distributed import init_distributed
    from rdd.training import train_base_model

    ctx = init_distributed()
    train_base_model(load_config(args.config, args.overrides), args.out, ctx, resume=args.resume, overwrite=args.overwrite)
    if ctx.is_main:
        print(f"wrote {Path(args.out) / 'model.pt'} and {Path(args.out) / 'samples.png'}")


def _distill_config(args):
    from rdd.config import load_config

    overrides = list(args.overrides)
    if args.method:
        overrides.append(f"distill.method={args.method}")
    return load_config(args.config, overrides)


def cmd_distill(args) -> None:
    from rdd.distill import run_stage
    from rdd.distributed import init_distributed

    cfg = _distill_config(args)
    ctx = init_distributed()
    path = run_stage(cfg, args.teacher, args.out, ctx, stage_index=args.stage, resume=args.resume, overwrite=args.overwrite)
    if ctx.is_main:
        print(f"wrote {path}")


def cmd_progressive(args) -> None:
    from rdd.distill import run_progressive
    from rdd.distributed import init_distributed

    cfg = _distill_config(args)
    if args.to is not None:
        cfg.distill.target_steps = args.to
    ctx = init_distributed()
    models = run_progressive(cfg, args.teacher, args.out, ctx, overwrite=args.overwrite)
    if ctx.is_main:
        print("\n".join(f"wrote {m}" for m in models))


def cmd_train_classifier(args) -> None:
    from rdd.classifier import train_classifier
    from rdd.config import load_config
    from rdd.distributed import require_single_process

    require_single_process("train-classifier")
    result = train_classifier(load_config(args.config, args.overrides), args.out)
    print(f"test accuracy {result['test_accuracy']:.4f}; wrote {result['path']}")


def cmd_sample(args) -> None:
    from rdd.sampling import sample_command

    sample_command(args)


def cmd_export(args) -> None:
    from rdd.diffusers_io import export_diffusers

    print(f"wrote {export_diffusers(args.ckpt, args.out)}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rdd", description="Distil diffusion models into few-step generators (PD, RCFD, RDD).")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a base (teacher) diffusion model")
    _add_config_args(p)
    p.add_argument("--out", required=True, help="run folder: checkpoints, grids, metrics.jsonl")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="delete the run already in --out and start over")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="sample a grid and/or an .npz from a checkpoint")
    p.add_argument("--ckpt", required=True, help="model.pt of a teacher or student, or a diffusers folder")
    p.add_argument("--steps", type=int, help="sampler steps (default: the student's own, 64 for a teacher)")
    p.add_argument("--sampler", default="ddim", choices=["ddim", "dpm-solver", "pndm"])
    p.add_argument("--num", type=int, default=64, help="number of images")
    p.add_argument("--seed", type=int, default=0, help="noise seed: the same seed gives every model the same noise")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--out", help="PNG grid to write")
    p.add_argument("--npz", help=".npz of uint8 NHWC images to write")
    p.set_defaults(func=cmd_sample)

    for name, func, text in [("distill", cmd_distill, "distil one stage: an N-step teacher into an N/2-step student"),
                             ("progressive", cmd_progressive, "distil a chain N -> N/2 -> ... -> --to, resuming finished stages")]:
        p = sub.add_parser(name, help=text)
        _add_config_args(p)
        p.add_argument("--teacher", required=True,
                       help="model.pt of the teacher (a base model or a student), or a diffusers folder (docs/diffusers.md)")
        p.add_argument("--method", help="pd | pd_lpips | rcfd | rdd | cfd_ii | cfd_is | cfd_m (default: distill.method)")
        p.add_argument("--out", required=True, help="run folder")
        if name == "distill":
            p.add_argument("--stage", type=int, default=0, help="index into the per-stage lists (iterations, tau_cfd)")
            p.add_argument("--resume", action="store_true", help="continue from the folder's last checkpoint")
        else:
            p.add_argument("--to", type=int, help="target step count (default: distill.target_steps)")
        p.add_argument("--overwrite", action="store_true", help="delete the run(s) already in --out and start over")
        p.set_defaults(func=func)

    p = sub.add_parser("export", help="write a model as a folder that diffusers loads (docs/diffusers.md)")
    p.add_argument("--ckpt", required=True, help="model.pt of a teacher or student, or a diffusers folder")
    p.add_argument("--format", default="diffusers", choices=["diffusers"],
                   help="diffusers: a pipeline folder for DiffusionPipeline.from_pretrained(DIR, trust_remote_code=True)")
    p.add_argument("--out", required=True, help="the folder to write (new or empty)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("train-classifier", help="train the frozen feature classifier of RCFD/RDD")
    _add_config_args(p)
    p.add_argument("--out", required=True, help="folder for classifier.pt and metrics.jsonl")
    p.set_defaults(func=cmd_train_classifier)
    from rdd.metrics import add_eval_parser, add_train_evalnet_parser
    add_eval_parser(sub)
    add_train_evalnet_parser(sub)
    from rdd.report import add_report_parser
    add_report_parser(sub)
    from rdd.benchmark import add_benchmark_parser
    add_benchmark_parser(sub)
    from rdd.demo import add_demo_parser
    add_demo_parser(sub)
    from rdd.sweep import add_sweep_parser
    add_sweep_parser(sub)
    return parser


def resume_hint(args) -> str:
    """How the interrupted command continues; the commands not named here start over."""
    overwrite = getattr(args, "overwrite", False)
    if args.command in ("train", "distill"):
        return "; resume with the same command and --resume" + (" instead of --overwrite" if overwrite else "")
    if args.command in ("progressive", "benchmark", "sweep", "demo"):  # they always resume
        return "; run the same command again" + (" without --overwrite" if overwrite else "") + " to resume"
    return ""


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except RddError as e:
        print(f"rdd: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rdd: interrupted{resume_hint(args)}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
