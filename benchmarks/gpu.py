"""Every GPU figure in one run: the paper-scale distillation step, bf16 against fp32, IS_P2P blocked
against dense, a kill and a resume under torchrun, sampling and base-model training, and a plan of
GPU-hours for the paper's protocols.

    make setup && .venv/bin/python benchmarks/gpu.py     # on a GPU machine: under 8 minutes
    python benchmarks/gpu.py --smoke                     # every part at tiny sizes on a CPU (the test suite)

It writes benchmarks/gpu_results.md and benchmarks/gpu_results.json (--out: another folder; the smoke
writes to a temporary one). Each part runs on its own, so one that fails records its error and the rest
still run, and both files are written again after each part, so a time-out keeps what was measured.
Part 1's torch.compile runs last: its compile time is the least predictable.

The networks have random weights and the images are random (no data set can be fetched on the GPU
machine): a step costs the same. The steps are those of benchmarks/distill_step.py, the sampling that of
benchmarks/sampling_speed.py, the kill and resume those of `rdd.distill` under torchrun.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from types import SimpleNamespace

import torch

import distill_step  # benchmarks/ is on sys.path when this file runs as a script
import isp2p
import sampling_speed
from rdd.checkpoint import load_checkpoint, save_checkpoint
from rdd.classifier import build_classifier
from rdd.config import load_config, per_stage
from rdd.diffusion import halving_chain
from rdd.layout import MODEL_FILE, TRAIN_STATE
from rdd.losses import is_p2p_loss, is_p2p_loss_dense
from rdd.model_io import export_model
from rdd.networks import build_model, count_parameters
from rdd.training import TruncatedSNRObjective

ROOT = Path(__file__).resolve().parent.parent
CIFAR10, IMAGENET64 = ROOT / "configs/cifar10", ROOT / "configs/imagenet64"
METHODS = ("pd", "rcfd", "rdd")
PRECISIONS = {"fp32": {}, "bf16 autocast": {"bf16": True}}  # the flags of distill_step's Trainer
VARIANTS = {**PRECISIONS, "channels_last": {"channels_last": True}}
COMPILED = {"torch.compile": {"compile": True}}


@dataclasses.dataclass(frozen=True)
class Scale:
    """The sizes of a run: the paper's on a GPU, tiny ones for the smoke test on a CPU."""

    smoke: bool
    cifar_model: tuple[str, ...]  # overrides that pick the CIFAR-10 U-Net (base.yaml and distill.yaml)
    imagenet_model: tuple[str, ...]
    distill: tuple[str, ...]  # further distillation overrides (the smoke's smaller queue)
    classifier: str
    batch: int  # distillation images per GPU: 32, as the public code ran it
    base_batch: dict  # base-model training images per GPU, by data set
    warmup: int
    steps: int
    isp2p_cases: tuple  # (N, A)
    isp2p_channels: int
    sample_images: int
    sample_batch: int
    resume_iterations: int
    resume_ckpt_every: int
    compile_backend: str  # the smoke traces only (eager): inductor on a CPU would take minutes
    compile_reserve_s: float  # a method is compiled only with this much of the time budget left
    budget_s: float


PAPER = Scale(
    smoke=False, cifar_model=("model.name=paper-cifar10",),
    # Unconditional: the class embedding is one lookup per image, and the benchmark steps pass no labels.
    imagenet_model=("model.name=paper-imagenet64", "model.num_classes=0"), distill=(), classifier="densenet201",
    # Base models: CIFAR-10's batch of 128 on one GPU, ImageNet 64's 512 over 8 GPUs.
    batch=32, base_batch={"cifar10": 128, "imagenet64": 64}, warmup=2, steps=5, isp2p_cases=((32, 64), (128, 64)),
    isp2p_channels=1920, sample_images=2000, sample_batch=500, resume_iterations=30, resume_ckpt_every=10,
    compile_backend="inductor", compile_reserve_s=120, budget_s=420)
SMOKE = Scale(
    smoke=True, cifar_model=("model.name=tiny", "data.resolution=16"),
    imagenet_model=("model.name=tiny", "data.resolution=16", "model.num_classes=0"),
    distill=("distill.queue_size=256", "distill.push_per_step=8", "distill.num_contrast=32"),
    classifier="densenet-bc-small", batch=4, base_batch={"cifar10": 4, "imagenet64": 4}, warmup=1, steps=1,
    isp2p_cases=((4, 16),), isp2p_channels=32, sample_images=8, sample_batch=4, resume_iterations=30,
    resume_ckpt_every=10, compile_backend="eager", compile_reserve_s=0, budget_s=900)


class Deadline:
    def __init__(self, seconds: float):
        self.start = time.monotonic()
        self.end = self.start + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start


class PeakMemory:
    """Peak memory of a block: the allocator's on a GPU, the process's peak RSS (VmHWM) on a CPU.
    `peak_mib` is the whole peak, `extra_mib` its growth above what was held when the block began."""

    def __init__(self, device: torch.device):
        self.device = device

    def _bytes(self, reset: bool = False) -> int:
        if self.device.type != "cuda":
            return isp2p.peak_rss_kib(reset) * 1024
        distill_step.synchronize(self.device)
        if reset:
            torch.cuda.reset_peak_memory_stats(self.device)
            return torch.cuda.memory_allocated(self.device)
        return torch.cuda.max_memory_allocated(self.device)

    def __enter__(self) -> "PeakMemory":
        self.start = self._bytes(reset=True)
        return self

    def __exit__(self, *exc) -> None:
        peak = self._bytes()
        self.peak_mib, self.extra_mib = peak / 2**20, (peak - self.start) / 2**20


def one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


def step_args(scale: Scale, **flags) -> argparse.Namespace:
    """What distill_step's Trainer and run_method read from their command line."""
    settings = dict(lpips_weights=None, channels_last=False, bf16=False, compile=False,
                    compile_backend=scale.compile_backend, steps=scale.steps, warmup=scale.warmup)
    return argparse.Namespace(**{**settings, **flags})


def cifar_setup(scale: Scale, device: torch.device) -> distill_step.Setup:
    torch.manual_seed(0)
    return distill_step.setup_random(CIFAR10 / "distill.yaml", [*scale.cifar_model, *scale.distill], scale.classifier,
                                     scale.batch, device)


# Part 1: the distillation step (and, last, the same under torch.compile).

def measure_step(setup: distill_step.Setup, method: str, args, device: torch.device) -> dict:
    """One method's step (distill_step.run_method: real and profiled steps alternated) and its peak memory."""
    start = time.perf_counter()
    with PeakMemory(device) as memory:
        r = distill_step.run_method(setup, method, args)
    return {"step_ms": 1000 * r["step"], "it_s": 1 / r["step"], "images_s": setup.x.shape[0] / r["step"],
            "peak_mib": memory.peak_mib, "network_ms": 1000 * r["network"], "ratio": r["ratio"],
            "profiled_ratio": r["profiled_ratio"], "wall_s": time.perf_counter() - start}


def measure_methods(setup, variants: dict, scale: Scale, device, deadline: Deadline, reserve_s: float = 0) -> list[dict]:
    rows = []
    for variant, flags in variants.items():
        for method in METHODS:
            row = {"method": method, "variant": variant}
            if deadline.left() <= reserve_s:
                row["error"] = "skipped: the time budget is spent"
            else:
                try:
                    row.update(measure_step(setup, method, step_args(scale, **flags), device))
                except Exception as e:  # e.g. torch.compile failing: record it, measure the rest
                    row["error"] = one_line(e)
            print("  " + ", ".join(f"{k} {fmt(v)}" for k, v in row.items()), flush=True)
            rows.append(row)
    return rows


def setup_summary(setup: distill_step.Setup, config: str) -> dict:
    return {"config": config, "batch": setup.x.shape[0], "image": list(setup.x.shape[1:]),
            "unet_m": count_parameters(setup.teacher) / 1e6, "classifier_m": count_parameters(setup.classifier) / 1e6}


def part_distill_step(scale: Scale, device, deadline: Deadline) -> dict:
    setup = cifar_setup(scale, device)
    return {**setup_summary(setup, "configs/cifar10/distill.yaml"), "rows": measure_methods(setup, VARIANTS, scale, device, deadline)}


def part_compile(scale: Scale, device, deadline: Deadline) -> dict:
    setup = cifar_setup(scale, device)
    rows = measure_methods(setup, COMPILED, scale, device, deadline, reserve_s=scale.compile_reserve_s)
    return {"backend": scale.compile_backend, "rows": rows}


# Part 2: bf16 autocast against fp32 on the same batch and weights.

def loss_terms_and_gradient(objective, student, x: torch.Tensor, bf16: bool) -> tuple[dict, torch.Tensor]:
    objective = copy.deepcopy(objective)  # the queue's push changes it: each precision starts from the same one
    torch.manual_seed(0)  # the same t and noise for both
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        loss, logs = objective(student, x, None)
    grads = torch.autograd.grad(loss, list(student.parameters()), allow_unused=True)
    terms = {name.removeprefix("loss_"): float(value) for name, value in logs.items()}
    return {**terms, "total": float(loss.detach())}, torch.cat([g.float().flatten() for g in grads if g is not None])


def part_bf16_vs_fp32(scale: Scale, device, deadline: Deadline) -> dict:
    setup = cifar_setup(scale, device)
    rows = []
    for method in METHODS:
        trainer = distill_step.Trainer.for_method(setup, method, step_args(scale))
        fp32, grad32 = loss_terms_and_gradient(trainer.objective, trainer.student, setup.x, bf16=False)
        bf16, grad16 = loss_terms_and_gradient(trainer.objective, trainer.student, setup.x, bf16=True)
        for term in fp32:
            rows.append({"method": method, "term": term, "fp32": fp32[term], "bf16": bf16[term],
                         "rel_diff": abs(bf16[term] - fp32[term]) / abs(fp32[term])})
        rows.append({"method": method, "term": "student gradient (L2 norm)", "fp32": float(grad32.norm()),
                     "bf16": float(grad16.norm()), "rel_diff": float((grad16 - grad32).norm() / grad32.norm()),
                     "cosine": float(torch.nn.functional.cosine_similarity(grad16, grad32, dim=0))})
        print(f"  {method}: " + ", ".join(f"{r['term']} {r['rel_diff']:.2e}" for r in rows if r["method"] == method), flush=True)
    return {**setup_summary(setup, "configs/cifar10/distill.yaml"), "rows": rows}


# Part 3: IS_P2P blocked against dense.

def time_isp2p(loss_fn, map_s: torch.Tensor, map_t: torch.Tensor, tau: float, repeats: int) -> dict:
    """Best time of `repeats` loss + backward, and the first run's extra peak memory, loss and gradient."""
    seconds, first = [], None
    for _ in range(repeats):
        map_s.grad = None
        with PeakMemory(map_s.device) as memory:
            start = time.perf_counter()
            loss = loss_fn(map_s, map_t, tau)
            loss.backward()
            distill_step.synchronize(map_s.device)
            seconds.append(time.perf_counter() - start)
        first = first or {"extra_mib": memory.extra_mib, "loss": loss.detach(), "grad": map_s.grad.clone()}
    return {**first, "seconds": min(seconds)}


def isp2p_case(n: int, a: int, channels: int, tau: float, device, repeats: int = 3) -> dict:
    side = math.isqrt(a)
    generator = torch.Generator().manual_seed(0)
    map_t = torch.randn(n, channels, side, side, generator=generator)
    map_s = (map_t + 0.5 * torch.randn(map_t.shape, generator=generator)).to(device).requires_grad_(True)
    map_t = map_t.to(device)
    methods = {"dense": is_p2p_loss_dense, "blocked": is_p2p_loss}
    for loss_fn in methods.values():  # warm-up: kernels and the allocator's pools are not timed
        loss_fn(map_s[:2], map_t[:2], tau).backward()
    runs = {name: time_isp2p(loss_fn, map_s, map_t, tau, repeats) for name, loss_fn in methods.items()}
    dense, blocked = runs["dense"], runs["blocked"]
    loss_diff = float((blocked["loss"] - dense["loss"]).abs() / dense["loss"].abs())
    grad_diff = float((blocked["grad"] - dense["grad"]).abs().max() / dense["grad"].abs().max())
    return {"n": n, "a": a, "c": channels, "dense_ms": 1000 * dense["seconds"], "blocked_ms": 1000 * blocked["seconds"],
            "speedup": dense["seconds"] / blocked["seconds"], "dense_extra_mib": dense["extra_mib"],
            "blocked_extra_mib": blocked["extra_mib"], "memory_ratio": dense["extra_mib"] / max(blocked["extra_mib"], 1e-9),
            "loss_rel_diff": loss_diff, "grad_rel_diff": grad_diff, "equal": loss_diff < 1e-4 and grad_diff < 1e-4}


def part_isp2p(scale: Scale, device, deadline: Deadline) -> dict:
    tau = load_config(CIFAR10 / "distill.yaml").distill.tau_is
    rows = []
    for n, a in scale.isp2p_cases:
        rows.append(isp2p_case(n, a, scale.isp2p_channels, tau, device))
        print("  " + ", ".join(f"{k} {fmt(v)}" for k, v in rows[-1].items()), flush=True)
    return {"tau": tau, "rows": rows}


# Part 4: torchrun, a checkpoint, a kill, a resume, and the comparison with an uninterrupted run.

def write_resume_inputs(scale: Scale, work: Path) -> None:
    """A random-weight teacher and classifier, and random RGB images in an image folder, which rdd reads
    as an ImageNet-style data set (data.dataset=imagenet64 loads any folder of class folders)."""
    from PIL import Image

    cfg = load_config(CIFAR10 / "distill.yaml", [*scale.cifar_model, "data.dataset=imagenet64", f"data.root={work / 'images'}"])
    torch.manual_seed(0)
    export_model(work / "teacher.pt", build_model(cfg.model, cfg.data), cfg, {"sampling_steps": None, "method": "base"})
    classifier = build_classifier(scale.classifier, cfg.data.channels)
    # The format `rdd train-classifier` writes, which rdd.classifier.load_classifier reads.
    save_checkpoint(dict(kind="classifier", arch=scale.classifier, stem="public", in_channels=cfg.data.channels,
                         num_classes=10, resolution=cfg.data.resolution, model=classifier.state_dict(),
                         test_accuracy=None, config=dataclasses.asdict(cfg)), work / "classifier.pt")
    folder = work / "images" / "train" / "0"
    folder.mkdir(parents=True)
    side = cfg.data.resolution
    pixels = torch.randint(0, 256, (10 * scale.batch, side, side, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for i, image in enumerate(pixels.numpy()):  # ten batches: the run crosses epochs, and resumes mid-epoch
        Image.fromarray(image).save(folder / f"{i:04d}.png")


def resume_overrides(scale: Scale, work: Path, procs: int) -> list[str]:
    teacher_data = [o for o in scale.cifar_model if o.startswith("data.")]  # the stage's data must fit its teacher
    return [*scale.distill, *teacher_data, "distill.method=rdd", f"distill.iterations=[{scale.resume_iterations}]",
            f"train.ckpt_every={scale.resume_ckpt_every}", "train.log_every=1", "train.num_grid=8",
            f"train.batch_size={scale.batch * procs}", "data.dataset=imagenet64", f"data.root={work / 'images'}",
            "data.num_workers=0", f"classifier.checkpoint={work / 'classifier.pt'}"]


def resume_worker(args) -> None:
    """Run by torchrun: one RDD stage through rdd.distill, with NCCL on a GPU (gloo on a CPU)."""
    import torch.distributed as dist

    from rdd.distill import build_stage, plan_stage, train_stage
    from rdd.distributed import init_distributed

    if args.deterministic:  # warn_only: the ops that have no deterministic kernel are listed, not refused
        torch.use_deterministic_algorithms(True, warn_only=True)
    scale = SMOKE if args.smoke else PAPER
    ctx = init_distributed()
    if not dist.is_initialized():  # rdd starts a process group only for WORLD_SIZE > 1; here it runs at 1 too
        dist.init_process_group("nccl" if ctx.device.type == "cuda" else "gloo")
    Path(f"{args.stage_dir}.rank{ctx.rank}.pid").write_text(str(os.getpid()))
    work = Path(args.inputs)
    cfg = load_config(CIFAR10 / "distill.yaml", resume_overrides(scale, work, dist.get_world_size()))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stage = build_stage(plan_stage(cfg, work / "teacher.pt", ctx.device), ctx)
        train_stage(stage, args.stage_dir, ctx, resume=args.resume)
    nondeterministic = {str(w.message).split(" does not have")[0] for w in caught
                        if "does not have a deterministic implementation" in str(w.message)}
    if ctx.is_main:
        info = {"backend": dist.get_backend(), "processes": dist.get_world_size(), "device": str(ctx.device),
                "sync_batchnorm_modules": sum(isinstance(m, torch.nn.SyncBatchNorm) for m in stage.objective.terms.modules()),
                "ops_without_deterministic_kernel": sorted(nondeterministic)}
        Path(f"{args.stage_dir}.json").write_text(json.dumps(info))
    dist.destroy_process_group()


def launch(run: Path, work: Path, scale: Scale, device, procs: int, deterministic: bool, resume: bool) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}", __file__,
           "--resume-worker", "--inputs", str(work), "--stage-dir", str(run)]
    cmd += ["--smoke"] * scale.smoke + ["--deterministic"] * deterministic + ["--resume"] * resume
    env = dict(os.environ)  # the workers import the rdd this process imported
    if device.type == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # the workers pick the GPU whenever they see one
    if deterministic:
        env["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"  # cuBLAS's condition for deterministic results
    with open(f"{run}.log", "a") as log:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def log_tail(run: Path) -> str:
    return " | ".join(Path(f"{run}.log").read_text().strip().splitlines()[-3:])


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM, which torchrun passes on to its workers (they run in sessions of their own, out of reach
    of a signal to its process group), then SIGKILL if it is still there."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def finish(proc: subprocess.Popen, run: Path, timeout: float) -> None:
    try:
        code = proc.wait(timeout=max(timeout, 1))
    except subprocess.TimeoutExpired:
        stop(proc)
        raise RuntimeError(f"{run.name}: still running after {timeout:.0f} s; log: {run}.log") from None
    if code != 0:
        raise RuntimeError(f"{run.name} failed (exit {code}): {log_tail(run)}")


def run_and_kill(run: Path, work: Path, scale: Scale, device, procs: int, deterministic: bool, deadline: Deadline) -> int:
    """Start the run, SIGKILL its workers once the log shows the step after the second checkpoint,
    and return the step of the checkpoint left on disk."""
    proc = launch(run, work, scale, device, procs, deterministic, resume=False)
    kill_after = 2 * scale.resume_ckpt_every + 1  # logged after checkpoint 2 * ckpt_every was written
    metrics = run / "metrics.jsonl"
    while proc.poll() is None and deadline.left() > 0:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= kill_after:
            break
        time.sleep(0.005)
    if proc.poll() is not None:
        raise RuntimeError(f"{run.name} ended (exit {proc.returncode}) before it could be killed: {log_tail(run)}")
    for pid_file in run.parent.glob(f"{run.name}.rank*.pid"):
        os.kill(int(pid_file.read_text()), signal.SIGKILL)  # the training process, as a crash or an OOM kill would
    proc.wait(timeout=120)  # torchrun sees its worker die and exits
    if (run / MODEL_FILE).exists():
        raise RuntimeError(f"{run.name}: the run finished before it was killed")
    return load_checkpoint(run / TRAIN_STATE)["step"]


def flatten(value, prefix: str = "") -> dict:
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return {prefix: value}
    out = {}
    for key, item in items:
        out.update(flatten(item, f"{prefix}/{key}" if prefix else str(key)))
    return out


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    return a == b


def compare_runs(straight: Path, resumed: Path) -> dict:
    """Every entry of model.pt and train_state.pt (weights, EMA, projection head, queue, Adam, RNG, data position)."""
    a, b = ({"model.pt": load_checkpoint(run / MODEL_FILE), "train_state.pt": load_checkpoint(run / TRAIN_STATE)}
            for run in (straight, resumed))
    a, b = flatten(a), flatten(b)
    differing = sorted(k for k in a.keys() | b.keys() if not same(a.get(k), b.get(k)))
    floats = [k for k in differing if isinstance(a.get(k), torch.Tensor) and isinstance(b.get(k), torch.Tensor)
              and a[k].is_floating_point() and a[k].shape == b[k].shape]
    max_diff = max((float((a[k].double() - b[k].double()).abs().max()) for k in floats), default=0.0)
    return {"equal": not differing, "entries": len(a), "differing": len(differing),
            "differing_parts": sorted({"/".join(k.split("/")[:2]) for k in differing}), "max_abs_diff": max_diff}


def kill_and_resume(folder: Path, work: Path, scale: Scale, device, procs: int, deterministic: bool, deadline: Deadline) -> dict:
    start = time.perf_counter()
    folder.mkdir(parents=True)
    straight, killed = folder / "straight", folder / "killed"
    print(f"  an uninterrupted run ({scale.resume_iterations} steps) beside one to be killed", flush=True)
    uninterrupted = launch(straight, work, scale, device, procs, deterministic, resume=False)  # side by side: half the wait
    try:
        saved_step = run_and_kill(killed, work, scale, device, procs, deterministic, deadline)
        print(f"  killed with the checkpoint of step {saved_step} on disk; resuming", flush=True)
        finish(uninterrupted, straight, deadline.left())
    except BaseException:
        stop(uninterrupted)  # before its folder is removed
        raise
    finish(launch(killed, work, scale, device, procs, deterministic, resume=True), killed, deadline.left())
    result = {"deterministic": deterministic, "checkpoint_step_at_kill": saved_step, **compare_runs(straight, killed),
              **json.loads(Path(f"{killed}.json").read_text()), "seconds": time.perf_counter() - start}
    print("  " + ", ".join(f"{k} {fmt(v)}" for k, v in result.items()), flush=True)
    return result


def part_resume(scale: Scale, device, deadline: Deadline, procs: int) -> dict:
    work = Path(tempfile.mkdtemp(prefix="rdd-gpu-resume-"))
    try:
        write_resume_inputs(scale, work)
        runs = [kill_and_resume(work / "default", work, scale, device, procs, False, deadline)]
        # Non-deterministic kernels (cuDNN, atomics) would make even two uninterrupted runs differ: then
        # both runs again, with deterministic algorithms.
        if not runs[0]["equal"]:
            runs.append(kill_and_resume(work / "deterministic", work, scale, device, procs, True, deadline))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"iterations": scale.resume_iterations, "ckpt_every": scale.resume_ckpt_every, "batch_per_process": scale.batch,
            "runs": runs}


# Part 5: sampling, and base-model training.

def base_training(config_dir: Path, model_overrides, batch: int, scale: Scale, device, bf16: bool = False) -> dict:
    """The base model's training step (rdd.training.fit's, through distill_step's Trainer) on random images."""
    cfg = load_config(config_dir / "base.yaml", list(model_overrides))
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.data).to(device).train()
    x = distill_step.images(cfg, batch).to(device)
    trainer = distill_step.Trainer(cfg, TruncatedSNRObjective(), model, x, cfg.train.iterations, step_args(scale, bf16=bf16))
    with PeakMemory(device) as memory:
        for _ in range(scale.warmup):
            trainer.step()
        seconds = statistics.median(trainer.step() for _ in range(scale.steps))
    return {"batch": batch, "step_ms": 1000 * seconds, "it_s": 1 / seconds, "images_s": batch / seconds,
            "peak_mib": memory.peak_mib}


def part_sampling(scale: Scale, device, deadline: Deadline) -> dict:
    cfg = load_config(CIFAR10 / "distill.yaml", list(scale.cifar_model))
    torch.manual_seed(0)
    # Distillation keeps the teacher's network, so one network samples as teacher (8 steps) and student (1).
    model = build_model(cfg.model, cfg.data).to(device).eval()
    args = SimpleNamespace(num=scale.sample_images, batch_size=scale.sample_batch, seed=0)
    sampling = {}
    for name, steps in (("teacher", cfg.distill.teacher_steps), ("student", 1)):
        seconds = sampling_speed.time_sampling(model, cfg, steps, args, str(device))
        sampling[name] = {"steps": steps, "seconds": seconds, "images_s": scale.sample_images / seconds}
        print(f"  {name}, {steps} step(s): {sampling[name]['images_s']:.1f} images/s", flush=True)
    base = {}
    for precision, flags in PRECISIONS.items():
        base[precision] = base_training(CIFAR10, scale.cifar_model, scale.base_batch["cifar10"], scale, device, **flags)
        print(f"  base training, {precision}: {base[precision]['images_s']:.1f} images/s", flush=True)
    return {"images": scale.sample_images, "batch": scale.sample_batch, "sampling": sampling,
            "speedup": sampling["teacher"]["seconds"] / sampling["student"]["seconds"], "base_training": base,
            "unet_m": count_parameters(model) / 1e6}


# Part 6: GPU-hours of the paper's protocols, from the measured rates.

def chain(cfg) -> tuple[str, int]:
    """A distillation chain's description and the images it trains on."""
    steps = halving_chain(cfg.distill.teacher_steps, cfg.distill.target_steps)
    iterations = sum(per_stage(cfg.distill.iterations, i) for i in range(len(steps) - 1))
    return (f"{steps[0]} -> {steps[-1]} ({len(steps) - 1} stages, {iterations:,} iterations x {cfg.train.batch_size})",
            iterations * cfg.train.batch_size)


def protocol(config_dir: Path) -> list[tuple[str, str, int]]:
    """(phase, whose rate, images trained on) of a data set's whole protocol, read from its configs."""
    base = load_config(config_dir / "base.yaml")
    pd_chain, pd_images = chain(load_config(config_dir / "pd-1024to8.yaml"))
    stages, images = chain(load_config(config_dir / "distill.yaml"))
    return [(f"base model ({base.train.iterations:,} iterations x {base.train.batch_size})", "base",
             base.train.iterations * base.train.batch_size),
            (f"PD chain {pd_chain}", "pd", pd_images), *((f"{method} {stages}", method, images) for method in METHODS)]


def imagenet_rates(scale: Scale, device, deadline: Deadline) -> dict:
    torch.manual_seed(0)
    setup = distill_step.setup_random(IMAGENET64 / "distill.yaml", [*scale.imagenet_model, *scale.distill], scale.classifier,
                                      scale.batch, device)
    rows = measure_methods(setup, PRECISIONS, scale, device, deadline)
    rates = {precision: {r["method"]: r.get("images_s") for r in rows if r["variant"] == precision} for precision in PRECISIONS}
    for precision, flags in PRECISIONS.items():
        base = base_training(IMAGENET64, scale.imagenet_model, scale.base_batch["imagenet64"], scale, device, **flags)
        rates[precision]["base"] = base["images_s"]
    return {**setup_summary(setup, "configs/imagenet64/distill.yaml"), "rates": rates}


def cifar_rates(results: dict) -> dict:
    """Images/s per GPU measured by parts 1 (distillation) and 5 (base training)."""
    rows = results["parts"].get("distill_step", {}).get("rows", [])
    base = results["parts"].get("sampling", {}).get("base_training", {})
    return {precision: {**{r["method"]: r.get("images_s") for r in rows if r["variant"] == precision},
                        "base": base.get(precision, {}).get("images_s")} for precision in PRECISIONS}


def gpu_hours(phases: list, rates: dict) -> list[dict]:
    rows = []
    for phase, who, images in phases:
        hours = {p: images / rates[p][who] / 3600 if rates[p].get(who) else None for p in PRECISIONS}
        rows.append({"phase": phase, "images": images, **hours})  # GPU-hours by precision
    total = {"phase": "whole protocol (base, PD chain, pd, rcfd and rdd 8 -> 1)", "images": sum(r["images"] for r in rows)}
    for precision in PRECISIONS:
        hours = [r[precision] for r in rows]
        total[precision] = None if None in hours else sum(hours)
    return rows + [total]


def part_plan(scale: Scale, device, deadline: Deadline, results: dict) -> dict:
    imagenet = imagenet_rates(scale, device, deadline)
    rates = {"cifar10": cifar_rates(results), "imagenet64": imagenet["rates"]}
    tables = {name: gpu_hours(protocol(folder), rates[name]) for name, folder in (("cifar10", CIFAR10), ("imagenet64", IMAGENET64))}
    for name, rows in tables.items():
        print(f"  {name}, whole protocol: " + ", ".join(f"{fmt(rows[-1][p])} GPU-hours {p}" for p in PRECISIONS), flush=True)
    return {"imagenet64_setup": {k: v for k, v in imagenet.items() if k != "rates"}, "rates": rates, "tables": tables,
            "base_batch": scale.base_batch, "batch": scale.batch}


# The report: gpu_results.json, and gpu_results.md from it.

def fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int) and abs(value) >= 1e4:
        return f"{value:,}"
    return str(value)


def table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(fmt(v) for v in row) + " |" for row in rows), ""]


def step_rows(part: dict) -> list[list]:
    keys = ["step_ms", "it_s", "images_s", "peak_mib", "network_ms", "ratio", "profiled_ratio", "wall_s"]
    return [[r["method"], r["variant"], *([r["error"]] + [None] * 7 if "error" in r else [r.get(k) for k in keys])]
            for r in part["rows"]]


def render_distill_step(part: dict, results: dict) -> list[str]:
    rows = step_rows(part)
    compiled = results["parts"].get("distill_step_compile", {})
    rows += step_rows(compiled) if "rows" in compiled else [["all", "torch.compile", compiled.get("error", "not run"), *[None] * 7]]
    return [f"`{part['config']}` (fidelity official), U-Net {part['unet_m']:.1f}M parameters, classifier "
            f"{part['classifier_m']:.1f}M, batch {part['batch']} of random {tuple(part['image'])} images. Medians of the "
            "real steps; network passes from the profiled steps (benchmarks/distill_step.py); peak memory is the "
            "allocator's peak during the method's run (teacher, classifier, student, Adam and EMA included; on a "
            "CPU the process's peak RSS). "
            f"torch.compile (backend {compiled.get('backend', '-')}) ran last; its wall time includes compiling.", "",
            *table(["method", "variant", "step (ms)", "it/s", "images/s", "peak memory (MiB)", "network passes (ms)",
                    "step / network passes", "profiled step / its network passes", "wall (s)"], rows)]


def render_bf16(part: dict, results: dict) -> list[str]:
    rows = [[r["method"], r["term"], r["fp32"], r["bf16"], r["rel_diff"], r.get("cosine")] for r in part["rows"]]
    return ["The same batch, t, noise, queue and weights; relative difference |bf16 - fp32| / |fp32| (the "
            "gradient's: L2 norm of the difference over the fp32 gradient's). fp32 as torch runs it by default "
            f"(TF32 in cuDNN convolutions: {fmt(results['machine'].get('tf32_cudnn'))}).", "",
            *table(["method", "term", "fp32", "bf16", "relative difference", "gradient cosine"], rows)]


def render_isp2p(part: dict, results: dict) -> list[str]:
    keys = ["n", "a", "c", "dense_ms", "blocked_ms", "speedup", "dense_extra_mib", "blocked_extra_mib", "memory_ratio",
            "loss_rel_diff", "grad_rel_diff", "equal"]
    return [f"One loss + backward, best of 3; extra peak memory above the inputs; tau = {part['tau']:g}; equal: "
            "both relative differences below 1e-4.", "",
            *table(["N", "A", "C", "dense (ms)", "blocked (ms)", "speed-up", "dense extra peak (MiB)",
                    "blocked extra peak (MiB)", "memory ratio", "loss rel. diff", "grad rel. diff", "equal"],
                   [[r[k] for k in keys] for r in part["rows"]])]


def render_resume(part: dict, results: dict) -> list[str]:
    keys = ["deterministic", "processes", "backend", "sync_batchnorm_modules", "checkpoint_step_at_kill", "equal",
            "entries", "differing", "max_abs_diff", "seconds"]
    rows = [[run.get(k) for k in keys] + [", ".join(run["differing_parts"]) or "-",
                                          ", ".join(run["ops_without_deterministic_kernel"]) or "-"] for run in part["runs"]]
    return [f"RDD stage 8 -> 4 (`rdd.distill`, configs/cifar10/distill.yaml) under `torchrun --standalone`, "
            f"{part['iterations']} steps at batch {part['batch_per_process']} per process, a checkpoint every "
            f"{part['ckpt_every']} steps; the worker is killed (SIGKILL) after a checkpoint, resumed with resume=True, "
            "and every entry of model.pt and train_state.pt is compared with an uninterrupted run's, which ran beside "
            "it. rdd starts a process group only for more than one process; the worker starts one at one process "
            "too, so that NCCL (gloo on a CPU) runs. If the two runs differ, both run again with "
            "`torch.use_deterministic_algorithms(True, warn_only=True)` and CUBLAS_WORKSPACE_CONFIG=:4096:8. "
            "SyncBatchNorm replaces the projection head's BatchNorm only with more than one process on GPUs "
            "(and torch's SyncBatchNorm is BatchNorm at one process): with one GPU it is not exercised "
            "(`--ddp-procs 2` on two GPUs).", "",
            *table(["deterministic algorithms", "processes", "backend", "SyncBatchNorm modules", "checkpoint at kill",
                    "bit-exact", "entries", "differing", "max abs diff", "seconds", "differing parts",
                    "ops without a deterministic kernel"], rows)]


def render_sampling(part: dict, results: dict) -> list[str]:
    sampling = [[name, s["steps"], s["seconds"], s["images_s"]] for name, s in part["sampling"].items()]
    base = [[precision, b["batch"], b["step_ms"], b["it_s"], b["images_s"], b["peak_mib"]]
            for precision, b in part["base_training"].items()]
    return [f"DDIM sampling of {part['images']} images at batch {part['batch']} with the CIFAR-10 config's U-Net "
            f"({part['unet_m']:.1f}M parameters); student speed-up {part['speedup']:.2f}x.", "",
            *table(["model", "steps", "seconds", "images/s"], sampling),
            "Base-model training step (truncated-SNR loss, Adam, clip, EMA) on configs/cifar10/base.yaml:", "",
            *table(["precision", "batch", "step (ms)", "it/s", "images/s", "peak memory (MiB)"], base)]


def render_plan(part: dict, results: dict) -> list[str]:
    lines = [f"GPU-hours = images trained on / measured images/s of one GPU (distillation at {part['batch']} per GPU; "
             f"base model at {part['base_batch']['cifar10']} per GPU on CIFAR-10 and {part['base_batch']['imagenet64']} on "
             "ImageNet 64, whose U-Net is measured unconditional), assuming linear scaling over GPUs. Classifier "
             "training and evaluation are not included. The PD chain costs a PD step per iteration at any step count.", ""]
    rates = [[name, precision, *[r.get(k) for k in ("base", *METHODS)]]
             for name, by_precision in part["rates"].items() for precision, r in by_precision.items()]
    lines += table(["data set", "precision", "base images/s", *[f"{m} images/s" for m in METHODS]], rates)
    for name, rows in part["tables"].items():
        lines += [f"**{name}**", "", *table(["phase", "images", *(f"GPU-hours {p}" for p in PRECISIONS)],
                                           [[r["phase"], r["images"], *(r[p] for p in PRECISIONS)] for r in rows])]
    return lines


SECTIONS = [("distill_step", "1. Distillation step, CIFAR-10 config", render_distill_step),
            ("bf16_vs_fp32", "2. bf16 autocast against fp32", render_bf16),
            ("isp2p", "3. IS_P2P: blocked against dense", render_isp2p),
            ("torchrun_resume", "4. torchrun: checkpoint, kill, resume", render_resume),
            ("sampling", "5. Sampling and base-model training", render_sampling),
            ("plan", "6. GPU-hours of the paper's protocols", render_plan)]


def render(results: dict) -> str:
    machine = results["machine"]
    lines = ["# GPU figures (`benchmarks/gpu.py`)", "", f"Command: `{results['command']}`; wall time "
             f"{results['wall_s']:.0f} s of a {results['budget_s']:.0f} s budget.", "",
             *table(["what", "value"], [[k, v] for k, v in machine.items()])]
    for name, title, renderer in SECTIONS:
        part = results["parts"].get(name)
        lines += [f"## {title}", ""]
        if part is None:
            lines += ["Not run.", ""]
        elif "error" in part:
            lines += [f"Failed: `{part['error']}`", ""]
        else:
            lines += renderer(part, results)
    return "\n".join(lines)


def write_results(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "gpu_results.md").write_text(render(results))


def machine_info(device: torch.device) -> dict:
    info = {"device": str(device), "torch": torch.__version__, "CUDA (torch built with)": torch.version.cuda,
            "python": platform.python_version(), "CPU": isp2p.cpu_name(), "CPU cores": os.cpu_count(),
            "torch threads": torch.get_num_threads()}
    if device.type == "cuda":
        try:  # a query that fails must not cost the run its figures
            props = torch.cuda.get_device_properties(device)
            nccl = torch.cuda.nccl.version()  # a tuple, or an int in older torch
            info.update({"GPU": props.name, "GPU memory (GiB)": props.total_memory / 2**30, "driver": nvidia_driver(),
                         "cuDNN": torch.backends.cudnn.version(),
                         "NCCL": ".".join(map(str, nccl)) if isinstance(nccl, tuple) else str(nccl),
                         "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "tf32_cudnn": torch.backends.cudnn.allow_tf32,
                         "cudnn_benchmark": torch.backends.cudnn.benchmark})
        except Exception as e:
            info["GPU query failed"] = one_line(e)
    return info


def nvidia_driver() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
        return out.stdout.strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "unknown (nvidia-smi did not answer)"


def run_part(results: dict, name: str, measure, deadline: Deadline, out: Path) -> None:
    print(f"\n== {name} ({deadline.left():.0f} s of the budget left)", flush=True)
    start = time.perf_counter()
    if deadline.left() <= 0:
        results["parts"][name] = {"error": "skipped: the time budget is spent"}
    else:
        try:
            results["parts"][name] = measure()
        except Exception as e:  # recorded, and the other parts still run
            traceback.print_exc()
            results["parts"][name] = {"error": one_line(e)}
    results["parts"][name]["seconds"] = time.perf_counter() - start
    results["wall_s"] = deadline.elapsed()
    write_results(results, out)
    print(f"== {name}: {results['parts'][name]['seconds']:.1f} s; wrote {out / 'gpu_results.md'}", flush=True)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="every part at tiny sizes, on the CPU unless --device says otherwise")
    p.add_argument("--out", help="folder for gpu_results.md and .json (default: benchmarks/; with --smoke a temporary one)")
    p.add_argument("--device", help="cuda or cpu (default: cuda when there is a GPU; cpu with --smoke)")
    p.add_argument("--budget", type=float, help="seconds the parts may start in (default: 420; smoke: 900)")
    p.add_argument("--ddp-procs", type=int, default=1, help="torchrun processes of part 4, one per GPU (2 exercise SyncBatchNorm)")
    for hidden in ("--inputs", "--stage-dir"):  # not prefixes of torchrun's own options, which it would take
        p.add_argument(hidden, help=argparse.SUPPRESS)
    for hidden in ("--resume-worker", "--deterministic", "--resume"):
        p.add_argument(hidden, action="store_true", help=argparse.SUPPRESS)
    return p.parse_args()


def main() -> int:
    args = parse_args()
    if args.resume_worker:
        return resume_worker(args) or 0
    scale = SMOKE if args.smoke else PAPER
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() and not args.smoke else "cpu"))
    out = Path(args.out or (tempfile.mkdtemp(prefix="rdd-gpu-smoke-") if args.smoke else ROOT / "benchmarks"))
    deadline = Deadline(args.budget or scale.budget_s)
    results = {"command": " ".join(["python", *sys.argv]), "scale": "smoke" if args.smoke else "paper",
               "budget_s": args.budget or scale.budget_s, "wall_s": 0.0, "machine": machine_info(device), "parts": {}}
    print(json.dumps(results["machine"]), flush=True)
    parts = [("distill_step", lambda: part_distill_step(scale, device, deadline)),
             ("bf16_vs_fp32", lambda: part_bf16_vs_fp32(scale, device, deadline)),
             ("isp2p", lambda: part_isp2p(scale, device, deadline)),
             ("torchrun_resume", lambda: part_resume(scale, device, deadline, args.ddp_procs)),
             ("sampling", lambda: part_sampling(scale, device, deadline)),
             ("plan", lambda: part_plan(scale, device, deadline, results)),
             ("distill_step_compile", lambda: part_compile(scale, device, deadline))]
    for name, measure in parts:
        run_part(results, name, measure, deadline, out)
    failed = [name for name, part in results["parts"].items() if "error" in part]
    print(f"\n{deadline.elapsed():.0f} s; wrote {out / 'gpu_results.md'} and {out / 'gpu_results.json'}"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
