import math

import pytest
import torch

from rdd import diffusion as D
from rdd.errors import RddError


def test_schedule_is_variance_preserving_cosine():
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    alpha, sigma = D.COSINE.alpha_sigma(t)
    assert torch.allclose(alpha**2 + sigma**2, torch.ones_like(t), atol=1e-12)
    assert torch.allclose(alpha[1:-1], torch.cos(math.pi * t[1:-1] / 2))
    assert alpha[-1] == 0 and sigma[0] == 0 and sigma[-1] == 1


def test_conversions_round_trip():
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(4, 1, 8, 8, generator=g, dtype=torch.float64), torch.randn(4, 1, 8, 8, generator=g, dtype=torch.float64)
    t = torch.tensor([0.1, 0.4, 0.7, 0.95], dtype=torch.float64)
    z = D.COSINE.diffuse(x, t, eps)
    assert torch.allclose(D.COSINE.eps_from_x(z, t, x), eps)
    v = D.COSINE.v_from_x(z, t, x)
    alpha, sigma = D.COSINE.alpha_sigma(t)
    assert torch.allclose(v, alpha.view(-1, 1, 1, 1) * eps - sigma.view(-1, 1, 1, 1) * x)
    assert torch.allclose(D.COSINE.x_from_v(z, t, v), x)


def test_ddim_recovers_x_exactly_with_the_true_x_model():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 1, 8, 8, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(3, 1, 8, 8, generator=g, dtype=torch.float64)
    for t0 in (1.0, 0.6):
        z_t = D.COSINE.diffuse(x, torch.full((3,), t0, dtype=torch.float64), eps)
        oracle = lambda z, t, labels: x  # noqa: E731
        out = D.ddim_sample(oracle, z_t, 8) if t0 == 1.0 else D.COSINE.ddim_step(z_t, x, torch.full((3,), t0), torch.zeros(3))
        assert torch.allclose(out, x, atol=1e-12)
        # every intermediate state stays on x's trajectory: z_s = alpha_s x + sigma_s eps
        s = torch.full((3,), t0 / 2, dtype=torch.float64)
        assert torch.allclose(D.COSINE.ddim_step(z_t, x, torch.full((3,), t0, dtype=torch.float64), s), D.COSINE.diffuse(x, s, eps), atol=1e-12)


def test_constant_model_gives_closed_form_at_every_step():
    c = torch.full((2, 1, 4, 4), 0.3, dtype=torch.float64)
    z = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    grid = D.time_grid(4).double()
    for i in range(4):
        t, s = grid[i].expand(2), grid[i + 1].expand(2)
        eps_hat = D.COSINE.eps_from_x(z, t, c)
        z_next = D.COSINE.ddim_step(z, c, t, s)
        alpha_s, sigma_s = D.COSINE.alpha_sigma(s)
        assert torch.allclose(z_next, alpha_s.view(-1, 1, 1, 1) * c + sigma_s.view(-1, 1, 1, 1) * eps_hat, atol=1e-12)
        z = z_next
    assert torch.allclose(z, c)


def test_sampler_clips_x_hat_and_passes_labels():
    seen = []

    def model(z, t, labels):
        seen.append(labels)
        return torch.full_like(z, 5.0)

    labels = torch.tensor([3, 7])
    out = D.ddim_sample(model, torch.randn(2, 1, 4, 4), 2, labels)
    assert torch.allclose(out, torch.ones_like(out))  # x_hat = 5 was clipped to 1
    assert all(l is labels for l in seen) and len(seen) == 2


def test_time_grid_and_pd_target_lands_on_two_teacher_steps():
    assert torch.allclose(D.time_grid(4), torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))
    g = torch.Generator().manual_seed(3)
    weights = torch.randn(1, 1, 8, 8, generator=g, dtype=torch.float64)
    teacher = lambda z, t, labels: torch.tanh(z * weights + t.view(-1, 1, 1, 1))  # noqa: E731
    z_t = torch.randn(5, 1, 8, 8, generator=g, dtype=torch.float64)
    for t0 in (1.0, 0.5, 0.25):  # 0.25 with N=8 reaches t'' = 0
        t = torch.full((5,), t0, dtype=torch.float64)
        x_tilde = D.teacher_two_step_target(teacher, z_t, t, 8)
        t1, t2 = t - 1 / 8, t - 2 / 8
        z1 = D.COSINE.ddim_step(z_t, teacher(z_t, t, None).clamp(-1, 1), t, t1)
        z2 = D.COSINE.ddim_step(z1, teacher(z1, t1, None).clamp(-1, 1), t1, t2)
        assert torch.allclose(D.COSINE.ddim_step(z_t, x_tilde, t, t2), z2, atol=1e-10)


def test_truncated_snr_weight():
    t = torch.tensor([0.1, 0.5, 0.9])
    alpha, sigma = D.COSINE.alpha_sigma(t)
    assert torch.allclose(D.COSINE.truncated_snr_weight(t), torch.clamp(alpha**2 / sigma**2, min=1))
    assert D.COSINE.truncated_snr_weight(torch.tensor([0.5]))[0] == pytest.approx(1.0)


def test_step_counts_must_halve():
    assert D.halving_chain(8, 1) == [8, 4, 2, 1]
    with pytest.raises(RddError, match="does not halve"):
        D.halving_chain(6, 1)
    with pytest.raises(RddError):
        D.halving_chain(2, 4)
