"""A distillation stage's objective: one shared PD step, then the method's loss terms.

Every method shares one PD step (paper §3.1, eq. 2): t from the student's grid, z_t = alpha_t x + sigma_t eps,
the frozen teacher's two-DDIM-step target x~, and the student's one-step prediction x_hat. The method's
terms (rdd.losses.MethodLoss, listed in rdd.registry.METHODS) then compare x_hat with x~.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from rdd.config import DistillConfig, ExperimentConfig
from rdd.diffusion import sample_student_times, schedule_of, teacher_two_step_target
from rdd.errors import RddError
from rdd.fidelity import Fidelity, resolve_fidelity
from rdd.losses import MethodLoss
from rdd.losses.objective import no_phase
from rdd.losses.terms import term_class
from rdd.registry import METHODS, check_method


def needs_classifier(method: str) -> bool:
    check_method(method)
    return any(term_class(term).needs_classifier for term, _ in METHODS[method])


def require_classifier(cfg: ExperimentConfig) -> None:
    """A method on classifier features needs an existing classifier.checkpoint: refused in one line."""
    checkpoint = cfg.classifier.checkpoint
    if needs_classifier(cfg.distill.method) and not (checkpoint and Path(checkpoint).is_file()):
        shown = f" ('{checkpoint}' not found)" if checkpoint else ""
        raise RddError(f"method '{cfg.distill.method}' needs a trained classifier{shown}: set classifier.checkpoint=PATH "
                       "(make one with `rdd train-classifier`)")


def check_terms(dc: DistillConfig) -> None:
    """Each term of the method checks its settings (e.g. a weights file) before any work starts."""
    for term, _ in METHODS[dc.method]:
        term_class(term).check_config(dc)


class DistillationObjective:
    """One PD stage N -> N/2 under a method: sum_k w_k L_k(x_hat_S, x~).

    `modules` is the loss's nn.ModuleDict of terms: what the loop moves, trains, saves and syncs.
    `separately_optimized` lists the trainable parameters that take their own constant-lr Adam
    outside the gradient clip (the projection head under distill.head_optimizer=separate).
    """

    def __init__(self, cfg: ExperimentConfig, teacher: nn.Module, teacher_steps: int, tau_cfd: float,
                 classifier: nn.Module | None = None, loss_weight: str = "truncated_snr"):
        dc = cfg.distill
        self.fidelity: Fidelity = resolve_fidelity(dc)
        self.teacher = teacher.eval().requires_grad_(False)
        self.schedule = schedule_of(teacher)  # noising, target and weight all on the teacher's schedule
        self.teacher_steps = teacher_steps
        self.loss = MethodLoss.from_config(dc.method, dc, classifier, tau_cfd, cfg.train.seed, self.schedule, loss_weight)
        self.modules = self.loss.terms
        self.separately_optimized: list[nn.Parameter] = self.loss.separately_optimized()
        self.temperatures = self.loss.temperatures()
        self.phase = no_phase

    def set_phase_hook(self, hook) -> None:
        """`hook(name)` wraps each phase of the step, the loss terms included (a profiler's timer)."""
        self.phase = self.loss.phase = hook

    def to(self, device) -> "DistillationObjective":
        self.teacher.to(device)
        self.loss.to(device)
        return self

    def __call__(self, student: nn.Module, x: torch.Tensor, labels: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
        with self.phase("noise z_t"):
            t = sample_student_times(x.shape[0], self.teacher_steps // 2, device=x.device)
            z_t = self.schedule.diffuse(x, t, torch.randn_like(x))
        with self.phase("teacher two DDIM steps"), torch.no_grad():
            x_target = teacher_two_step_target(self.teacher, z_t, t, self.teacher_steps, labels,
                                               clip=self.fidelity.teacher_clip).float()
        with self.phase("student forward"):
            x_student = student(z_t, t, labels)
        return self.loss(x_student, x_target, t)
