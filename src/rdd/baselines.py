"""Training-free baselines: diffusers' DDIM, DPM-Solver and PNDM schedulers run on OUR schedule.

Mapping our continuous cosine VP schedule onto diffusers' discrete one (T = 1024 train steps; a
diffusers model's DiscreteSchedule keeps its own table and T, so these are then diffusers' own
schedulers on that model, which tests/test_diffusers_interop.py checks):
  diffusers index k in 0..T-1 stands for our t = (k + 1) / T, so alphas_cumprod[k] = alpha_{(k+1)/T}^2.
  k = T - 1 is t = 1 (pure noise), and "one step past k = 0" is t = 0, which DDIM and PNDM reach
  through final_alpha_cumprod = 1 (set_alpha_to_one) and DPM-Solver through final sigma 0.
  DDIM and DPM-Solver use timestep_spacing="trailing": N steps visit k = T - 1, T - 1 - T/N, ..., T/N - 1,
  i.e. our grid 1, (N-1)/N, ..., 1/N, then 0. When N does not divide T (DPM-Solver's 12) diffusers
  rounds the grid to multiples of 1/T.
  PNDM uses "leading" spacing, k = 0, T//N, ..., (N-1) T//N, like the original PNDM code
  (seq = range(0, T, T // N)): the noise is taken as z at t ~ (N-1)/N, so few steps do badly (4 steps
  diverged on a Fashion-MNIST teacher; 5+ were fine). PNDM cannot start at t = 1: its eps-space update
  divides by alpha_t, and its multistep combination of eps values then diverges (tried: NaN at
  alpha_1 = 0, |z| ~ 1e4 with a floor).
  PNDM does not clip its last update: a few pixels land slightly outside [-1, 1] (generate clamps).
  DPM-Solver works in log-SNR, which is -inf at alpha_1 = 0; it gets the floor diffusers itself puts
  on a zero-terminal-SNR schedule (alphas_cumprod[-1] = 2**-24, alpha = 2**-12). In data (x)
  prediction the first step hardly depends on it.

The model is called through `predict_x` (x-hat clipped to [-1, 1], as `ddim_sample` does), so every
scheduler's own clipping is off: clipping before the scheduler also keeps its eps consistent with the
clipped x-hat, which is what our DDIM step does.

What a "step" costs, in model evaluations (NFE):
  ddim        N steps = N NFE.
  dpm-solver  multistep DPM-Solver++(2M) in data (x) prediction: N steps = N NFE, since each step reuses
              the previous evaluation; the paper's "12 steps" row is 12 NFE.
  pndm        F-PNDM: the first 3 steps are Runge-Kutta steps of 4 evaluations each, then one per
              step (PLMS), so N steps = N + 9 NFE; the paper's "10 steps" row is 19 NFE.
"""
from __future__ import annotations

import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, PNDMScheduler

from rdd.diffusion import COSINE, Schedule, predict_x, schedule_of
from rdd.errors import RddError
from rdd.registry import SAMPLERS

T = 1024
ZERO_SNR_FLOOR = 2.0**-24


def nfe(kind: str, steps: int) -> int:
    """Model evaluations of one `steps`-step run of sampler `kind`."""
    return steps + 9 if kind == "pndm" else steps


def train_timesteps(schedule: Schedule) -> int:
    """T of the discrete table: a diffusers schedule's own, else 1024 samples of the continuous one."""
    return getattr(schedule, "num_train_timesteps", T)


def alphas_cumprod(floor: float = 0.0, schedule: Schedule = COSINE, timesteps: int | None = None) -> torch.Tensor:
    """alphas_cumprod[k] = alpha_{(k+1)/T}^2 in float64 (T = `timesteps`, default train_timesteps: on a
    DiscreteSchedule its own table, since its knots are t = (k + 1)/T), with the last entry raised to `floor`."""
    timesteps = timesteps or train_timesteps(schedule)
    alpha, _ = schedule.alpha_sigma(torch.arange(1, timesteps + 1, dtype=torch.float64) / timesteps)
    return (alpha**2).clamp_min(floor)


def betas_of(alpha_bar: torch.Tensor) -> torch.Tensor:
    """The betas of a diffusers scheduler whose cumprod(1 - betas) is `alpha_bar`."""
    return 1 - alpha_bar / torch.cat([alpha_bar.new_ones(1), alpha_bar[:-1]])


def make_scheduler(kind: str, schedule: Schedule = COSINE):
    ac = alphas_cumprod(ZERO_SNR_FLOOR if kind == "dpm-solver" else 0.0, schedule)
    common = dict(num_train_timesteps=len(ac), trained_betas=betas_of(ac).numpy())
    if kind == "ddim":
        scheduler = DDIMScheduler(**common, timestep_spacing="trailing", prediction_type="sample",
                                  clip_sample=False, set_alpha_to_one=True)
    elif kind == "dpm-solver":
        scheduler = DPMSolverMultistepScheduler(**common, timestep_spacing="trailing", prediction_type="sample",
                                                algorithm_type="dpmsolver++", solver_order=2, final_sigmas_type="zero")
    elif kind == "pndm":  # PNDM only takes eps (or v) predictions
        scheduler = PNDMScheduler(**common, timestep_spacing="leading", prediction_type="epsilon", set_alpha_to_one=True)
    else:
        raise RddError(f"unknown sampler '{kind}'; choose one of {', '.join(SAMPLERS)}")
    # diffusers rebuilds alphas_cumprod as a float32 cumprod of the betas, 1e-6 off after 1024 products:
    # put back the exact values (every step reads them; DPM-Solver's sigmas are derived in set_timesteps).
    scheduler.alphas_cumprod = ac
    return scheduler


def _check_steps(kind: str, steps: int, train_steps: int = T) -> None:
    if not 1 <= steps <= train_steps // 2:
        raise RddError(f"{kind} needs 1 to {train_steps // 2} steps, got {steps}")
    if kind == "ddim" and train_steps % steps:  # diffusers' DDIM steps back by T // N, off its own grid otherwise
        raise RddError(f"diffusers' DDIM needs a step count dividing {train_steps}, got {steps}; use rdd's own ddim sampler")
    if kind == "pndm" and steps < 4:  # its 3 Runge-Kutta warm-up steps need a 4th point
        raise RddError(f"pndm needs at least 4 steps, got {steps}")


@torch.no_grad()
def diffusers_sample(model, noise: torch.Tensor, steps: int, labels: torch.Tensor | None, kind: str,
                     clip: bool = True) -> torch.Tensor:
    """Sample from z_1 = noise with diffusers' `kind` scheduler for `steps` steps; returns x (unclipped).
    `clip` clips x-hat before the scheduler sees it (rdd's sampling); without it the scheduler gets the
    network's own prediction, converted, as in a plain diffusers loop."""
    schedule = schedule_of(model)
    scheduler = make_scheduler(kind, schedule)
    train_steps = train_timesteps(schedule)
    _check_steps(kind, steps, train_steps)
    scheduler.set_timesteps(steps)
    z = noise
    for k in scheduler.timesteps.tolist():  # plain ints: the scheduler's tables stay on the CPU
        t = torch.full((z.shape[0],), (k + 1) / train_steps, device=z.device)
        x_hat = predict_x(model, z, t, labels, clip)
        out = schedule.eps_from_x(z, t, x_hat) if kind == "pndm" else x_hat
        z = scheduler.step(out, k, z).prev_sample
    return z
