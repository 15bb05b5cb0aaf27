"""Diffusers folders in and out (docs/diffusers.md).

In: a pipeline folder (model_index.json) or a folder with unet/ and scheduler/ becomes an rdd model:
its UNet2DModel, read through its scheduler's alpha-bar table and prediction type.
Out: any rdd model becomes a pipeline folder that diffusers alone loads, sampled by rdd's DDIM
(the custom pipeline rdd/diffusers_pipeline.py, copied in as pipeline.py).
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

from rdd.baselines import alphas_cumprod, betas_of
from rdd.config import DataConfig, ExperimentConfig, ModelConfig
from rdd.diffusion import COSINE, PREDICTION_TYPES, READINGS, CosineSchedule, DiscreteSchedule
from rdd.errors import RddError
from rdd.files import read_json_record

PIPELINE_FILE = "pipeline.py"
PIPELINE_CLASS = "RddDDIMPipeline"
EXPORT_TIMESTEPS = 1000  # the table a cosine model's scheduler carries, for diffusers' own samplers
NOT_PIXEL_SPACE = ("vae", "vqvae", "text_encoder")  # components of latent or text-conditioned pipelines
# Schedulers whose UNet is variance-preserving on a beta table (alpha-bar): rdd reads that table. The
# others (ScoreSdeVeScheduler and the EDM ones: variance exploding; ScoreSdeVpScheduler: continuous betas;
# flow matching; consistency models) define z_t or the UNet's time input otherwise.
BETA_TABLE_SCHEDULERS = (
    "DDPMScheduler", "DDIMScheduler", "DDPMParallelScheduler", "DDIMParallelScheduler", "PNDMScheduler",
    "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler", "DPMSolverSDEScheduler", "DEISMultistepScheduler",
    "UniPCMultistepScheduler", "SASolverScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
    "HeunDiscreteScheduler", "LMSDiscreteScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler",
    "LCMScheduler", "TCDScheduler",
)
OTHER_KINDS = {"ScoreSdeVeScheduler": "variance-exploding", "KarrasVeScheduler": "variance-exploding",
               "EDMEulerScheduler": "variance-exploding (EDM)", "EDMDPMSolverMultistepScheduler": "variance-exploding (EDM)",
               "ScoreSdeVpScheduler": "continuous-time variance-preserving", "CMStochasticIterativeScheduler": "consistency-model",
               "FlowMatchEulerDiscreteScheduler": "flow-matching", "FlowMatchHeunDiscreteScheduler": "flow-matching"}
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid", "laplace")  # DDPMScheduler's, which builds rdd's table


def _read_json(path: Path, fields: dict) -> dict:
    """A config file of the folder, read strictly, each field rdd reads typed and range-checked."""
    try:
        data = read_json_record(path, "diffusers config")
    except OSError as e:
        raise RddError(f"cannot read '{path}' ({e.strerror}); is the folder complete?") from None
    for key, (ok, allowed) in fields.items():
        if key in data and not ok(data[key]):
            raise RddError(f"'{path}': field '{key}' is {data[key]!r}; allowed: {allowed}; fix the file or use another copy")
    return data


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int_in(low: int, high: int):
    return lambda v: _is_int(v) and low <= v <= high, f"an integer in {low:,}..{high:,}"


def _float_between(low: float, high: float):
    return (lambda v: (_is_int(v) or isinstance(v, float)) and math.isfinite(v) and low < v < high,
            f"a number between {low} and {high}")


def _optional(check):
    ok, allowed = check
    return lambda v: v is None or ok(v), f"null or {allowed}"


def _list_of(check, length: int | None = None):
    ok, allowed = check
    return (lambda v: isinstance(v, list) and len(v) > 0 and (length is None or len(v) == length) and all(ok(x) for x in v),
            f"a non-empty list of {allowed}")


def _choice(*choices):
    return lambda v: v in choices, " or ".join(map(repr, choices))


SIZE = _int_in(8, 4096)
UNET_FIELDS = {"in_channels": _int_in(1, 64), "out_channels": _int_in(1, 64), "norm_num_groups": _int_in(1, 1024),
               "layers_per_block": _int_in(1, 64), "block_out_channels": _list_of(_int_in(1, 65536)),
               "num_class_embeds": _optional(_int_in(1, 1 << 20)), "norm_eps": _float_between(0, 1),
               "sample_size": (lambda v: SIZE[0](v) or _list_of(SIZE, 2)[0](v), "an integer or [h, w] in 8..4,096"),
               "down_block_types": _list_of((lambda v: isinstance(v, str), "names")),
               "up_block_types": _list_of((lambda v: isinstance(v, str), "names"))}
SCHEDULER_FIELDS = {"num_train_timesteps": _int_in(2, 100_000), "beta_start": _float_between(0, 1),
                    "beta_end": _float_between(0, 1), "beta_schedule": (lambda v: isinstance(v, str), "a name"),
                    "prediction_type": _choice(*READINGS),
                    "trained_betas": _optional(_list_of(_float_between(0, 1.0000001))),
                    "rescale_betas_zero_snr": _choice(True, False)}
COMPONENT = (lambda v: v is None or (isinstance(v, list) and len(v) == 2 and all(x is None or isinstance(x, str) for x in v)),
             "[library, class] or null")
INDEX_FIELDS = {"sampling_steps": _optional(_int_in(1, 10_000)), "schedule": _optional(_choice("cosine", "discrete"))}


def _check_unet_shapes(path: Path, c: dict) -> None:
    """What UNet2DModel needs of its fields together: group norm divides every width, one block type per width."""
    widths, groups = c.get("block_out_channels", [224, 448, 672, 896]), c.get("norm_num_groups", 32)
    if any(w % groups for w in widths):
        raise RddError(f"'{path}': norm_num_groups {groups} does not divide every block_out_channels {widths}; "
                       "fix the file or use another copy")
    for key in ("down_block_types", "up_block_types"):
        if key in c and len(c[key]) != len(widths):
            raise RddError(f"'{path}': {key} has {len(c[key])} entries for {len(widths)} block_out_channels; "
                           "fix the file or use another copy")


def _read_index(folder: Path) -> dict:
    """model_index.json: its components are [library, class] pairs, its rdd entries typed."""
    path = folder / "model_index.json"
    if not path.is_file():
        return {}
    index = _read_json(path, INDEX_FIELDS)
    ok, allowed = COMPONENT
    for key, value in index.items():
        if not key.startswith("_") and key not in INDEX_FIELDS and not ok(value):
            raise RddError(f"'{path}': entry '{key}' is {value!r}; allowed: {allowed}; fix the file or use another copy")
    return index


def load_diffusers_folder(path: str | Path, device="cpu"):
    """(model, config, meta) from a diffusers folder, as rdd.model_io.load_diffusion_model returns them.

    The folder names no data set: the config has the UNet's image shape and the default data set; a
    distillation stage takes the data of its own config. meta's sampling_steps is None (a teacher) unless
    the folder is an rdd export of a student."""
    from diffusers import UNet2DModel

    from rdd.networks import XPredictionUNet, diffusers_spec

    folder = Path(path)
    unet_config, scheduler_config = folder / "unet" / "config.json", folder / "scheduler" / "scheduler_config.json"
    index = _read_index(folder)
    check_pixel_space(folder, index)
    if not (unet_config.is_file() and scheduler_config.is_file()):
        raise RddError(f"'{folder}' is not a diffusers model: it needs unet/config.json and scheduler/scheduler_config.json "
                       "(a pipeline folder written by save_pretrained), or pass an rdd model.pt")
    c = _read_json(unet_config, {})
    if c.get("_class_name") != "UNet2DModel":
        raise RddError(f"'{folder}/unet' is a {c.get('_class_name')}; rdd distils UNet2DModel pipelines, unconditional or class-conditional")
    _read_json(unet_config, UNET_FIELDS)
    _check_unet_shapes(unet_config, c)
    channels = c.get("in_channels", 3)  # missing keys take UNet2DModel's defaults
    if c.get("out_channels", 3) != channels:
        raise RddError(f"'{folder}/unet' has {c.get('out_channels', 3)} output channels for {channels} input channels; "
                       "rdd reads one prediction per pixel (no learned variance)")
    if c.get("class_embed_type") is not None:
        raise RddError(f"'{folder}/unet' is conditioned through class_embed_type={c['class_embed_type']!r}; rdd knows class labels (num_class_embeds)")
    size = c.get("sample_size")
    size = size[0] if isinstance(size, list) and len(set(size)) == 1 else size
    if not isinstance(size, int):
        raise RddError(f"'{folder}/unet' has sample_size {size!r}; rdd needs square images of one size")
    scheduler = _read_json(scheduler_config, SCHEDULER_FIELDS)
    check_scheduler(folder, scheduler)
    schedule = CosineSchedule() if index.get("schedule") == "cosine" else DiscreteSchedule(scheduler)
    try:
        unet = UNet2DModel.from_pretrained(folder / "unet", low_cpu_mem_usage=False)  # no warning about accelerate
    except (OSError, ValueError, RuntimeError, TypeError) as e:
        raise RddError(f"cannot load the UNet in '{folder}/unet': {str(e).strip().splitlines()[0]}") from None
    num_classes = c.get("num_class_embeds") or 0
    model = XPredictionUNet(unet, num_classes, schedule, scheduler.get("prediction_type", "epsilon"))
    cfg = ExperimentConfig(model=ModelConfig(name="diffusers", num_classes=num_classes, diffusers=diffusers_spec(model)),
                           data=DataConfig(resolution=size, channels=channels))
    meta = {"sampling_steps": index.get("sampling_steps"), "method": "diffusers", "source": str(folder)}
    return model.to(device).eval(), cfg, meta


def check_pixel_space(folder: Path, index: dict) -> None:
    """A latent or text-conditioned pipeline is refused as such, whether its model_index.json lists the
    component or only its folder is there (an incomplete copy)."""
    extra = [name for name in NOT_PIXEL_SPACE
             if (isinstance(index.get(name), list) and index[name][0]) or (folder / name).is_dir()]
    if extra:
        raise RddError(f"'{folder}' is a latent or text-conditioned pipeline ({', '.join(extra)}); rdd distils "
                       "pixel-space UNet2DModel pipelines")


def check_scheduler(folder: Path, scheduler: dict) -> None:
    """Refuse, naming the scheduler, a noise schedule rdd cannot read as a variance-preserving beta table."""
    name = scheduler.get("_class_name", "DDPMScheduler")  # a config without a class: the DDPM defaults
    where = f"'{folder}/scheduler' ({name})"
    if name not in BETA_TABLE_SCHEDULERS:
        kind = OTHER_KINDS.get(name, "not a variance-preserving beta-table")
        raise RddError(f"{where} is a {kind} scheduler, which rdd cannot read; rdd reads the alpha-bar table of "
                       f"DDPMScheduler, DDIMScheduler and their samplers (e.g. {', '.join(BETA_TABLE_SCHEDULERS[4:8])})")
    if scheduler.get("trained_betas") is None and scheduler.get("beta_schedule", "linear") not in BETA_SCHEDULES:
        raise RddError(f"{where} has beta_schedule {scheduler['beta_schedule']!r}, which rdd cannot read; "
                       f"valid values: {', '.join(BETA_SCHEDULES)} (or trained_betas)")
    if scheduler.get("timestep_type", "discrete") != "discrete":
        raise RddError(f"{where} conditions the UNet on timestep_type={scheduler['timestep_type']!r}; rdd reads "
                       "UNets called at discrete timesteps")
    if scheduler.get("prediction_type", "epsilon") not in READINGS:
        raise RddError(f"{where} has prediction_type {scheduler['prediction_type']!r}; rdd reads "
                       f"{', '.join(PREDICTION_TYPES)}")


def _scheduler_betas(schedule) -> dict:
    """The scheduler keys that give diffusers the schedule's alpha-bar table."""
    if isinstance(schedule, DiscreteSchedule):
        return {k: v for k, v in schedule.config.items() if k != "kind"}
    # Cosine: alpha-bar at t = (k + 1) / T, the same mapping as DiscreteSchedule's.
    betas = betas_of(alphas_cumprod(schedule=COSINE, timesteps=EXPORT_TIMESTEPS))
    return {"num_train_timesteps": EXPORT_TIMESTEPS, "trained_betas": betas.tolist()}


def _check_empty(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RddError(f"'{out}' exists and is not an empty folder; export into a new folder")


def _ddim_scheduler(model):
    """The scheduler carries the table and the output's reading; its DDIM settings match rdd's sampler
    (trailing grid down to alpha-bar 1, x-hat clipped) wherever the step count divides T."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(**_scheduler_betas(model.schedule), prediction_type=model.prediction_type,
                         timestep_spacing="trailing", set_alpha_to_one=True, clip_sample=True, clip_sample_range=1.0)


def write_pipeline(model, meta: dict, out: str | Path) -> Path:
    """Write a loaded rdd model (and its meta) as a diffusers pipeline folder `out`."""
    import diffusers

    from rdd import diffusers_pipeline

    out = Path(out)
    _check_empty(out)
    scheduler = _ddim_scheduler(model)
    model.unet.save_pretrained(out / "unet")
    scheduler.save_pretrained(out / "scheduler")
    shutil.copyfile(diffusers_pipeline.__file__, out / PIPELINE_FILE)
    index = {"_class_name": [Path(PIPELINE_FILE).stem, PIPELINE_CLASS], "_diffusers_version": diffusers.__version__,
             "unet": ["diffusers", "UNet2DModel"], "scheduler": ["diffusers", "DDIMScheduler"],
             "schedule": model.schedule.config["kind"], "sampling_steps": meta.get("sampling_steps")}
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return out


def stock_ddim_blocker(model, steps: int | None) -> str | None:
    """Why diffusers' own DDIMPipeline cannot sample this model as rdd does, or None where it can."""
    if not isinstance(model.schedule, DiscreteSchedule):
        return ("its schedule is rdd's continuous cosine: diffusers' DDIM would call the UNet at timestep k, not at "
                "1000 t = k + 1")
    if model.prediction_type not in PREDICTION_TYPES:
        return f"it reads its output as {model.prediction_type}, which DDIMScheduler cannot step"
    if model.num_classes:
        return "it is class-conditional and DDIMPipeline passes no class labels"
    if steps and model.schedule.num_train_timesteps % steps:
        return (f"its {steps} steps do not divide the {model.schedule.num_train_timesteps} timesteps, so the "
                "trailing DDIM grid is not rdd's")
    return None


def write_ddim_pipeline(model, meta: dict, out: str | Path) -> tuple[Path, int | None]:
    """Write a model as a stock DDIMPipeline folder (model_index.json, unet/, scheduler/), where diffusers'
    own DDIM with use_clipped_model_output=True takes rdd's steps; returns (folder, the student's step
    count, None for a teacher: any N that divides T)."""
    import diffusers

    out, steps = Path(out), meta.get("sampling_steps")
    blocker = stock_ddim_blocker(model, steps)
    if blocker:
        raise RddError(f"cannot export as a stock DDIMPipeline: {blocker}; use --format diffusers (rdd's own pipeline)")
    _check_empty(out)
    model.unet.save_pretrained(out / "unet")
    _ddim_scheduler(model).save_pretrained(out / "scheduler")
    index = {"_class_name": "DDIMPipeline", "_diffusers_version": diffusers.__version__,
             "unet": ["diffusers", "UNet2DModel"], "scheduler": ["diffusers", "DDIMScheduler"]}
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return out, steps
