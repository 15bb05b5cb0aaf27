"""The blocked IS_P2P (eq. 7) against the dense reference: value, gradient, dtypes and memory."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from rdd.losses import is_p2p_loss, is_p2p_loss_dense
from rdd.losses.is_p2p import choose_block_rows


def maps(n, c, h, w, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, c, h, w, generator=g, dtype=dtype) for _ in range(2)]


def loss_and_grad(fn, map_s, map_t, tau, **kw):
    map_s = map_s.detach().clone().requires_grad_(True)
    loss = fn(map_s, map_t, tau, **kw)
    (grad,) = torch.autograd.grad(loss, map_s)
    return loss.detach(), grad


# (N, C, H, W, tau, block_rows): blocks that divide N, that do not, 1, >= N and the default.
CASES = [
    (1, 5, 2, 3, 0.5, None),
    (2, 4, 1, 1, 1.0, 1),
    (3, 6, 2, 2, 0.5, 1),
    (5, 7, 2, 3, 0.5, 2),
    (5, 7, 2, 3, 0.1, 3),
    (6, 8, 3, 3, 1.0, 3),
    (7, 4, 2, 2, 0.2, 4),
    (4, 9, 3, 2, 0.7, 4),
    (4, 9, 3, 2, 0.7, 100),
    (8, 16, 4, 4, 0.5, None),
    (9, 3, 4, 4, 0.05, 2),
]


@pytest.mark.parametrize("n,c,h,w,tau,block", CASES)
def test_blocked_matches_dense_in_float64(n, c, h, w, tau, block):
    map_s, map_t = maps(n, c, h, w, seed=n * 31 + c)
    loss, grad = loss_and_grad(is_p2p_loss, map_s, map_t, tau, block_rows=block)
    ref_loss, ref_grad = loss_and_grad(is_p2p_loss_dense, map_s, map_t, tau)
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=0)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-5 * ref_grad.abs().max().item())


def test_every_block_size_gives_the_same_loss():
    map_s, map_t = maps(7, 6, 2, 3, seed=3)
    losses = [is_p2p_loss(map_s, map_t, 0.3, block_rows=b) for b in range(1, 9)]
    budget = [is_p2p_loss(map_s, map_t, 0.3, memory_budget_bytes=m) for m in (1, 2**12, 2**30)]
    for loss in losses + budget:
        torch.testing.assert_close(loss, losses[0], rtol=1e-12, atol=0)


@pytest.mark.parametrize("block", [1, 2, 3])
def test_gradcheck_reaches_the_student_map(block):
    map_s, map_t = maps(3, 4, 2, 2, seed=1)
    map_s.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda s: is_p2p_loss(s, map_t, 0.5, block_rows=block), (map_s,))


def test_float32_and_bfloat16_compute_in_float32():
    map_s, map_t = maps(4, 8, 3, 3, seed=2)
    ref = is_p2p_loss_dense(map_s, map_t, 0.5)
    loss32 = is_p2p_loss(map_s.float(), map_t.float(), 0.5, block_rows=3)
    assert loss32.dtype == torch.float32
    torch.testing.assert_close(loss32.double(), ref, rtol=1e-4, atol=0)
    s16, t16 = map_s.bfloat16().requires_grad_(True), map_t.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss16 = is_p2p_loss(s16, t16, 0.5, block_rows=3)
    assert loss16.dtype == torch.float32
    loss16.backward()
    assert s16.grad.dtype == torch.bfloat16 and torch.isfinite(s16.grad.float()).all()


def test_zero_when_student_equals_teacher_and_loss_times_weight():
    fmap = torch.randn(5, 8, 3, 3)
    assert abs(is_p2p_loss(fmap, fmap.clone(), 0.5, block_rows=2).item()) < 1e-7
    map_s, map_t = maps(4, 5, 2, 2, seed=4)
    _, grad = loss_and_grad(is_p2p_loss, map_s, map_t, 0.5, block_rows=3)
    scaled_s = map_s.clone().requires_grad_(True)
    (0.25 * is_p2p_loss(scaled_s, map_t, 0.5, block_rows=3)).backward()
    torch.testing.assert_close(scaled_s.grad, 0.25 * grad)


def test_no_grad_and_bad_arguments():
    map_s, map_t = maps(3, 4, 2, 2)
    with torch.no_grad():
        torch.testing.assert_close(is_p2p_loss(map_s, map_t, 0.5), is_p2p_loss_dense(map_s, map_t, 0.5))
    with pytest.raises(ValueError, match="block_rows"):
        is_p2p_loss(map_s, map_t, 0.5, block_rows=0)
    with pytest.raises(ValueError, match="teacher"):
        is_p2p_loss(map_s, map_t.requires_grad_(True), 0.5)


def test_block_size_follows_the_memory_budget():
    assert choose_block_rows(128, 64, 4, 32 * 2**20) == 2  # 8 tiles of 2 x 128 x 64^2 floats
    assert choose_block_rows(128, 64, 4, 1) == 1
    assert choose_block_rows(128, 64, 4, 2**40) == 16  # at least 8 row blocks
    assert choose_block_rows(5, 64, 4, 2**40) == 1
    assert choose_block_rows(128, 64, 8, 32 * 2**20) == 1


class LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an op produces."""

    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.numel = max(self.numel, t.numel())
        return out


def test_no_tensor_grows_as_n_squared_a_squared():
    n, c, h, w, block = 12, 4, 3, 3, 2
    a = h * w
    map_s, map_t = maps(n, c, h, w)
    for fn, kw in ((is_p2p_loss, {"block_rows": block}), (is_p2p_loss_dense, {})):
        with LargestTensor() as mode:
            loss_and_grad(fn, map_s, map_t, 0.5, **kw)
        if fn is is_p2p_loss:
            assert mode.numel <= max(block * n * a * a, n * a * c)
        else:
            assert mode.numel >= n * n * a * a


@pytest.mark.slow
@pytest.mark.parametrize("block_rows", [1, 2])
def test_global_scope_under_two_gloo_processes_equals_the_concatenated_batch(block_rows, tmp_path):
    import subprocess
    import sys

    from helpers import ROOT

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "tests/ddp_isp2p_worker.py"), str(tmp_path), str(block_rows)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                            env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT / "src")})
    assert result.returncode == 0, result.stderr[-2000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    g = torch.Generator().manual_seed(0)
    map_s = torch.randn(6, 5, 3, 3, generator=g, dtype=torch.float64).requires_grad_(True)
    map_t = torch.randn(6, 5, 3, 3, generator=g, dtype=torch.float64)
    reference = is_p2p_loss_dense(map_s, map_t, 0.7)
    reference.backward()
    # each rank returns world x its shard, so the mean over ranks is the whole batch's loss...
    torch.testing.assert_close((ranks[0]["loss"] + ranks[1]["loss"]) / 2, reference.detach(), rtol=1e-10, atol=0)
    # ...and DDP's average (1/world) of each rank's gradient is the whole batch's gradient on its images
    torch.testing.assert_close(torch.cat([r["grad"] for r in ranks]) / 2, map_s.grad, rtol=1e-8, atol=1e-12)
