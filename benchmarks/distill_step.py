"""Distillation step profile: iterations per second of one step of each method, and where the time goes.

For each method the script times (1) the real step, `rdd.training.Trainer.train_step`: the one step of
rdd.training.fit (objective, backward, gradient average and clip, finiteness check, Adam, scheduler, EMA)
without data loading and logging, and (2) the same step profiled: a phase hook on the Trainer, which
passes it to the objective and its rdd.losses.MethodLoss, times each phase and each loss term with
time.perf_counter (on a GPU each phase ends with a synchronize). The backward pass is split where its
gradient reaches the classifier's feature map and x-hat (tensor hooks): loss terms, classifier, student.

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
import contextlib
import copy
import dataclasses
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from rdd import training
from rdd.classifier import build_classifier, load_classifier
from rdd.config import ExperimentConfig, load_config, per_stage
from rdd.data import FASHION_MNIST_DEBIAN, load_dataset
from rdd.distill import stage_config
from rdd.distributed import DistContext
from rdd.losses.objective import no_phase
from rdd.methods import METHODS, DistillationObjective, StagePlan, needs_classifier
from rdd.model_io import load_diffusion_model
from rdd.networks import build_model, student_copy, student_reading

ROOT = Path(__file__).resolve().parent.parent
NETWORK_PHASES = ["teacher two DDIM steps", "student forward", "classifier on x~ (no grad)",
                  "classifier on x^ (grad)", "classifier backward", "student backward"]
# The phases the step's hooks name, in the step's order; a term of a method added later shows as `loss <term>`.
PHASES = ["noise z_t", NETWORK_PHASES[0], NETWORK_PHASES[1], NETWORK_PHASES[2], NETWORK_PHASES[3],
          "loss pd", "loss lpips", "loss cfd", "loss ii_p2p", "loss is_p2p", "loss m_p2p",
          "losses backward", NETWORK_PHASES[4], NETWORK_PHASES[5], "grad norm + clip", "Adam + scheduler + EMA"]


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
        """The stage's objective as rdd.distill.build_stage builds it, from a plan of the setup's teacher."""
        cfg = copy.deepcopy(setup.cfg)
        cfg.distill.method = method
        cfg.distill.lpips_weights = args.lpips_weights
        teacher = copy.deepcopy(setup.teacher)
        reading = student_reading(teacher, True, "auto", cfg.distill.loss_weight)
        plan = StagePlan(cfg, teacher, "benchmark teacher", setup.teacher_steps, per_stage(cfg.distill.iterations, 0),
                         per_stage(cfg.distill.tau_cfd, 0), reading, None)
        classifier = setup.classifier if needs_classifier(method) else None
        student = student_copy(teacher, reading["prediction_type"]).train().requires_grad_(True)
        return cls(cfg, DistillationObjective(plan, classifier), student, setup.x, plan.iterations, args)

    def __init__(self, cfg: ExperimentConfig, objective, student: nn.Module, x: torch.Tensor, iterations: int, args):
        self.cfg, self.args = cfg, args
        self.objective, self.student, self.x = objective, student, x
        self.device = x.device
        objective.to(self.device)  # the queue and projection head (and a teacher), as fit moves them
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
                object.__setattr__(objective, "teacher", torch.compile(objective.teacher, backend=args.compile_backend))
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
        """The same real step, timed phase by phase through the hooks of rdd.training.Trainer and the
        objective (each term of rdd.losses.MethodLoss included); returns seconds per phase."""
        clock = PhaseClock(self.device)
        hooks = [self.student.register_forward_hook(clock.mark_gradient_of("x-hat"))]
        classifier = getattr(getattr(self.objective, "loss", None), "classifier", None)
        if classifier is not None:
            hooks.append(classifier.register_forward_hook(clock.mark_gradient_of("feature map")))
        self.core.set_phase_hook(clock)
        try:
            self.core.train_step(self.x, None)
        finally:
            self.core.set_phase_hook(no_phase)
            for hook in hooks:
                hook.remove()
        return clock.times


class PhaseClock:
    """A phase hook: the seconds of each phase (on a GPU, synchronized at both ends). The backward pass
    is split where the gradient reaches the classifier's feature map and x-hat: losses backward,
    classifier backward, student backward."""

    def __init__(self, device: torch.device):
        self.device, self.times, self.marks = device, {}, {}

    def now(self) -> float:
        synchronize(self.device)
        return time.perf_counter()

    @contextlib.contextmanager
    def __call__(self, name: str):
        self.marks = {}
        start = self.now()
        yield
        end = self.now()
        if name == "backward":
            self.split_backward(start, end)
        else:
            self.times[name] = self.times.get(name, 0.0) + end - start

    def split_backward(self, start: float, end: float) -> None:
        ends = [self.marks[m] for m in ("feature map", "x-hat") if m in self.marks]
        names = ["losses backward", NETWORK_PHASES[4]][:len(ends)] + [NETWORK_PHASES[5]]
        bounds = [start, *ends, end]
        for phase, a, b in zip(names, bounds, bounds[1:]):
            self.times[phase] = self.times.get(phase, 0.0) + b - a

    def mark_gradient_of(self, name: str):
        """A forward hook: notes the time at which the backward pass reaches the module's output."""
        def hook(module, inputs, output):
            tensor = getattr(output, "feature_map", output)
            if tensor.requires_grad:
                tensor.register_hook(lambda grad: self.marks.__setitem__(name, self.now()))
        return hook


def run_method(setup: Setup, method: str, args) -> dict:
    trainer = Trainer.for_method(setup, method, args)
    for _ in range(args.warmup):
        trainer.step()
        trainer.profiled_step()
    steps, profiles = [], []
    for _ in range(args.steps):  # alternated, so that a change in the machine's load hits both alike
        steps.append(trainer.step())
        profiles.append(trainer.profiled_step())
    names = PHASES + sorted({name for p in profiles for name in p} - set(PHASES))
    phases = {name: statistics.median(p.get(name, 0.0) for p in profiles) for name in names}
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
          "| losses fwd + bwd (ms) | bookkeeping (ms) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        p = r["phases"]
        losses = sum(v for k, v in p.items() if k.startswith("loss ")) + p["losses backward"]
        bookkeeping = p["grad norm + clip"] + p["Adam + scheduler + EMA"]
        print(f"| {r['method']} | {ms(r['step'])} | {1 / r['step']:.2f} | {ms(r['network'])} | "
              f"{r['ratio']:.3f} | {r['profiled_ratio']:.3f} | {ms(losses)} | {ms(bookkeeping)} |")
    for method in skipped:
        print(f"| {method} | skipped: needs LPIPS backbone weights (--lpips-weights) | | | | | | |")
    print("\nPhases (ms, median over the profiled steps):\n")
    print("| phase | " + " | ".join(r["method"] for r in results) + " |")
    print("|---|" + "---|" * len(results))
    for name in dict.fromkeys(name for r in results for name in r["phases"]):
        if any(r["phases"].get(name) for r in results):
            print(f"| {name} | " + " | ".join(ms(r["phases"][name]) if r["phases"].get(name) else "-" for r in results) + " |")
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
