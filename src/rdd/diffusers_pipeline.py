"""The custom diffusers pipeline of `rdd export --format diffusers`, copied into the folder as pipeline.py.

It imports only torch and diffusers, so the folder loads where rdd is not installed:
    DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
It repeats rdd's sampler (rdd.diffusion: the schedule, reading the output as x, the DDIM step) in a
few lines; tests/test_diffusers_interop.py checks that both give the same images from the same noise.
"""
from __future__ import annotations

import math

import torch
from diffusers import DDIMScheduler, DiffusionPipeline, ImagePipelineOutput, UNet2DModel
from diffusers.utils.torch_utils import randn_tensor

DEFAULT_STEPS = 64  # a teacher's default; a distilled student samples at its own step count
EPS_READING_MIN_ALPHA = 1e-3  # rdd.diffusion's: the epsilon_v reading reads eps where alpha_t is at least this, v below


def draw_labels(classes: int, n: int, generator) -> torch.Tensor:
    """Class labels drawn after the noise from the same generator(s), as rdd's noise_batches does."""
    if isinstance(generator, list):
        return torch.cat([torch.randint(0, classes, (1,), generator=g, device=g.device) for g in generator])
    return torch.randint(0, classes, (n,), generator=generator, device=generator.device if generator else "cpu")


class RddDDIMPipeline(DiffusionPipeline):
    """Deterministic DDIM on continuous t in [0, 1], from noise at t = 1 to data at t = 0, in N equal steps.

    `schedule` is "cosine" (rdd's own models: alpha_t = cos(pi t / 2), the UNet sees 1000 t) or "discrete"
    (the scheduler's alpha-bar table: t = (k + 1) / T is timestep k, log alpha-bar is linear in t between,
    the UNet sees t T - 1). The UNet's output is read as the scheduler's prediction_type and turned into
    x-hat, clipped to [-1, 1]. `sampling_steps` is the step count a student was distilled for (None: a teacher).
    """

    model_cpu_offload_seq = "unet"

    def __init__(self, unet: UNet2DModel, scheduler: DDIMScheduler, schedule: str = "discrete",
                 sampling_steps: int | None = None):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)
        self.register_to_config(schedule=schedule, sampling_steps=sampling_steps)

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.config.schedule == "cosine":
            alpha = torch.where(t >= 1, torch.zeros_like(t), torch.cos(0.5 * math.pi * t))
            return alpha, torch.sin(0.5 * math.pi * t)
        table = self.scheduler.alphas_cumprod.double()
        steps = len(table)
        log_alpha_bar = torch.cat([table.new_zeros(1), table.clamp_min(1e-20).log()]).to(t.device)
        position = t.double().clamp(0, 1) * steps
        lo = position.floor().clamp(max=steps - 1)
        alpha_bar = torch.lerp(log_alpha_bar[lo.long()], log_alpha_bar[lo.long() + 1], position - lo).exp()
        return alpha_bar.sqrt().to(t.dtype), (1 - alpha_bar).sqrt().to(t.dtype)

    def timestep(self, t: torch.Tensor) -> torch.Tensor:
        if self.config.schedule == "cosine":
            return t * 1000.0
        return t * len(self.scheduler.alphas_cumprod) - 1

    def predict_x(self, z: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor:
        out = self.unet(z, self.timestep(t), class_labels=class_labels).sample
        alpha, sigma = (v.to(z.dtype).view(-1, 1, 1, 1) for v in self.alpha_sigma(t))
        kind = self.scheduler.config.prediction_type
        if kind == "epsilon_v":  # rdd's reading for eps networks whose table ends near zero terminal SNR
            eps_read = alpha >= EPS_READING_MIN_ALPHA
            out = torch.where(eps_read, (z - sigma * out) / torch.where(eps_read, alpha, torch.ones_like(alpha)),
                              alpha * z - sigma * out)
        elif kind == "v_prediction":
            out = alpha * z - sigma * out
        elif kind == "epsilon":
            out = (z - sigma * out) / alpha
        elif kind != "sample":
            raise ValueError(f"unknown prediction_type {kind!r}")
        return out.clamp(-1, 1)

    def ddim_step(self, z: torch.Tensor, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        alpha_t, sigma_t = (v.to(z.dtype).view(-1, 1, 1, 1) for v in self.alpha_sigma(t))
        alpha_s, sigma_s = (v.to(z.dtype).view(-1, 1, 1, 1) for v in self.alpha_sigma(s))
        return alpha_s * x + sigma_s * ((z - alpha_t * x) / sigma_t)

    @torch.no_grad()
    def __call__(self, batch_size: int = 1, num_inference_steps: int | None = None,
                 generator: torch.Generator | list[torch.Generator] | None = None, latents: torch.Tensor | None = None,
                 class_labels: torch.Tensor | None = None, output_type: str = "pil", return_dict: bool = True):
        """Images in [0, 1]. Noise is drawn first from `generator`, then class labels (class-conditional UNets,
        when `class_labels` is not given), as `rdd sample` does: the same seed gives the same images."""
        steps = num_inference_steps or self.config.sampling_steps or DEFAULT_STEPS
        size = self.unet.config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        if latents is None:
            latents = randn_tensor((batch_size, self.unet.config.in_channels, *size), generator=generator,
                                   device=self.device, dtype=self.unet.dtype)
        z = latents.to(self.device, self.unet.dtype)
        classes = self.unet.config.num_class_embeds
        if classes and class_labels is None:
            class_labels = draw_labels(classes, z.shape[0], generator)
        if class_labels is not None:
            class_labels = torch.as_tensor(class_labels, device=self.device)
        grid = torch.arange(steps, -1, -1, device=self.device, dtype=torch.float32) / steps
        for i in self.progress_bar(range(steps)):
            t, s = grid[i].expand(z.shape[0]), grid[i + 1].expand(z.shape[0])
            z = self.ddim_step(z, self.predict_x(z, t, class_labels), t, s)
        images = (z.clamp(-1, 1) + 1) / 2
        if output_type == "pt":
            output = images
        else:
            output = images.cpu().permute(0, 2, 3, 1).float().numpy()
            if output_type == "pil":
                output = self.numpy_to_pil(output)
        return ImagePipelineOutput(images=output) if return_dict else (output,)
