"""Distillation step profile: iterations per second of one step of each method, and where the time goes.

For each method the script times (1) the real step, `rdd.training.Trainer.train_step`: the one step of
rdd.training.fit (objective, backward, gradient average and clip, finiteness check, Adam, scheduler, EMA)
without data loading and logging, and (2) a profiled step that runs the objective's operations in
the same order (rdd.methods.DistillationObjective.__call__), timing each phase with
time.perf_counter (on a GPU each phase ends with a synchronize). The backward pass is split in stages with
torch.autograd.grad: loss terms -> the classifier's feature map (or x-hat for PD), through the
classifier to x-hat, then through the student.

"Network passes" = teacher two DDIM steps + student forward + student backward + classifier
forwards + classifier backward; the target is step <= 1.1 x network passes. Two ratios are printed:
the median real step over the median network passes, and, within each profiled step, all its phases
over its network passes (steadier on a shared machine, where other jobs slow whole steps at random).

Configs: `fmnist` (configs/fmnist/distill.yaml with the shipped teacher and classifier, batch 32) and
`cifar10` (configs/cifar10/distill.yaml: the paper-cifar10 U-Net and DenseNet-201 with random weights,
batch 8; random images in [-1, 1] unless CIFAR-10 is in ~/.cache/rdd/cifar10 or data.root).
It runs on the GPU when there is one (--device); benchmarks/gpu.py uses its steps for the GPU figures.

    OMP_NUM_THREADS=1 python benchmarks/distill_step.py --configs fmnist --steps 5
    OMP_NUM_THREADS=1 python benchmarks/distill_step.py --configs cifar10 --methods pd,rdd --steps 2 --bf16
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from rdd import training
from rdd.classifier import build_classifier, load_classifier
from rdd.config import ExperimentConfig, load_config
from rdd.data import FASHION_MNIST_DEBIAN, load_dataset
from rdd.diffusion import sample_student_times, teacher_two_step_target
from rdd.distill import per_stage, stage_config
from rdd.distributed import DistContext
from rdd.losses import M_P2P, DistillBatch
from rdd.methods import METHODS, DistillationObjective, needs_classifier
from rdd.model_io import load_diffusion_model
from rdd.networks import build_model, student_copy

ROOT = Path(__file__).resolve().parent.parent
NETWORK_PHASES = ["teacher two DDIM steps", "student forward", "classifier on x~ (no grad)",
                  "classifier on x^ (grad)", "classifier backward", "student backward"]
PHASES = ["noise z_t", NETWORK_PHASES[0], NETWORK_PHASES[1], NETWORK_PHASES[2], NETWORK_PHASES[3],
          "loss pd", "loss lpips", "loss cfd", "loss ii_p2p", "loss is_p2p", "loss m_p2p (head + relations)",
          "queue push", "queue draw", "losses backward", NETWORK_PHASES[4], NETWORK_PHASES[5],
          "grad norm + clip", "Adam + scheduler + EMA"]


@dataclasses.dataclass
class Setup:
    """What every method of a config starts from: the stage's config, teacher, classifier and one batch."""

    cfg: ExperimentConfig
    teacher: nn.Module
    teacher_steps: int
    classifier: nn.Module | None
    x: torch.Tensor


def images(cfg, batch: int) -> torch.Tensor:
    """A batch of the config's training images if they are on disk (never downloaded), else random
    images in [-1, 1]: the step's cost does not depend on the pixels."""
    if cfg.data.dataset == "fashion_mnist":
        present = cfg.data.root or FASHION_MNIST_DEBIAN.is_dir()
    else:
        present = (Path(cfg.data.root or Path.home() / ".cache/rdd/cifar10") / "cifar-10-batches-py").is_dir()
    if not present:
        return torch.rand(batch, cfg.data.channels, cfg.data.resolution, cfg.data.resolution) * 2 - 1
    dataset = load_dataset(cfg.data, "train")
    return torch.stack([dataset[i][0] for i in range(batch)])


def setup_fmnist(batch: int, device="cpu") -> Setup:
    cfg = load_config(ROOT / "configs/fmnist/distill.yaml")
    teacher, teacher_cfg, meta = load_diffusion_model(ROOT / "assets/fmnist/two_step.pt", device)
    cfg = stage_config(cfg, teacher_cfg, teacher.prediction_type)  # an x-predicting rdd model keeps x
    classifier = load_classifier(ROOT / "assets/fmnist/classifier.pt", device)
    return Setup(cfg, teacher, meta["sampling_steps"], classifier, images(cfg, batch).to(device))


def setup_random(config: Path, overrides: list[str], classifier_arch: str, batch: int, device="cpu") -> Setup:
    """A config's U-Net as teacher and a classifier, both with random weights: a step costs the same."""
    cfg = load_config(config, overrides)
    teacher = build_model(cfg.model, cfg.data).to(device)
    classifier = build_classifier(classifier_arch, cfg.data.channels).to(device)
    return Setup(cfg, teacher, cfg.distill.teacher_steps, classifier, images(cfg, batch).to(device))


def setup_cifar10(batch: int, device="cpu") -> Setup:
    return setup_random(ROOT / "configs/cifar10/distill.yaml", ["model.name=paper-cifar10"], "densenet201", batch, device)


def synchronize(device: torch.device) -> None:
    """GPU work is asynchronous: a clock read means something only after the device has finished."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Trainer:
    """A training step as rdd.training.fit runs it: `for_method` builds the distillation step of a method,
    the constructor takes any objective (the base model's loss, for one)."""

    @classmethod
    def for_method(cls, setup: Setup, method: str, args) -> "Trainer":
        cfg = copy.deepcopy(setup.cfg)
        cfg.distill.method = method
        cfg.distill.lpips_weights = args.lpips_weights
        teacher = copy.deepcopy(setup.teacher)
        classifier = setup.classifier if needs_classifier(method) else None  # as rdd.distill.build_stage
        objective = DistillationObjective(cfg, teacher, setup.teacher_steps, per_stage(cfg.distill.tau_cfd, 0), classifier)
        student = student_copy(teacher).train().requires_grad_(True)
        return cls(cfg, objective, student, setup.x, per_stage(cfg.distill.iterations, 0), args)

    def __init__(self, cfg: ExperimentConfig, objective, student: nn.Module, x: torch.Tensor, iterations: int, args):
        self.cfg, self.args = cfg, args
        self.objective, self.student, self.x = objective, student, x
        self.device = x.device
        objective.modules.to(self.device)  # the queue and projection head, as fit moves them
        # The networks the objective runs besides the student (a base model's loss has none).
        loss_fn = getattr(objective, "loss", None)  # a distillation objective's MethodLoss holds the classifier
        networks = [getattr(objective, "teacher", None), getattr(loss_fn, "classifier", None)]
        if args.channels_last:
            for net in [*networks, student]:
                if net is not None:
                    net.to(memory_format=torch.channels_last)
            self.x = x.contiguous(memory_format=torch.channels_last)
        # The loop's own state and step (rdd.training.Trainer): optimisers, schedule, clip, EMA.
        self.core = training.Trainer(cfg, student, objective, DistContext(0, 1, self.device), iterations=iterations, lr=cfg.train.lr)
        self.core.autocast = self.autocast()  # on any device here, so that bf16 can be timed on a CPU too
        self.model = self.student  # what the objective runs: the student, or its compiled version
        if args.compile:
            self.model = torch.compile(self.student, backend=args.compile_backend)
            if getattr(objective, "teacher", None) is not None:
                objective.teacher = torch.compile(objective.teacher, backend=args.compile_backend)
            if loss_fn is not None and loss_fn.classifier is not None:  # frozen, held outside the module tree
                object.__setattr__(loss_fn, "classifier", torch.compile(loss_fn.classifier, backend=args.compile_backend))
        self.core.train_model = self.model

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.args.bf16)

    def step(self) -> float:
        """One real step; returns its seconds."""
        synchronize(self.device)
        start = time.perf_counter()
        self.core.train_step(self.x, None)
        synchronize(self.device)
        return time.perf_counter() - start

    def profiled_step(self) -> dict[str, float]:
        """One step as the objective and the loop run it, phase by phase; returns seconds per phase."""
        times: dict[str, float] = {}
        synchronize(self.device)
        last = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal last
            synchronize(self.device)
            now = time.perf_counter()
            times[name] = times.get(name, 0.0) + now - last
            last = now

        obj, x = self.objective, self.x
        # The queue's own time is taken out of the M_P2P term's.
        for term in (term for term in obj.modules.values() if isinstance(term, M_P2P)):
            term.queue.push = timed(term.queue.push, "queue push", times, self.device)
            term.queue.draw = timed(term.queue.draw, "queue draw", times, self.device)
        try:
            with self.autocast():
                t = sample_student_times(x.shape[0], obj.teacher_steps // 2, device=x.device)
                z_t = obj.schedule.diffuse(x, t, torch.randn_like(x))
                lap("noise z_t")
                with torch.no_grad():
                    x_target = teacher_two_step_target(obj.teacher, z_t, t, obj.teacher_steps, None,
                                                       clip=obj.fidelity.teacher_clip).float()
                lap(NETWORK_PHASES[0])
                batch = DistillBatch(self.model(z_t, t, None), x_target, t, obj.loss.classifier, obj.schedule)
                lap(NETWORK_PHASES[1])
                if obj.loss.classifier is not None:  # cached on the batch, so the terms reuse them
                    _ = batch.features_teacher
                    lap(NETWORK_PHASES[2])
                    _ = batch.features_student
                    lap(NETWORK_PHASES[3])
                loss = 0.0
                for name, term in obj.modules.items():
                    queue_before = times.get("queue push", 0.0) + times.get("queue draw", 0.0)
                    loss = loss + obj.loss.weights[name] * term(batch)
                    key = "loss m_p2p (head + relations)" if name == "m_p2p" else f"loss {name}"
                    lap(key)
                    times[key] -= times.get("queue push", 0.0) + times.get("queue draw", 0.0) - queue_before
        finally:
            for term in (term for term in obj.modules.values() if isinstance(term, M_P2P)):
                del term.queue.push, term.queue.draw
        self.core.zero_grad()
        # Backward in stages: the losses (and projection head) down to the classifier's feature map,
        # through the classifier to x-hat, through the student.
        x_student = batch.x_student
        head = list(obj.modules["m_p2p"].head.parameters()) if "m_p2p" in obj.modules else []
        if obj.loss.classifier is not None:
            fmap = batch.features_student.feature_map  # the pooled features derive from it
            g_map, *g_head = torch.autograd.grad(loss, [fmap, *head])
            for p, g in zip(head, g_head):
                p.grad = g
            lap("losses backward")
            (g_x,) = torch.autograd.grad(fmap, x_student, g_map)
            lap(NETWORK_PHASES[4])
        else:
            (g_x,) = torch.autograd.grad(loss, x_student)
            lap("losses backward")
        x_student.backward(g_x)
        lap(NETWORK_PHASES[5])
        self.core.clip_gradients()
        lap("grad norm + clip")
        self.core.update()
        lap("Adam + scheduler + EMA")
        return times


def timed(fn, name: str, times: dict, device: torch.device):
    def wrapper(*args, **kwargs):
        synchronize(device)
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        synchronize(device)
        times[name] = times.get(name, 0.0) + time.perf_counter() - start
        return out
    return wrapper


def run_method(setup: Setup, method: str, args) -> dict:
    trainer = Trainer.for_method(setup, method, args)
    for _ in range(args.warmup):
        trainer.step()
        trainer.profiled_step()
    steps, profiles = [], []
    for _ in range(args.steps):  # alternated, so that a change in the machine's load hits both alike
        steps.append(trainer.step())
        profiles.append(trainer.profiled_step())
    phases = {name: statistics.median(p.get(name, 0.0) for p in profiles) for name in PHASES}
    networks = [sum(p.get(name, 0.0) for name in NETWORK_PHASES) for p in profiles]
    step, network = statistics.median(steps), statistics.median(networks)
    # Within one profiled step other jobs on the machine slow the network passes and the rest alike.
    profiled_ratio = statistics.median(sum(p.values()) / n for p, n in zip(profiles, networks))
    return {"method": method, "step": step, "phases": phases, "network": network, "ratio": step / network,
            "profiled_ratio": profiled_ratio, "profiled": statistics.median(sum(p.values()) for p in profiles)}


def ms(seconds: float) -> str:
    return f"{1000 * seconds:.1f}"


def print_tables(config: str, setup: Setup, results: list[dict], skipped: list[str], args) -> None:
    flags = [name for name in ("channels_last", "bf16", "compile") if getattr(args, name)] or ["fp32"]
    params = sum(p.numel() for p in setup.teacher.parameters()) / 1e6
    print(f"\n### {config}: batch {setup.x.shape[0]}, {tuple(setup.x.shape[1:])} images, U-Net {params:.1f}M "
          f"parameters, {', '.join(flags)}, {torch.get_num_threads()} thread(s), median of {args.steps} steps\n")
    print("| method | step (ms) | it/s | network passes (ms) | step / network passes | profiled step / its network passes "
          "| losses fwd + bwd + queue (ms) | bookkeeping (ms) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        p = r["phases"]
        losses = sum(v for k, v in p.items() if k.startswith(("loss ", "queue"))) + p["losses backward"]
        bookkeeping = p["grad norm + clip"] + p["Adam + scheduler + EMA"]
        print(f"| {r['method']} | {ms(r['step'])} | {1 / r['step']:.2f} | {ms(r['network'])} | "
              f"{r['ratio']:.3f} | {r['profiled_ratio']:.3f} | {ms(losses)} | {ms(bookkeeping)} |")
    for method in skipped:
        print(f"| {method} | skipped: needs LPIPS backbone weights (--lpips-weights) | | | | | | |")
    print("\nPhases (ms, median over the profiled steps):\n")
    print("| phase | " + " | ".join(r["method"] for r in results) + " |")
    print("|---|" + "---|" * len(results))
    for name in PHASES:
        if any(r["phases"][name] for r in results):
            print(f"| {name} | " + " | ".join(ms(r["phases"][name]) if r["phases"][name] else "-" for r in results) + " |")
    print("| **sum of phases (profiled step)** | " + " | ".join(ms(r["profiled"]) for r in results) + " |")
    print("| **real step** | " + " | ".join(ms(r["step"]) for r in results) + " |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", default="fmnist,cifar10", help="comma-separated: fmnist, cifar10")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated; default: every method")
    p.add_argument("--steps", type=int, default=5, help="timed steps (each a real and a profiled one)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--batch-fmnist", type=int, default=32)
    p.add_argument("--batch-cifar10", type=int, default=8)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--bf16", action="store_true", help="autocast to bfloat16 around the objective")
    p.add_argument("--compile", action="store_true", help="torch.compile the student, teacher and classifier")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend (eager: tracing only)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--lpips-weights", help="torchvision VGG16 ImageNet weights; without it pd_lpips is skipped")
    args = p.parse_args()
    torch.manual_seed(0)
    builders = {"fmnist": lambda: setup_fmnist(args.batch_fmnist, args.device),
                "cifar10": lambda: setup_cifar10(args.batch_cifar10, args.device)}
    for config in args.configs.split(","):
        setup = builders[config]()
        results, skipped = [], []
        for method in args.methods.split(","):
            if method == "pd_lpips" and not args.lpips_weights:
                skipped.append(method)
                continue
            try:
                results.append(run_method(setup, method, args))
            except Exception as e:  # e.g. torch.compile failing: report it and go on
                print(f"{config} {method}: failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        print_tables(config, setup, results, skipped, args)


if __name__ == "__main__":
    main()
