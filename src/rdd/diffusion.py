"""Diffusion core: the one place for schedule math, the DDIM step, samplers and the PD target.

Every schedule is variance-preserving on continuous t in [0, 1], data at t = 0 and noise at t = 1:
    z_t = alpha_t x + sigma_t eps,  alpha_t^2 + sigma_t^2 = 1.
`CosineSchedule` is rdd's own (paper §3.1; Salimans & Ho 2022): alpha_t = cos(pi t / 2).
`DiscreteSchedule` is a diffusers scheduler's alpha-bar table over T steps: t = (k + 1) / T stands for
diffusers' timestep k (k + 1 noising steps taken), t = 0 for clean data, and log alpha-bar is linear
in t between those knots (docs/diffusers.md). Networks return x-hat; a schedule turns diffusers'
epsilon and v predictions into x.

The module-level functions run on the cosine schedule; samplers, the PD target and the distillation
objective take the schedule of the model they run (`schedule_of`).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from tqdm.auto import tqdm

from rdd.errors import RddError

# A denoiser maps (z_t, t, labels) to x_hat; t is a (B,) tensor of continuous times.
Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]

PREDICTION_TYPES = ("sample", "epsilon", "v_prediction")  # diffusers' names for x, eps and v
# rdd's reading for eps networks on a table that ends near zero terminal SNR: eps where alpha_t >=
# EPS_READING_MIN_ALPHA, v below (only just before t = 1), so a student copy is its teacher wherever eps gives
# a usable x-hat and can still learn x-hat at t = 1. Not a diffusers prediction_type: the export's own pipeline reads it.
EPSILON_V = "epsilon_v"
READINGS = (*PREDICTION_TYPES, EPSILON_V)
TIME_SCALE = 1000.0  # rdd's networks see 1000 t, so their time embedding spans a 1000-step model's range
# The weight of a PD stage's squared x-error: max(SNR, 1), or SNR = alpha^2/sigma^2, which makes it the
# squared eps error of a student that reads its output as eps; epsilon_v: SNR where that reading is eps, max(SNR, 1) where v.
LOSS_WEIGHTS = ("truncated_snr", "snr", EPSILON_V)
# Below this alpha at t = 1, an eps reading multiplies eps-hat's error by more than 1,000 in x-hat at a
# student's first step (infinitely at zero terminal SNR): such a student reads v (rdd.networks.student_reading).
EPS_READING_MIN_ALPHA = 1e-3
# The scheduler keys that fix diffusers' alpha-bar table.
BETA_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "rescale_betas_zero_snr")


def _float(t) -> torch.Tensor:
    t = torch.as_tensor(t)
    return t if t.is_floating_point() else t.float()


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))


class Schedule:
    """alpha_t, sigma_t and the network's time input; every formula built on them is written once here."""

    config: dict  # what rebuilds it: schedule_from_config(config)

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def timestep(self, t: torch.Tensor) -> torch.Tensor:
        """The time value a network on this schedule is conditioned on."""
        raise NotImplementedError

    def __eq__(self, other) -> bool:
        return isinstance(other, Schedule) and self.config == other.config

    def diffuse(self, x: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """z_t = alpha_t x + sigma_t eps."""
        alpha, sigma = self.alpha_sigma(t)
        return _bcast(alpha, x) * x + _bcast(sigma, x) * eps

    def eps_from_x(self, z_t: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """eps_hat = (z_t - alpha_t x_hat) / sigma_t (undefined at t = 0)."""
        alpha, sigma = self.alpha_sigma(t)
        return (z_t - _bcast(alpha, z_t) * x) / _bcast(sigma, z_t)

    def v_from_x(self, z_t: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """v = alpha_t eps - sigma_t x."""
        alpha, sigma = self.alpha_sigma(t)
        return _bcast(alpha, z_t) * self.eps_from_x(z_t, t, x) - _bcast(sigma, z_t) * x

    def x_from_v(self, z_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """x = alpha_t z_t - sigma_t v."""
        alpha, sigma = self.alpha_sigma(t)
        return _bcast(alpha, z_t) * z_t - _bcast(sigma, z_t) * v

    def to_x(self, output: torch.Tensor, z_t: torch.Tensor, t: torch.Tensor, prediction_type: str) -> torch.Tensor:
        """x-hat from a network output of diffusers' `prediction_type`; epsilon divides by alpha_t."""
        if prediction_type == "sample":
            return output
        if prediction_type == "v_prediction":
            return self.x_from_v(z_t, t, output)
        alpha, sigma = self.alpha_sigma(t)
        if prediction_type == "epsilon":
            return (z_t - _bcast(sigma, z_t) * output) / _bcast(alpha, z_t)
        if prediction_type == EPSILON_V:
            eps_read = alpha >= EPS_READING_MIN_ALPHA
            # The eps branch divides by 1 where it is not taken, so its gradient there is 0, not nan.
            x_eps = (z_t - _bcast(sigma, z_t) * output) / _bcast(torch.where(eps_read, alpha, torch.ones_like(alpha)), z_t)
            return torch.where(_bcast(eps_read, z_t) > 0, x_eps, self.x_from_v(z_t, t, output))
        raise RddError(f"unknown prediction_type '{prediction_type}'; diffusers models predict one of {', '.join(PREDICTION_TYPES)}")

    def ddim_step(self, z_t: torch.Tensor, x_hat: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """Eq. 1: z_s = alpha_s x_hat + sigma_s (z_t - alpha_t x_hat) / sigma_t, for s < t."""
        alpha_s, sigma_s = self.alpha_sigma(s)
        return _bcast(alpha_s, z_t) * x_hat + _bcast(sigma_s, z_t) * self.eps_from_x(z_t, t, x_hat)

    def truncated_snr_weight(self, t: torch.Tensor) -> torch.Tensor:
        """omega_t = max(alpha_t^2 / sigma_t^2, 1): the truncated-SNR weight of the x-error."""
        return self.loss_weight(t, "truncated_snr")

    def loss_weight(self, t: torch.Tensor, kind: str) -> torch.Tensor:
        """omega_t of the squared x-error (LOSS_WEIGHTS): `snr` gives ||eps_hat - eps~||^2, since
        eps = (z - alpha x) / sigma moves by alpha/sigma per unit of x."""
        alpha, sigma = self.alpha_sigma(t)
        snr = alpha**2 / sigma.clamp_min(1e-12) ** 2
        if kind == "snr":
            return snr
        if kind == "truncated_snr":
            return torch.clamp(snr, min=1.0)
        if kind == EPSILON_V:
            return torch.where(alpha >= EPS_READING_MIN_ALPHA, snr, torch.clamp(snr, min=1.0))
        raise RddError(f"unknown loss weight '{kind}'; choose one of {', '.join(LOSS_WEIGHTS)}")


class CosineSchedule(Schedule):
    """rdd's schedule: alpha_t = cos(pi t/2), sigma_t = sin(pi t/2); networks see 1000 t."""

    config = {"kind": "cosine"}

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """alpha_1 is set to exactly 0."""
        t = _float(t)
        alpha = torch.where(t >= 1, torch.zeros_like(t), torch.cos(0.5 * math.pi * t))
        return alpha, torch.sin(0.5 * math.pi * t)

    def timestep(self, t: torch.Tensor) -> torch.Tensor:
        return t * TIME_SCALE


class DiscreteSchedule(Schedule):
    """A diffusers scheduler's alpha-bar table (linear, scaled_linear, squaredcos_cap_v2, ... betas) on
    continuous t: knot t = (k + 1) / T has alphas_cumprod[k], t = 0 has alpha-bar 1, and log alpha-bar is
    linear in t between knots (the continuous chain whose k-th beta acts evenly over its 1/T of time).
    A network on it sees diffusers' timestep t T - 1: its trained timesteps at the knots."""

    def __init__(self, scheduler_config: dict):
        from diffusers import DDPMScheduler  # the table exactly as diffusers computes it

        self.config = {"kind": "discrete", **{k: scheduler_config[k] for k in BETA_KEYS if k in scheduler_config}}
        try:
            table = DDPMScheduler(**{k: v for k, v in self.config.items() if k != "kind"}).alphas_cumprod
        except (NotImplementedError, ValueError, TypeError) as e:
            raise RddError(f"cannot read the scheduler's noise schedule: {str(e).splitlines()[0]}") from None
        self.num_train_timesteps = len(table)
        # A zero-terminal-SNR table ends at alpha-bar 0: the floor keeps its log finite.
        self.log_alpha_bar = torch.cat([torch.zeros(1, dtype=torch.float64), table.double().clamp_min(1e-20).log()])

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = _float(t)
        position = t.double().clamp(0, 1) * self.num_train_timesteps
        lo = position.floor().clamp(max=self.num_train_timesteps - 1)
        table = self.log_alpha_bar.to(t.device)
        alpha_bar = torch.lerp(table[lo.long()], table[lo.long() + 1], position - lo).exp()
        return alpha_bar.sqrt().to(t.dtype), (1 - alpha_bar).sqrt().to(t.dtype)

    def timestep(self, t: torch.Tensor) -> torch.Tensor:
        return t * self.num_train_timesteps - 1


def schedule_from_config(config: dict) -> Schedule:
    kind = config.get("kind")
    if kind == "cosine":
        return CosineSchedule()
    if kind == "discrete":
        return DiscreteSchedule(config)
    raise RddError(f"unknown schedule kind {kind!r}; rdd knows cosine and discrete")


COSINE = CosineSchedule()


def schedule_of(model) -> Schedule:
    """A model's own schedule; a bare function denoiser runs on the cosine one."""
    return getattr(model, "schedule", None) or COSINE


def time_grid(steps: int, device=None) -> torch.Tensor:
    """The N-step grid 1, (N-1)/N, ..., 1/N, 0."""
    if steps < 1:
        raise RddError(f"step count must be a positive integer, got {steps}")
    return torch.arange(steps, -1, -1, device=device, dtype=torch.float32) / steps


def halving_chain(teacher_steps: int, target_steps: int = 1) -> list[int]:
    """The chain teacher_steps -> ... -> target_steps; a count that does not halve is refused in one line."""
    if teacher_steps < 2 or target_steps < 1 or teacher_steps <= target_steps:
        raise RddError(f"cannot distil {teacher_steps} steps to {target_steps}: the teacher needs more steps than the student")
    chain = [teacher_steps]
    while chain[-1] > target_steps:
        if chain[-1] % 2:
            raise RddError(
                f"step count {chain[-1]} does not halve cleanly on the way from {teacher_steps} to {target_steps}; "
                "use powers of two such as 8 -> 4 -> 2 -> 1"
            )
        chain.append(chain[-1] // 2)
    if chain[-1] != target_steps:
        raise RddError(f"{teacher_steps} steps do not reach {target_steps} by halving; pick a target in {chain}")
    return chain


def predict_x(model: Denoiser, z_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None, clip: bool = True) -> torch.Tensor:
    t = t.to(z_t.device).expand(z_t.shape[0]) if t.dim() == 0 else t
    x_hat = model(z_t, t, labels)
    return x_hat.clamp(-1, 1) if clip else x_hat


def teacher_two_step_target(teacher: Denoiser, z_t: torch.Tensor, t: torch.Tensor, teacher_steps: int,
                            labels: torch.Tensor | None = None, clip: bool = True) -> torch.Tensor:
    """The PD target x~ (paper §3.1, eq. 2): two teacher DDIM steps t -> t - 1/N -> t - 2/N, then
    x~ = (z_t'' - (sigma_t''/sigma_t) z_t) / (alpha_t'' - (sigma_t''/sigma_t) alpha_t),
    the x for which one student DDIM step from z_t lands exactly on z_t''.

    `clip` clips the teacher's x-hat to [-1, 1] in both steps, as the DDIM sampler does; the public
    code does not clip here (distill.teacher_clip, docs/fidelity.md). Runs on the teacher's schedule."""
    schedule = schedule_of(teacher)
    dt = 1.0 / teacher_steps
    t1, t2 = (t - dt).clamp_min(0), (t - 2 * dt).clamp_min(0)
    z1 = schedule.ddim_step(z_t, predict_x(teacher, z_t, t, labels, clip), t, t1)
    z2 = schedule.ddim_step(z1, predict_x(teacher, z1, t1, labels, clip), t1, t2)
    alpha_t, sigma_t = schedule.alpha_sigma(t)
    alpha_2, sigma_2 = schedule.alpha_sigma(t2)
    ratio = sigma_2 / sigma_t
    return (z2 - _bcast(ratio, z_t) * z_t) / _bcast(alpha_2 - ratio * alpha_t, z_t)


@torch.no_grad()
def ddim_sample(model: Denoiser, noise: torch.Tensor, steps: int, labels: torch.Tensor | None = None,
                progress: bool = False) -> torch.Tensor:
    """N-step deterministic DDIM from z_1 = noise on the grid 1, (N-1)/N, ..., 0 of the model's schedule."""
    schedule = schedule_of(model)
    grid = time_grid(steps, noise.device)
    z = noise
    for i in tqdm(range(steps), desc=f"DDIM {steps} steps", disable=not progress, leave=False):
        t, s = grid[i].expand(z.shape[0]), grid[i + 1].expand(z.shape[0])
        z = schedule.ddim_step(z, predict_x(model, z, t, labels), t, s)
    return z


def sample_student_times(batch: int, student_steps: int, generator=None, device=None) -> torch.Tensor:
    """Uniform draw from the student's grid points {1/N_s, ..., 1} (paper §3.1)."""
    i = torch.randint(1, student_steps + 1, (batch,), generator=generator, device=device)
    return i.float() / student_steps
