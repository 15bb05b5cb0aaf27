"""Training the frozen feature classifier of CFD/RCFD/RDD (paper §3.2, eq. 3) and the independent
evaluation network, through the one training loop of every command (rdd.training.run_loop): torchrun,
resume after a kill, the run lock and manifest, the nan guard. The networks and how their checkpoints
load live in rdd.classifier_nets; their names are importable from here too.

Both train with the public code's recipe (SGD, momentum 0.9, weight decay 5e-4, lr ÷10 at 50% and
75%, crop + flip, AutoAugment + Cutout on CIFAR) on images in [-1, 1], the diffusion model's range;
docs/fidelity.md lists where rdd's recipe differs.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from rdd.checkpoint import save_checkpoint
from rdd.classifier_nets import (ARCHS, STEMS, ClassifierOutput, EvalNet, FeatureClassifier, build_classifier,
                                 load_classifier)
from rdd.config import ClassifierConfig, ExperimentConfig
from rdd.data import class_count, load_dataset, random_hflip
from rdd.distributed import DistContext, default_device
from rdd.layout import RUN_FILES
from rdd.losses import Objective
from rdd.training import Batches, Recipe, RunPlan, RunWriter, per_rank_batch, run_loop

__all__ = ["ARCHS", "STEMS", "ClassifierOutput", "EvalNet", "FeatureClassifier", "build_classifier", "load_classifier",
           "augment", "evaluate_accuracy", "train_classifier", "save_classifier"]

# ----------------------------------------------------------------------------------------------
# Batched augmentation on tensors in [-1, 1]: random per-image draws, no per-sample PIL round trip.

def random_crop(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Pad by `pad` with -1 (black, as the data's border) and cut a random window per image."""
    n, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad), value=-1.0)
    dy = torch.randint(0, 2 * pad + 1, (n, 1), device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (n, 1), device=x.device)
    rows = (dy + torch.arange(h, device=x.device)).view(n, 1, h, 1)
    cols = (dx + torch.arange(w, device=x.device)).view(n, 1, 1, w)
    return xp[torch.arange(n, device=x.device).view(n, 1, 1, 1), torch.arange(c, device=x.device).view(1, c, 1, 1), rows, cols]


def cutout(x: torch.Tensor, size: int) -> torch.Tensor:
    """Paint one size x size square per image black (-1), centre possibly on the border (DeVries & Taylor).
    The public code applies Cutout before normalisation, so its patches are black too."""
    n, _, h, w = x.shape
    cy = torch.randint(0, h, (n, 1, 1), device=x.device)
    cx = torch.randint(0, w, (n, 1, 1), device=x.device)
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    top, left = cy - size // 2, cx - size // 2
    hole = (ys >= top) & (ys < top + size) & (xs >= left) & (xs < left + size)
    return x.masked_fill(hole.unsqueeze(1), -1.0)


def auto_augment(x: torch.Tensor) -> torch.Tensor:
    """torchvision's CIFAR-10 AutoAugment policy, one draw per image (it works on uint8 images)."""
    from torchvision.transforms import AutoAugment, AutoAugmentPolicy

    policy = AutoAugment(AutoAugmentPolicy.CIFAR10)
    u8 = ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    u8 = torch.stack([policy(img) for img in u8])  # per image: a batch call would share one sub-policy
    return u8.float() / 127.5 - 1


def augment(x: torch.Tensor, cfg: ExperimentConfig) -> torch.Tensor:
    res = x.shape[-1]
    x = random_crop(x, max(1, res // 8))
    if cfg.data.hflip:  # Fashion-MNIST is not flip-augmented: its classes have handedness cues
        x = random_hflip(x)
    if cfg.classifier.autoaugment:
        x = cutout(auto_augment(x), res // 2)
    return x


# ----------------------------------------------------------------------------------------------

@torch.no_grad()

@torch.no_grad()
def evaluate_accuracy(model: nn.Module, dataset: Dataset, batch_size: int = 500, device: str | torch.device = "cpu",
                      ctx: DistContext | None = None) -> float:
    """Top-1 accuracy on `dataset`. Under torchrun (`ctx`) each process scores every world-th image and
    the counts are summed, so every process gets the accuracy of the whole set."""
    world = ctx.world if ctx is not None else 1
    if world > 1:
        dataset = Subset(dataset, range(ctx.rank, len(dataset), world))
    was_training = model.training
    model.eval()
    counts = torch.zeros(2, dtype=torch.long, device=device)  # correct, seen
    for x, y in DataLoader(dataset, batch_size=batch_size):
        correct = (model(x.to(device)).logits.argmax(1) == y.to(device)).sum()
        counts += torch.stack([correct, torch.tensor(len(y), device=device)])
    model.train(was_training)
    if world > 1:
        dist.all_reduce(counts)
    return counts[0].item() / max(counts[1].item(), 1)


class CrossEntropy(Objective):
    """The classifier's objective: cross-entropy of its logits; logs the batch's training accuracy. It has no state."""

    def forward(self, model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
        logits = model(x).logits
        return F.cross_entropy(logits, labels), {"train_acc": (logits.argmax(1) == labels).float().mean()}


def sgd_recipe(cc: ClassifierConfig, iterations: int) -> Recipe:
    """The public code's: SGD with momentum and weight decay, no clip, no EMA; lr ÷10 at 50% and 75% of
    training, counted in iterations so that 1-epoch runs decay too."""
    milestones = [math.ceil(0.5 * iterations), math.ceil(0.75 * iterations)]
    return Recipe(cc.lr, "classifier.lr", 0.1,
                  lambda params: torch.optim.SGD(params, lr=cc.lr, momentum=cc.momentum, weight_decay=cc.weight_decay),
                  lambda opt: torch.optim.lr_scheduler.MultiStepLR(opt, milestones, gamma=0.1))


class EpochEvaluation:
    """The hooks of a classifier's run. Batches are augmented. At each epoch's end a row of the metrics
    log holds the epoch's loss and training accuracy, the test accuracy and, with data.holdout > 0, the
    accuracy on the held-out training images, whose best epoch's weights are kept (the public code keeps
    the best test accuracy, which tunes on the test set). At the end the classifier file is written."""

    def __init__(self, cfg: ExperimentConfig, arch: str, eval_sets: tuple, per_epoch: int, ctx: DistContext,
                 path: Path, progress: bool):
        self.cfg, self.arch, self.per_epoch, self.ctx, self.path, self.progress = cfg, arch, per_epoch, ctx, path, progress
        self.test_set, self.val_set = eval_sets
        self.sums = torch.zeros(3, device=ctx.device)  # this epoch's loss, training accuracy and steps on this process
        self.best_val, self.best_weights, self.test_acc = -1.0, None, None

    def prepare(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (augment(x, self.cfg) if self.cfg.classifier.augment else x), labels

    def after_step(self, writer: RunWriter, done: int, loss: torch.Tensor, logs: dict) -> None:
        self.sums += torch.stack([loss.detach().float(), logs["train_acc"], torch.ones((), device=self.sums.device)])
        if done % self.per_epoch == 0:
            timing = writer.timing(done)  # the epoch's training steps, before its evaluation
            row = {**self.end_epoch(writer.trainer.model, writer.trainer.optimizer, done // self.per_epoch), **timing}
            writer.log.write(done, **row)
            if self.progress and self.ctx.is_main:
                tqdm.write(json.dumps(row))

    def accuracy(self, model: nn.Module, dataset: Dataset) -> float:
        return evaluate_accuracy(model, dataset, device=self.ctx.device, ctx=self.ctx)

    def end_epoch(self, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int) -> dict:
        if self.ctx.world > 1:
            dist.all_reduce(self.sums)
        loss, train_acc, steps = self.sums.tolist()
        self.sums.zero_()
        self.test_acc = self.accuracy(model, self.test_set)
        row = {"epoch": epoch, "loss": loss / steps, "train_acc": train_acc / steps, "test_acc": self.test_acc,
               "lr": optimizer.param_groups[0]["lr"]}
        if self.val_set is not None:
            row["val_acc"] = self.accuracy(model, self.val_set)
            if row["val_acc"] > self.best_val:
                self.best_val = row["val_acc"]
                self.best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return row

    def finish(self, writer: RunWriter, iterations: int) -> None:
        model = writer.trainer.model
        if self.best_weights is not None:
            model.load_state_dict(self.best_weights)
            self.test_acc = self.accuracy(model, self.test_set)
        if self.ctx.is_main:
            save_classifier(model, self.cfg, self.arch, self.test_acc, self.path)

    def state_dict(self) -> dict:
        """Called on every process at a checkpoint: the epoch's sums so far move to the main process, which saves them."""
        if self.ctx.world > 1:
            dist.all_reduce(self.sums)
            if not self.ctx.is_main:
                self.sums.zero_()
        return {"sums": self.sums.clone(), "best_val": self.best_val, "best_weights": self.best_weights,
                "test_acc": self.test_acc}

    def load_state_dict(self, state: dict) -> None:
        self.sums = state["sums"].to(self.ctx.device) * int(self.ctx.is_main)
        self.best_val, self.test_acc = state["best_val"], state["test_acc"]
        weights = state["best_weights"]
        self.best_weights = {k: v.to(self.ctx.device) for k, v in weights.items()} if weights is not None else None


def _first(dataset: Dataset, limit: int | None) -> Dataset:
    return Subset(dataset, range(min(limit, len(dataset)))) if limit is not None else dataset


def train_classifier(cfg: ExperimentConfig, out_dir: str | Path, ctx: DistContext | None = None, *, arch: str | None = None,
                     seed: int | None = None, progress: bool = True, train_limit: int | None = None,
                     test_limit: int | None = None, resume: bool = False, overwrite: bool = False) -> dict:
    """Train a classifier on cfg.data with the public code's recipe, in the run folder `out_dir`: classifier.pt
    (evalnet.pt for the evaluation network), its metrics log, state and manifest (rdd.layout.RUN_FILES).

    `ctx` is torchrun's (default: one process); `resume`/`overwrite` as for `rdd train`. `arch`/`seed`
    override cfg.classifier (the evaluation network uses arch='evalnet-cnn' and another seed);
    `train_limit`/`test_limit` keep the first N images of each split (tests, quick runs).
    Returns the test accuracy of the written weights and the file's path.
    """
    cc = cfg.classifier
    arch, seed = arch or cc.arch, cc.seed if seed is None else seed
    cfg = dataclasses.replace(cfg, classifier=dataclasses.replace(cc, arch=arch, seed=seed))  # what ran is what is kept
    ctx = ctx or DistContext(0, 1, default_device())
    train_limit = train_limit if train_limit is not None else cc.train_limit
    batches = Batches(_first(load_dataset(cfg.data, "train"), train_limit), per_rank_batch(cc.batch_size, ctx, "classifier.batch_size"),
                      seed, ctx, cfg.data.num_workers, setting="classifier.batch_size", name=cfg.data.dataset)
    eval_sets = (_first(load_dataset(cfg.data, "test"), test_limit), load_dataset(cfg.data, "val") if cfg.data.holdout else None)
    kind = "evalnet" if arch == "evalnet-cnn" else "classifier"
    files, iterations = RUN_FILES[kind], cc.epochs * batches.per_epoch
    path = Path(out_dir) / files.final
    hooks = EpochEvaluation(cfg, arch, eval_sets, batches.per_epoch, ctx, path, progress)
    plan = RunPlan(files=files, recipe=sgd_recipe(cc, iterations), batches=batches, hooks=hooks, iterations=iterations,
                   seed=seed, meta={"kind": kind, "arch": arch, "seed": seed, "train_limit": train_limit, "test_limit": test_limit},
                   ckpt_every=cc.ckpt_every, desc=arch, progress=progress)
    torch.manual_seed(seed)
    model = build_classifier(arch, cfg.data.channels, class_count(cfg.data), cc.stem)
    run_loop(cfg, model, CrossEntropy(), out_dir, ctx, plan, resume=resume, overwrite=overwrite)
    return {"test_accuracy": hooks.test_acc, "path": str(path)}


def save_classifier(model: nn.Module, cfg: ExperimentConfig, arch: str, test_acc: float, path: Path) -> None:
    """The file `load_classifier` reads (the loop has checked the weights are finite)."""
    save_checkpoint(dict(kind="classifier", arch=arch, stem=cfg.classifier.stem, in_channels=cfg.data.channels,
                         num_classes=class_count(cfg.data), resolution=cfg.data.resolution, model=model.state_dict(),
                         test_accuracy=test_acc, config=dataclasses.asdict(cfg)), path)
