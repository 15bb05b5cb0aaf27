"""Sampling speed of the N-step teacher against the 1-step student, side by side in one run.

Both sample the same number of images with the same noise through `rdd.sampling.generate`.
Without checkpoints, untrained `fmnist-small` networks stand in (distillation keeps the teacher's
architecture, so only the step counts differ). On a CPU, set OMP_NUM_THREADS=1 for stable timings:

    OMP_NUM_THREADS=1 python benchmarks/sampling_speed.py --ckpt-teacher runs/teacher/model.pt \
        --ckpt-student runs/student/model.pt --teacher-steps 8
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

from rdd.config import ExperimentConfig
from rdd.errors import RddError
from rdd.model_io import load_diffusion_model
from rdd.networks import build_model
from rdd.sampling import generate


def load_or_build(path: str | None, device: str):
    if path:
        return load_diffusion_model(path, device)
    cfg = ExperimentConfig()
    cfg.model.name = "fmnist-small"
    return build_model(cfg.model, cfg.data).to(device).eval(), cfg, {}


def time_sampling(model, cfg, steps: int, args, device: str) -> float:
    # Warm-up batch at the timed shape: CUDA kernels, cuDNN plans and allocations are not timed.
    generate(model, cfg, 1, min(args.num, args.batch_size), args.seed, args.batch_size, device=device, progress=False)
    start = time.perf_counter()
    generate(model, cfg, steps, args.num, args.seed, args.batch_size, device=device, progress=False)
    return time.perf_counter() - start  # generate returns CPU tensors, so the GPU has finished


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ckpt-teacher", help="teacher model.pt (default: an untrained fmnist-small)")
    p.add_argument("--ckpt-student", help="student model.pt (default: an untrained fmnist-small)")
    p.add_argument("--teacher-steps", type=int, default=8)
    p.add_argument("--num", type=int, default=10000)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    try:
        teacher, teacher_cfg, _ = load_or_build(args.ckpt_teacher, device)
        student, student_cfg, meta = load_or_build(args.ckpt_student, device)
        student_steps = meta.get("sampling_steps") or 1
        print(f"{args.num} images, batch {args.batch_size}, on {device} ({torch.get_num_threads()} CPU threads)")
        t_teacher = time_sampling(teacher, teacher_cfg, args.teacher_steps, args, device)
        print(f"teacher, {args.teacher_steps:2d}-step: {t_teacher:8.2f} s  ({args.num / t_teacher:8.1f} images/s)")
        t_student = time_sampling(student, student_cfg, student_steps, args, device)
        print(f"student, {student_steps:2d}-step: {t_student:8.2f} s  ({args.num / t_student:8.1f} images/s)")
    except RddError as e:
        sys.exit(f"error: {e}")
    print(f"student speed-up: {t_teacher / t_student:.2f}x")


if __name__ == "__main__":
    main()
