"""Train a small Fashion-MNIST 16x16 DDPM the way a diffusers user would, and save it as a pipeline folder.

A plain diffusers loop (UNet2DModel, DDPMScheduler with linear betas unless told otherwise, AdamW, EMA of the weights, MSE
on the scheduler's target): nothing of rdd's training runs here. rdd's data loader only supplies the
images, so that they are the ones rdd's evaluation network was trained on (bilinear 28 -> 16, [-1, 1]);
the last 10,000 training images are held out (rdd's `val` split) and never seen.

    python scripts/train_diffusers_teacher.py --out runs/teachers/eps                          # epsilon, linear betas
    python scripts/train_diffusers_teacher.py --prediction-type v_prediction --out runs/teachers/v
    python scripts/train_diffusers_teacher.py --prediction-type v_prediction --zero-snr --out runs/teachers/zero-snr
    python scripts/train_diffusers_teacher.py --beta-schedule squaredcos_cap_v2 --out runs/teachers/cosine  # improved-DDPM cosine

It resumes from OUT/train_state.pt after an interruption and writes OUT/ as a DDPMPipeline folder
(model_index.json, unet/, scheduler/) at the end; assets/fmnist/eps_teacher/ was made by the first line.
"""
from __future__ import annotations

import argparse
import copy
import os
from pathlib import Path

import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

from rdd.config import DataConfig
from rdd.data import load_dataset

HOLDOUT = 10_000  # rdd's val split: the last 10,000 training images
# 0.18M parameters (0.7 MB): small enough that a 2-core CPU trains it in minutes and distils it in a few more.
UNET = dict(sample_size=16, in_channels=1, out_channels=1, block_out_channels=(16, 32), layers_per_block=1,
            down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=16, norm_num_groups=8)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="the pipeline folder to write")
    p.add_argument("--prediction-type", default="epsilon", choices=["epsilon", "v_prediction", "sample"])
    p.add_argument("--zero-snr", action="store_true", help="rescale the betas to zero terminal SNR")
    p.add_argument("--beta-schedule", default="linear", choices=["linear", "scaled_linear", "squaredcos_cap_v2"],
                   help="diffusers' beta schedule (squaredcos_cap_v2: the improved-DDPM cosine, alpha_1 = 4.9e-5)")
    p.add_argument("--iterations", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-every", type=int, default=500)
    return p.parse_args()


def training_target(scheduler: DDPMScheduler, x, noise, steps):
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    return scheduler.get_velocity(x, noise, steps) if kind == "v_prediction" else x


def save_state(path: Path, **state) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # a kill mid-write leaves the previous state


def main() -> None:
    args = parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    scheduler = DDPMScheduler(beta_schedule=args.beta_schedule, prediction_type=args.prediction_type,
                              rescale_betas_zero_snr=args.zero_snr, clip_sample=True)
    unet = UNet2DModel(**UNET)
    ema = copy.deepcopy(unet).requires_grad_(False)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=0.0)
    images = load_dataset(DataConfig(holdout=HOLDOUT), "train")
    images = images.dataset.tensors[0][: len(images)]  # the first 50,000 images, as a tensor
    generator, step = torch.Generator().manual_seed(args.seed), 0
    state_path = out / "train_state.pt"
    if state_path.is_file():
        state = torch.load(state_path, weights_only=True)
        unet.load_state_dict(state["unet"]), ema.load_state_dict(state["ema"]), optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        step = state["step"]
    warmup = 200
    while step < args.iterations:
        for group in optimizer.param_groups:  # linear warm-up, then constant
            group["lr"] = args.lr * min(1.0, (step + 1) / warmup)
        x = images[torch.randint(0, len(images), (args.batch_size,), generator=generator)]
        noise = torch.randn(x.shape, generator=generator)
        steps = torch.randint(0, scheduler.config.num_train_timesteps, (args.batch_size,), generator=generator)
        prediction = unet(scheduler.add_noise(x, noise, steps), steps).sample
        loss = torch.nn.functional.mse_loss(prediction, training_target(scheduler, x, noise, steps))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():
            for e, p in zip(ema.parameters(), unet.parameters()):
                e.lerp_(p, 1 - args.ema_decay)
        step += 1
        if step % 100 == 0:
            print(f"step {step} loss {loss.item():.4f}", flush=True)
        if step % args.save_every == 0 or step == args.iterations:
            save_state(state_path, unet=unet.state_dict(), ema=ema.state_dict(), optimizer=optimizer.state_dict(),
                       generator=generator.get_state(), step=step)
    DDPMPipeline(unet=ema, scheduler=scheduler).save_pretrained(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
