"""Inter-sample pixel-to-pixel relational distillation, IS_P2P (paper eq. 7).

`is_p2p_loss` computes the exact loss and its gradient one block of rows at a time, so that its
extra memory grows as block x N x A^2; `is_p2p_loss_dense` is the straightforward reference that
holds all N^2 A^2 relations (and their autograd graph) at once.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from rdd.losses.batch import DistillBatch
from rdd.losses.kl import kl_rows
from rdd.losses.pixels import unit_pixels
from rdd.losses.term import LossTerm, TermConfig

# Budget for the block's tiles. Besides them the loss holds three N*A*C tensors (student and teacher
# embeddings, gradient). On a CPU small tiles are also the fastest (they stay in cache).
DEFAULT_MEMORY_BUDGET = 32 * 2**20
# Tile-sized tensors alive at once in `_isp2p_forward` (relations, probabilities, their gradient and
# the temporaries of logsumexp/exp), measured at about 8.
_TILES_PER_ROW_BLOCK = 8


def is_p2p_loss_dense(map_s: torch.Tensor, map_t: torch.Tensor, tau: float) -> torch.Tensor:
    """Reference IS_P2P: match the (A, A) cross-image similarities R_ij = F_i F_j^T of every pair (i, j).

    L = (1/N^2) sum_ij mean_a KL(softmax(R^T_ij,a / tau) || softmax(R^S_ij,a / tau)).
    Builds all relations at once, so memory grows as N^2 A^2. With N = 1 this is II_P2P.
    """
    f_s, f_t = unit_pixels(map_s), unit_pixels(map_t)
    r_s = torch.einsum("iac,jbc->ijab", f_s, f_s)
    r_t = torch.einsum("iac,jbc->ijab", f_t, f_t)
    return kl_rows(r_t, r_s, tau, tau)


def choose_block_rows(n: int, a: int, itemsize: int, memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET) -> int:
    """Images per row block: the block's tiles (block x N x A^2 each) fit the budget, and there are
    at least ~8 blocks so that the symmetric half of the relations is mostly skipped."""
    per_image = _TILES_PER_ROW_BLOCK * n * a * a * itemsize
    return max(1, min(memory_budget_bytes // per_image, -(-n // 8)))


def is_p2p_loss(
    map_s: torch.Tensor,
    map_t: torch.Tensor,
    tau: float,
    block_rows: int | None = None,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET,
    shard: tuple[int, int] = (0, 1),
) -> torch.Tensor:
    """IS_P2P (paper eq. 7), exact, in memory block x N x A^2 instead of N^2 x A^2.

    Same value and gradient as `is_p2p_loss_dense`: with unit pixel embeddings F_i (A, C) of each
    image and R_ij = F_i F_j^T,
    L = (1/N^2) sum_ij mean_a KL(softmax(R^T_ij,a / tau) || softmax(R^S_ij,a / tau)).
    Rows of images are processed `block_rows` at a time (default: `choose_block_rows`, from
    `memory_budget_bytes`); the gradient with respect to the student's embeddings is accumulated
    during the forward pass. Extra memory: the tiles plus three N*A*C tensors. The teacher is a
    constant: `map_t` must not require a gradient (compute it under no_grad). Computed in at least
    float32 (float64 stays float64), also under autocast. `shard=(k, K)` computes only the row blocks
    k, k + K, ...: the K shards' values (and gradients) sum to the whole loss.
    """
    if map_t.requires_grad and torch.is_grad_enabled():
        raise ValueError("is_p2p_loss treats the teacher as a constant: detach map_t "
                         "(or use is_p2p_loss_dense for a gradient through the teacher)")
    dtype = torch.promote_types(torch.promote_types(map_s.dtype, map_t.dtype), torch.float32)
    n, _, h, w = map_s.shape
    a = h * w
    with torch.autocast(map_s.device.type, enabled=False):
        f_s = _unit_pixels_lean(map_s.to(dtype)).reshape(n * a, -1)
        with torch.no_grad():
            f_t = _unit_pixels_lean(map_t.to(dtype)).reshape(n * a, -1)
        if block_rows is None:
            block_rows = choose_block_rows(n, a, f_s.element_size(), memory_budget_bytes)
        return _ISP2P.apply(f_s, f_t, n, float(tau), int(block_rows), shard)


def _unit_pixels_lean(fmap: torch.Tensor) -> torch.Tensor:
    """`unit_pixels` as x * (1 / max(|x|, eps)): same values, a backward with fewer (N, A, C) temporaries."""
    x = fmap.flatten(2).transpose(1, 2)
    return x * torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(1e-12).reciprocal()


class _ISP2P(torch.autograd.Function):
    @staticmethod
    def forward(ctx, f_s, f_t, n, tau, block_rows, shard):
        loss, grad = _isp2p_forward(f_s, f_t, n, tau, block_rows, need_grad=ctx.needs_input_grad[0], shard=shard)
        ctx.save_for_backward(grad)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors  # computed in forward
        return grad * grad_output, None, None, None, None, None


def _isp2p_forward(flat_s: torch.Tensor, flat_t: torch.Tensor, n: int, tau: float, block_rows: int, need_grad: bool,
                   shard: tuple[int, int] = (0, 1)):
    """Loss and d loss / d flat_s of the unit embeddings flat_s, flat_t (N*A, C) of N images.

    The relation matrix F F^T over all N*A pixels is symmetric, so a row block I of images only
    computes its tile against images J >= I: softmax over the last dim gives the pairs (i, j), and
    over the second dim (for j past the block) the transposed pairs (j, i).
    """
    a = flat_s.shape[0] // n  # pixels per image
    if block_rows < 1:
        raise ValueError(f"block_rows must be >= 1, got {block_rows}")
    loss = flat_s.new_zeros(())
    grad = torch.zeros_like(flat_s) if need_grad else None
    for i0 in range(shard[0] * block_rows, n, shard[1] * block_rows):
        i1 = min(n, i0 + block_rows)
        b, m = i1 - i0, n - i0
        rows_s, cols_s = flat_s[i0 * a:i1 * a], flat_s[i0 * a:]
        # Tiles (b, A, m, A): [i, a, j, b] = <f_i,a, f_j,b> / tau for i in the block, j >= i0.
        x_s = torch.mm(rows_s / tau, cols_s.T).view(b, a, m, a)
        x_t = torch.mm(flat_t[i0 * a:i1 * a] / tau, flat_t[i0 * a:].T).view(b, a, m, a)
        kl, g = _kl_rows_sum(x_t, x_s, -1, need_grad)
        loss += kl
        if m > b:  # transposed pairs (j, i), j past the block: softmax over the block's pixels a
            kl, g_t = _kl_rows_sum(x_t[:, :, b:], x_s[:, :, b:], 1, need_grad)
            loss += kl
            if need_grad:
                g[:, :, b:] += g_t
                del g_t
        del x_s, x_t
        if need_grad:
            g = g.view(b * a, m * a)
            grad[i0 * a:i1 * a].addmm_(g, cols_s)
            grad[i0 * a:].addmm_(g.T, rows_s)
            del g
    scale = 1.0 / (n * n * a)
    loss *= scale
    if need_grad:
        grad *= scale / tau
    return loss, grad


def _kl_rows_sum(x_t: torch.Tensor, x_s: torch.Tensor, dim: int, need_grad: bool):
    """Sum over rows of KL(softmax(x_t) || softmax(x_s)) along `dim`, and (if need_grad) its
    gradient with respect to x_s, softmax(x_s) - softmax(x_t)."""
    lse_t = torch.logsumexp(x_t, dim, keepdim=True)
    lse_s = torch.logsumexp(x_s, dim, keepdim=True)
    p_t = torch.sub(x_t, lse_t).exp_()
    # KL = sum p_t (x_t - x_s) + lse_s - lse_t, since p_t sums to 1 along dim.
    total = torch.sum(p_t * (x_t - x_s)) + (lse_s - lse_t).sum()
    grad = torch.sub(x_s, lse_s).exp_().sub_(p_t) if need_grad else None
    return total, grad


def is_p2p_loss_global(map_s: torch.Tensor, map_t: torch.Tensor, tau: float, block_rows: int | None = None) -> torch.Tensor:
    """IS_P2P over the batch gathered from every process (distill.is_p2p_scope=global).

    The student's maps are gathered with autograd, the teacher's without; each process computes its
    shard of the row blocks of the gathered batch. Returned: world size x this process's shard, so
    that DDP's average of the gradients is the gradient of the whole batch's loss, and the mean of
    the returned values over processes is that loss. Without a process group this is `is_p2p_loss`.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return is_p2p_loss(map_s, map_t, tau, block_rows)
    world, rank = dist.get_world_size(), dist.get_rank()
    gathered_s = _GatherWithGrad.apply(map_s)
    with torch.no_grad():
        parts = [torch.empty_like(map_t) for _ in range(world)]
        dist.all_gather(parts, map_t.detach().contiguous())
    gathered_t = torch.cat(parts)
    if block_rows is None:
        n, _, h, w = gathered_s.shape
        block_rows = choose_block_rows(n, h * w, torch.promote_types(map_s.dtype, torch.float32).itemsize)
    return world * is_p2p_loss(gathered_s, gathered_t, tau, block_rows, shard=(rank, world))


class _GatherWithGrad(torch.autograd.Function):
    """Concatenate every process's tensor; backward sums the gradient over processes and returns this
    process's slice, so each process's loss reaches every process's inputs."""

    @staticmethod
    def forward(ctx, x):
        import torch.distributed as dist

        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.size = dist.get_rank(), x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        import torch.distributed as dist

        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.size:(ctx.rank + 1) * ctx.size]


class IS_P2P(LossTerm):
    """Eq. 7: pixel-to-pixel relations across every ordered pair of images in the batch: the images
    on this process (`local`, the public code) or the batch gathered over all processes (`global`)."""

    needs_classifier = True
    temperature_key = "distill.tau_is"

    def __init__(self, tau: float, scope: str = "local"):
        super().__init__()
        self.tau, self.scope = tau, scope
        self.loss = is_p2p_loss_global if scope == "global" else is_p2p_loss

    @classmethod
    def from_config(cls, config: TermConfig) -> "IS_P2P":
        return cls(config.distill.tau_is, config.distill.is_p2p_scope)

    def forward(self, b: DistillBatch) -> torch.Tensor:
        return self.loss(b.features_student.feature_map, b.features_teacher.feature_map, self.tau)
