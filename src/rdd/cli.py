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
    import torch

    from rdd.config import load_config
    from rdd.distributed import init_distributed
    from rdd.losses.truncated_snr import TruncatedSNRLoss
    from rdd.networks import build_model
    from rdd.training import fit

    cfg = load_config(args.config, args.overrides)
    ctx = init_distributed()
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, cfg.data)
    fit(cfg, model, TruncatedSNRLoss(), args.out, ctx, iterations=cfg.train.iterations, lr=cfg.train.lr,
        meta={"sampling_steps": None, "method": "base"}, resume=args.resume, desc="train teacher")
    if ctx.is_main:
        print(f"wrote {Path(args.out) / 'model.pt'} and {Path(args.out) / 'samples.png'}")


def cmd_sample(args) -> None:
    from rdd.sampling import sample_command

    sample_command(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rdd", description="Distil diffusion models into few-step generators (PD, RCFD, RDD).")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a base (teacher) diffusion model")
    _add_config_args(p)
    p.add_argument("--out", required=True, help="run folder: checkpoints, grids, metrics.jsonl")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="sample a grid and/or an .npz from a checkpoint")
    p.add_argument("--ckpt", required=True, help="model.pt of a teacher or student")
    p.add_argument("--steps", type=int, help="sampler steps (default: the student's own, 64 for a teacher)")
    p.add_argument("--sampler", default="ddim", choices=["ddim", "dpm-solver", "pndm"])
    p.add_argument("--num", type=int, default=64, help="number of images")
    p.add_argument("--seed", type=int, default=0, help="noise seed: the same seed gives every model the same noise")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--out", help="PNG grid to write")
    p.add_argument("--npz", help=".npz of uint8 NHWC images to write")
    p.set_defaults(func=cmd_sample)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except RddError as e:
        print(f"rdd: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rdd: interrupted; resume with the same command and --resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
