"""What a training step minimises (Objective), and a method's loss: its registered terms with their weights, summed (MethodLoss)."""
from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn

from rdd.config import DistillConfig
from rdd.diffusion import COSINE, Schedule
from rdd.errors import RddError
from rdd.losses.batch import DistillBatch
from rdd.losses.term import LossTerm, TermConfig
from rdd.losses.terms import term_class
from rdd.registry import METHODS, check_method

# Checkpoints written before the terms were modules hold M_P2P's queue and head at the top level.
_OLD_PREFIXES = {"queue.": "m_p2p.queue.", "head.": "m_p2p.head."}


def no_phase(name: str):
    """The default phase hook: times nothing. A profiler sets its own (benchmarks/distill_step.py)."""
    return nullcontext()


def _rename_old_keys(module, state_dict, prefix, *_) -> None:
    for old, new in _OLD_PREFIXES.items():
        for key in [k for k in state_dict if k.startswith(prefix + old)]:
            state_dict[prefix + new + key[len(prefix + old):]] = state_dict.pop(key)


class Objective(nn.Module):
    """What one training step minimises, the base model's loss and a distillation stage's alike:
    `forward(model, x, labels)` returns the loss and {name: value} to log (tensors, detached).

    `terms` (an nn.ModuleDict, empty for the base model) is the objective's state: the loop trains its
    parameters, saves and restores it with each checkpoint and keeps it in step under DDP. Frozen networks
    it reads (a teacher, a classifier) are no state: .to() moves them, state_dict() leaves them out.
    `phase(name)` wraps each phase of its step: a profiler's hook times them (Trainer.set_phase_hook).
    """

    def __init__(self, terms: nn.ModuleDict | None = None):
        super().__init__()
        self.terms = nn.ModuleDict() if terms is None else terms
        self.phase = no_phase

    def set_phase_hook(self, hook) -> None:
        self.phase = hook

    def separately_optimized(self) -> list[nn.Parameter]:
        """Parameters trained by their own Adam at a constant lr, outside the gradient clip."""
        return []

    def temperatures(self) -> dict[str, float]:
        """{config key: value} of the temperatures it divides by, named when a loss overflows."""
        return {}

    def forward(self, model: nn.Module, x: torch.Tensor, labels: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError


class MethodLoss(nn.Module):
    """sum_k w_k L_k(x_hat_S, x~): the loss terms of one method (paper eq. 10 for RDD).

    Call it on the student's prediction x_hat_S and the teacher's target x~ (and, for the terms
    weighted by omega_t, the times t); it returns the total and {"loss_<term>": value} (detached).
    The terms live in the nn.ModuleDict `terms`, so .to(), state_dict() and parameters() cover the
    queue and the head. The frozen classifier is the caller's: .to() moves it, but it is no state.
    `phase(name)` wraps the classifier passes and each term (`loss <term>`): a profiler's hook times them.
    """

    def __init__(self, terms: dict[str, tuple[float, LossTerm]], classifier: nn.Module | None = None,
                 schedule: Schedule = COSINE, loss_weight: str = "truncated_snr"):
        super().__init__()
        self.terms = nn.ModuleDict({name: term for name, (_, term) in terms.items()})
        self.terms.register_load_state_dict_pre_hook(_rename_old_keys)
        self.weights = {name: float(weight) for name, (weight, _) in terms.items()}
        readers = [name for name, term in self.terms.items() if term.needs_classifier]
        if readers and classifier is None:
            raise RddError(f"the loss terms {', '.join(readers)} compare classifier features: pass a classifier")
        object.__setattr__(self, "classifier", classifier.eval().requires_grad_(False) if classifier else None)
        self.schedule = schedule
        self.loss_weight = loss_weight  # omega_t of the terms weighted by it (rdd.diffusion.LOSS_WEIGHTS)
        self.reads_features = bool(readers)
        self.phase = no_phase

    @classmethod
    def from_config(cls, method: str, distill: DistillConfig, classifier: nn.Module | None = None,
                    tau_cfd: float | None = None, seed: int = 0, schedule: Schedule = COSINE,
                    loss_weight: str = "truncated_snr") -> "MethodLoss":
        """The terms of `method` (a name of rdd.registry.METHODS) built from `distill`, each weighted by
        its weight key. tau_cfd defaults to the first stage's; seed draws the queue and head."""
        check_method(method)
        config = TermConfig.of(distill, tau_cfd, seed, classifier)
        classes = [(name, weight_key, term_class(name)) for name, weight_key in METHODS[method]]
        if classifier is None and any(term.needs_classifier for _, _, term in classes):
            raise RddError(f"method '{method}' compares classifier features: pass a classifier")
        terms = {name: (1.0 if key is None else getattr(distill, key), term.from_config(config))
                 for name, key, term in classes}
        return cls(terms, classifier, schedule, loss_weight)

    def _apply(self, fn, recurse=True):
        if self.classifier is not None:
            self.classifier._apply(fn, recurse)
        return super()._apply(fn, recurse)

    def separately_optimized(self) -> list[nn.Parameter]:
        return [p for term in self.terms.values() for p in term.separately_optimized()]

    def temperatures(self) -> dict[str, float]:
        return {key: tau for term in self.terms.values() for key, tau in term.temperatures().items()}

    def forward(self, x_student: torch.Tensor, x_target: torch.Tensor,
                t: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        batch = DistillBatch(x_student, x_target, t, self.classifier, self.schedule, self.loss_weight)
        if self.reads_features:  # computed once here, shared by the terms
            with self.phase("classifier on x~ (no grad)"):
                _ = batch.features_teacher
            with self.phase("classifier on x^ (grad)"):
                _ = batch.features_student
        total, logs = 0.0, {}
        for name, term in self.terms.items():
            with self.phase(f"loss {name}"):
                value = term(batch)
            logs[f"loss_{name}"] = value.detach()  # read with float() only when logged: no GPU sync per term
            total = total + self.weights[name] * value
        return total, logs
