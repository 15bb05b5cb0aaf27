"""Sampling at scale: fixed-seed noise shared by every model, batched; uint8 NHWC for .npz files and FID tools."""
from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from rdd.diffusion import ddim_sample
from rdd.distributed import DistContext, gather_to_main
from rdd.errors import RddError
from rdd.limits import check_memory, image_bytes

DEFAULT_TEACHER_STEPS = 64
GRID_SUFFIXES = (".png", ".jpg", ".jpeg")  # what the grid writer (PIL) is asked for by name


def noise_batches(num: int, shape: tuple[int, ...], seed: int, batch_size: int, num_classes: int = 0):
    """Yield (noise, labels) batches; the same seed and batch size give every model the same noise."""
    gen = torch.Generator().manual_seed(seed)
    for start in range(0, num, batch_size):
        n = min(batch_size, num - start)
        noise = torch.randn(n, *shape, generator=gen)
        labels = torch.randint(0, num_classes, (n,), generator=gen) if num_classes else None
        yield noise, labels


def resolve_steps(meta: dict, steps: int | None, sampler: str = "ddim") -> int:
    """A student samples at its own step count with the DDIM update it was distilled against; a teacher at
    any N (default 64) with any sampler."""
    own = meta.get("sampling_steps")
    if own and sampler != "ddim":  # its weights fold the DDIM steps in: another update rule is another model
        raise RddError(f"this student was distilled for rdd's DDIM sampler at {own} steps, not {sampler}; "
                       "sample it with --sampler ddim (dpm-solver and pndm are for teachers)")
    if steps is None:
        return own or DEFAULT_TEACHER_STEPS
    if own and steps != own:
        raise RddError(f"this student was distilled for {own} steps; sample it with --steps {own}")
    if steps < 1:
        raise RddError(f"--steps must be positive, got {steps}")
    return steps


def check_sample_memory(cfg, num: int, batch_size: int) -> None:
    """`generate` holds every image in memory: said before the first one is drawn."""
    dc = cfg.data
    check_memory(f"{num:,} images of {dc.channels}x{dc.resolution}x{dc.resolution}",
                 image_bytes(num + min(num, batch_size), dc.channels, dc.resolution),
                 "draw fewer images (--num-samples), or several smaller runs")


def generate(model, cfg, steps: int, num: int, seed: int, batch_size: int = 500, sampler: str = "ddim",
             device="cpu", progress: bool = True, ctx: DistContext | None = None) -> torch.Tensor | None:
    """`num` images in [-1, 1] from model (an x-predictor) with the chosen sampler. Under torchrun (`ctx`)
    each process samples every world-th batch of the same noise, and the main process gets every image,
    in the order of one process (the others get None)."""
    result = generate_labelled(model, cfg, steps, num, seed, batch_size, sampler, device, progress, ctx)
    return None if result is None else result[0]


def check_class(cfg, class_label: int | None) -> None:
    classes = cfg.model.num_classes
    if class_label is not None and not classes:
        raise RddError(f"--class {class_label}: this model is unconditional; --class needs a class-conditional model")
    if class_label is not None and not 0 <= class_label < classes:
        raise RddError(f"--class {class_label}: this model knows classes 0..{classes - 1}")


@torch.no_grad()
def generate_labelled(model, cfg, steps: int, num: int, seed: int, batch_size: int = 500, sampler: str = "ddim",
                      device="cpu", progress: bool = True, ctx: DistContext | None = None, class_label: int | None = None):
    """(images, class labels or None) as `generate` makes them; `class_label` replaces the drawn labels of a
    conditional model after they are drawn, so the noise stays what the same seed gives without it."""
    check_class(cfg, class_label)
    if sampler == "ddim":
        run = ddim_sample
    else:
        from rdd.baselines import diffusers_sample

        def run(m, z, n, labels):
            return diffusers_sample(m, z, n, labels, sampler)
    shape = (cfg.data.channels, cfg.data.resolution, cfg.data.resolution)
    check_sample_memory(cfg, num, batch_size)
    rank, world = (ctx.rank, ctx.world) if ctx is not None else (0, 1)
    mine = {}  # batch index -> (images, labels)
    batches = noise_batches(num, shape, seed, batch_size, cfg.model.num_classes)
    total = (num + batch_size - 1) // batch_size
    for i, (noise, labels) in enumerate(tqdm(batches, total=total, desc=f"sample {sampler} {steps} steps",
                                             disable=not progress, leave=False)):
        if labels is not None and class_label is not None:
            labels = labels.fill_(class_label)
        if i % world == rank:  # every process draws all the noise, so each batch's noise is the same as on one
            on_device = labels.to(device) if labels is not None else None
            mine[i] = (run(model, noise.to(device), steps, on_device).clamp(-1, 1).cpu(), labels)
    shares = gather_to_main(mine) if world > 1 else [mine]
    if shares is None:
        return None
    every = {i: pair for share in shares for i, pair in share.items()}
    order = sorted(every)
    labels = [every[i][1] for i in order]
    return torch.cat([every[i][0] for i in order]), (torch.cat(labels) if labels[0] is not None else None)


def to_uint8_nhwc(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] NCHW floats to uint8 NHWC (3 channels), the format FID tools read."""
    x = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    return x.permute(0, 2, 3, 1).numpy()
