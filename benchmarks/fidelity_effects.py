"""Measure what each fidelity switch changes at the start of a 2 -> 1 stage on the shipped model.

    OMP_NUM_THREADS=1 python benchmarks/fidelity_effects.py [--batches 8] [--batch-size 32]

Teacher and student are assets/fmnist/two_step.pt (the student starts as its copy), features from
assets/fmnist/classifier.pt. The queue is first filled with teacher pixels of 160 batches (N_q / K
pushes, so no random rows are left), in each layout. Printed as Markdown for docs/fidelity.md.
"""
from __future__ import annotations

import argparse
import copy
import statistics
from pathlib import Path

import torch

from rdd.classifier import load_classifier
from rdd.config import load_config
from rdd.data import load_dataset
from rdd.diffusion import COSINE, predict_x, sample_student_times, teacher_two_step_target
from rdd.fidelity import PRESETS
from rdd.losses import PixelQueue, ProjectionHead, cfd_loss, is_p2p_loss, m_p2p_loss
from rdd.losses.pixels import unit_pixels
from rdd.model_io import load_diffusion_model
from rdd.tables import markdown_table

ROOT = Path(__file__).resolve().parents[1]


def batches(cfg, batch_size: int, count: int, seed: int):
    data = load_dataset(cfg.data, "train")
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    for i in range(count):
        yield torch.stack([data[int(j)][0] for j in order[i * batch_size:(i + 1) * batch_size]])


def pd_batch(teacher, x: torch.Tensor, clip: bool, seed: int):
    """t, z_t and the PD target x~ of one batch, with the same noise for either clip setting."""
    g = torch.Generator().manual_seed(seed)
    t = sample_student_times(x.shape[0], 1, generator=g)
    z_t = COSINE.diffuse(x, t, torch.randn(x.shape, generator=g))
    with torch.no_grad():
        return t, z_t, teacher_two_step_target(teacher, z_t, t, 2, clip=clip)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    torch.manual_seed(0)
    teacher, _, _ = load_diffusion_model(ROOT / "assets/fmnist/two_step.pt")
    classifier = load_classifier(ROOT / "assets/fmnist/classifier.pt")
    cfg = load_config(ROOT / "configs/fmnist/distill.yaml")
    channels = classifier.num_features
    print(f"two_step.pt, classifier C = {channels}, batch {args.batch_size}, {args.batches} batches\n")

    # 1. Teacher clip inside the PD target: how often x-hat leaves [-1, 1], and how much x~ moves. The
    #    2 -> 1 stage has t = 1 only; the same network on a 4-step grid shows the later times of a 4 -> 2 stage.
    rows = {}
    with torch.no_grad():
        for x in batches(cfg, args.batch_size, args.batches, seed=1):
            for steps, t_value in ((2, 1.0), (4, 1.0), (4, 0.5)):
                t = torch.full((x.shape[0],), t_value)
                z_t = COSINE.diffuse(x, t, torch.randn_like(x))
                x1 = predict_x(teacher, z_t, t, None, clip=False)
                x2 = predict_x(teacher, COSINE.ddim_step(z_t, x1, t, t - 1 / steps), t - 1 / steps, None, clip=False)
                clipped = teacher_two_step_target(teacher, z_t, t, steps, clip=True)
                raw = teacher_two_step_target(teacher, z_t, t, steps, clip=False)
                rows.setdefault((steps, t_value), []).append(((x1.abs() > 1).float().mean().item(), (x2.abs() > 1).float().mean().item(),
                                                               ((clipped - raw).norm() / raw.norm()).item()))
    table = [[f"{steps} → {steps // 2}", f"{t_value}", *(f"{100 * statistics.mean(v[i] for v in values):.1f} %" for i in range(3))]
             for (steps, t_value), values in rows.items()]
    print("### Teacher clip\n")
    print(markdown_table(["grid", "t", "x̂ outside [−1, 1], step 1", "step 2", "‖x̃_clip − x̃_raw‖ / ‖x̃_raw‖"], table))

    # 2. The queue: fill it in each layout, then M_P2P's value and its gradient on the student image.
    queues = {}
    for layout in ("pixels", "flat_view"):
        queue = PixelQueue(cfg.distill.queue_size, channels, seed=0, layout=layout)
        with torch.no_grad():
            for x in batches(cfg, args.batch_size, cfg.distill.queue_size // cfg.distill.push_per_step + 4, seed=2):
                queue.push(classifier(x).feature_map, cfg.distill.push_per_step)
        queues[layout] = queue
    real = unit_pixels(classifier(next(batches(cfg, 256, 1, seed=3))).feature_map).flatten(0, 1)
    best_cosine = {k: (q.queue[:2000] @ real.T).amax(dim=1).mean().item() for k, q in queues.items()}

    student = copy.deepcopy(teacher).train()
    head = {bias: ProjectionHead(channels, bias=bias) for bias in (True, False)}
    results = {}
    settings = {
        "paper (pixels, V 2048, filled)": ("pixels", 2048, "filled"),
        "public queue only (flat_view)": ("flat_view", 2048, "filled"),
        "V 4096 only": ("pixels", 4096, "filled"),
        "official (flat_view, V 4096, whole)": ("flat_view", 4096, "whole"),
    }
    for name, (layout, v, draw_from) in settings.items():
        queue = queues[layout]
        queue.draw_from = draw_from
        losses, grads, cfd_grads, is_grads = [], [], [], []
        for i, x in enumerate(batches(cfg, args.batch_size, args.batches, seed=4)):
            t, z_t, target = pd_batch(teacher, x, clip=True, seed=10 + i)
            x_student = student(z_t, t, None).detach().requires_grad_(True)
            feat_s = classifier(x_student)
            with torch.no_grad():
                feat_t = classifier(target)
            loss = m_p2p_loss(head[True](feat_s.feature_map), feat_t.feature_map, queue.draw(v), 0.1)
            grad, = torch.autograd.grad(loss, x_student, retain_graph=True)
            cfd_grad, = torch.autograd.grad(cfd_loss(feat_s.pooled, feat_t.pooled, 0.85), x_student, retain_graph=True)
            is_grad, = torch.autograd.grad(is_p2p_loss(feat_s.feature_map, feat_t.feature_map, 1.0), x_student)
            losses.append(loss.item())
            grads.append(grad.norm().item())
            cfd_grads.append(cfd_grad.norm().item())
            is_grads.append(is_grad.norm().item())
        results[name] = (statistics.mean(losses), statistics.mean(grads), statistics.mean(cfd_grads), statistics.mean(is_grads))
    print("\n### M_P2P at the start of the stage (queue full, β not applied)\n")
    print(markdown_table(["queue", "L_M_P2P", "‖∂L_M/∂x̂_S‖", "‖∂L_CFD/∂x̂_S‖", "‖∂L_IS/∂x̂_S‖"],
                         [[k, f"{a:.3f}", f"{b:.2e}", f"{c:.2e}", f"{d:.2e}"] for k, (a, b, c, d) in results.items()]))
    print("\n### What a queue row is\n")
    print(markdown_table(["layout", "mean best cosine of a queue row to a real teacher pixel"],
                         [[k, f"{v:.3f}"] for k, v in best_cosine.items()]))
    counts = {bias: sum(p.numel() for p in h.parameters()) for bias, h in head.items()}
    print(f"\nProjection head parameters at C = {channels}: with bias {counts[True]:,}, public (no bias) {counts[False]:,}.")
    print(f"Official preset: {PRESETS['official']}")


if __name__ == "__main__":
    main()
