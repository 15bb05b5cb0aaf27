"""A user's plugin, kept as a test fixture (docs/extending.md): attention transfer (Zagoruyko &
Komodakis, ICLR 2017) on the classifier's feature maps, and a method `cfd_at` = L_CFD + alpha L_AT.
Passed with `rdd ... --plugin tests/plugins/attention_transfer.py`; nothing inside src/rdd names it."""
import torch
from torch.nn.functional import normalize

from rdd.losses import DistillBatch, LossTerm, register_term
from rdd.registry import register_method


def attention_map(feature_map: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, H*W): the channel mean of the squared activations, scaled to unit length."""
    return normalize(feature_map.pow(2).mean(1).flatten(1), dim=1)


class AttentionTransfer(LossTerm):
    """||a(F^S) - a(F^T)||^2 between the attention maps of the student's and the teacher's feature maps."""

    needs_classifier = True

    def forward(self, b: DistillBatch) -> torch.Tensor:
        student = attention_map(b.features_student.feature_map)
        teacher = attention_map(b.features_teacher.feature_map)
        return (student - teacher).pow(2).sum(1).mean()


register_term("at", AttentionTransfer)
register_method("cfd_at", [("cfd", None), ("at", "alpha")])
