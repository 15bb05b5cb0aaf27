"""`rdd benchmark`: the paper's protocol end to end on one data set, resumable stage by stage.

classifier + independent evaluation network -> teacher -> plain PD down to `pd_to` steps ->
chains pd_to -> ... -> 1 per method (Table 1) -> the 2 -> 1 ablation over seeds (Table 3) ->
FD/IS of every row, the teacher's training-free rows included. Finished stages are skipped.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

from rdd.config import MAX_STEPS, ConfigError, apply_overrides, build_dataclass, load_config, read_yaml_config
from rdd.distributed import DistContext
from rdd.files import read_json_record, write_json_atomic
from rdd.layout import CLASSIFIER_FILE, MODEL_FILE, stage_model
from rdd.rundir import is_finished


@dataclass
class BenchmarkConfig:
    name: str = "benchmark"
    out: str = "runs/benchmark"
    teacher_config: str = "configs/fmnist/benchmark-teacher.yaml"
    classifier_config: str = "configs/fmnist/classifier.yaml"
    evalnet_config: str = "configs/fmnist/evalnet.yaml"
    distill_config: str = "configs/fmnist/distill.yaml"
    teacher_steps: int = 32  # the teacher's grid that plain PD starts from
    pd_to: int = 8
    pd_iterations: list[int] = field(default_factory=lambda: [300])
    chain_methods: list[str] = field(default_factory=lambda: ["pd", "rcfd", "rdd"])
    chain_iterations: list[int] = field(default_factory=lambda: [300, 300, 400])
    ablation_methods: list[str] = field(default_factory=lambda: ["pd", "rcfd", "cfd_ii", "cfd_is", "cfd_m", "rdd"])
    ablation_baseline: str = "rcfd"  # Table 3 sets each ablation method listed after it against it (CFD alone)
    ablation_seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    ablation_iterations: int = 400
    teacher_ddim_steps: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 32])
    dpm_solver_steps: int = 12
    pndm_steps: int = 10
    eval_samples: int = 10000
    eval_seed: int = 0
    notes: str | None = None  # a Markdown file of choices and findings, placed at the top of RESULTS.md


def load_benchmark_config(path: str | Path, overrides: list[str] | None = None) -> BenchmarkConfig:
    if not Path(path).is_file():
        raise ConfigError(f"benchmark config '{path}' not found; e.g. configs/fmnist/benchmark.yaml")
    bc = build_dataclass(BenchmarkConfig, apply_overrides(read_yaml_config(path), overrides or []))
    check_benchmark(bc)
    return bc


def check_benchmark(bc: BenchmarkConfig) -> None:
    """Every referenced config, method, step count and list, checked before the first stage trains."""
    from rdd.diffusion import halving_chain
    from rdd.registry import check_method

    for key in ("teacher_config", "classifier_config", "evalnet_config", "distill_config"):
        try:
            load_config(getattr(bc, key))
        except ConfigError as e:
            raise ConfigError(f"benchmark {key}: {e}") from None
    for method in bc.chain_methods + bc.ablation_methods:
        check_method(method)
    halving_chain(bc.teacher_steps, bc.pd_to)  # refuses a PD chain that does not halve
    required = ["chain_methods", "pd_iterations", "chain_iterations", "teacher_ddim_steps"] + (["ablation_seeds"] if bc.ablation_methods else [])
    for key in required:
        if not getattr(bc, key):
            raise ConfigError(f"{key} is empty; give at least one value")
    if bc.ablation_methods and bc.ablation_baseline not in bc.ablation_methods:
        raise ConfigError(f"ablation_baseline '{bc.ablation_baseline}' is not one of ablation_methods ({', '.join(bc.ablation_methods)})")
    if bc.ablation_methods and bc.pd_to < 2:
        raise ConfigError(f"the ablation distils a 2-step PD model to 1 step: pd_to must be at least 2 (it is {bc.pd_to})")
    counts = {"ablation_iterations": bc.ablation_iterations, "dpm_solver_steps": bc.dpm_solver_steps, "pndm_steps": bc.pndm_steps,
              **{f"{key}[{i}]": n for key in ("pd_iterations", "chain_iterations", "teacher_ddim_steps")
                 for i, n in enumerate(getattr(bc, key))}}
    for key, value in counts.items():
        if value < 1:
            raise ConfigError(f"{key} is {value}; allowed: >= 1")
        if "steps" in key and value > MAX_STEPS:  # sampler step counts, as `rdd sample --steps` allows
            raise ConfigError(f"{key} is {value:,}; allowed: at most {MAX_STEPS:,} sampler steps")
    if bc.eval_samples < 2:
        raise ConfigError(f"eval_samples is {bc.eval_samples}; allowed: >= 2 (the Fréchet distance needs a covariance)")
    if bc.notes and not Path(bc.notes).is_file():
        raise ConfigError(f"notes file '{bc.notes}' not found; fix the path or remove notes")


class Timings:
    """Wall time of each stage that ran, kept across resumed invocations."""

    def __init__(self, path: Path):
        self.path = path
        self.values = read_json_record(path, "timings record") if path.is_file() else {}

    def run(self, name: str, done: Path, fn):
        # A run's model counts only once its run is finished (a kill after model.pt leaves it unfinished).
        if done.is_file() and (done.name != MODEL_FILE or is_finished(done.parent)):
            print(f"[benchmark] {name}: done ({done})")
            return
        print(f"[benchmark] {name}: running")
        start = time.time()
        fn()
        self.values[name] = round(time.time() - start, 1)
        write_json_atomic(self.path, self.values)


def distill_cfg(bc: BenchmarkConfig, classifier: Path, method: str, teacher_steps: int, target: int,
                iterations: list[int], seed: int = 0):
    cfg = load_config(bc.distill_config)
    cfg.distill = dataclasses.replace(cfg.distill, method=method, teacher_steps=teacher_steps, target_steps=target,
                                      iterations=iterations)
    cfg.classifier = dataclasses.replace(cfg.classifier, checkpoint=str(classifier))
    cfg.train = dataclasses.replace(cfg.train, seed=seed)
    return cfg


def eval_rows(bc: BenchmarkConfig, out: Path) -> list[dict]:
    """Every row of the result tables: what to sample and how."""
    teacher = out / "teacher" / MODEL_FILE
    rows = [dict(table="teacher", method="DDIM", steps=n, ckpt=teacher, sampler="ddim") for n in bc.teacher_ddim_steps]
    rows.append(dict(table="teacher", method="DPM-Solver", steps=bc.dpm_solver_steps, ckpt=teacher, sampler="dpm-solver"))
    rows.append(dict(table="teacher", method="PNDM", steps=bc.pndm_steps, ckpt=teacher, sampler="pndm"))
    rows.append(dict(table="main", method="pd", steps=bc.pd_to, ckpt=stage_model(out / "pd-chain", 2 * bc.pd_to), sampler="ddim"))
    for method in bc.chain_methods:
        steps = bc.pd_to
        while steps > 1:
            rows.append(dict(table="main", method=method, steps=steps // 2,
                             ckpt=stage_model(out / f"chain-{method}", steps), sampler="ddim"))
            steps //= 2
    for method in bc.ablation_methods:
        for seed in bc.ablation_seeds:
            rows.append(dict(table="ablation", method=method, steps=1, seed=seed,
                             ckpt=out / "ablation" / f"{method}-seed{seed}" / MODEL_FILE, sampler="ddim"))
    for row in rows:
        row["name"] = "-".join(str(row[k]) for k in ("table", "method", "steps", "sampler")) + (f"-seed{row['seed']}" if "seed" in row else "")
    return rows


def ablation_teacher(bc: BenchmarkConfig, out: Path) -> Path:
    """The 2-step PD model the ablation distils to 1 step: the PD chain's own when it has one."""
    if bc.pd_to == 2:
        return stage_model(out / "pd-chain", 4)
    if "pd" in bc.chain_methods:
        return stage_model(out / "chain-pd", 4)
    return stage_model(out / "ablation" / "pd-to-2", 4)


def run_benchmark(bc: BenchmarkConfig, ctx: DistContext, results: str | Path | None = None,
                  config_path: str = "CONFIG") -> Path:
    from rdd.classifier import train_classifier
    from rdd.distill import run_progressive, run_stage
    from rdd.metrics import evaluate_checkpoint, evalnet_in
    from rdd.training import train_base_model

    out = Path(bc.out)
    timings = Timings(out / "timings.json")
    classifier = out / "classifier" / CLASSIFIER_FILE
    evalnet = evalnet_in(out / "evalnet")
    timings.run("classifier", classifier, lambda: report_accuracy("classifier", train_classifier(
        load_config(bc.classifier_config), classifier.parent, ctx, resume=True)))
    timings.run("evalnet", evalnet, lambda: report_accuracy("evalnet", train_classifier(
        load_config(bc.evalnet_config), evalnet.parent, ctx, resume=True)))

    def train_teacher():
        train_base_model(load_config(bc.teacher_config), out / "teacher", ctx, resume=True, desc="teacher")

    teacher = out / "teacher" / MODEL_FILE
    timings.run("teacher", teacher, train_teacher)

    pd_model = stage_model(out / "pd-chain", 2 * bc.pd_to)
    timings.run(f"pd {bc.teacher_steps}->{bc.pd_to}", pd_model, lambda: run_progressive(
        distill_cfg(bc, classifier, "pd", bc.teacher_steps, bc.pd_to, bc.pd_iterations), teacher, out / "pd-chain", ctx))

    for method in bc.chain_methods:
        timings.run(f"chain {method}", stage_model(out / f"chain-{method}", 2), lambda method=method: run_progressive(
            distill_cfg(bc, classifier, method, bc.pd_to, 1, bc.chain_iterations), pd_model, out / f"chain-{method}", ctx))

    two_step = ablation_teacher(bc, out)  # the common 2-step PD teacher of the ablation
    if not two_step.is_file():
        timings.run("pd to 2 steps (ablation teacher)", two_step, lambda: run_progressive(
            distill_cfg(bc, classifier, "pd", bc.pd_to, 2, bc.chain_iterations), pd_model, two_step.parent.parent, ctx))
    stage_index = len(bc.chain_iterations) - 1  # the 2 -> 1 stage's temperature
    for method in bc.ablation_methods:
        for seed in bc.ablation_seeds:
            folder = out / "ablation" / f"{method}-seed{seed}"
            cfg = distill_cfg(bc, classifier, method, 2, 1, [bc.ablation_iterations], seed)
            timings.run(f"ablation {method} seed {seed}", folder / MODEL_FILE,
                        lambda cfg=cfg, folder=folder: run_stage(cfg, two_step, folder, ctx, stage_index=stage_index))

    if ctx.is_main:
        for row in eval_rows(bc, out):
            result_path = out / "eval" / f"{row['name']}.json"

            def evaluate(row=row, result_path=result_path):
                result = evaluate_checkpoint(row["ckpt"], row["steps"], row["sampler"], bc.eval_samples, bc.eval_seed,
                                             evalnet=str(evalnet), reference_cache=str(out / "eval" / "reference.npz"))
                # the file is the row's resume marker: written whole or not at all
                write_json_atomic(result_path, {**{k: str(v) if isinstance(v, Path) else v for k, v in row.items()}, **result})

            timings.run(f"eval {row['name']}", result_path, evaluate)
        from rdd.report import write_benchmark_results

        return write_benchmark_results(bc, out, results, config_path)
    return out


def report_accuracy(name: str, result: dict) -> None:
    print(f"[benchmark] {name} test accuracy {result['test_accuracy']:.4f}")
