"""FLOPs of every kind of step of the paper's protocols, and the GPU-hours of the whole protocol they add up to.

Counts with torch.utils.flop_counter.FlopCounterMode (a multiply-add is 2 FLOPs; matmuls, convolutions and
attention, forward and backward) on the paper-width networks with random weights, on the CPU:
- base step: the U-Net's truncated-SNR loss, forward + backward;
- classifier step: DenseNet-201 (CIFAR stem), cross-entropy, forward + backward;
- distillation step of pd, rcfd and rdd: the teacher's two DDIM steps, the student forward + backward, the
  classifier on both and its backward, and the losses (rdd.methods.DistillationObjective);
- one sampling step (one U-Net forward) and one Inception-v3 forward (FID/IS).
Each is counted at two batch sizes and fitted as fixed + per-image FLOPs (the M_P2P head and queue do not grow
with the batch), then evaluated at the configs' batch. The plan multiplies by each stage's iterations
(configs/{cifar10,imagenet64}/benchmark.yaml and the configs it names) and divides by an assumed throughput.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/paper_scale.py --out benchmarks/paper_scale_flops.json
    PYTHONPATH=src python benchmarks/paper_scale.py --plan benchmarks/paper_scale_flops.json   # the GPU-hour table

The plan's assumption (--tflops): one A100-80GB sustaining 40 % of its 156 TFLOP/s TF32 tensor-core peak
(62 TFLOP/s) on these fp32 convolution-heavy networks (PyTorch runs fp32 convolutions on TF32 by default).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from rdd.baselines import nfe as calls
from rdd.benchmark import load_benchmark_config
from rdd.classifier import build_classifier
from rdd.config import load_config
from rdd.data import class_count
from rdd.diffusion import halving_chain
from rdd.losses.truncated_snr import TruncatedSNRLoss
from rdd.methods import DistillationObjective, needs_classifier
from rdd.networks import build_model, student_copy

ROOT = Path(__file__).resolve().parent.parent
BATCHES = (2, 4)  # two batch sizes: FLOPs = fixed + per_image * batch


def counted(step) -> int:
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def fitted(make_step) -> dict:
    """{'fixed', 'per_image'} from counts at two batch sizes."""
    (n1, f1), (n2, f2) = [(n, counted(make_step(n))) for n in BATCHES]
    per_image = (f2 - f1) / (n2 - n1)
    return {"fixed": f1 - per_image * n1, "per_image": per_image}


def images(cfg, n: int) -> torch.Tensor:
    return torch.rand(n, cfg.data.channels, cfg.data.resolution, cfg.data.resolution) * 2 - 1


def labels(cfg, n: int):
    return torch.randint(0, cfg.model.num_classes, (n,)) if cfg.model.num_classes else None


def step_flops(dataset: str) -> dict:
    """FLOPs (fixed + per image) of every kind of step of one data set's protocol."""
    bc = load_benchmark_config(ROOT / "configs" / dataset / "benchmark.yaml", dry_run=True)
    base = load_config(bc.teacher_config)
    unet = build_model(base.model, base.data).train()
    classifier = build_classifier("densenet201", base.data.channels, class_count(base.data)).train()
    out = {"unet_parameters": sum(p.numel() for p in unet.parameters()),
           "classifier_parameters": sum(p.numel() for p in classifier.parameters())}

    def base_step(n):
        return lambda: TruncatedSNRLoss()(unet, images(base, n), labels(base, n))[0].backward()

    def classifier_step(n):
        return lambda: F.cross_entropy(classifier(images(base, n)).logits, torch.randint(0, class_count(base.data), (n,))).backward()

    def sample_step(n):
        return lambda: unet.eval()(images(base, n), torch.full((n,), 0.5), labels(base, n))

    out["base"], out["classifier"] = fitted(base_step), fitted(classifier_step)
    with torch.no_grad():
        out["sampling forward"] = fitted(sample_step)
    distill = load_config(bc.distill_config)
    distill.model, distill.data = base.model, base.data
    frozen = classifier.eval().requires_grad_(False)
    for method in ("pd", "rcfd", "rdd"):
        distill.distill.method = method
        objective = DistillationObjective(distill, unet.eval(), 8, distill.distill.tau_cfd[0], frozen if needs_classifier(method) else None)
        student = student_copy(unet).train().requires_grad_(True)

        def distill_step(n, objective=objective, student=student):
            return lambda: objective(student, images(base, n), labels(base, n))[0].backward()

        out[f"distill {method}"] = fitted(distill_step)
    out["inception forward"] = inception_flops()
    return out


def inception_flops() -> dict:
    from rdd.metrics import Uint8Images, write_random_inception
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    path = write_random_inception(Path("/tmp") / "paper_scale_inception.pth")
    net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=str(path))

    def forward(n):
        batch = torch.stack([Uint8Images(torch.rand(n, 3, 32, 32) * 2 - 1)[i] for i in range(n)])
        return lambda: net(batch)

    with torch.no_grad():
        return fitted(forward)


TRAINING_IMAGES = {"cifar10": 50_000, "imagenet64": 1_281_167}


def plan_rows(dataset: str, flops: dict) -> list[list]:
    """(stage, iterations, global batch, FLOPs) of the whole protocol at the paper's iteration counts."""
    bc = load_benchmark_config(ROOT / "configs" / dataset / "benchmark.yaml", dry_run=True)
    base, classifier = load_config(bc.teacher_config), load_config(bc.classifier_config)
    chain_batch = load_config(bc.distill_config).train.batch_size
    pd_batch = load_config(bc.pd_config).train.batch_size

    def cost(kind, iterations, batch):
        return iterations * (flops[kind]["fixed"] * bc.paper_gpus + flops[kind]["per_image"] * batch)

    images = (TRAINING_IMAGES[dataset] - classifier.data.holdout) * classifier.classifier.epochs
    rows = [["base model", base.train.iterations, base.train.batch_size, cost("base", base.train.iterations, base.train.batch_size)],
            ["classifier", f"{classifier.classifier.epochs} epochs", classifier.classifier.batch_size,
             flops["classifier"]["per_image"] * images]]
    halvings = len(halving_chain(bc.teacher_steps, bc.pd_to)) - 1
    pd_iterations = sum(bc.pd_iterations[min(i, len(bc.pd_iterations) - 1)] for i in range(halvings))
    rows.append([f"PD {bc.teacher_steps} -> {bc.pd_to} ({halvings} halvings)", pd_iterations, pd_batch,
                 cost("distill pd", pd_iterations, pd_batch)])
    chain = sum(bc.chain_iterations[min(i, len(bc.chain_iterations) - 1)] for i in range(3))
    for method in bc.chain_methods:
        rows.append([f"chain {method} {bc.pd_to} -> 1", chain, chain_batch, cost(f"distill {method}", chain, chain_batch)])
    samplers = [("ddim", n) for n in bc.teacher_ddim_steps] + [(s, n) for s, n in (("dpm-solver", bc.dpm_solver_steps),
                                                                                   ("pndm", bc.pndm_steps)) if n]
    nfe = sum(calls(s, n) for s, n in samplers) + bc.pd_to + (4 + 2 + 1) * len(bc.chain_methods)  # the students: 4, 2, 1 steps
    rows.append([f"sampling every row ({nfe} network calls per image)", "-", bc.eval_samples,
                 nfe * bc.eval_samples * flops["sampling forward"]["per_image"]])
    row_count = len(bc.teacher_ddim_steps) + bool(bc.dpm_solver_steps) + bool(bc.pndm_steps) + 1 + 3 * len(bc.chain_methods)
    rows.append([f"Inception on every row + the reference ({row_count + 1} x {bc.eval_samples})", "-", bc.eval_samples,
                 (row_count + 1) * bc.eval_samples * flops["inception forward"]["per_image"]])
    return rows


def print_plan(path: str, tflops: float) -> None:
    from rdd.tables import markdown_table

    flops = json.loads(Path(path).read_text())
    for dataset, counts in flops.items():
        rows = plan_rows(dataset, counts)
        total = sum(r[3] for r in rows)
        table = [[*r[:3], f"{r[3]:.3g}", f"{r[3] / (tflops * 1e12) / 3600:,.1f}"] for r in rows]
        table.append(["**total**", "", "", f"{total:.3g}", f"**{total / (tflops * 1e12) / 3600:,.0f}**"])
        print(f"\n{dataset}\n" + markdown_table(["stage", "iterations", "global batch", "FLOPs", f"GPU-hours at {tflops:g} TFLOP/s"], table))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", default="cifar10,imagenet64")
    p.add_argument("--out", default="benchmarks/paper_scale_flops.json")
    p.add_argument("--plan", help="print the GPU-hour plan from this FLOPs file instead of counting")
    p.add_argument("--tflops", type=float, default=62.4, help="sustained TFLOP/s of one GPU (default: 40%% of an A100's TF32 peak)")
    args = p.parse_args()
    if args.plan:
        print_plan(args.plan, args.tflops)
        return
    torch.manual_seed(0)
    result = {}
    for dataset in args.datasets.split(","):
        result[dataset] = step_flops(dataset)
        print(json.dumps({dataset: result[dataset]}, indent=1), flush=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
