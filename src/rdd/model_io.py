"""Model files in and out: rdd's model.pt, diffusers folders, and the export of either as a diffusers pipeline."""
from __future__ import annotations

from pathlib import Path

from torch import nn

from rdd.checkpoint import first_nonfinite, load_checkpoint, load_module_state, save_checkpoint
from rdd.config import ConfigError, ExperimentConfig, from_dict, to_dict
from rdd.diffusers_io import load_diffusers_folder, write_ddim_pipeline, write_pipeline
from rdd.errors import RddError
from rdd.networks import build_model


def export_model(path: Path, model: nn.Module, cfg: ExperimentConfig, meta: dict) -> None:
    """The sampling checkpoint: EMA weights, the config that builds the network, and its step count."""
    bad = first_nonfinite(model.state_dict())
    if bad:
        raise RddError(f"refusing to write '{path}': weight '{bad}' holds nan or inf")
    save_checkpoint({"kind": "diffusion", "model": model.state_dict(), "config": to_dict(cfg), **meta}, path)


def stored_config(state: dict, path: str | Path) -> ExperimentConfig:
    """The config a checkpoint carries, checked like a config file: a damaged one is refused naming the file and field."""
    if not isinstance(state["config"], dict):
        raise RddError(f"checkpoint '{path}': its stored config is a {type(state['config']).__name__}, not a mapping; use another copy")
    try:
        return from_dict(state["config"])
    except ConfigError as e:
        raise RddError(f"checkpoint '{path}' stores an invalid config ({e}); use another copy") from None


def load_diffusion_model(path: str | Path, device="cpu") -> tuple[nn.Module, ExperimentConfig, dict]:
    """Rebuild a diffusion model from `model.pt` (or a training state) or load a diffusers folder;
    returns (model, config, meta)."""
    if Path(path).is_dir():
        return load_diffusers_folder(path, device)
    state = load_checkpoint(path)
    if state.get("kind", "diffusion") != "diffusion":
        raise RddError(f"'{path}' is a {state['kind']} checkpoint, not a diffusion model; pass a model.pt written by "
                       "rdd train or rdd distill")
    if "config" not in state or not ("model" in state or "ema" in state):
        raise RddError(f"checkpoint '{path}' is not an rdd diffusion checkpoint (no config/model); pass a model.pt written by rdd train or rdd distill")
    cfg = stored_config(state, path)
    model = build_model(cfg.model, cfg.data)
    load_module_state(model, state["ema"] if "ema" in state else state["model"], path, "diffusion")
    bad = first_nonfinite(model.state_dict())
    if bad:
        raise RddError(f"model '{path}' has non-finite weights (nan or inf in '{bad}'); use a checkpoint from before training diverged")
    meta = state.get("meta", {k: v for k, v in state.items() if k not in ("model", "config", "kind")})
    return model.to(device).eval(), cfg, meta


def export_diffusers(ckpt: str | Path, out: str | Path) -> Path:
    """Write the model at `ckpt` (rdd model.pt or a diffusers folder) as a diffusers pipeline folder `out`."""
    model, _, meta = load_diffusion_model(ckpt)
    return write_pipeline(model, meta, out)


def export_stock_ddim(ckpt: str | Path, out: str | Path) -> tuple[Path, int | None]:
    """Write the model at `ckpt` as a folder diffusers' own DDIMPipeline loads; returns (folder, step count)."""
    model, _, meta = load_diffusion_model(ckpt)
    return write_ddim_pipeline(model, meta, out)
