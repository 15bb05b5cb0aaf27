"""Typed experiment configs loaded from YAML.

One `ExperimentConfig` per experiment file under `configs/`. Unknown keys, wrong types,
out-of-range values and missing files fail with a one-line `ConfigError` that names the problem
and the fix, when the config is loaded: before any work starts.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import struct
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from rdd.errors import RddError
from rdd.strict_yaml import StrictYamlError, parse_yaml


class ConfigError(RddError):
    pass


@dataclass
class ModelConfig:
    name: str = "fmnist-small"  # a backbone preset of rdd.networks.PRESETS
    dropout: float = 0.0
    num_classes: int = 0  # >0 makes the U-Net class-conditional
    # A network from a diffusers folder (name 'diffusers'): {unet: its config, schedule, prediction_type}.
    diffusers: dict | None = None

    def __post_init__(self):
        _check("model.dropout", self.dropout, 0 <= self.dropout < 1, "a number in [0, 1)")
        _at_least("model.num_classes", self.num_classes, 0)


@dataclass
class DataConfig:
    dataset: str = "fashion_mnist"  # fashion_mnist | cifar10 | imagenet64 | folder (your images in `root`, docs/data.md)
    root: str | None = None  # folder of the data set; None uses the default location
    resolution: int = 16
    resize: str = "bilinear"  # bilinear | pad: how a smaller image reaches `resolution`
    hflip: bool = False
    channels: int = 1
    num_workers: int = 0
    holdout: int = 0  # the last N training images form the 'val' split and are never trained on

    def __post_init__(self):
        _at_least("data.resolution", self.resolution, 8)
        _check("data.resolution", self.resolution, self.resolution <= MAX_RESOLUTION, f"at most {MAX_RESOLUTION}")
        if self.root is not None:
            _check("data.root", self.root, bool(self.root.strip()), "a folder path, or null for the default location")
        _check_choice("data.channels", self.channels, (1, 3))
        _check_choice("data.resize", self.resize, ("bilinear", "pad"))
        _at_least("data.num_workers", self.num_workers, 0)
        _at_least("data.holdout", self.holdout, 0)


@dataclass
class TrainConfig:
    iterations: int = 300
    batch_size: int = 64  # global batch, split evenly over ranks
    lr: float = 2e-4
    lr_schedule: str = "constant"  # constant | cosine (after warmup)
    warmup: int = 0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    bf16: bool = False  # autocast to bfloat16 on CUDA
    seed: int = 0
    log_every: int = 10
    sample_every: int = 100
    ckpt_every: int = 100
    sample_steps: int = 64  # sampler steps for the grids written during training
    num_grid: int = 64  # 0: no grids (a dry run, or a grid of 1,024-step samples nobody reads)
    snapshot_at: list[int] = field(default_factory=list)  # also export the model at these steps (snapshots/)

    def __post_init__(self):
        for key in ("iterations", "batch_size", "log_every", "ckpt_every", "sample_steps"):
            _at_least(f"train.{key}", getattr(self, key), 1)
        for key in ("warmup", "sample_every", "grad_clip", "seed", "num_grid"):
            _at_least(f"train.{key}", getattr(self, key), 0)
        _positive("train.lr", self.lr)
        _check_choice("train.lr_schedule", self.lr_schedule, ("constant", "cosine"))
        _check("train.ema_decay", self.ema_decay, 0 <= self.ema_decay < 1, "a number in [0, 1)")
        _check("train.ema_decay", self.ema_decay, _float32(self.ema_decay) < 1,
               "a number that stays below 1 in float32 (the weights' precision), e.g. 0.9999; this one would freeze the EMA")
        _check("train.sample_steps", self.sample_steps, self.sample_steps <= MAX_STEPS, f"at most {MAX_STEPS:,}")
        _check("train.num_grid", self.num_grid, self.num_grid <= MAX_GRID, f"at most {MAX_GRID:,} images in one grid picture")
        for i, step in enumerate(self.snapshot_at):
            _at_least(f"train.snapshot_at[{i}]", step, 1)


@dataclass
class ClassifierConfig:
    """The frozen feature classifier of RCFD/RDD (paper §3.2 eq. 3, §5.1)."""

    arch: str = "densenet-bc-small"  # densenet201 | densenet-bc-small
    stem: str = "public"  # public: 3x3 conv0 -> norm0 -> relu0, as the public code | bare: conv0 only
    checkpoint: str | None = None  # weights of a trained classifier (rdd train-classifier)
    epochs: int = 15
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4  # the public code's
    augment: bool = True  # crop + flip (+ AutoAugment/Cutout when `autoaugment`)
    autoaugment: bool = False
    seed: int = 0
    train_limit: int | None = None  # train on the first N images only (quick runs)
    ckpt_every: int = 500  # iterations between resumable checkpoints (classifier-state.pt), besides each epoch's end

    def __post_init__(self):
        _at_least("classifier.epochs", self.epochs, 1)
        _at_least("classifier.batch_size", self.batch_size, 1)
        _at_least("classifier.ckpt_every", self.ckpt_every, 1)
        _positive("classifier.lr", self.lr)
        _check("classifier.momentum", self.momentum, 0 <= self.momentum < 1, "a number in [0, 1)")
        _at_least("classifier.weight_decay", self.weight_decay, 0)
        if self.train_limit is not None:
            _at_least("classifier.train_limit", self.train_limit, 1)


@dataclass
class DistillConfig:
    """One PD stage or a progressive chain (paper §3.1, §4, §5.1)."""

    method: str = "rdd"  # a name of rdd.registry.METHODS: pd, pd_lpips, rcfd, rdd and the ablation rows
    teacher_steps: int | None = None  # a base model's sampling grid; a distilled teacher brings its own
    target_steps: int = 1
    iterations: list[int] = field(default_factory=lambda: [200])  # per stage, last repeats
    tau_cfd: list[float] = field(default_factory=lambda: [0.9, 1.0, 0.85])  # per stage
    tau_is: float = 1.0
    tau_m: float = 0.1
    tau_ii: float = 1.0
    alpha: float = 1.0  # weight of IS_P2P (and II_P2P in the ablation)
    beta: float = 0.1  # weight of M_P2P
    queue_size: int = 20000  # N_q
    push_per_step: int = 128  # K
    lpips_net: str = "vgg"
    lpips_weights: str | None = None  # local backbone weights for offline LPIPS
    # Fidelity (rdd.fidelity, docs/fidelity.md): the paper's text or the public code's behaviour.
    # Each key below left null follows `fidelity`; a key that is set wins.
    fidelity: str = "paper"  # paper | official
    num_contrast: int | None = None  # V: paper 2048, official 4096
    queue_layout: str | None = None  # pixels | flat_view
    queue_draw: str | None = None  # filled | whole
    queue_push: str | None = None  # after | before
    queue_wrap: str | None = None  # ring | public
    push_scope: str | None = None  # global | rank: K pixels per iteration, or K per process
    teacher_clip: bool | None = None  # clip the teacher's x-hat inside the PD target's two DDIM steps
    head_bias: bool | None = None  # bias on the projection head's last 1x1 conv
    head_optimizer: str | None = None  # joint | separate
    # IS_P2P under DDP: `local` relates the images on each process (the public code), `global` the
    # whole batch gathered over all processes (rdd.losses.is_p2p_loss_global).
    is_p2p_scope: str = "local"
    # How a diffusers student reads its output, per stage (the last repeats): auto is the measured recipe
    # (rdd.networks.student_reading, docs/diffusers.md); loss_weight auto follows the reading.
    student_reading: list[str] = field(default_factory=lambda: ["auto"])  # auto | epsilon | v_prediction | sample | epsilon_v
    loss_weight: str = "auto"  # auto | truncated_snr | snr | epsilon_v

    def __post_init__(self):
        from rdd.fidelity import FIDELITY_CHOICES, PRESETS, SWITCH_CHOICES

        _check_choice("distill.fidelity", self.fidelity, FIDELITY_CHOICES)
        _check_choice("distill.is_p2p_scope", self.is_p2p_scope, ("local", "global"))
        _check_choice("distill.loss_weight", self.loss_weight, ("auto", "truncated_snr", "snr", "epsilon_v"))
        _check("distill.student_reading", self.student_reading, len(self.student_reading) > 0, "a list of one value per stage")
        for i, reading in enumerate(self.student_reading):
            _check_choice(f"distill.student_reading[{i}]", reading, ("auto", "epsilon", "v_prediction", "sample", "epsilon_v"))
        for key, choices in SWITCH_CHOICES.items():
            if choices is not None and getattr(self, key) is not None:
                _check_choice(f"distill.{key}", getattr(self, key), choices)
        for key, values, check in (("iterations", self.iterations, lambda k, v: _at_least(k, v, 1)),
                                   ("tau_cfd", self.tau_cfd, _positive)):
            _check(f"distill.{key}", values, len(values) > 0, "a list of one value per stage (the last repeats)")
            for i, value in enumerate(values):
                check(f"distill.{key}[{i}]", value)
        for key in ("tau_is", "tau_m", "tau_ii"):  # a temperature of 0 divides by zero in the softmax
            _positive(f"distill.{key}", getattr(self, key))
        for key in ("alpha", "beta"):
            _at_least(f"distill.{key}", getattr(self, key), 0)
        _at_least("distill.target_steps", self.target_steps, 1)
        if self.teacher_steps is not None:
            _at_least("distill.teacher_steps", self.teacher_steps, 2)
        _at_least("distill.push_per_step", self.push_per_step, 1)
        _check("distill.queue_size", self.queue_size, self.queue_size >= self.push_per_step,
               f"at least distill.push_per_step ({self.push_per_step})")
        if self.num_contrast is not None:
            _at_least("distill.num_contrast", self.num_contrast, 1)
        # M_P2P draws V rows of the queue: a smaller queue would hand it the same rows again and again.
        contrast = self.num_contrast or PRESETS[self.fidelity]["num_contrast"]
        _check("distill.queue_size", self.queue_size, self.queue_size >= contrast,
               f"at least distill.num_contrast ({contrast}" + ("" if self.num_contrast else f", fidelity={self.fidelity}'s V")
               + "), or set distill.num_contrast lower")


@dataclass
class EvalConfig:
    num_samples: int = 10000
    batch_size: int = 500
    evalnet: str | None = None  # checkpoint of rdd train-evalnet (domain FD)
    inception_weights: str | None = None
    reference_cache: str | None = None

    def __post_init__(self):
        _at_least("eval.num_samples", self.num_samples, 10)  # IS averages over 10 splits, FD needs a covariance
        _at_least("eval.batch_size", self.batch_size, 1)


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    plugins: list[str] = field(default_factory=list)  # Python files or modules imported first (rdd.plugins)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self):
        # rdd's deepest U-Net preset and the DenseNet-201 halve the image three times; a diffusers
        # network brings a size that fits its own blocks.
        if self.model.name != "diffusers":
            _check("data.resolution", self.data.resolution, self.data.resolution % 8 == 0, "a multiple of 8 (at least 8)")


INT_LIMIT = 2**31 - 1
MAX_RESOLUTION = 4096  # beyond any data set or network rdd trains; larger sizes are typos
MAX_STEPS = 10_000  # sampler steps, as `--steps` allows
MAX_GRID = 4096  # images in one grid picture


def _float32(value: float) -> float:
    return struct.unpack("f", struct.pack("f", value))[0]


def per_stage(values: list, index: int):
    """The stage's entry of a per-stage list (distill.iterations, tau_cfd, ...); the last entry repeats for later stages."""
    return values[min(index, len(values) - 1)]


def _check_choice(key: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{key} is {value!r}; choose one of {', '.join(map(str, choices))}")


def _check(key: str, value, ok: bool, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key} is {value!r}; allowed: {allowed}")


def _at_least(key: str, value, low) -> None:
    allowed = f">= {low}" if isinstance(value, int) else f"a finite number >= {low}"
    _check(key, value, math.isfinite(value) and value >= low, allowed)  # nan and inf fail too


def _positive(key: str, value) -> None:
    _check(key, value, math.isfinite(value) and value > 0, "a finite number > 0")


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value, tp, where: str):
    """Check `value` against the annotation `tp`; ints are accepted where floats are asked."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, where)
            except ConfigError as e:
                errors.append(e)
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{where}: expected null, got {value!r}")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        items = value if isinstance(value, list) else [value]
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(items)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return _build(tp, value, where)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:
            return float(value)  # YAML 1.1 reads 2e-3 (no dot) as a string
        except ValueError:
            pass
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int and isinstance(value, bool):
        raise ConfigError(f"{where}: expected int, got {value!r}")
    if tp is int and isinstance(value, int) and abs(value) > INT_LIMIT:  # seeds, counts and sizes all fit in 32 bits
        raise ConfigError(f"{where} is {value}; too large (at most {INT_LIMIT:,})")
    if not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r} ({type(value).__name__})")
    return value


def _build(cls, data: dict, where: str):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(names)}"
            raise ConfigError(f"unknown config key '{where}.{key}'".replace("'.", "'") + hint)
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}".lstrip(".")) for k, v in data.items()}
    return cls(**kwargs)


def build_dataclass(cls, data: dict):
    """Build a config dataclass from a mapping, checking keys and types."""
    return _build(cls, data or {}, "")


def from_dict(data: dict) -> ExperimentConfig:
    return build_dataclass(ExperimentConfig, data)


def to_dict(cfg: ExperimentConfig) -> dict:
    return dataclasses.asdict(cfg)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `key.sub=value` overrides; values are parsed as YAML (numbers, lists, null)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like section.key=value; "
                              "put positional arguments before --set, which takes every KEY=VALUE after it")
        key, raw = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override '{item}': '{key}' is not a section.key name")
        if not raw.strip():
            raise ConfigError(f"override '{item}': {key} has no value; write {key}=null to unset it")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}': '{part}' is not a section")
        try:
            node[parts[-1]] = parse_yaml(raw, f"--set {key}'s value")
        except StrictYamlError as e:
            raise ConfigError(str(e)) from None
    return data


def _merge(base: dict, delta: dict) -> dict:
    """`delta` over `base`: mappings merge key by key, anything else (lists included) is replaced."""
    merged = dict(base)
    for key, value in delta.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def read_yaml_config(path: str | Path, seen: tuple = ()) -> dict:
    """A YAML config as a mapping, with its `base:` chain resolved (paths relative to the file)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config file '{path}' is a folder; pass a YAML file in it, e.g. configs/fmnist/teacher.yaml")
    if not path.is_file():
        raise ConfigError(f"config file '{path}' not found; pass an existing YAML file, e.g. configs/fmnist/teacher.yaml")
    if path.resolve() in seen:
        raise ConfigError(f"config file '{path}' includes itself through `base:`; remove the cycle")
    try:
        data = parse_yaml(path.read_text(), f"config file '{path}'") or {}
    except UnicodeDecodeError:
        raise ConfigError(f"config file '{path}' is not a text file (not UTF-8); pass a YAML config") from None
    except StrictYamlError as e:
        raise ConfigError(str(e)) from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping at its top level")
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"config file '{path}': `base` must be a path to another YAML file, got {base!r}")
    return _merge(read_yaml_config(path.parent / base, seen + (path.resolve(),)), data)


def load_config(path: str | Path | None, overrides: list[str] | None = None, command: str | None = None,
                defaults: dict | None = None) -> ExperimentConfig:
    """The config at `path` (and its `base:` chain) with `overrides` applied over `defaults`. Its `plugins` are
    imported before the rest is read, so the terms and methods they register are known to it. With `command`,
    a key of the file itself or of `overrides` that the command does not read is refused (COMMAND_READS)."""
    from rdd.plugins import load_plugins

    data = apply_overrides(_merge(defaults or {}, read_yaml_config(path) if path is not None else {}), overrides or [])
    load_plugins(_coerce(data.get("plugins", []), list[str], "plugins"))
    cfg = from_dict(data)
    if command is not None:
        own = {key: f"in '{path}'" for key in flatten(_file_mapping(path))} if path is not None else {}
        check_read(command, {**own, **{key: "on the command line" for key in flatten(apply_overrides({}, overrides or []))}})
    return cfg


# What each command reads: (sections or section.field it reads, those of them it does not). A stage copies its
# teacher's network (only model.dropout is its own), trains for distill.iterations and draws its grids at the
# student's own step count; `eval` is kept in the model it writes, as the defaults of a later `rdd eval`.
_CLASSIFIER_READS = (("data", "classifier"), ("classifier.checkpoint",))
_STAGE_READS = (("model.dropout", "data", "train", "classifier.checkpoint", "distill", "eval"),
                ("train.iterations", "train.sample_steps"))
_STAGE_COMMANDS = ("distill", "progressive", "sweep", "demo")
COMMAND_READS = {"train": (("model", "data", "train", "eval"), ()), "eval": (("data",), ()),
                 "train-classifier": _CLASSIFIER_READS, "train-evalnet": _CLASSIFIER_READS,
                 **{command: _STAGE_READS for command in _STAGE_COMMANDS}}
_WHY_NOT_READ = {**{command: {"model": "the student is a copy of its teacher's network",
                              "train.sample_steps": "a stage draws its grids at the student's own step count",
                              "classifier": "the classifier is trained by rdd train-classifier"}
                    for command in _STAGE_COMMANDS},
                 **{command: {"classifier.checkpoint": "the classifier is written to --out"}
                    for command in ("train-classifier", "train-evalnet")}}


# Keys a command sets itself: given on its command line they would be overwritten, so they are refused, naming
# what sets them.
SET_BY_COMMAND = {
    "distill": {"distill.target_steps": "it runs one stage N -> N/2; for a chain to T steps use rdd progressive --to T"},
    "sweep": {"train.seed": "list the seeds in --seeds", "data.holdout": "use --holdout", "train.snapshot_at": "use --eval-at",
              "distill.target_steps": "use --to (without it a sweep runs one stage)",
              "eval": "a sweep evaluates with --eval-samples, --eval-seed and --evalnet"},
    "demo": {"distill.method": "it distils with pd, rcfd and rdd in turn", "distill.teacher_steps": "it distils the "
             "shipped 2-step model", "distill.target_steps": "it distils 2 -> 1", "classifier.checkpoint": "it uses the "
             "classifier of --assets"},
    "train-evalnet": {"classifier.arch": "the evaluation network is always evalnet-cnn",
                      "classifier.stem": "the evaluation network (evalnet-cnn) has no stem to choose"},
    "benchmark": {"distill.method": "set chain_methods or ablation_methods", "distill.teacher_steps": "set teacher_steps",
                  "distill.target_steps": "set pd_to", "distill.iterations": "set pd_iterations, chain_iterations or "
                  "ablation_iterations", "classifier.checkpoint": "set classifier_checkpoint", "train.seed": "the "
                  "distillation stages run seed 0 and the ablation its ablation_seeds; a base model's seed goes in "
                  "teacher_config's file", "eval": "set eval_samples and eval_seed"},
}


def with_data_overrides(data: DataConfig, overrides: list[str], command: str) -> DataConfig:
    """`data` with the `--set data.KEY=VALUE` of a command that reads a model's own config (rdd eval), checked."""
    given = command_line_keys(overrides)
    check_read(command, {key: "on the command line" for key in given})
    return from_dict({"data": {**dataclasses.asdict(data), **apply_overrides({}, overrides).get("data", {})}}).data


def check_not_set_by_command(command: str, keys, flag: str = "--set") -> None:
    """Refuse a key of the command line (`keys`: section.key names) that `command` sets itself."""
    for key in keys:
        for prefix, how in SET_BY_COMMAND.get(command, {}).items():
            if _under(key, prefix):
                raise ConfigError(f"rdd {command} sets {prefix} itself, so {flag} {key} would be ignored; {how}")


def command_line_values(overrides: list[str]) -> dict:
    """{section.key: value} of `--set` overrides, each value parsed as YAML; a key given twice keeps its last."""
    return flatten(apply_overrides({}, overrides))


def command_line_keys(overrides: list[str]) -> list[str]:
    """The section.key names that `--set` overrides name."""
    return list(command_line_values(overrides))


def _under(key: str, prefix: str) -> bool:
    return key == prefix or key.startswith(prefix + ".")


def reads(command: str, key: str) -> bool:
    """Whether `command` reads the config key `key` (e.g. train.iterations); `name` labels every run and every
    command imports the `plugins`."""
    included, excluded = COMMAND_READS[command]
    return key in ("name", "plugins") or (any(_under(key, p) for p in included) and not any(_under(key, p) for p in excluded))


def used_config(config: dict, command: str) -> dict:
    """The part of a config mapping (to_dict) that a run of `command` used: what it reads, and the network it
    trains (a stage's is its teacher's). What a run record keeps."""
    used = {}
    for key, value in flatten(config).items():
        if reads(command, key) or (command in _STAGE_COMMANDS and _under(key, "model")):
            *sections, last = key.split(".")
            node = used
            for section in sections:
                node = node.setdefault(section, {})
            node[last] = value
    return used


def check_read(command: str, given: dict[str, str]) -> None:
    """Refuse a key the user gave ({key: where}) that `command` does not read, naming the key it probably meant."""
    fields = flatten(to_dict(ExperimentConfig()))
    for key, where in given.items():
        if reads(command, key):
            continue
        section, _, name = key.partition(".")
        same_name = [k for k in fields if reads(command, k) and "." in k and k.split(".", 1)[1] == name.split(".")[0]]
        in_section = [k for k in fields if reads(command, k) and _under(k, section)]
        why = next((f" ({text})" for prefix, text in _WHY_NOT_READ.get(command, {}).items() if _under(key, prefix)), "")
        hint = (f"did you mean {same_name[0]}?" if same_name else
                f"of the {section} section it reads only {', '.join(in_section)}{why}; remove {key}" if 0 < len(in_section) <= 3
                else f"it reads no {section} settings; remove {key}" if not in_section else f"remove {key}{why}")
        raise ConfigError(f"rdd {command} does not read {key} ({where}), so it would be ignored; {hint}")


def flatten(data: dict, prefix: str = "") -> dict:
    """{"a.b": value} for every leaf of a nested mapping."""
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _file_mapping(path: str | Path) -> dict:
    """The settings written in the file itself, without those it inherits through `base:` (read_yaml_config
    has checked the file)."""
    data = parse_yaml(Path(path).read_text(), f"config file '{path}'") or {}
    data.pop("base", None)
    return data
