"""A distillation stage's plan and objective: one shared PD step, then the method's loss terms.

Every method shares one PD step (paper §3.1, eq. 2): t from the student's grid, z_t = alpha_t x + sigma_t eps,
the frozen teacher's two-DDIM-step target x~, and the student's one-step prediction x_hat. The method's
terms (rdd.losses.MethodLoss, listed in rdd.registry.METHODS) then compare x_hat with x~.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from rdd.config import DistillConfig, ExperimentConfig
from rdd.diffusion import sample_student_times, schedule_of, teacher_two_step_target
from rdd.errors import RddError
from rdd.fidelity import resolve_fidelity
from rdd.losses import MethodLoss, Objective
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


@dataclass
class StagePlan:
    """What defines one stage N -> N/2, resolved once from the config, the loaded teacher and the
    stage's index: every per-stage setting is one value here."""

    cfg: ExperimentConfig  # the stage's: the teacher's network and image shape (rdd.distill.stage_config)
    teacher: nn.Module
    teacher_path: str
    teacher_steps: int  # N; the student samples in N/2
    iterations: int
    tau_cfd: float
    reading: dict  # how the student reads its output, and its loss weight (rdd.networks.student_reading)
    classifier: str | None  # the classifier checkpoint, for a method on classifier features

    @property
    def student_steps(self) -> int:
        return self.teacher_steps // 2

    def meta(self) -> dict:
        """What the stage's run.json and model.pt record of it."""
        dc = self.cfg.distill
        meta = {"sampling_steps": self.student_steps, "teacher_steps": self.teacher_steps, "method": dc.method,
                "tau_cfd": self.tau_cfd, "teacher": self.teacher_path, "fidelity": dc.fidelity,
                "fidelity_switches": resolve_fidelity(dc).as_dict(), "student_reading": self.reading}
        if self.classifier:
            meta["classifier"] = self.classifier
        return meta


class DistillationObjective(Objective):
    """One PD stage N -> N/2 under a method: sum_k w_k L_k(x_hat_S, x~).

    Its `terms` are the method's (rdd.losses.MethodLoss): the loop trains, saves and syncs them. The teacher
    and the classifier are frozen and no state.
    """

    def __init__(self, plan: StagePlan, classifier: nn.Module | None = None):
        dc = plan.cfg.distill
        schedule = schedule_of(plan.teacher)  # noising, target and weight all on the teacher's schedule
        loss = MethodLoss.from_config(dc.method, dc, classifier, plan.tau_cfd, plan.cfg.train.seed, schedule,
                                      plan.reading["loss_weight"])
        super().__init__(loss.terms)
        object.__setattr__(self, "loss", loss)  # its terms are registered above; its classifier is no state
        object.__setattr__(self, "teacher", plan.teacher.eval().requires_grad_(False))
        self.teacher_clip = resolve_fidelity(dc).teacher_clip
        self.schedule = schedule
        self.teacher_steps = plan.teacher_steps

    def _apply(self, fn, recurse=True):
        self.teacher._apply(fn, recurse)
        self.loss._apply(fn, recurse)  # the classifier
        return super()._apply(fn, recurse)

    def set_phase_hook(self, hook) -> None:
        self.phase = self.loss.phase = hook

    def separately_optimized(self) -> list[nn.Parameter]:
        return self.loss.separately_optimized()

    def temperatures(self) -> dict[str, float]:
        return self.loss.temperatures()

    def forward(self, student: nn.Module, x: torch.Tensor, labels: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
        with self.phase("noise z_t"):
            t = sample_student_times(x.shape[0], self.teacher_steps // 2, device=x.device)
            z_t = self.schedule.diffuse(x, t, torch.randn_like(x))
        with self.phase("teacher two DDIM steps"), torch.no_grad():
            x_target = teacher_two_step_target(self.teacher, z_t, t, self.teacher_steps, labels,
                                               clip=self.teacher_clip).float()
        with self.phase("student forward"):
            x_student = student(z_t, t, labels)
        return self.loss(x_student, x_target, t)
