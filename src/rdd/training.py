"""The training loop shared by base training and every distillation method.

An objective turns a batch into a loss; this loop owns everything else: data order, Adam with
warmup and an optional cosine decay, gradient clipping, EMA, bf16 autocast on GPU, DDP,
JSONL/TensorBoard metrics, sample grids, and atomic checkpoints that resume exactly. It stops at
the first non-finite loss or gradient, before the update, so no checkpoint or model holds nan.
"""
from __future__ import annotations

import copy
import math
from contextlib import nullcontext
from pathlib import Path
from typing import Protocol

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from rdd import rundir
from rdd.checkpoint import first_nonfinite, load_checkpoint, load_module_state, require_keys, save_checkpoint
from rdd.config import ExperimentConfig, to_dict
from rdd.data import ResumableSampler, class_count, load_dataset, random_hflip
from rdd.diffusion import EPS_READING_MIN_ALPHA, ddim_sample
from rdd.distributed import DistContext, all_gather_objects, average_batchnorm_stats, broadcast_module
from rdd.errors import RddError
from rdd.files import write_json_atomic
from rdd.layout import MODEL_FILE, TRAIN_STATE
from rdd.metrics_log import MetricsLog, save_grid
from rdd.model_io import export_model


class Objective(Protocol):
    """Loss of one batch. `modules` holds its trainable parts and state (projection head, queue).

    Optional: `separately_optimized`, parameters with their own Adam outside the clip, and
    `temperatures`, {config key: value}, named when a loss overflows.
    """

    modules: nn.ModuleDict

    def __call__(self, model: nn.Module, x: torch.Tensor, labels: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
        ...


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
    """Endless (x, labels) batches in a resumable order: the position is (epoch, batches taken)."""

    def __init__(self, cfg: ExperimentConfig, ctx: DistContext, per_rank_batch: int):
        if cfg.model.num_classes > class_count(cfg.data):
            raise RddError(f"model.num_classes is {cfg.model.num_classes} but {cfg.data.dataset} has {class_count(cfg.data)} "
                           f"classes; set model.num_classes to at most {class_count(cfg.data)} (0: unconditional)")
        dataset = load_dataset(cfg.data, "train")
        if len(dataset) // ctx.world < per_rank_batch:  # drop_last would leave no batch: an endless loop
            raise RddError(f"train.batch_size {per_rank_batch * ctx.world} is larger than the {len(dataset)} training images of "
                           f"{cfg.data.dataset}{f' over {ctx.world} processes' if ctx.world > 1 else ''}; lower train.batch_size")
        self.sampler = ResumableSampler(len(dataset), cfg.train.seed, ctx.rank, ctx.world)
        self.loader_args = dict(dataset=dataset, batch_size=per_rank_batch, sampler=self.sampler, drop_last=True,
                                num_workers=cfg.data.num_workers, pin_memory=ctx.device.type == "cuda")
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


def _likely_cause(cfg: ExperimentConfig, lr: float, temperatures: dict[str, float], meta: dict) -> str:
    """The usual reasons a loss turns nan or inf, the most specific first; `temperatures` are the objective's."""
    reading = meta.get("student_reading") or {}
    if reading.get("prediction_type") == "epsilon" and reading.get("alpha_at_t1", 1.0) < EPS_READING_MIN_ALPHA:
        return (f"the student reads its output as eps, so at its first step, t = 1, x-hat = (z - sigma eps-hat) / alpha "
                f"divides by alpha = {reading['alpha_at_t1']:.2g}: the t = 1 term overflows; leave distill.student_reading "
                "at auto (v there)")
    if lr > 1e-2:
        return f"the learning rate {lr:g} is far too high; lower train.lr (e.g. 2e-4)"
    for key, value in temperatures.items():
        if value < 1e-2:
            return f"a temperature near 0 ({key}={value:g}) overflows the softmax; raise it"
    if cfg.train.bf16:
        return "bf16 autocast overflowed; set train.bf16=false"
    return f"the learning rate {lr:g} may be too high for this model; lower train.lr or set train.grad_clip"


def fit(cfg: ExperimentConfig, model: nn.Module, objective: Objective, out_dir: str | Path, ctx: DistContext, *,
        iterations: int, lr: float, meta: dict, resume: bool = False, overwrite: bool = False,
        grid_steps: int | None = None, desc: str = "train") -> nn.Module:
    """Train `model` on `objective` for `iterations` steps in the run folder `out_dir`; returns the EMA model.

    The folder is locked while the run writes it and checked against its run.json (rdd.rundir): without
    `resume` or `overwrite` an existing run there is refused, `resume` continues it only with the same
    defining settings, `overwrite` deletes it first.
    """
    out_dir = Path(out_dir)
    if 0 < iterations <= cfg.train.warmup:
        raise RddError(f"train.warmup {cfg.train.warmup} is not shorter than the run ({iterations} iterations); "
                       "lower train.warmup or train longer")
    if cfg.train.batch_size % ctx.world:
        raise RddError(f"train.batch_size {cfg.train.batch_size} does not split over {ctx.world} processes; "
                       f"use a multiple of {ctx.world}")
    batches = Batches(cfg, ctx, cfg.train.batch_size // ctx.world)  # checked before the folder is touched
    expected = rundir.manifest(cfg, meta, iterations) if ctx.is_main else None
    with rundir.open_run(out_dir, expected, ctx, resume=resume, overwrite=overwrite) or nullcontext():
        return _train(cfg, model, objective, out_dir, ctx, expected, batches, iterations=iterations, lr=lr, meta=meta,
                      resume=resume, grid_steps=grid_steps, desc=desc)


class Trainer:
    """One run's trainable state and its step: the model (DDP-wrapped under torchrun), its EMA, the
    objective's trainable parts, the optimisers and the LR schedule. `state_dict`/`load_state_dict`
    are what a checkpoint holds of it; `train_step` is the loop's one step (benchmarks time it too)."""

    def __init__(self, cfg: ExperimentConfig, model: nn.Module, objective: Objective, ctx: DistContext, *,
                 iterations: int, lr: float):
        tc = cfg.train
        self.cfg, self.ctx, self.objective, self.step = cfg, ctx, objective, 0
        self.model = model.to(ctx.device)
        objective.modules.to(ctx.device)
        if ctx.world > 1 and ctx.device.type == "cuda":
            objective.modules = nn.SyncBatchNorm.convert_sync_batchnorm(objective.modules)
        broadcast_module(objective.modules)  # like DDP for the model: every rank starts from rank 0's head and queue
        # DDP broadcasts rank 0's weights, so the EMA copy below starts equal on every rank.
        self.train_model = DistributedDataParallel(model) if ctx.world > 1 else model
        self.ema = EMA(model, tc.ema_decay)
        self.trainable = [p for p in objective.modules.parameters() if p.requires_grad]
        # The public RDD code trains its projection head with its own Adam at a constant lr, outside the clip.
        separate = {id(p) for p in getattr(objective, "separately_optimized", [])}
        self.params = list(model.parameters()) + [p for p in self.trainable if id(p) not in separate]
        self.optimizer = torch.optim.Adam(self.params, lr=lr)
        own = [p for p in self.trainable if id(p) in separate]
        self.objective_optimizer = torch.optim.Adam(own, lr=lr) if own else None
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, tc.warmup, iterations, tc.lr_schedule))
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=tc.bf16 and ctx.device.type == "cuda")

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "ema": self.ema.model.state_dict(),
                "objective": self.objective.modules.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "step": self.step,
                "objective_optimizer": self.objective_optimizer.state_dict() if self.objective_optimizer else None}

    def load_state_dict(self, state: dict, path: Path) -> None:
        load_module_state(self.model, state["model"], path, "model")
        load_module_state(self.ema.model, state["ema"], path, "EMA")
        load_module_state(self.objective.modules, state["objective"], path, "objective")
        self.optimizer.load_state_dict(state["optimizer"])
        if self.objective_optimizer is not None:
            self.objective_optimizer.load_state_dict(state["objective_optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = state["step"]

    def nonfinite_weight(self) -> str | None:
        return first_nonfinite(self.model.state_dict()) or first_nonfinite(self.ema.model.state_dict())

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        if self.objective_optimizer is not None:
            self.objective_optimizer.zero_grad(set_to_none=True)

    def backward(self, loss: torch.Tensor) -> torch.Tensor:
        """Gradients of `loss`, averaged over processes and clipped; returns their norm before the clip."""
        self.zero_grad()
        loss.backward()
        return self.clip_gradients()

    def clip_gradients(self) -> torch.Tensor:
        if self.ctx.world > 1 and self.trainable:
            for p in self.trainable:  # objective parts live outside DDP: average their gradients by hand
                dist.all_reduce(p.grad)
                p.grad /= self.ctx.world
        grad_norm = nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None])
        if self.cfg.train.grad_clip > 0:
            nn.utils.clip_grads_with_norm_(self.params, self.cfg.train.grad_clip, grad_norm)
        return grad_norm

    def update(self) -> None:
        self.optimizer.step()
        if self.objective_optimizer is not None:
            self.objective_optimizer.step()
        self.scheduler.step()
        average_batchnorm_stats(self.objective.modules)
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
        self.update()
        return loss, logs, grad_norm


class NonFiniteStep(Exception):
    """The loss or its gradient was nan or inf; nothing was updated."""


class RunWriter:
    """What a run writes besides its weights: checkpoints, the metrics log, grids, snapshots and the model."""

    def __init__(self, cfg: ExperimentConfig, trainer: Trainer, batches: Batches, out_dir: Path, meta: dict,
                 grid_steps: int, lr: float):
        self.cfg, self.trainer, self.batches, self.out_dir, self.meta, self.lr = cfg, trainer, batches, out_dir, meta, lr
        self.ctx = trainer.ctx
        self.state_path = out_dir / TRAIN_STATE
        self.saved_step = None
        self.log = MetricsLog(out_dir, enabled=self.ctx.is_main)
        tc, device = cfg.train, self.ctx.device
        grid_gen = torch.Generator().manual_seed(1234)
        self.grid_noise = torch.randn(tc.num_grid, cfg.data.channels, cfg.data.resolution, cfg.data.resolution,
                                      generator=grid_gen).to(device)
        self.grid_labels = (torch.arange(tc.num_grid, device=device) % cfg.model.num_classes) if cfg.model.num_classes else None
        self.grid_steps = grid_steps or tc.sample_steps

    def diverged(self, at_step: int, what: str) -> RddError:
        kept = (f"the last good checkpoint (step {self.saved_step}) stays in {self.state_path}" if self.saved_step
                else "no checkpoint was written")
        temperatures = getattr(self.trainer.objective, "temperatures", {})
        cause = _likely_cause(self.cfg, self.lr, temperatures, self.meta)
        return RddError(f"training stopped at step {at_step}: {what}; likely cause: {cause}, "
                        f"then start over with --overwrite; {kept}")

    def check_weights(self, at_step: int) -> None:
        """Every rank holds the same weights, so every rank stops together."""
        bad = self.trainer.nonfinite_weight()
        if bad:
            raise self.diverged(at_step, f"weight '{bad}' holds nan or inf after the update")

    def save(self, at_step: int) -> None:
        self.check_weights(at_step)
        rng = all_gather_objects(_rng_state())
        if self.ctx.is_main:
            save_checkpoint({**self.trainer.state_dict(), "rng": rng, "data": self.batches.state(),
                             "config": to_dict(self.cfg), "meta": self.meta}, self.state_path)
        self.saved_step = at_step

    def resume(self, state: dict) -> None:
        self.trainer.load_state_dict(state, self.state_path)
        self.saved_step = state["step"]
        self.batches.restore(state["data"])
        _set_rng_state(state["rng"][self.ctx.rank])
        self.log.truncate_after(state["step"])

    def write_grid(self, at_step: int) -> Path:
        path = self.out_dir / "grids" / f"step{at_step:07d}.png"
        if self.ctx.is_main:
            save_grid(ddim_sample(self.trainer.ema.model, self.grid_noise, self.grid_steps, self.grid_labels), path)
        return path

    def after_step(self, done: int, iterations: int, loss, logs: dict, grad_norm, bar) -> None:
        """The loop's hooks: log, checkpoint, grid and snapshot when each is due."""
        tc = self.cfg.train
        if done % tc.log_every == 0 or done == iterations:
            values = {"loss": loss.item(), "grad_norm": float(grad_norm), "lr": self.trainer.scheduler.get_last_lr()[0],
                      **{k: float(v) for k, v in logs.items()}}
            self.log.write(done, **values)
            bar.set_postfix(loss=f"{values['loss']:.4f}")
        if done % tc.ckpt_every == 0 and done < iterations:
            self.save(done)
        if tc.sample_every and done % tc.sample_every == 0:
            self.write_grid(done)
        if done in tc.snapshot_at and done < iterations:
            self.check_weights(done)
            if self.ctx.is_main:
                export_model(self.out_dir / "snapshots" / f"model-{done:07d}.pt", self.trainer.ema.model, self.cfg,
                             {**self.meta, "iteration": done})

    def finish(self, iterations: int) -> None:
        self.save(iterations)
        if self.ctx.is_main:
            export_model(self.out_dir / MODEL_FILE, self.trainer.ema.model, self.cfg, self.meta)
            final_grid = self.out_dir / "grids" / f"step{iterations:07d}.png"
            if not final_grid.exists():
                self.write_grid(iterations)
            (self.out_dir / "samples.png").write_bytes(final_grid.read_bytes())
        self.log.close()


def _read_state(out_dir: Path, iterations: int, resume: bool) -> dict | None:
    """The training state to resume from, checked before anything is written: a refused resume leaves the folder as it was."""
    state_path = out_dir / TRAIN_STATE
    state = load_checkpoint(state_path) if resume and state_path.is_file() else None
    if state is not None:
        require_keys(state, ["model", "ema", "optimizer", "scheduler", "step", "rng", "data", "objective"], state_path, "training-state")
        if state["step"] > iterations:
            raise RddError(f"the run in '{out_dir}' has done {state['step']} steps; resuming it for {iterations} would undo "
                           f"some: set the iterations to at least {state['step']}, or start over with --overwrite")
    return state


def _train(cfg: ExperimentConfig, model: nn.Module, objective: Objective, out_dir: Path, ctx: DistContext,
           manifest: dict | None, batches: Batches, *, iterations: int, lr: float, meta: dict, resume: bool,
           grid_steps: int | None, desc: str) -> nn.Module:
    state = _read_state(out_dir, iterations, resume)
    torch.manual_seed(cfg.train.seed * 1000 + ctx.rank)
    trainer = Trainer(cfg, model, objective, ctx, iterations=iterations, lr=lr)
    writer = RunWriter(cfg, trainer, batches, out_dir, meta, grid_steps, lr)
    if state is not None:
        writer.resume(state)
    elif ctx.is_main and (out_dir / "metrics.jsonl").exists():
        (out_dir / "metrics.jsonl").unlink()
    if ctx.is_main:
        write_json_atomic(out_dir / rundir.MANIFEST, manifest)
    bar = tqdm(range(trainer.step, iterations), initial=trainer.step, total=iterations, desc=desc, disable=not ctx.is_main,
               dynamic_ncols=True)
    for _ in bar:
        x, labels = batches.next()
        x = x.to(ctx.device, non_blocking=True)
        labels = labels.to(ctx.device) if cfg.model.num_classes else None
        if cfg.data.hflip:
            x = random_hflip(x)
        try:
            loss, logs, grad_norm = trainer.train_step(x, labels)
        except NonFiniteStep as e:
            raise writer.diverged(trainer.step + 1, f"the loss or its gradient is not finite ({e})") from None
        writer.after_step(trainer.step, iterations, loss, logs, grad_norm, bar)
    writer.finish(iterations)
    return trainer.ema.model


def train_base_model(cfg: ExperimentConfig, out_dir: str | Path, ctx: DistContext, resume: bool = False,
                     overwrite: bool = False, desc: str = "train teacher") -> nn.Module:
    """A teacher from scratch: the config's U-Net on the truncated-SNR loss (Salimans & Ho 2022, as paper §5.1)."""
    from rdd.losses.truncated_snr import TruncatedSNRLoss
    from rdd.networks import build_model

    torch.manual_seed(cfg.train.seed)
    return fit(cfg, build_model(cfg.model, cfg.data), TruncatedSNRLoss(), out_dir, ctx, iterations=cfg.train.iterations,
               lr=cfg.train.lr, meta={"sampling_steps": None, "method": "base"}, resume=resume, overwrite=overwrite, desc=desc)
