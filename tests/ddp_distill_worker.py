"""Run by torchrun in test_distill: one RDD stage; each rank saves its student weights, queue and head."""
import sys

import torch

from helpers import ROOT
from rdd.config import load_config
from rdd.distill import build_stage, plan_stage, train_stage
from rdd.distributed import init_distributed

teacher, out, overrides = sys.argv[1], sys.argv[2], sys.argv[3:]
cfg = load_config(ROOT / "configs/fmnist/distill.yaml", overrides + [
    "distill.method=rdd", "distill.teacher_steps=2", "distill.iterations=[3]", "train.batch_size=8",
    "distill.queue_size=256", "distill.num_contrast=32", "distill.push_per_step=8"])
ctx = init_distributed()
stage = build_stage(plan_stage(cfg, teacher, ctx.device), ctx)
train_stage(stage, f"{out}/stage", ctx)
queue = stage.objective.terms["m_p2p"].queue
torch.save({"student": stage.student.state_dict(), "queue": queue.queue, "filled": queue.filled,
            "head": stage.objective.terms["m_p2p"].head.state_dict()}, f"{out}/rank{ctx.rank}.pt")
