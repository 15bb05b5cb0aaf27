"""KL divergence between row-wise softmax distributions: the kernel of every RDD loss."""

import torch
import torch.nn.functional as F


def kl_rows(
    teacher_logits: torch.Tensor, student_logits: torch.Tensor, tau_t: float, tau_s: float
) -> torch.Tensor:
    """KL(softmax(teacher / tau_t) || softmax(student / tau_s)) over the last dim, mean over rows.

    Computed in at least float32 (half and bfloat16 inputs are upcast, float64 stays float64)
    so that autocast does not take the log-softmax into low precision.
    """
    dtype = torch.promote_types(teacher_logits.dtype, torch.float32)
    log_p_t = F.log_softmax(teacher_logits.to(dtype) / tau_t, dim=-1)
    log_p_s = F.log_softmax(student_logits.to(dtype) / tau_s, dim=-1)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=-1).mean()
