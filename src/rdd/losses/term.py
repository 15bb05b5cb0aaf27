"""The shape of a distillation loss term: an nn.Module whose forward is its equation."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from rdd.config import DistillConfig
from rdd.fidelity import Fidelity, resolve_fidelity


@dataclass(frozen=True)
class TermConfig:
    """What a term may read when it is built from a config."""

    distill: DistillConfig
    fidelity: Fidelity
    tau_cfd: float  # this stage's entry of distill.tau_cfd
    seed: int = 0  # train.seed: state drawn at build (queue, head) comes from it
    feature_channels: int | None = None  # C of the classifier's feature map

    @classmethod
    def of(cls, distill: DistillConfig, tau_cfd: float | None = None, seed: int = 0,
           classifier: nn.Module | None = None) -> "TermConfig":
        """From the distillation settings; tau_cfd defaults to the first stage's, C to the classifier's."""
        return cls(distill, resolve_fidelity(distill), distill.tau_cfd[0] if tau_cfd is None else tau_cfd, seed,
                   getattr(classifier, "num_features", None))


class LossTerm(nn.Module):
    """One loss of a method. Subclasses set the flags, build themselves in `from_config` and
    compute their equation in `forward(batch)` (a rdd.losses.DistillBatch), returning a scalar.

    needs_classifier: the term reads classifier features, so its method needs a trained classifier.
    temperature_key: the config key of the term's temperature `self.tau`, named when a loss overflows.
    """

    needs_classifier = False
    temperature_key: str | None = None

    @classmethod
    def from_config(cls, config: TermConfig) -> "LossTerm":
        return cls()

    @classmethod
    def check_config(cls, distill: DistillConfig) -> None:
        """Refuse bad settings of this term in one line (an RddError) before any work starts."""

    def separately_optimized(self) -> list[nn.Parameter]:
        """Parameters trained by their own optimiser, outside the gradient clip (none by default)."""
        return []

    def temperatures(self) -> dict[str, float]:
        """{config key: value} of the term's temperature, if it has one."""
        return {self.temperature_key: self.tau} if self.temperature_key else {}

    def forward(self, batch) -> torch.Tensor:
        raise NotImplementedError
