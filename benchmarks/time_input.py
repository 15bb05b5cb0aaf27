"""How much the U-Net's time input matters: rdd feeds diffusers' UNet2DModel the continuous 1000 t; the public
code's U-Net looks its sinusoidal embedding up at the integer 1024 t. Both models train on the 1,024-step grid
(t = k / 1024), where the two inputs carry the same information; they part only where a sampler asks for a time
off that grid. This script samples the shipped Fashion-MNIST base model from the same noise twice, with t as
it is and with t rounded to the grid (round(1024 t) / 1024, what an integer lookup sees), and reports the
largest pixel change and FD/IS of the evaluation network for each sampler.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/time_input.py --num 2000
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from rdd.metrics import domain_metrics, load_evalnet, reference_statistics
from rdd.model_io import load_diffusion_model
from rdd.sampling import generate
from rdd.tables import markdown_table

ROOT = Path(__file__).resolve().parent.parent
GRID = 1024  # the public code's time table, and rdd's training grid (rdd.losses.truncated_snr.TRAIN_GRID)


class GridTime(nn.Module):
    """The model with its time input rounded to the 1,024-step grid, as an integer table lookup sees it."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.schedule = model, model.schedule

    def forward(self, z_t, t, labels=None):
        return self.model(z_t, torch.round(t * GRID) / GRID, labels)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", default=str(ROOT / "assets/fmnist/base.pt"))
    p.add_argument("--evalnet", default=str(ROOT / "assets/fmnist/evalnet.pt"))
    p.add_argument("--num", type=int, default=2000)
    p.add_argument("--rows", default="ddim:1024,ddim:64,ddim:10,dpm-solver:12,pndm:10")
    args = p.parse_args()
    model, cfg, _ = load_diffusion_model(args.ckpt)
    evalnet = load_evalnet(args.evalnet, cfg.data)
    reference = reference_statistics(args.evalnet, cfg.data, progress=False)
    table = []
    for row in args.rows.split(","):
        sampler, steps = row.split(":")
        continuous = generate(model, cfg, int(steps), args.num, 0, 500, sampler, progress=False)
        on_grid = generate(GridTime(model), cfg, int(steps), args.num, 0, 500, sampler, progress=False)
        a = domain_metrics(evalnet, continuous, reference, progress=False)
        b = domain_metrics(evalnet, on_grid, reference, progress=False)
        table.append([sampler, steps, f"{(continuous - on_grid).abs().max():.2e}", f"{(continuous - on_grid).abs().mean():.2e}",
                      f"{a['fd']:.3f} / {a['is']:.2f}", f"{b['fd']:.3f} / {b['is']:.2f}"])
        print(table[-1], flush=True)
    print(markdown_table(["sampler", "steps", "max |Δx|", "mean |Δx|", "FD / IS, t as is", "FD / IS, t on the 1,024 grid"], table))


if __name__ == "__main__":
    main()
