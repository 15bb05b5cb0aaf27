"""Distillation stages N -> N/2 and progressive chains N -> ... -> target (paper §3.1, §5.1).

A stage's student starts as a copy of its teacher; a chain runs stages in folders
`stage-{N}to{N/2}` and, after an interruption, resumes at the first unfinished one. A finished
stage is reused only when its run.json shows the same settings and teacher.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from rdd.classifier_nets import FeatureClassifier, load_classifier
from rdd.config import DataConfig, ExperimentConfig, apply_overrides, load_config, read_yaml_config
from rdd.data import NATIVE_CHANNELS, class_count
from rdd.diffusion import halving_chain
from rdd.distributed import DistContext, barrier
from rdd.errors import RddError
from rdd.fidelity import resolve_fidelity
from rdd.files import write_json_atomic
from rdd.layout import MODEL_FILE, stage_dir
from rdd.methods import DistillationObjective, check_terms, needs_classifier, require_classifier
from rdd.model_io import load_diffusion_model
from rdd.networks import student_copy, student_reading
from rdd.rundir import check_same_run, manifest
from rdd.training import fit


def per_stage(values: list, index: int):
    """The stage's entry of a per-stage list; the last entry repeats for later stages."""
    return values[min(index, len(values) - 1)]


def teacher_step_count(meta: dict, cfg: ExperimentConfig, path) -> int:
    """A distilled teacher samples at its own N; a base model at distill.teacher_steps."""
    own, asked = meta.get("sampling_steps"), cfg.distill.teacher_steps
    if own and asked and own != asked:
        raise RddError(f"teacher '{path}' was distilled for {own} steps but distill.teacher_steps is "
                       f"{asked}; set --set distill.teacher_steps={own} or leave it unset")
    if not (own or asked):
        raise RddError(f"teacher '{path}' is a base model with no step count of its own; "
                       "set --set distill.teacher_steps=N (e.g. 16)")
    return own or asked


def check_data_fits_teacher(data: DataConfig, teacher_cfg: ExperimentConfig, teacher_path) -> None:
    """Refuse, before any work, data that is not of the teacher's kind: its image shape, colour and classes."""
    t, classes = teacher_cfg.data, teacher_cfg.model.num_classes
    if (data.channels, data.resolution) != (t.channels, t.resolution):
        raise RddError(f"teacher '{teacher_path}' makes {t.channels}x{t.resolution}x{t.resolution} images but the data config "
                       f"gives {data.channels}x{data.resolution}x{data.resolution} ({data.dataset}); set --set "
                       f"data.channels={t.channels} data.resolution={t.resolution}, or use a config written for this teacher")
    own_data = not teacher_cfg.model.diffusers and t.dataset == data.dataset
    native = NATIVE_CHANNELS.get(data.dataset)
    if native and native != data.channels and not own_data:
        raise RddError(f"{data.dataset} has {native}-channel images but teacher '{teacher_path}' makes {t.channels}-channel "
                       "ones; distil it on data of its kind: --set data.dataset=folder data.root=DIR (docs/data.md)")
    if classes and class_count(data) != classes:
        raise RddError(f"teacher '{teacher_path}' is conditioned on {classes} classes but {data.dataset} has "
                       f"{class_count(data)}; distil it on data labelled with the teacher's {classes} classes")


def stage_config(cfg: ExperimentConfig, teacher_cfg: ExperimentConfig, reading: str) -> ExperimentConfig:
    """The student is the teacher's network: take its architecture, keep the rest (the data is checked to fit it).
    A diffusers network keeps its schedule and reads its output as `reading` (rdd.networks.student_reading)."""
    model = dataclasses.replace(teacher_cfg.model, dropout=cfg.model.dropout)
    if model.diffusers:
        model.diffusers = {**model.diffusers, "prediction_type": reading}
    return dataclasses.replace(cfg, model=model)


def load_stage_config(path, overrides: list[str], teacher_path, command: str) -> ExperimentConfig:
    """A stage's config from the command line, every key checked for `command`. The data settings the config
    and --set leave unnamed follow the teacher: an rdd teacher's data set (its folder and held-out images with
    it), resolution and channels; a diffusers teacher's resolution and channels (a diffusers folder names no
    data set, so the config must)."""
    load_config(path, overrides, command)  # its errors come before the teacher is read
    _, teacher_cfg, _ = load_diffusion_model(teacher_path)
    named = apply_overrides(read_yaml_config(path) if path else {}, overrides).get("data") or {}
    t = teacher_cfg.data
    if teacher_cfg.model.diffusers and "dataset" not in named:
        raise RddError(f"teacher '{teacher_path}' is a diffusers folder, which names no data set; name the data it "
                       "learned from: --set data.dataset=folder data.root=DIR (docs/data.md), or a config that sets "
                       "data.dataset, e.g. configs/fmnist/diffusers.yaml for a Fashion-MNIST teacher")
    defaults = {"resolution": t.resolution, "channels": t.channels}
    if not teacher_cfg.model.diffusers and "dataset" not in named:
        defaults.update(dataset=t.dataset, root=t.root, holdout=t.holdout)
    return load_config(path, overrides, defaults={"data": defaults})


@dataclass
class Stage:
    """Everything one stage trains: the student (a copy of the teacher), its objective and settings."""

    cfg: ExperimentConfig
    student: torch.nn.Module
    objective: DistillationObjective
    iterations: int
    meta: dict


def plan_stage(cfg: ExperimentConfig, teacher_path: str | Path, device, stage_index: int = 0):
    """What defines a stage, before its objective is built: (config, teacher, meta, iterations)."""
    teacher, teacher_cfg, teacher_meta = load_diffusion_model(teacher_path, device)
    teacher_steps = teacher_step_count(teacher_meta, cfg, teacher_path)
    halving_chain(teacher_steps, teacher_steps // 2)  # refuses an odd step count
    asked = per_stage(cfg.distill.student_reading, stage_index)
    if not teacher_cfg.model.diffusers and asked not in ("auto", "sample"):
        raise RddError(f"distill.student_reading={asked}: rdd's own models predict x; the setting is for diffusers "
                       "teachers, leave it at auto")
    reading = student_reading(teacher, bool(teacher_meta.get("sampling_steps")), asked, cfg.distill.loss_weight)
    check_data_fits_teacher(cfg.data, teacher_cfg, teacher_path)
    cfg = stage_config(cfg, teacher_cfg, reading["prediction_type"])
    meta = {"sampling_steps": teacher_steps // 2, "teacher_steps": teacher_steps, "method": cfg.distill.method,
            "tau_cfd": per_stage(cfg.distill.tau_cfd, stage_index), "teacher": str(teacher_path),
            "fidelity": cfg.distill.fidelity, "fidelity_switches": resolve_fidelity(cfg.distill).as_dict(),
            "student_reading": reading}
    require_classifier(cfg)
    if needs_classifier(cfg.distill.method):
        meta["classifier"] = cfg.classifier.checkpoint
    return cfg, teacher, meta, per_stage(cfg.distill.iterations, stage_index)


def build_stage(cfg: ExperimentConfig, teacher_path: str | Path, ctx: DistContext, stage_index: int = 0) -> Stage:
    cfg, teacher, meta, iterations = plan_stage(cfg, teacher_path, ctx.device, stage_index)
    check_terms(cfg.distill)
    classifier = load_classifier(meta["classifier"], ctx.device) if "classifier" in meta else None
    if classifier is not None and not isinstance(classifier, FeatureClassifier):
        raise RddError(f"classifier.checkpoint '{meta['classifier']}' is the evaluation network; distilling through it would "
                       "grade the student with its own teacher: pass the distillation classifier (rdd train-classifier)")
    reading = meta["student_reading"]
    objective = DistillationObjective(cfg, teacher, meta["teacher_steps"], meta["tau_cfd"], classifier,
                                      reading["loss_weight"]).to(ctx.device)
    student = student_copy(teacher, reading["prediction_type"]).train().requires_grad_(True)
    return Stage(cfg, student, objective, iterations, meta)


def train_stage(stage: Stage, out_dir: str | Path, ctx: DistContext, resume: bool = True, overwrite: bool = False) -> Path:
    steps = stage.meta["sampling_steps"]
    fit(stage.cfg, stage.student, stage.objective, out_dir, ctx, iterations=stage.iterations, lr=stage.cfg.train.lr,
        meta=stage.meta, resume=resume, overwrite=overwrite, grid_steps=steps,
        desc=f"{stage.cfg.distill.method} {2 * steps}->{steps}")
    return Path(out_dir) / MODEL_FILE


def run_stage(cfg: ExperimentConfig, teacher_path: str | Path, out_dir: str | Path, ctx: DistContext, *,
              stage_index: int = 0, resume: bool = True, overwrite: bool = False) -> Path:
    """Distil the teacher at `teacher_path` (N steps) into an N/2-step student in `out_dir`."""
    return train_stage(build_stage(cfg, teacher_path, ctx, stage_index), out_dir, ctx, resume, overwrite)


def run_progressive(cfg: ExperimentConfig, teacher_path: str | Path, out_dir: str | Path, ctx: DistContext,
                    overwrite: bool = False) -> list[Path]:
    """Run the chain teacher_steps -> ... -> target_steps, skipping finished stages made with the same
    settings (`overwrite`: run every stage afresh)."""
    out_dir = Path(out_dir)
    _, _, meta = load_diffusion_model(teacher_path)
    chain = halving_chain(teacher_step_count(meta, cfg, teacher_path), cfg.distill.target_steps)
    summary_path = out_dir / "chain.json"
    summary = {"method": cfg.distill.method, "stages": {}}
    if summary_path.is_file() and not overwrite:
        summary["stages"] = json.loads(summary_path.read_text()).get("stages", {})
    models, teacher = [], Path(teacher_path)
    for index, steps in enumerate(chain[:-1]):
        folder = stage_dir(out_dir, steps)
        stage_cfg = dataclasses.replace(cfg, distill=dataclasses.replace(cfg.distill, teacher_steps=steps))
        if (folder / MODEL_FILE).is_file() and not overwrite:
            planned, _, meta, iterations = plan_stage(stage_cfg, teacher, "cpu", index)
            check_same_run(folder, manifest(planned, meta, iterations), "finished stage")
            if ctx.is_main:
                print(f"stage {steps}->{steps // 2}: done, skipping ({folder / MODEL_FILE})")
        else:
            start = time.time()
            run_stage(stage_cfg, teacher, folder, ctx, stage_index=index, resume=not overwrite, overwrite=overwrite)
            summary["stages"][f"{steps}to{steps // 2}"] = {"seconds": round(time.time() - start, 1), "model": str(folder / MODEL_FILE)}
            if ctx.is_main:
                write_json_atomic(summary_path, summary)
        barrier()
        teacher = folder / MODEL_FILE
        models.append(teacher)
    return models
