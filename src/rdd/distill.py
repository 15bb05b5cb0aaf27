"""Distillation stages N -> N/2 and progressive chains N -> ... -> target (paper §3.1, §5.1).

A stage's student starts as a copy of its teacher; a chain runs stages in folders
`stage-{N}to{N/2}` and, after an interruption, resumes at the first unfinished one. A finished
stage is reused only when its run.json shows the same settings and teacher.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from rdd.classifier_nets import FeatureClassifier, load_classifier
from rdd.config import DataConfig, ExperimentConfig, apply_overrides, load_config, per_stage, read_yaml_config
from rdd.data import NATIVE_CHANNELS, class_count
from rdd.diffusion import halving_chain
from rdd.distributed import DistContext, barrier
from rdd.errors import RddError
from rdd.files import read_json_record, write_json_atomic
from rdd.layout import MODEL_FILE, stage_dir
from rdd.methods import DistillationObjective, StagePlan, check_terms, needs_classifier, require_classifier
from rdd.metrics_log import read_metrics
from rdd.model_io import load_diffusion_model
from rdd.networks import student_copy, student_reading
from rdd.rundir import check_same_run, is_finished, manifest
from rdd.training import fit


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
        unet = {**model.diffusers["unet"], "dropout": cfg.model.dropout}
        model.diffusers = {**model.diffusers, "unet": unet, "prediction_type": reading}
    return dataclasses.replace(cfg, model=model)


def load_stage_config(path, overrides: list[str], teacher_path, command: str, teacher_cfg=None) -> ExperimentConfig:
    """A stage's config from the command line, every key checked for `command`. The data settings the config
    and --set leave unnamed follow the teacher: an rdd teacher's data set (its folder and held-out images with
    it), resolution and channels; a diffusers teacher's resolution and channels (a diffusers folder names no
    data set, so the config must). `teacher_cfg`: the teacher's config when the caller has loaded it."""
    load_config(path, overrides, command)  # its errors come before the teacher is read
    if teacher_cfg is None:
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


def plan_stage(cfg: ExperimentConfig, teacher_path: str | Path, device, stage_index: int = 0, loaded=None) -> StagePlan:
    """What defines a stage, before its objective is built. `loaded`: the teacher's
    rdd.model_io.load_diffusion_model result when the caller has it already (each teacher loads once)."""
    teacher, teacher_cfg, teacher_meta = loaded or load_diffusion_model(teacher_path, device)
    teacher_steps = teacher_step_count(teacher_meta, cfg, teacher_path)
    halving_chain(teacher_steps, teacher_steps // 2)  # refuses an odd step count
    asked = per_stage(cfg.distill.student_reading, stage_index)
    if not teacher_cfg.model.diffusers and asked not in ("auto", "sample"):
        raise RddError(f"distill.student_reading={asked}: rdd's own models predict x; the setting is for diffusers "
                       "teachers, leave it at auto")
    reading = student_reading(teacher, bool(teacher_meta.get("sampling_steps")), asked, cfg.distill.loss_weight)
    check_data_fits_teacher(cfg.data, teacher_cfg, teacher_path)
    cfg = stage_config(cfg, teacher_cfg, reading["prediction_type"])
    require_classifier(cfg)
    return StagePlan(cfg, teacher, str(teacher_path), teacher_steps, per_stage(cfg.distill.iterations, stage_index),
                     per_stage(cfg.distill.tau_cfd, stage_index), reading,
                     cfg.classifier.checkpoint if needs_classifier(cfg.distill.method) else None)


def check_classifier_fits(classifier: FeatureClassifier, cfg: ExperimentConfig, path: str) -> None:
    """The classifier reads the teacher's images: its channels match, and an image of the teacher's size goes through."""
    channels, size = cfg.data.channels, cfg.data.resolution
    if classifier.features.conv0.in_channels != channels:
        raise RddError(f"classifier.checkpoint '{path}' reads {classifier.features.conv0.in_channels}-channel images but the "
                       f"teacher makes {channels}-channel ones; train a classifier on the teacher's data (rdd train-classifier)")
    try:
        with torch.no_grad():
            classifier(torch.zeros(1, channels, size, size, device=next(classifier.parameters()).device))
    except RuntimeError as e:
        raise RddError(f"classifier.checkpoint '{path}' cannot read the teacher's {channels}x{size}x{size} images "
                       f"({str(e).splitlines()[0][:120]}); train a classifier on the teacher's data") from None


@dataclass
class Stage:
    """Everything one stage trains: its plan, the student (a copy of the teacher) and its objective."""

    plan: StagePlan
    student: torch.nn.Module
    objective: DistillationObjective


def build_stage(plan: StagePlan, ctx: DistContext) -> Stage:
    check_terms(plan.cfg.distill)
    classifier = load_classifier(plan.classifier, ctx.device) if plan.classifier else None
    if classifier is not None and not isinstance(classifier, FeatureClassifier):
        raise RddError(f"classifier.checkpoint '{plan.classifier}' is the evaluation network; distilling through it would "
                       "grade the student with its own teacher: pass the distillation classifier (rdd train-classifier)")
    if classifier is not None:
        check_classifier_fits(classifier, plan.cfg, plan.classifier)
    objective = DistillationObjective(plan, classifier).to(ctx.device)
    student = student_copy(plan.teacher, plan.reading["prediction_type"], plan.cfg.model.dropout).train().requires_grad_(True)
    return Stage(plan, student, objective)


def recipe_line(plan: StagePlan) -> str:
    """What the stage was set to do, said before it starts: method, length, the student's reading and why."""
    steps, reading = plan.student_steps, plan.reading
    return (f"stage {2 * steps}->{steps}: {plan.cfg.distill.method}, {plan.iterations} iterations; the student reads "
            f"{reading['prediction_type']} under loss weight {reading['loss_weight']} ({reading['reason']})")


def summary_line(out_dir: Path, steps: int, iterations: int, seconds: float) -> str:
    """What the stage did: its length, last logged loss, wall time (of this run of it) and where its files are."""
    log = out_dir / "metrics.jsonl"
    losses = [r["loss"] for r in read_metrics(log) if "loss" in r] if log.is_file() else []
    loss = f"final loss {losses[-1]:.4g}, " if losses else ""
    minutes, secs = divmod(round(seconds), 60)
    grid = out_dir / "samples.png"  # train.num_grid 0 draws none
    samples = f", samples {grid}" if grid.is_file() else ", no sample grid (train.num_grid is 0)"
    return (f"stage {2 * steps}->{steps} finished: {iterations} iterations, {loss}{minutes}m{secs:02d}s; "
            f"model {out_dir / MODEL_FILE}{samples}")


def train_stage(stage: Stage, out_dir: str | Path, ctx: DistContext, resume: bool = True, overwrite: bool = False) -> Path:
    plan, out_dir, start = stage.plan, Path(out_dir), time.time()
    if ctx.is_main:
        print(recipe_line(plan), flush=True)
    fit(plan.cfg, stage.student, stage.objective, out_dir, ctx, iterations=plan.iterations, lr=plan.cfg.train.lr,
        meta=plan.meta(), resume=resume, overwrite=overwrite, grid_steps=plan.student_steps,
        desc=f"{plan.cfg.distill.method} {plan.teacher_steps}->{plan.student_steps}")
    if ctx.is_main:
        print(summary_line(out_dir, plan.student_steps, plan.iterations, time.time() - start), flush=True)
    return out_dir / MODEL_FILE


def run_stage(cfg: ExperimentConfig, teacher_path: str | Path, out_dir: str | Path, ctx: DistContext, *,
              stage_index: int = 0, resume: bool = True, overwrite: bool = False) -> Path:
    """Distil the teacher at `teacher_path` (N steps) into an N/2-step student in `out_dir`."""
    return train_stage(build_stage(plan_stage(cfg, teacher_path, ctx.device, stage_index), ctx), out_dir, ctx, resume, overwrite)


def run_progressive(cfg: ExperimentConfig, teacher_path: str | Path, out_dir: str | Path, ctx: DistContext,
                    overwrite: bool = False) -> list[Path]:
    """Run the chain teacher_steps -> ... -> target_steps, skipping finished stages made with the same
    settings (`overwrite`: run every stage afresh)."""
    out_dir = Path(out_dir)
    loaded = load_diffusion_model(teacher_path, ctx.device)  # each teacher loads once: here, then each stage's student
    chain = halving_chain(teacher_step_count(loaded[2], cfg, teacher_path), cfg.distill.target_steps)
    summary_path = out_dir / "chain.json"
    summary = {"method": cfg.distill.method, "stages": {}}
    if summary_path.is_file() and not overwrite:
        stages = read_json_record(summary_path, "chain record").get("stages", {})
        summary["stages"] = stages if isinstance(stages, dict) else {}
    models, teacher = [], Path(teacher_path)
    for index, steps in enumerate(chain[:-1]):
        folder = stage_dir(out_dir, steps)
        stage_cfg = dataclasses.replace(cfg, distill=dataclasses.replace(cfg.distill, teacher_steps=steps))
        plan = plan_stage(stage_cfg, teacher, ctx.device, index, loaded)
        if is_finished(folder) and not overwrite:
            check_same_run(folder, manifest(plan.cfg, plan.meta(), plan.iterations), "finished stage")
            if ctx.is_main:
                print(f"stage {steps}->{steps // 2}: done, skipped ({folder / MODEL_FILE})", flush=True)
        else:
            start = time.time()
            train_stage(build_stage(plan, ctx), folder, ctx, resume=not overwrite, overwrite=overwrite)
            summary["stages"][f"{steps}to{steps // 2}"] = {"seconds": round(time.time() - start, 1), "model": str(folder / MODEL_FILE)}
            if ctx.is_main:
                write_json_atomic(summary_path, summary)
        barrier()
        teacher, loaded = folder / MODEL_FILE, None
        models.append(teacher)
    return models
