"""The public checkpoint people have: DDPM's CIFAR-10 U-Net (google/ddpm-cifar10-32's architecture and scheduler)
as a diffusers teacher, distilled 8 -> 4 -> 2 -> 1 with RDD through a full-width CIFAR-10 DenseNet-201, then
exported and sampled. Random weights throughout (nothing is downloaded): the run checks that every step works
at this size and what it costs, not the quality.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/ddpm_cifar10_teacher.py --out runs/ddpm-cifar10 --batch 2

--data: a CIFAR-10 folder holding torchvision's cifar-10-batches-py; without it the script writes a small fake one
(tests/helpers.write_fake_cifar10: Fashion-MNIST items tinted into RGB) under OUT. Writes OUT/summary.json and
prints each command with its wall time and the peak RSS of its process; benchmarks/ddpm_cifar10_teacher.md
records a run.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

# google/ddpm-cifar10-32's unet/config.json and scheduler (Ho et al. 2020's CIFAR-10 model, in diffusers)
DDPM_CIFAR10_UNET = dict(
    sample_size=32, in_channels=3, out_channels=3, layers_per_block=2, block_out_channels=(128, 256, 256, 256),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), act_fn="silu", attention_head_dim=None,
    center_input_sample=False, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1, mid_block_scale_factor=1,
    norm_eps=1e-6, norm_num_groups=32, time_embedding_type="positional")
DDPM_CIFAR10_SCHEDULER = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                              prediction_type="epsilon", clip_sample=True, variance_type="fixed_large")
DDPM_CIFAR10_PARAMETERS = 35_746_307


def write_teacher(folder: Path) -> int:
    import torch
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(**DDPM_CIFAR10_UNET)
    count = sum(p.numel() for p in unet.parameters())
    assert count == DDPM_CIFAR10_PARAMETERS, count
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(**DDPM_CIFAR10_SCHEDULER)).save_pretrained(folder)
    return count


def write_classifier(path: Path, data: Path) -> int:
    """A DenseNet-201 with the CIFAR stem, random weights, saved through rdd's classifier save path."""
    import torch

    from rdd.classifier import save_classifier
    from rdd.classifier_nets import build_classifier
    from rdd.config import load_config

    torch.manual_seed(0)
    cfg = load_config("configs/cifar10/classifier.yaml", [f"data.root={data}"])
    model = build_classifier("densenet201", 3, 10, stem=cfg.classifier.stem)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_classifier(model, cfg, "densenet201", 0.0, path)
    return sum(p.numel() for p in model.parameters())


def timed(args: list[str], log: list[dict]) -> None:
    """Runs `rdd ARGS`; logs its wall time and the largest peak RSS of any child so far (ru_maxrss is a maximum)."""
    start = time.time()
    result = subprocess.run([sys.executable, "-m", "rdd.cli", *args], capture_output=True, text=True)
    log.append({"command": "rdd " + " ".join(args), "seconds": round(time.time() - start, 1), "returncode": result.returncode,
                "peak_rss_mib_so_far": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
                "stdout": result.stdout.strip().splitlines()[-12:]})
    print(json.dumps(log[-1]), flush=True)
    if result.returncode:
        raise SystemExit(result.stderr[-3000:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", help="a CIFAR-10 folder holding cifar-10-batches-py (default: a fake one written under OUT)")
    p.add_argument("--out", default="runs/ddpm-cifar10")
    p.add_argument("--batch", type=int, default=8, help="distillation batch (the paper: 32 per GPU)")
    args = p.parse_args()
    out = Path(args.out)
    if args.data is None:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from helpers import write_fake_cifar10
        args.data = str(write_fake_cifar10(out / "fake-cifar10", train=500, test=100))
    summary = {"unet_parameters": write_teacher(out / "teacher"),
               "classifier_parameters": write_classifier(out / "classifier" / "classifier.pt", Path(args.data)), "commands": []}
    settings = [f"data.root={args.data}", f"classifier.checkpoint={out / 'classifier' / 'classifier.pt'}", "distill.teacher_steps=8",
                "distill.iterations=[2,2,2]", f"train.batch_size={args.batch}", "train.num_grid=4", "train.log_every=1",
                "data.num_workers=0"]
    timed(["progressive", "--config", "configs/cifar10/distill.yaml", "--method", "rdd", "--teacher", str(out / "teacher"),
           "--to", "1", "--out", str(out / "rdd"), "--set", *settings], summary["commands"])
    student = out / "rdd" / "stage-2to1" / "model.pt"
    timed(["export", "--ckpt", str(student), "--out", str(out / "exported")], summary["commands"])
    timed(["sample", "--ckpt", str(student), "--num", "16", "--out", str(out / "student.png"), "--npz", str(out / "student.npz")],
          summary["commands"])
    timed(["sample", "--ckpt", str(out / "exported"), "--steps", "1", "--num", "16", "--out", str(out / "exported.png")],
          summary["commands"])
    summary["student_reading"] = [json.loads((out / "rdd" / f"stage-{n}to{n // 2}" / "run.json").read_text())["meta"]["student_reading"]
                                  for n in (8, 4, 2)]
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"wrote {out / 'summary.json'}")


if __name__ == "__main__":
    main()
