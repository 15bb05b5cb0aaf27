"""Distillation losses, each an nn.Module named after its equation, and the functions behind them.

Terms (rdd.losses.terms.TERMS): PD (eq. 2), PD_LPIPS (§5), CFD (eq. 4), II_P2P (eq. 6), IS_P2P (eq. 7),
M_P2P (eq. 8-9) with its PixelQueue and ProjectionHead. MethodLoss sums a method's weighted terms;
Objective is the type of what a training step minimises. docs/extending.md adds a term or a method.
"""

from rdd.losses.batch import DistillBatch
from rdd.losses.cfd import CFD, cfd_loss
from rdd.losses.ii_p2p import II_P2P, ii_p2p_loss
from rdd.losses.is_p2p import IS_P2P, is_p2p_loss, is_p2p_loss_dense, is_p2p_loss_global
from rdd.losses.lpips_loss import LPIPSLoss
from rdd.losses.m_p2p import M_P2P, m_p2p_loss
from rdd.losses.objective import MethodLoss, Objective
from rdd.losses.pd import PD
from rdd.losses.pd_lpips import PD_LPIPS
from rdd.losses.pixel_queue import PixelQueue
from rdd.losses.projection_head import ProjectionHead
from rdd.losses.term import LossTerm, TermConfig
from rdd.losses.terms import TERMS, register_term

__all__ = [
    "CFD",
    "DistillBatch",
    "II_P2P",
    "IS_P2P",
    "LPIPSLoss",
    "LossTerm",
    "M_P2P",
    "MethodLoss",
    "Objective",
    "PD",
    "PD_LPIPS",
    "PixelQueue",
    "ProjectionHead",
    "TERMS",
    "TermConfig",
    "cfd_loss",
    "ii_p2p_loss",
    "is_p2p_loss",
    "is_p2p_loss_dense",
    "is_p2p_loss_global",
    "m_p2p_loss",
    "register_term",
]
