"""The one training loop: base training, every distillation method, and the classifiers (rdd.classifier).

An objective turns a batch into a loss; this loop owns everything else: data order, the run's
optimisation recipe (the diffusion models' Adam with warmup, an optional cosine decay, gradient
clipping and EMA; the classifiers' SGD), bf16 autocast on GPU, DDP, JSONL/TensorBoard metrics, and
atomic checkpoints that resume exactly. It stops at the first non-finite loss or gradient, before
the update, so no checkpoint or model holds nan. What a kind of run writes besides (sample grids and
model.pt; a classifier's epoch-end evaluation and classifier.pt) are its hooks (RunHooks).
"""
from __future__ import annotations

import copy
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from rdd import rundir
from rdd.checkpoint import first_nonfinite, load_checkpoint, load_module_state, require_keys, save_checkpoint
from rdd.config import ExperimentConfig, TrainConfig, to_dict
from rdd.data import ResumableSampler, class_count, load_dataset, random_hflip
from rdd.diffusion import COSINE, EPS_READING_MIN_ALPHA, ddim_sample
from rdd.distributed import DistContext, all_gather_objects, average_batchnorm_stats, broadcast_module
from rdd.errors import RddError
from rdd.files import write_atomic, write_json_atomic
from rdd.limits import check_memory, image_bytes
from rdd.layout import DIFFUSION_FILES, MODEL_FILE, RunFiles
from rdd.losses import Objective
from rdd.losses.objective import no_phase
from rdd.metrics_log import MetricsLog, save_grid
from rdd.model_io import export_model


TRAIN_GRID = 1024  # a base model's t is drawn from {1/T, ..., 1}, the public code's discrete grid of T = 1024 steps


class TruncatedSNRObjective(Objective):
    """The base (teacher) model's objective (Salimans & Ho 2022, as paper §5.1): omega_t ||x_hat - x||^2
    with omega_t = max(alpha_t^2 / sigma_t^2, 1). It has no state."""

    def forward(self, model: nn.Module, x: torch.Tensor, labels: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
        t = torch.randint(1, TRAIN_GRID + 1, (x.shape[0],), device=x.device).float() / TRAIN_GRID
        z_t = COSINE.diffuse(x, t, torch.randn_like(x))
        x_hat = model(z_t, t, labels)
        per_image = (x_hat.float() - x).pow(2).flatten(1).mean(1)
        # A tensor, not .item(): no GPU sync per step; the loop calls float() when it logs.
        return (COSINE.truncated_snr_weight(t) * per_image).mean(), {"mse": per_image.mean().detach()}


class EMA:
    """Exponential moving average of a model's parameters (buffers are copied)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for ema_p, p in zip(self.model.parameters(), model.parameters()):
            ema_p.lerp_(p.detach(), 1.0 - self.decay)
        for ema_b, b in zip(self.model.buffers(), model.buffers()):
            ema_b.copy_(b)


def lr_factor(step: int, warmup: int, total: int, schedule: str) -> float:
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return 1.0


def _rng_state() -> dict:
    """All randomness of a step (t, noise, flips, queue pushes) comes from torch's generators."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class Batches:
    """Endless (x, labels) batches in a resumable order: the position is (epoch, batches taken).
    `setting` names the batch size in the error of a batch larger than the data set."""

    def __init__(self, dataset: Dataset, per_rank_batch: int, seed: int, ctx: DistContext, num_workers: int = 0, *,
                 setting: str = "train.batch_size", name: str = "the data set"):
        if len(dataset) // ctx.world < per_rank_batch:  # drop_last would leave no batch: an endless loop
            raise RddError(f"{setting} {per_rank_batch * ctx.world} is larger than the {len(dataset)} training images of "
                           f"{name}{f' over {ctx.world} processes' if ctx.world > 1 else ''}; lower {setting}")
        self.sampler = ResumableSampler(len(dataset), seed, ctx.rank, ctx.world)
        self.loader_args = dict(dataset=dataset, batch_size=per_rank_batch, sampler=self.sampler, drop_last=True,
                                num_workers=num_workers, pin_memory=ctx.device.type == "cuda")
        self.per_epoch = self.sampler.per_rank // per_rank_batch
        self.epoch, self.taken = 0, 0
        self.iterator = None

    def state(self) -> dict:
        return {"epoch": self.epoch, "taken": self.taken}

    def restore(self, state: dict) -> None:
        self.epoch, self.taken, self.iterator = state["epoch"], state["taken"], None

    def next(self):
        while True:
            if self.iterator is None:
                self.sampler.set_position(self.epoch, self.taken * self.loader_args["batch_size"])
                # Its own generator: creating an iterator must not draw from the global RNG, or a resumed run diverges.
                generator = torch.Generator().manual_seed(self.epoch)
                self.iterator = iter(DataLoader(**self.loader_args, generator=generator))
            try:
                batch = next(self.iterator)
                self.taken += 1
                return batch
            except StopIteration:
                self.epoch, self.taken, self.iterator = self.epoch + 1, 0, None


def per_rank_batch(batch_size: int, ctx: DistContext, setting: str) -> int:
    """The share of a global batch each process takes, refused when it does not split evenly."""
    if batch_size % ctx.world:
        raise RddError(f"{setting} {batch_size} does not split over {ctx.world} processes; use a multiple of {ctx.world}")
    return batch_size // ctx.world


def diffusion_batches(cfg: ExperimentConfig, ctx: DistContext) -> Batches:
    if cfg.model.num_classes > class_count(cfg.data):
        raise RddError(f"model.num_classes is {cfg.model.num_classes} but {cfg.data.dataset} has {class_count(cfg.data)} "
                       f"classes; set model.num_classes to at most {class_count(cfg.data)} (0: unconditional)")
    return Batches(load_dataset(cfg.data, "train"), per_rank_batch(cfg.train.batch_size, ctx, "train.batch_size"),
                   cfg.train.seed, ctx, cfg.data.num_workers, name=cfg.data.dataset)


@dataclass
class Recipe:
    """How a run optimises its model: the optimiser and LR schedule, the gradient clip, the EMA, bf16."""

    lr: float
    lr_setting: str  # the config key of the learning rate, named when training diverges
    usual_lr: float  # a learning rate 50 times this is named as the likely cause of a divergence
    optimizer: Callable[[list], torch.optim.Optimizer]
    scheduler: Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]
    grad_clip: float = 0.0  # 0: no clip
    clip_setting: str | None = None  # the config key of the clip, suggested when training diverges
    ema_decay: float | None = None  # None: no EMA, the trained weights are the result
    bf16: bool = False  # autocast to bfloat16 on CUDA


def adam_recipe(tc: TrainConfig, lr: float, iterations: int) -> Recipe:
    """The diffusion models': Adam with warmup and an optional cosine decay, gradient clipping and an EMA."""
    return Recipe(lr, "train.lr", 2e-4, lambda params: torch.optim.Adam(params, lr=lr),
                  lambda opt: torch.optim.lr_scheduler.LambdaLR(
                      opt, lambda s: lr_factor(s, tc.warmup, iterations, tc.lr_schedule)),
                  grad_clip=tc.grad_clip, clip_setting="train.grad_clip", ema_decay=tc.ema_decay, bf16=tc.bf16)


def _likely_cause(recipe: Recipe, temperatures: dict[str, float], meta: dict) -> str:
    """The usual reasons a loss turns nan or inf, the most specific first; `temperatures` are the objective's."""
    reading = meta.get("student_reading") or {}
    if reading.get("prediction_type") == "epsilon" and reading.get("alpha_at_t1", 1.0) < EPS_READING_MIN_ALPHA:
        return (f"the student reads its output as eps, so at its first step, t = 1, x-hat = (z - sigma eps-hat) / alpha "
                f"divides by alpha = {reading['alpha_at_t1']:.2g}: the t = 1 term overflows; leave distill.student_reading "
                "at auto (v there)")
    lr, setting = recipe.lr, recipe.lr_setting
    if lr > 50 * recipe.usual_lr:
        return f"the learning rate {lr:g} is far too high; lower {setting} (e.g. {recipe.usual_lr:g})"
    for key, value in temperatures.items():
        if value < 1e-2:
            return f"a temperature near 0 ({key}={value:g}) overflows the softmax; raise it"
    if recipe.bf16:
        return "bf16 autocast overflowed; set train.bf16=false"
    clip = f" or set {recipe.clip_setting}" if recipe.clip_setting else ""
    return f"the learning rate {lr:g} may be too high for this model; lower {setting}{clip}"


class Trainer:
    """One run's trainable state and its step: the model (DDP-wrapped under torchrun, SyncBatchNorm on
    GPUs), its EMA, the objective's trainable parts, the optimisers and the LR schedule of its `recipe`
    (default: the diffusion models' Adam, from cfg.train). `state_dict`/`load_state_dict` are what a
    checkpoint holds of it; `train_step` is the loop's one step (benchmarks time it too)."""

    def __init__(self, cfg: ExperimentConfig, model: nn.Module, objective: Objective, ctx: DistContext, *,
                 iterations: int, lr: float, recipe: Recipe | None = None):
        self.recipe = recipe or adam_recipe(cfg.train, lr, iterations)
        self.ctx, self.objective, self.step = ctx, objective, 0
        self.model = model.to(ctx.device)
        objective.to(ctx.device)
        if ctx.world > 1 and ctx.device.type == "cuda":
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            objective.terms = nn.SyncBatchNorm.convert_sync_batchnorm(objective.terms)
        broadcast_module(objective.terms)  # like DDP for the model: every rank starts from rank 0's head and queue
        # DDP broadcasts rank 0's weights, so the EMA copy below starts equal on every rank.
        self.train_model = DistributedDataParallel(self.model) if ctx.world > 1 else self.model
        self.ema = EMA(self.model, self.recipe.ema_decay) if self.recipe.ema_decay is not None else None
        self.trainable = [p for p in objective.terms.parameters() if p.requires_grad]
        # The public RDD code trains its projection head with its own Adam at a constant lr, outside the clip.
        separate = {id(p) for p in objective.separately_optimized()}
        self.params = list(self.model.parameters()) + [p for p in self.trainable if id(p) not in separate]
        self.optimizer = self.recipe.optimizer(self.params)
        own = [p for p in self.trainable if id(p) in separate]
        self.objective_optimizer = torch.optim.Adam(own, lr=self.recipe.lr) if own else None
        self.scheduler = self.recipe.scheduler(self.optimizer)
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.recipe.bf16 and ctx.device.type == "cuda")
        if self.recipe.bf16 and ctx.device.type != "cuda" and ctx.is_main:  # a GPU config run on a CPU: said, not refused
            print(f"note: train.bf16 autocasts on CUDA only; this run on {ctx.device.type} trains in float32", flush=True)
        self.phase = no_phase

    @property
    def result(self) -> nn.Module:
        """What the run produces: the EMA model, or the trained one where the recipe keeps no EMA."""
        return self.ema.model if self.ema is not None else self.model

    def set_phase_hook(self, hook) -> None:
        """`hook(name)`, a context manager, wraps each phase of `train_step` and of the objective:
        how benchmarks/distill_step.py times the real step."""
        self.phase = hook
        self.objective.set_phase_hook(hook)

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "ema": self.ema.model.state_dict() if self.ema else None,
                "objective": self.objective.terms.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "step": self.step,
                "objective_optimizer": self.objective_optimizer.state_dict() if self.objective_optimizer else None}

    def load_state_dict(self, state: dict, path: Path) -> None:
        load_module_state(self.model, state["model"], path, "model")
        if self.ema is not None:
            load_module_state(self.ema.model, state["ema"], path, "EMA")
        load_module_state(self.objective.terms, state["objective"], path, "objective")
        self.optimizer.load_state_dict(state["optimizer"])
        if self.objective_optimizer is not None:
            self.objective_optimizer.load_state_dict(state["objective_optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = state["step"]

    def nonfinite_weight(self) -> str | None:
        return first_nonfinite(self.model.state_dict()) or (self.ema and first_nonfinite(self.ema.model.state_dict()))

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        if self.objective_optimizer is not None:
            self.objective_optimizer.zero_grad(set_to_none=True)

    def backward(self, loss: torch.Tensor) -> torch.Tensor:
        """Gradients of `loss`, averaged over processes and clipped; returns their norm before the clip."""
        with self.phase("backward"):
            self.zero_grad()
            loss.backward()
        with self.phase("grad norm + clip"):
            return self.clip_gradients()

    def clip_gradients(self) -> torch.Tensor:
        if self.ctx.world > 1 and self.trainable:
            for p in self.trainable:  # objective parts live outside DDP: average their gradients by hand
                dist.all_reduce(p.grad)
                p.grad /= self.ctx.world
        grad_norm = nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None])
        if self.recipe.grad_clip > 0:
            nn.utils.clip_grads_with_norm_(self.params, self.recipe.grad_clip, grad_norm)
        return grad_norm

    def update(self) -> None:
        self.optimizer.step()
        if self.objective_optimizer is not None:
            self.objective_optimizer.step()
        self.scheduler.step()
        average_batchnorm_stats(self.model)
        average_batchnorm_stats(self.objective.terms)
        if self.ema is not None:
            self.ema.update(self.model)
        self.step += 1

    def train_step(self, x: torch.Tensor, labels: torch.Tensor | None) -> tuple[torch.Tensor, dict, torch.Tensor]:
        """Loss, backward and update; raises NonFiniteStep, before the update, at a nan or inf on any process."""
        with self.autocast:
            loss, logs = self.objective(self.train_model, x, labels)
        grad_norm = self.backward(loss)
        finite = (torch.isfinite(loss.detach()) & torch.isfinite(grad_norm)).int()
        if self.ctx.world > 1:
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)  # a nan on any rank stops them all
        if not finite.item():
            terms = {"loss": loss.item(), "grad_norm": grad_norm.item(), **{k: float(v) for k, v in logs.items()}}
            raise NonFiniteStep(", ".join(f"{k} {v:.4g}" for k, v in terms.items()))
        with self.phase("Adam + scheduler + EMA"):
            self.update()
        return loss, logs, grad_norm


class NonFiniteStep(Exception):
    """The loss or its gradient was nan or inf; nothing was updated."""


class RunHooks(Protocol):
    """What a kind of run adds to the loop: how a batch reaches the objective, and what it writes along
    the way and at the end (the writer gives the trainer, the log and the folder). `state_dict` is called
    on every process at each checkpoint and travels in it, so a resumed run continues the hooks too."""

    def prepare(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        ...

    def after_step(self, writer: RunWriter, done: int, loss: torch.Tensor, logs: dict) -> None:
        ...

    def finish(self, writer: RunWriter, iterations: int) -> None:
        ...

    def state_dict(self) -> dict:
        ...

    def load_state_dict(self, state: dict) -> None:
        ...


@dataclass
class RunPlan:
    """One run of the loop, besides its model and objective: what it writes where, how it optimises,
    its data, its length, and its hooks."""

    files: RunFiles
    recipe: Recipe
    batches: Batches
    hooks: RunHooks
    iterations: int
    seed: int  # each process's torch generator starts at seed * 1000 + rank
    meta: dict
    ckpt_every: int
    log_every: int | None = None  # a metrics row every N steps; None: the hooks write their own rows
    desc: str = "train"
    progress: bool = True


class RunWriter:
    """What a run writes besides its weights: checkpoints and the metrics log; the hooks write the rest."""

    def __init__(self, cfg: ExperimentConfig, trainer: Trainer, plan: RunPlan, out_dir: Path):
        self.cfg, self.trainer, self.plan, self.out_dir = cfg, trainer, plan, out_dir
        self.ctx = trainer.ctx
        self.state_path = out_dir / plan.files.state
        self.saved_step = None
        self.log = MetricsLog(out_dir, enabled=self.ctx.is_main, name=plan.files.metrics, tensorboard=plan.files.tensorboard)
        self.timed_step, self.timed_at, self.timed_cpu = 0, time.perf_counter(), time.process_time()

    def timing(self, done: int) -> dict:
        """Seconds per iteration since the last call, in wall time and in this process's CPU time (the cost
        on a CPU shared with other jobs): what a metrics row logs beside the loss."""
        now, cpu, steps = time.perf_counter(), time.process_time(), max(1, done - self.timed_step)
        row = {"seconds_per_iteration": (now - self.timed_at) / steps, "cpu_seconds_per_iteration": (cpu - self.timed_cpu) / steps}
        self.timed_step, self.timed_at, self.timed_cpu = done, now, cpu
        return row

    def diverged(self, at_step: int, what: str) -> RddError:
        kept = (f"the last good checkpoint (step {self.saved_step}) stays in {self.state_path}" if self.saved_step
                else "no checkpoint was written")
        cause = _likely_cause(self.trainer.recipe, self.trainer.objective.temperatures(), self.plan.meta)
        return RddError(f"training stopped at step {at_step}: {what}; it diverged, likely cause: {cause}, "
                        f"then start over with --overwrite; {kept}")

    def check_weights(self, at_step: int) -> None:
        """Every rank holds the same weights, so every rank stops together."""
        bad = self.trainer.nonfinite_weight()
        if bad:
            raise self.diverged(at_step, f"weight '{bad}' holds nan or inf after the update")

    def save(self, at_step: int) -> None:
        self.check_weights(at_step)
        rng = all_gather_objects(_rng_state())
        hooks = self.plan.hooks.state_dict()
        if self.ctx.is_main:
            save_checkpoint({**self.trainer.state_dict(), "rng": rng, "data": self.plan.batches.state(), "hooks": hooks,
                             "config": to_dict(self.cfg), "meta": self.plan.meta}, self.state_path)
        self.saved_step = at_step

    def resume(self, state: dict) -> None:
        self.trainer.load_state_dict(state, self.state_path)
        self.saved_step = self.timed_step = state["step"]
        self.plan.batches.restore(state["data"])
        self.plan.hooks.load_state_dict(state.get("hooks", {}))  # checkpoints from before hooks had none
        _set_rng_state(state["rng"][self.ctx.rank])
        self.log.truncate_after(state["step"])

    def after_step(self, done: int, loss, logs: dict, grad_norm, bar) -> None:
        """The loop's hooks: log and checkpoint when each is due, then the kind's own."""
        iterations, log_every = self.plan.iterations, self.plan.log_every
        if log_every and (done % log_every == 0 or done == iterations):
            values = {"loss": loss.item(), "grad_norm": float(grad_norm), "lr": self.trainer.scheduler.get_last_lr()[0],
                      **{k: float(v) for k, v in logs.items()}, **self.timing(done)}
            self.log.write(done, **values)
            bar.set_postfix(loss=f"{values['loss']:.4f}")
        self.plan.hooks.after_step(self, done, loss, logs)
        if done % self.plan.ckpt_every == 0 and done < iterations:
            self.save(done)

    def finish(self) -> None:
        self.save(self.plan.iterations)
        self.plan.hooks.finish(self, self.plan.iterations)
        self.log.close()


class SampleOutputs:
    """The hooks of a diffusion model's run: flipped batches, sample grids, snapshots, and model.pt."""

    def __init__(self, cfg: ExperimentConfig, out_dir: Path, meta: dict, grid_steps: int | None, device: torch.device):
        self.cfg, self.out_dir, self.meta = cfg, out_dir, meta
        tc = cfg.train
        grid_gen = torch.Generator().manual_seed(1234)
        self.grid_noise = torch.randn(tc.num_grid, cfg.data.channels, cfg.data.resolution, cfg.data.resolution,
                                      generator=grid_gen).to(device)
        self.grid_labels = (torch.arange(tc.num_grid, device=device) % cfg.model.num_classes) if cfg.model.num_classes else None
        self.grid_steps = grid_steps or tc.sample_steps

    def prepare(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.cfg.data.hflip:
            x = random_hflip(x)
        return x, labels if self.cfg.model.num_classes else None

    def write_grid(self, writer: RunWriter, at_step: int) -> Path:
        path = self.out_dir / "grids" / f"step{at_step:07d}.png"
        if writer.ctx.is_main and self.cfg.train.num_grid:
            save_grid(ddim_sample(writer.trainer.result, self.grid_noise, self.grid_steps, self.grid_labels), path)
        return path

    def after_step(self, writer: RunWriter, done: int, loss: torch.Tensor, logs: dict) -> None:
        tc = self.cfg.train
        if tc.sample_every and done % tc.sample_every == 0:
            self.write_grid(writer, done)
        if done in tc.snapshot_at and done < writer.plan.iterations:
            writer.check_weights(done)
            if writer.ctx.is_main:
                export_model(self.out_dir / "snapshots" / f"model-{done:07d}.pt", writer.trainer.result, self.cfg,
                             {**self.meta, "iteration": done})

    def finish(self, writer: RunWriter, iterations: int) -> None:
        if writer.ctx.is_main:
            export_model(self.out_dir / MODEL_FILE, writer.trainer.result, self.cfg, self.meta)
            final_grid = self.out_dir / "grids" / f"step{iterations:07d}.png"
            if not final_grid.exists():
                self.write_grid(writer, iterations)
            if final_grid.exists():  # train.num_grid 0 draws none
                write_atomic(self.out_dir / "samples.png", lambda f: f.write(final_grid.read_bytes()))

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def fit(cfg: ExperimentConfig, model: nn.Module, objective: Objective, out_dir: str | Path, ctx: DistContext, *,
        iterations: int, lr: float, meta: dict, resume: bool = False, overwrite: bool = False,
        grid_steps: int | None = None, desc: str = "train") -> nn.Module:
    """Train the diffusion model `model` on `objective` for `iterations` steps in the run folder `out_dir`;
    returns the EMA model. See `run_loop` for the folder's rules."""
    if 0 < iterations <= cfg.train.warmup:
        raise RddError(f"train.warmup {cfg.train.warmup} is not shorter than the run ({iterations} iterations); "
                       "lower train.warmup or train longer")
    tc, dc = cfg.train, cfg.data
    check_memory(f"a batch of {tc.batch_size} and a grid of {tc.num_grid} {dc.channels}x{dc.resolution}x{dc.resolution} images",
                 image_bytes(3 * tc.batch_size + tc.num_grid, dc.channels, dc.resolution),
                 "lower train.batch_size, train.num_grid or data.resolution")
    plan = RunPlan(files=DIFFUSION_FILES, recipe=adam_recipe(tc, lr, iterations),
                   batches=diffusion_batches(cfg, ctx),  # checked before the folder is touched
                   hooks=SampleOutputs(cfg, Path(out_dir), meta, grid_steps, ctx.device), iterations=iterations,
                   seed=tc.seed, meta=meta, ckpt_every=tc.ckpt_every, log_every=tc.log_every, desc=desc)
    return run_loop(cfg, model, objective, out_dir, ctx, plan, resume=resume, overwrite=overwrite)


def run_loop(cfg: ExperimentConfig, model: nn.Module, objective: Objective, out_dir: str | Path, ctx: DistContext,
             plan: RunPlan, *, resume: bool = False, overwrite: bool = False) -> nn.Module:
    """The one training loop of every command: train `model` on `objective` as `plan` says; returns the
    trained model (its EMA where the recipe keeps one).

    The folder is locked while the run writes it and checked against its manifest (rdd.rundir): without
    `resume` or `overwrite` an existing run there is refused, `resume` continues it only with the same
    defining settings, `overwrite` deletes it first.
    """
    out_dir = Path(out_dir)
    expected = rundir.manifest(cfg, plan.meta, plan.iterations) if ctx.is_main else None
    with rundir.open_run(out_dir, expected, ctx, resume=resume, overwrite=overwrite) or nullcontext():
        return _train(cfg, model, objective, out_dir, ctx, expected, plan, resume=resume)


def check_snapshot_at(cfg: ExperimentConfig, iterations: int) -> None:
    """A snapshot is taken before the last iteration; the finished model is model.pt."""
    late = [step for step in cfg.train.snapshot_at if step >= iterations]
    if late:
        raise RddError(f"train.snapshot_at {late[0]} is not before the run's last iteration ({iterations}); the finished "
                       "model is model.pt: drop it or train longer")


def _read_state(path: Path, out_dir: Path, iterations: int, resume: bool) -> dict | None:
    """The training state to resume from, checked before anything is written: a refused resume leaves the folder as it was."""
    state = load_checkpoint(path) if resume and path.is_file() else None
    if state is not None:
        require_keys(state, ["model", "ema", "optimizer", "scheduler", "step", "rng", "data", "objective"], path, "training-state")
        kinds = {"step": int, "optimizer": dict, "scheduler": dict, "rng": list, "data": dict}
        wrong = next((key for key, kind in kinds.items() if not isinstance(state[key], kind) or isinstance(state[key], bool)), None)
        if wrong or state["step"] < 0 or not all(isinstance(state["data"].get(k), int) for k in ("epoch", "taken")):
            raise RddError(f"checkpoint '{path}': field '{wrong or 'step/data'}' is not what rdd writes "
                           f"({type(state[wrong or 'data']).__name__}); start the run over with --overwrite")
        if state["step"] > iterations:
            raise RddError(f"the run in '{out_dir}' has done {state['step']} steps; resuming it for {iterations} would undo "
                           f"some: set the iterations to at least {state['step']}, or start over with --overwrite")
    return state


def _train(cfg: ExperimentConfig, model: nn.Module, objective: Objective, out_dir: Path, ctx: DistContext,
           manifest: dict | None, plan: RunPlan, *, resume: bool) -> nn.Module:
    files = plan.files
    state = _read_state(out_dir / files.state, out_dir, plan.iterations, resume)
    torch.manual_seed(plan.seed * 1000 + ctx.rank)
    trainer = Trainer(cfg, model, objective, ctx, iterations=plan.iterations, lr=plan.recipe.lr, recipe=plan.recipe)
    writer = RunWriter(cfg, trainer, plan, out_dir)
    if state is not None:
        writer.resume(state)
    elif ctx.is_main and (out_dir / files.metrics).exists():
        (out_dir / files.metrics).unlink()
    if ctx.is_main:  # not finished until every output is written (rdd.rundir.is_finished)
        write_json_atomic(out_dir / files.manifest, {**manifest, "finished": False})
    bar = tqdm(range(trainer.step, plan.iterations), initial=trainer.step, total=plan.iterations, desc=plan.desc,
               disable=not (ctx.is_main and plan.progress), dynamic_ncols=True)
    for _ in bar:
        x, labels = plan.batches.next()
        x, labels = plan.hooks.prepare(x.to(ctx.device, non_blocking=True), labels.to(ctx.device))
        try:
            loss, logs, grad_norm = trainer.train_step(x, labels)
        except NonFiniteStep as e:
            raise writer.diverged(trainer.step + 1, f"the loss or its gradient is not finite ({e})") from None
        writer.after_step(trainer.step, loss, logs, grad_norm, bar)
    writer.finish()
    if ctx.is_main:
        write_json_atomic(out_dir / files.manifest, {**manifest, "finished": True})
    return trainer.result


def train_base_model(cfg: ExperimentConfig, out_dir: str | Path, ctx: DistContext, resume: bool = False,
                     overwrite: bool = False, desc: str = "train teacher") -> nn.Module:
    """A teacher from scratch: the config's U-Net on the truncated-SNR loss (Salimans & Ho 2022, as paper §5.1)."""
    from rdd.networks import build_model

    check_snapshot_at(cfg, cfg.train.iterations)
    torch.manual_seed(cfg.train.seed)
    return fit(cfg, build_model(cfg.model, cfg.data), TruncatedSNRObjective(), out_dir, ctx, iterations=cfg.train.iterations,
               lr=cfg.train.lr, meta={"sampling_steps": None, "method": "base"}, resume=resume, overwrite=overwrite, desc=desc)
