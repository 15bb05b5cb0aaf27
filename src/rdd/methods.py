"""Distillation methods as weighted lists of loss terms, chosen by config.

Every method shares one PD step (paper §3.1, eq. 2): t from the student's grid, z_t = alpha_t x + sigma_t eps,
the frozen teacher's two-DDIM-step target x~, and the student's one-step prediction x_hat.
The terms then compare x_hat with x~ in pixels (PD, LPIPS) or through a frozen classifier
(CFD, II/IS/M_P2P). Each term's `__call__` is its equation.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import torch
from torch import nn

from rdd.config import ExperimentConfig
from rdd.diffusion import COSINE, Schedule, sample_student_times, schedule_of, teacher_two_step_target
from rdd.errors import RddError
from rdd.fidelity import Fidelity, resolve_fidelity
from rdd.registry import METHODS
from rdd.losses import (LPIPSLoss, PixelQueue, ProjectionHead, cfd_loss, ii_p2p_loss, is_p2p_loss, is_p2p_loss_global,
                        m_p2p_loss)


@dataclass
class DistillBatch:
    """What the terms see: the student's x_hat, the teacher's x~, t, and classifier features of both."""

    x_student: torch.Tensor
    x_target: torch.Tensor
    t: torch.Tensor
    classifier: nn.Module | None = None
    schedule: Schedule = field(default_factory=lambda: COSINE)  # the teacher's

    @cached_property
    def weight(self) -> torch.Tensor:
        return self.schedule.truncated_snr_weight(self.t)

    @cached_property
    def features_student(self):
        return self.classifier(self.x_student)  # gradients reach the student through the frozen classifier

    @cached_property
    def features_teacher(self):
        with torch.no_grad():
            return self.classifier(self.x_target)


class PDLoss:
    """Eq. 2: L_PD = omega_t ||x~ - x_hat_S(z_t, t)||^2."""

    def __call__(self, b: DistillBatch) -> torch.Tensor:
        return (b.weight * (b.x_student.float() - b.x_target).pow(2).flatten(1).mean(1)).mean()


class PDLPIPSTerm:
    """PD + LPIPS (§5): eq. 2 with the squared error replaced by LPIPS(x~, x_hat_S)."""

    def __init__(self, lpips: LPIPSLoss):
        self.lpips = lpips

    def __call__(self, b: DistillBatch) -> torch.Tensor:
        return (b.weight * self.lpips(b.x_student, b.x_target)).mean()


class CFDTerm:
    """Eq. 4: KL(softmax(F^T / tau) || softmax(F^S)) on pooled classifier features."""

    def __init__(self, tau: float):
        self.tau = tau

    def __call__(self, b: DistillBatch) -> torch.Tensor:
        return cfd_loss(b.features_student.pooled, b.features_teacher.pooled, self.tau)


class IIP2PTerm:
    """Eq. 6: pixel-to-pixel relations within each image."""

    def __init__(self, tau: float):
        self.tau = tau

    def __call__(self, b: DistillBatch) -> torch.Tensor:
        return ii_p2p_loss(b.features_student.feature_map, b.features_teacher.feature_map, self.tau)


class ISP2PTerm:
    """Eq. 7: pixel-to-pixel relations across every ordered pair of images in the batch: the images
    on this process (`local`, the public code) or the batch gathered over all processes (`global`)."""

    def __init__(self, tau: float, scope: str = "local"):
        self.tau = tau
        self.loss = is_p2p_loss_global if scope == "global" else is_p2p_loss

    def __call__(self, b: DistillBatch) -> torch.Tensor:
        return self.loss(b.features_student.feature_map, b.features_teacher.feature_map, self.tau)


class MP2PTerm:
    """Eq. 8-9: relations of each pixel to V teacher pixels drawn from the memory queue.

    The student's map goes through the projection head first. K teacher pixels are pushed into the
    queue after the loss (the paper), or before the draw (`push_first`, the public code).
    """

    def __init__(self, tau: float, queue: PixelQueue, head: ProjectionHead, num_contrast: int, push_per_step: int,
                 push_first: bool = False, push_scope: str = "global"):
        self.tau, self.queue, self.head = tau, queue, head
        self.num_contrast, self.push_per_step = num_contrast, push_per_step
        self.push_first, self.push_scope = push_first, push_scope

    def __call__(self, b: DistillBatch) -> torch.Tensor:
        map_t = b.features_teacher.feature_map
        if self.push_first:
            self.queue.push(map_t, self.push_per_step, self.push_scope)
        loss = m_p2p_loss(self.head(b.features_student.feature_map), map_t, self.queue.draw(self.num_contrast), self.tau)
        if not self.push_first:
            self.queue.push(map_t, self.push_per_step, self.push_scope)
        return loss


CLASSIFIER_TERMS = {"cfd", "ii_p2p", "is_p2p", "m_p2p"}


def check_method(method: str) -> None:
    if method not in METHODS:
        raise RddError(f"unknown method '{method}'; choose one of {', '.join(METHODS)}")


def needs_classifier(method: str) -> bool:
    check_method(method)
    return any(term in CLASSIFIER_TERMS for term, _ in METHODS[method])


class DistillationObjective:
    """One PD stage N -> N/2 under a method: sum_k w_k L_k(x_hat_S, x~).

    `separately_optimized` lists the trainable parameters that take their own constant-lr Adam
    outside the gradient clip (the projection head under distill.head_optimizer=separate).
    """

    def __init__(self, cfg: ExperimentConfig, teacher: nn.Module, teacher_steps: int, tau_cfd: float,
                 classifier: nn.Module | None = None):
        dc = cfg.distill
        check_method(dc.method)
        self.fidelity: Fidelity = resolve_fidelity(dc)
        self.teacher = teacher.eval().requires_grad_(False)
        self.schedule = schedule_of(teacher)  # noising, target and weight all on the teacher's schedule
        self.teacher_steps = teacher_steps
        self.classifier = classifier.eval().requires_grad_(False) if classifier is not None else None
        self.modules = nn.ModuleDict()
        self.separately_optimized: list[nn.Parameter] = []
        self.terms = []
        for name, weight_key in METHODS[dc.method]:
            weight = 1.0 if weight_key is None else getattr(dc, weight_key)
            self.terms.append((name, weight, self._build_term(name, cfg, tau_cfd)))

    def _build_term(self, name: str, cfg: ExperimentConfig, tau_cfd: float):
        dc = cfg.distill
        if name in CLASSIFIER_TERMS and self.classifier is None:
            raise RddError(f"method '{dc.method}' needs a trained classifier: set classifier.checkpoint=PATH "
                           "(make one with `rdd train-classifier`)")
        if name == "pd":
            return PDLoss()
        if name == "lpips":
            return PDLPIPSTerm(LPIPSLoss(dc.lpips_net, backbone_weights=dc.lpips_weights))
        if name == "cfd":
            return CFDTerm(tau_cfd)
        if name == "ii_p2p":
            return IIP2PTerm(dc.tau_ii)
        if name == "is_p2p":
            return ISP2PTerm(dc.tau_is, dc.is_p2p_scope)
        fid = self.fidelity
        channels = self.classifier.num_features
        self.modules["queue"] = PixelQueue(dc.queue_size, channels, seed=cfg.train.seed, layout=fid.queue_layout,
                                           draw_from=fid.queue_draw, wrap=fid.queue_wrap)
        self.modules["head"] = ProjectionHead(channels, bias=fid.head_bias, seed=cfg.train.seed)
        if fid.head_optimizer == "separate":
            self.separately_optimized = list(self.modules["head"].parameters())
        return MP2PTerm(dc.tau_m, self.modules["queue"], self.modules["head"], fid.num_contrast, dc.push_per_step,
                        push_first=fid.queue_push == "before", push_scope=fid.push_scope)

    def to(self, device) -> "DistillationObjective":
        self.teacher.to(device)
        if self.classifier is not None:
            self.classifier.to(device)
        for _, _, term in self.terms:
            if isinstance(term, PDLPIPSTerm):
                term.lpips.to(device)
        return self

    def __call__(self, student: nn.Module, x: torch.Tensor, labels: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
        t = sample_student_times(x.shape[0], self.teacher_steps // 2, device=x.device)
        z_t = self.schedule.diffuse(x, t, torch.randn_like(x))
        with torch.no_grad():
            x_target = teacher_two_step_target(self.teacher, z_t, t, self.teacher_steps, labels,
                                               clip=self.fidelity.teacher_clip).float()
        batch = DistillBatch(student(z_t, t, labels), x_target, t, self.classifier, self.schedule)
        total, logs = 0.0, {}
        for name, weight, term in self.terms:
            value = term(batch)
            logs[f"loss_{name}"] = value.detach()  # read with float() only when logged: no GPU sync per term
            total = total + weight * value
        return total, logs
