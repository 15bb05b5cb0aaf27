"""Run by torchrun in test_training: trains a tiny teacher and saves each rank's final weights."""
import sys

import torch

from rdd.config import load_config
from rdd.distributed import init_distributed
from rdd.networks import build_model
from rdd.training import TruncatedSNRObjective, fit

out, overrides = sys.argv[1], sys.argv[2:]
cfg = load_config(None, overrides)
ctx = init_distributed()
torch.manual_seed(cfg.train.seed + ctx.rank)  # different initial weights per rank: DDP must sync them
model = build_model(cfg.model, cfg.data)
fit(cfg, model, TruncatedSNRObjective(), out, ctx, iterations=cfg.train.iterations, lr=cfg.train.lr, meta={"sampling_steps": None})
torch.save(model.state_dict(), f"{out}/rank{ctx.rank}.pt")
