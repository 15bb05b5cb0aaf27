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
from rdd.config import ExperimentConfig
from rdd.diffusion import halving_chain
from rdd.distributed import DistContext, barrier
from rdd.errors import RddError
from rdd.fidelity import resolve_fidelity
from rdd.files import read_json_record, write_json_atomic
from rdd.layout import MODEL_FILE, stage_dir
from rdd.methods import DistillationObjective, check_terms, needs_classifier, require_classifier
from rdd.model_io import load_diffusion_model
from rdd.networks import student_copy, student_reading
from rdd.rundir import check_same_run, is_finished, manifest
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


def stage_config(cfg: ExperimentConfig, teacher_cfg: ExperimentConfig, reading: str) -> ExperimentConfig:
    """The student is the teacher's network: take its architecture and image shape, keep the rest.
    A diffusers network keeps its schedule and reads its output as `reading` (rdd.networks.student_reading);
    it trains on the config's data set, since a diffusers folder names none."""
    model = dataclasses.replace(teacher_cfg.model, dropout=cfg.model.dropout)
    dataset = teacher_cfg.data.dataset
    if model.diffusers:
        model.diffusers = {**model.diffusers, "prediction_type": reading}
        dataset = cfg.data.dataset
    data = dataclasses.replace(cfg.data, dataset=dataset, resolution=teacher_cfg.data.resolution,
                               channels=teacher_cfg.data.channels)
    return dataclasses.replace(cfg, model=model, data=data)


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
    cfg = stage_config(cfg, teacher_cfg, reading["prediction_type"])
    meta = {"sampling_steps": teacher_steps // 2, "teacher_steps": teacher_steps, "method": cfg.distill.method,
            "tau_cfd": per_stage(cfg.distill.tau_cfd, stage_index), "teacher": str(teacher_path),
            "fidelity": cfg.distill.fidelity, "fidelity_switches": resolve_fidelity(cfg.distill).as_dict(),
            "student_reading": reading}
    require_classifier(cfg)
    if needs_classifier(cfg.distill.method):
        meta["classifier"] = cfg.classifier.checkpoint
    return cfg, teacher, meta, per_stage(cfg.distill.iterations, stage_index)


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


def build_stage(cfg: ExperimentConfig, teacher_path: str | Path, ctx: DistContext, stage_index: int = 0) -> Stage:
    cfg, teacher, meta, iterations = plan_stage(cfg, teacher_path, ctx.device, stage_index)
    check_terms(cfg.distill)
    classifier = load_classifier(meta["classifier"], ctx.device) if "classifier" in meta else None
    if classifier is not None and not isinstance(classifier, FeatureClassifier):
        raise RddError(f"classifier.checkpoint '{meta['classifier']}' is the evaluation network; distilling through it would "
                       "grade the student with its own teacher: pass the distillation classifier (rdd train-classifier)")
    if classifier is not None:
        check_classifier_fits(classifier, cfg, meta["classifier"])
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
        stages = read_json_record(summary_path, "chain record").get("stages", {})
        summary["stages"] = stages if isinstance(stages, dict) else {}
    models, teacher = [], Path(teacher_path)
    for index, steps in enumerate(chain[:-1]):
        folder = stage_dir(out_dir, steps)
        stage_cfg = dataclasses.replace(cfg, distill=dataclasses.replace(cfg.distill, teacher_steps=steps))
        if is_finished(folder) and not overwrite:
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
