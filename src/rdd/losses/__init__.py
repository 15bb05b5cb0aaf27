"""Distillation losses: CFD (eq. 4), II/IS/M_P2P (eq. 6-9) with their queue and head, and LPIPS."""

from rdd.losses.cfd import cfd_loss
from rdd.losses.ii_p2p import ii_p2p_loss
from rdd.losses.is_p2p import is_p2p_loss, is_p2p_loss_dense, is_p2p_loss_global
from rdd.losses.kl import kl_rows
from rdd.losses.lpips_loss import LPIPSLoss
from rdd.losses.m_p2p import m_p2p_loss
from rdd.losses.pixel_queue import PixelQueue
from rdd.losses.pixels import unit_pixels
from rdd.losses.projection_head import ProjectionHead

__all__ = [
    "LPIPSLoss",
    "PixelQueue",
    "ProjectionHead",
    "cfd_loss",
    "ii_p2p_loss",
    "is_p2p_loss",
    "is_p2p_loss_dense",
    "is_p2p_loss_global",
    "kl_rows",
    "m_p2p_loss",
    "unit_pixels",
]
