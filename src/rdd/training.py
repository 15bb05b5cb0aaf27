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
from rdd.diffusion import ddim_sample
from rdd.distributed import DistContext, all_gather_objects, average_batchnorm_stats, broadcast_module
from rdd.errors import RddError
from rdd.layout import MODEL_FILE, TRAIN_STATE
from rdd.logging import MetricsLog, save_grid


class Objective(Protocol):
    """Loss of one batch. `modules` holds its trainable parts and state (projection head, queue)."""

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


def export_model(path: Path, model: nn.Module, cfg: ExperimentConfig, meta: dict) -> None:
    """The sampling checkpoint: EMA weights, the config that builds the network, and its step count."""
    bad = first_nonfinite(model.state_dict())
    if bad:
        raise RddError(f"refusing to write '{path}': weight '{bad}' holds nan or inf")
    save_checkpoint({"kind": "diffusion", "model": model.state_dict(), "config": to_dict(cfg), **meta}, path)


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


def _likely_cause(cfg: ExperimentConfig, lr: float, meta: dict) -> str:
    """The usual reasons a loss turns nan or inf, the most specific first."""
    if lr > 1e-2:
        return f"the learning rate {lr:g} is far too high; lower train.lr (e.g. 2e-4)"
    if meta.get("method") not in (None, "base"):
        dc = cfg.distill
        taus = {"tau_cfd": meta.get("tau_cfd"), "tau_is": dc.tau_is, "tau_m": dc.tau_m, "tau_ii": dc.tau_ii}
        for key, value in taus.items():
            if value is not None and value < 1e-2:
                return f"a temperature near 0 (distill.{key}={value:g}) overflows the softmax; raise it"
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


def _train(cfg: ExperimentConfig, model: nn.Module, objective: Objective, out_dir: Path, ctx: DistContext,
           manifest: dict | None, batches: Batches, *, iterations: int, lr: float, meta: dict, resume: bool,
           grid_steps: int | None, desc: str) -> nn.Module:
    tc = cfg.train
    # Read and checked before anything is written: a refused resume leaves the folder as it was.
    state_path = out_dir / TRAIN_STATE
    state = load_checkpoint(state_path) if resume and state_path.is_file() else None
    if state is not None:
        require_keys(state, ["model", "ema", "optimizer", "scheduler", "step", "rng", "data", "objective"], state_path, "training-state")
        if state["step"] > iterations:
            raise RddError(f"the run in '{out_dir}' has done {state['step']} steps; resuming it for {iterations} would undo "
                           f"some: set the iterations to at least {state['step']}, or start over with --overwrite")
    torch.manual_seed(tc.seed * 1000 + ctx.rank)
    model = model.to(ctx.device)
    objective.modules.to(ctx.device)
    if ctx.world > 1 and ctx.device.type == "cuda":
        objective.modules = nn.SyncBatchNorm.convert_sync_batchnorm(objective.modules)
    broadcast_module(objective.modules)  # like DDP for the model: every rank starts from rank 0's head and queue
    # DDP broadcasts rank 0's weights, so the EMA copy below starts equal on every rank.
    train_model = DistributedDataParallel(model) if ctx.world > 1 else model
    ema = EMA(model, tc.ema_decay)
    trainable = [p for p in objective.modules.parameters() if p.requires_grad]
    # The public RDD code trains its projection head with its own Adam at a constant lr, outside the clip.
    separate = {id(p) for p in getattr(objective, "separately_optimized", [])}
    params = list(model.parameters()) + [p for p in trainable if id(p) not in separate]
    optimizer = torch.optim.Adam(params, lr=lr)
    objective_optimizer = torch.optim.Adam([p for p in trainable if id(p) in separate], lr=lr) if separate else None
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, tc.warmup, iterations, tc.lr_schedule))
    log = MetricsLog(out_dir, enabled=ctx.is_main)
    step, saved_step = 0, None

    if state is not None:
        load_module_state(model, state["model"], state_path, "model")
        load_module_state(ema.model, state["ema"], state_path, "EMA")
        load_module_state(objective.modules, state["objective"], state_path, "objective")
        optimizer.load_state_dict(state["optimizer"])
        if objective_optimizer is not None:
            objective_optimizer.load_state_dict(state["objective_optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step = saved_step = state["step"]
        batches.restore(state["data"])
        _set_rng_state(state["rng"][ctx.rank])
        log.truncate_after(step)
    elif ctx.is_main and (out_dir / "metrics.jsonl").exists():
        (out_dir / "metrics.jsonl").unlink()
    if ctx.is_main:
        rundir.write_json_atomic(out_dir / rundir.MANIFEST, manifest)

    grid_gen = torch.Generator().manual_seed(1234)
    grid_noise = torch.randn(tc.num_grid, cfg.data.channels, cfg.data.resolution, cfg.data.resolution, generator=grid_gen).to(ctx.device)
    grid_labels = (torch.arange(tc.num_grid, device=ctx.device) % cfg.model.num_classes) if cfg.model.num_classes else None
    grid_steps = grid_steps or tc.sample_steps

    def diverged(at_step: int, what: str) -> RddError:
        kept = f"the last good checkpoint (step {saved_step}) stays in {state_path}" if saved_step else "no checkpoint was written"
        return RddError(f"training stopped at step {at_step}: {what}; likely cause: {_likely_cause(cfg, lr, meta)}, "
                        f"then start over with --overwrite; {kept}")

    def check_weights(at_step: int) -> None:
        """Every rank holds the same weights, so every rank stops together."""
        bad = first_nonfinite(model.state_dict()) or first_nonfinite(ema.model.state_dict())
        if bad:
            raise diverged(at_step, f"weight '{bad}' holds nan or inf after the update")

    def save(path_step: int) -> None:
        nonlocal saved_step
        check_weights(path_step)
        rng = all_gather_objects(_rng_state())
        if ctx.is_main:
            save_checkpoint({
                "model": model.state_dict(), "ema": ema.model.state_dict(), "objective": objective.modules.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": path_step,
                "objective_optimizer": objective_optimizer.state_dict() if objective_optimizer else None,
                "rng": rng, "data": batches.state(), "config": to_dict(cfg), "meta": meta,
            }, state_path)
        saved_step = path_step

    def write_grid(at_step: int) -> Path:
        path = out_dir / "grids" / f"step{at_step:07d}.png"
        if ctx.is_main:
            save_grid(ddim_sample(ema.model, grid_noise, grid_steps, grid_labels), path)
        return path

    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=tc.bf16 and ctx.device.type == "cuda")
    bar = tqdm(range(step, iterations), initial=step, total=iterations, desc=desc, disable=not ctx.is_main, dynamic_ncols=True)
    for step in bar:
        x, labels = batches.next()
        x = x.to(ctx.device, non_blocking=True)
        labels = labels.to(ctx.device) if cfg.model.num_classes else None
        if cfg.data.hflip:
            x = random_hflip(x)
        with autocast:
            loss, logs = objective(train_model, x, labels)
        optimizer.zero_grad(set_to_none=True)
        if objective_optimizer is not None:
            objective_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if ctx.world > 1 and trainable:
            for p in trainable:  # objective parts live outside DDP: average their gradients by hand
                dist.all_reduce(p.grad)
                p.grad /= ctx.world
        grad_norm = nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        if tc.grad_clip > 0:
            nn.utils.clip_grads_with_norm_(params, tc.grad_clip, grad_norm)
        finite = (torch.isfinite(loss.detach()) & torch.isfinite(grad_norm)).int()
        if ctx.world > 1:
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)  # a nan on any rank stops them all
        if not finite.item():
            terms = {"loss": loss.item(), "grad_norm": grad_norm.item(), **{k: float(v) for k, v in logs.items()}}
            shown = ", ".join(f"{k} {v:.4g}" for k, v in terms.items())
            raise diverged(step + 1, f"the loss or its gradient is not finite ({shown})")
        optimizer.step()
        if objective_optimizer is not None:
            objective_optimizer.step()
        scheduler.step()
        average_batchnorm_stats(objective.modules)
        ema.update(model)
        done = step + 1
        if done % tc.log_every == 0 or done == iterations:
            values = {"loss": loss.item(), "grad_norm": float(grad_norm), "lr": scheduler.get_last_lr()[0],
                      **{k: float(v) for k, v in logs.items()}}
            log.write(done, **values)
            bar.set_postfix(loss=f"{values['loss']:.4f}")
        if done % tc.ckpt_every == 0 and done < iterations:
            save(done)
        if tc.sample_every and done % tc.sample_every == 0:
            write_grid(done)
        if done in tc.snapshot_at and done < iterations:
            check_weights(done)
            if ctx.is_main:
                export_model(out_dir / "snapshots" / f"model-{done:07d}.pt", ema.model, cfg, {**meta, "iteration": done})
    save(iterations)
    if ctx.is_main:
        export_model(out_dir / MODEL_FILE, ema.model, cfg, meta)
        final_grid = out_dir / "grids" / f"step{iterations:07d}.png"
        if not final_grid.exists():
            write_grid(iterations)
        (out_dir / "samples.png").write_bytes(final_grid.read_bytes())
    log.close()
    return ema.model


def train_base_model(cfg: ExperimentConfig, out_dir: str | Path, ctx: DistContext, resume: bool = False,
                     overwrite: bool = False, desc: str = "train teacher") -> nn.Module:
    """A teacher from scratch: the config's U-Net on the truncated-SNR loss (Salimans & Ho 2022, as paper §5.1)."""
    from rdd.losses.truncated_snr import TruncatedSNRLoss
    from rdd.networks import build_model

    torch.manual_seed(cfg.train.seed)
    return fit(cfg, build_model(cfg.model, cfg.data), TruncatedSNRLoss(), out_dir, ctx, iterations=cfg.train.iterations,
               lr=cfg.train.lr, meta={"sampling_steps": None, "method": "base"}, resume=resume, overwrite=overwrite, desc=desc)


def load_diffusion_model(path: str | Path, device="cpu") -> tuple[nn.Module, ExperimentConfig, dict]:
    """Rebuild a diffusion model from `model.pt` (or a training state) or load a diffusers folder;
    returns (model, config, meta)."""
    from rdd.config import from_dict
    from rdd.networks import build_model

    if Path(path).is_dir():
        from rdd.diffusers_io import load_diffusers_folder

        return load_diffusers_folder(path, device)
    state = load_checkpoint(path)
    if state.get("kind", "diffusion") != "diffusion":
        raise RddError(f"'{path}' is a {state['kind']} checkpoint, not a diffusion model; pass a model.pt written by "
                       "rdd train or rdd distill")
    if "config" not in state or not ("model" in state or "ema" in state):
        raise RddError(f"checkpoint '{path}' is not an rdd diffusion checkpoint (no config/model); pass a model.pt written by rdd train or rdd distill")
    cfg = from_dict(state["config"])
    model = build_model(cfg.model, cfg.data)
    load_module_state(model, state["ema"] if "ema" in state else state["model"], path, "diffusion")
    bad = first_nonfinite(model.state_dict())
    if bad:
        raise RddError(f"model '{path}' has non-finite weights (nan or inf in '{bad}'); use a checkpoint from before training diverged")
    meta = state.get("meta", {k: v for k, v in state.items() if k not in ("model", "config", "kind")})
    return model.to(device).eval(), cfg, meta
