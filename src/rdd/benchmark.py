"""`rdd benchmark`: the paper's protocol end to end on one data set, resumable stage by stage.

classifier (+ the independent evaluation network where one is configured) -> base model -> plain PD
down to `pd_to` steps -> chains pd_to -> ... -> 1 per method (Table 1 / 2) -> the 2 -> 1 ablation over
seeds (Table 3), when configured -> FD/IS or FID/IS of every row, the teacher's training-free rows included.
Finished stages are skipped; a base model or classifier named in the config is used instead of training one.
`--dry-run` runs every stage at full width for a few iterations and measures each (rdd.dryrun).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

from rdd.config import (MAX_STEPS, ConfigError, ExperimentConfig, apply_overrides, build_dataclass, check_not_set_by_command,
                        command_line_keys, load_config, read_yaml_config)
from rdd.distributed import DistContext, all_gather_objects, barrier, broadcast_object
from rdd.dryrun import DryRunConfig
from rdd.files import read_json_record, write_json_atomic
from rdd.layout import CLASSIFIER_FILE, MODEL_FILE, stage_model
from rdd.rundir import is_finished

STAGE_SECTIONS = {f.name for f in dataclasses.fields(ExperimentConfig)} - {"name"}  # --set keys every stage's config takes


@dataclass
class BenchmarkConfig:
    name: str = "benchmark"
    out: str = "runs/benchmark"
    teacher_config: str = "configs/fmnist/benchmark-teacher.yaml"
    classifier_config: str = "configs/fmnist/classifier.yaml"
    evalnet_config: str | None = "configs/fmnist/evalnet.yaml"  # null: no evaluation network (FID/IS with Inception)
    distill_config: str = "configs/fmnist/distill.yaml"  # the chains pd_to -> 1
    pd_config: str | None = None  # the plain PD chain teacher_steps -> pd_to (default: distill_config)
    teacher_checkpoint: str | None = None  # an existing base model: the base stage is skipped
    classifier_checkpoint: str | None = None  # an existing classifier (rdd train-classifier's, or a DenseNet state dict)
    inception_weights: str | None = None  # torch-fidelity's Inception-v3 file: FID/IS/KID of every row
    overrides: list[str] = field(default_factory=list)  # KEY=VALUE for every stage's config, e.g. data.root=...
    teacher_steps: int | None = None  # the base model's grid that plain PD starts from (default: pd_config's)
    pd_to: int | None = None  # default: pd_config's distill.target_steps
    pd_iterations: list[int] | None = None  # per stage (default: pd_config's distill.iterations)
    chain_methods: list[str] = field(default_factory=lambda: ["pd", "rcfd", "rdd"])
    chain_iterations: list[int] | None = None  # per stage (default: distill_config's distill.iterations)
    ablation_methods: list[str] = field(default_factory=lambda: ["pd", "rcfd", "cfd_ii", "cfd_is", "cfd_m", "rdd"])
    ablation_baseline: str = "rcfd"  # Table 3 sets each ablation method listed after it against it (CFD alone)
    ablation_seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    ablation_iterations: int = 400
    teacher_ddim_steps: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 32])
    dpm_solver_steps: int | None = 12  # null: no DPM-Solver row
    pndm_steps: int | None = 10  # null: no PNDM row
    eval_samples: int = 10000
    eval_seed: int = 0
    paper_gpus: int = 1  # the GPUs each config's train.batch_size was split over in the paper's runs
    paper_table: str | None = None  # where the paper's numbers come from, e.g. "Table 1 (CIFAR-10)"
    paper_results: dict | None = None  # {method or sampler: {steps: [FID, IS or null]}}, printed beside ours
    dry_run: DryRunConfig = field(default_factory=DryRunConfig)
    notes: str | None = None  # a Markdown file of choices and findings, placed at the top of RESULTS.md


def load_benchmark_config(path: str | Path, overrides: list[str] | None = None, dry_run: bool = False) -> BenchmarkConfig:
    """The benchmark YAML with `overrides`: keys of a stage config's sections (data.root=...) go to every stage."""
    if not Path(path).is_file():
        raise ConfigError(f"benchmark config '{path}' not found; e.g. configs/fmnist/benchmark.yaml")
    overrides = overrides or []
    for_stages = [o for o in overrides if o.split("=", 1)[0].strip().split(".")[0] in STAGE_SECTIONS]
    check_not_set_by_command("benchmark", command_line_keys(for_stages))
    bc = build_dataclass(BenchmarkConfig, apply_overrides(read_yaml_config(path), [o for o in overrides if o not in for_stages]))
    bc.overrides = bc.overrides + for_stages
    check_benchmark(bc, dry_run)
    return bc


# The command that reads each stage config: a key of the file itself that its command does not read is refused.
STAGE_COMMANDS = {"teacher_config": "train", "classifier_config": "train-classifier", "evalnet_config": "train-evalnet",
                  "distill_config": "progressive", "pd_config": "progressive"}


def stage_configs(bc: BenchmarkConfig) -> dict[str, ExperimentConfig]:
    """Every config the protocol reads, loaded with the benchmark's overrides: a bad one is refused here.
    The overrides go to every stage (data.root=...), so only each file's own keys are checked against its command."""
    configs = {}
    for key, command in STAGE_COMMANDS.items():
        path = getattr(bc, key) or (bc.distill_config if key == "pd_config" else None)
        if path is not None:
            try:
                load_config(path, command=command)
                configs[key] = load_config(path, bc.overrides)
            except ConfigError as e:
                raise ConfigError(f"benchmark {key}: {e}") from None
    shape = {key: (cfg.data.dataset, cfg.data.channels, cfg.data.resolution) for key, cfg in configs.items()}
    if shape["distill_config"] != shape["teacher_config"]:
        raise ConfigError(f"distill_config's data {shape['distill_config']} is not the teacher's {shape['teacher_config']} "
                          "(data set, channels, resolution); make the two configs name the same data")
    return configs


def fill_from_configs(bc: BenchmarkConfig, configs: dict[str, ExperimentConfig]) -> None:
    """Step counts and iterations the benchmark leaves unset come from the configs that define them."""
    pd = configs["pd_config"].distill
    bc.teacher_steps = bc.teacher_steps or pd.teacher_steps
    if not bc.teacher_steps:
        raise ConfigError(f"teacher_steps is unset and {bc.pd_config or bc.distill_config} sets no distill.teacher_steps; "
                          "set teacher_steps (the base model's grid plain PD starts from)")
    bc.pd_to = bc.pd_to or pd.target_steps
    bc.pd_iterations = bc.pd_iterations or pd.iterations
    bc.chain_iterations = bc.chain_iterations or configs["distill_config"].distill.iterations


def check_benchmark(bc: BenchmarkConfig, dry_run: bool = False) -> None:
    """Every referenced config, file, method, step count and list, checked before the first stage trains."""
    from rdd.diffusion import halving_chain
    from rdd.registry import check_method

    fill_from_configs(bc, stage_configs(bc))
    for key in ("teacher_checkpoint", "classifier_checkpoint", "inception_weights", "notes"):
        path = getattr(bc, key)
        if path and not (Path(path).is_file() or (key == "teacher_checkpoint" and Path(path).is_dir())):
            raise ConfigError(f"{key} '{path}' not found; fix the path or remove {key}")
    if not (bc.evalnet_config or bc.inception_weights or dry_run):
        raise ConfigError("nothing measures the samples: set inception_weights (torch-fidelity's "
                          "weights-inception-2015-12-05-6726825d.pth) or evalnet_config")
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
    counts = {"ablation_iterations": bc.ablation_iterations, "dpm_solver_steps": bc.dpm_solver_steps or 1,
              "pndm_steps": bc.pndm_steps or 1, "paper_gpus": bc.paper_gpus, "dry_run.iterations": bc.dry_run.iterations,
              "dry_run.max_sampling_steps": bc.dry_run.max_sampling_steps, "dry_run.batch_per_process": bc.dry_run.batch_per_process or 1,
              **{f"{key}[{i}]": n for key in ("pd_iterations", "chain_iterations", "teacher_ddim_steps")
                 for i, n in enumerate(getattr(bc, key))}}
    for key, value in counts.items():
        if value < 1:
            raise ConfigError(f"{key} is {value}; allowed: >= 1")
        if "steps" in key and value > MAX_STEPS:  # sampler step counts, as `rdd sample --steps` allows
            raise ConfigError(f"{key} is {value:,}; allowed: at most {MAX_STEPS:,} sampler steps")
    for key, value in (("eval_samples", bc.eval_samples), ("dry_run.eval_samples", bc.dry_run.eval_samples)):
        if value < 10:
            raise ConfigError(f"{key} is {value}; allowed: >= 10 (IS averages over 10 splits, FD needs a covariance)")


def shortened(bc: BenchmarkConfig) -> BenchmarkConfig:
    """The protocol a dry run follows: every stage and row, `dry_run.iterations` per stage, few samples."""
    n = bc.dry_run.iterations
    return dataclasses.replace(bc, pd_iterations=[n], chain_iterations=[n], ablation_iterations=n,
                               eval_samples=bc.dry_run.eval_samples)


class StageLog:
    """Runs each stage once (skipped when its output exists), records its wall time, and in a dry run its footprint."""

    def __init__(self, out: Path, ctx: DistContext, footprint: bool):
        self.out, self.ctx, self.footprint = out, ctx, footprint
        self.timings = read_json_record(out / "timings.json", "timings record") if (out / "timings.json").is_file() else {}
        self.stages = read_json_record(out / "stages.json", "stages record") if (out / "stages.json").is_file() else {}

    def run(self, name: str, done: Path, fn, folders: tuple[Path, ...] = (), collective: bool = True,
            keep: Path | None = None) -> None:
        """`fn` makes `done`; `collective`: every process runs it (rank 0 decides whether it is needed)."""
        from rdd import dryrun

        # A run's model counts only once its run is finished (a kill after model.pt leaves it unfinished).
        here = done.is_file() and (done.name != MODEL_FILE or is_finished(done.parent))
        finished = broadcast_object(here) if collective else here
        if finished:
            if self.ctx.is_main:
                print(f"[benchmark] {name}: done ({done})")
            return
        if self.ctx.is_main:
            print(f"[benchmark] {name}: running")
        dryrun.reset_peak_memory()
        start, cpu = time.time(), time.process_time()
        fn()
        seconds = time.time() - start
        mine = {**dryrun.peak_memory(), "cpu_seconds": time.process_time() - cpu}
        peaks = all_gather_objects(mine) if collective else [mine]
        if not self.ctx.is_main:
            return
        self.timings[name] = round(seconds, 1)
        self.out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.out / "timings.json", self.timings)
        if self.footprint and folders:
            folders = [f for folder in folders for f in (sorted(folder.glob("stage-*")) or [folder])]  # a chain's stages
            self.stages[name] = dryrun.stage_footprint(folders, peaks, seconds)
            print(dryrun.footprint_line(name, self.stages[name]))
            write_json_atomic(self.out / "stages.json", self.stages)
            dryrun.discard(folders, keep)


def distill_cfg(base: ExperimentConfig, classifier: Path, method: str, teacher_steps: int, target: int,
                iterations: list[int], seed: int = 0) -> ExperimentConfig:
    cfg = dataclasses.replace(base)
    cfg.distill = dataclasses.replace(base.distill, method=method, teacher_steps=teacher_steps, target_steps=target,
                                      iterations=iterations)
    cfg.classifier = dataclasses.replace(base.classifier, checkpoint=str(classifier))
    cfg.train = dataclasses.replace(base.train, seed=seed)
    return cfg


def teacher_path(bc: BenchmarkConfig, out: Path) -> Path:
    return Path(bc.teacher_checkpoint) if bc.teacher_checkpoint else out / "teacher" / MODEL_FILE


def eval_rows(bc: BenchmarkConfig, out: Path) -> list[dict]:
    """Every row of the result tables: what to sample and how."""
    teacher = teacher_path(bc, out)
    rows = [dict(table="teacher", method="DDIM", steps=n, ckpt=teacher, sampler="ddim") for n in bc.teacher_ddim_steps]
    if bc.dpm_solver_steps:
        rows.append(dict(table="teacher", method="DPM-Solver", steps=bc.dpm_solver_steps, ckpt=teacher, sampler="dpm-solver"))
    if bc.pndm_steps:
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
                  config_path: str = "CONFIG", dry_run: bool = False) -> Path:
    protocol = Protocol(shortened(bc) if dry_run else bc, ctx, dry_run)
    protocol.check_data()
    protocol.train_networks()
    protocol.distil()
    barrier()
    protocol.evaluate()
    if not ctx.is_main:
        return protocol.out
    from rdd.report import write_benchmark_results

    return write_benchmark_results(protocol.bc, protocol.out, results, config_path, dry_run, protocol.inception_note())


class Protocol:
    """The stages of one benchmark run, in order, with the configs each reads (shortened in a dry run)."""

    def __init__(self, bc: BenchmarkConfig, ctx: DistContext, dry_run: bool):
        from rdd.metrics import evalnet_in

        self.bc, self.ctx, self.dry_run, self.out = bc, ctx, dry_run, Path(bc.out)
        self.log = StageLog(self.out, ctx, footprint=dry_run)
        self.classifier = Path(bc.classifier_checkpoint) if bc.classifier_checkpoint else self.out / "classifier" / CLASSIFIER_FILE
        self.teacher = teacher_path(bc, self.out)
        self.evalnet = evalnet_in(self.out / "evalnet") if bc.evalnet_config else None
        self.inception = Path(bc.inception_weights) if bc.inception_weights else None
        if self.inception is None and self.evalnet is None:  # a dry run without the weights file
            self.inception = self.out / "inception" / "random-inception.pth"

    def config(self, key: str, kind: str) -> ExperimentConfig:
        from rdd.dryrun import dry_run_overrides

        path = getattr(self.bc, key) or self.bc.distill_config
        cfg = load_config(path, self.bc.overrides)
        if not self.dry_run:
            return cfg
        return load_config(path, self.bc.overrides + dry_run_overrides(kind, cfg, self.bc.dry_run, self.bc.paper_gpus, self.ctx.world))

    def check_data(self) -> None:
        """The data every stage reads, refused in one line before the first stage when it is not what the configs say."""
        from rdd.data import check_dataset

        seen = []
        for key in ("teacher_config", "classifier_config", "distill_config"):
            data = load_config(getattr(self.bc, key), self.bc.overrides).data
            if data not in seen:
                check_dataset(data)
                seen.append(data)

    def train_networks(self) -> None:
        """The frozen networks (classifier, evaluation network, Inception) and the base model."""
        if not self.bc.classifier_checkpoint:
            self.log.run("classifier", self.classifier, lambda: self.train_classifier("classifier_config", self.classifier.parent),
                         (self.classifier.parent,))
        if self.evalnet is not None:
            self.log.run("evalnet", self.evalnet, lambda: self.train_classifier("evalnet_config", self.evalnet.parent, "evalnet-cnn"),
                         (self.evalnet.parent,))
        if self.inception is not None and not self.bc.inception_weights:
            from rdd.metrics import write_random_inception

            self.log.run("inception (random weights)", self.inception,
                         lambda: self.ctx.is_main and write_random_inception(self.inception))
        if not self.bc.teacher_checkpoint:
            from rdd.training import train_base_model

            self.log.run("teacher", self.teacher, lambda: train_base_model(
                self.config("teacher_config", "teacher"), self.teacher.parent, self.ctx, resume=True, desc="teacher"),
                (self.teacher.parent,))

    def train_classifier(self, key: str, folder: Path, arch: str | None = None) -> None:
        from rdd.classifier import train_classifier

        cfg = self.config(key, "classifier")
        limit = cfg.classifier.batch_size if self.dry_run else None  # a dry run tests on one batch of images
        result = train_classifier(cfg, folder, self.ctx, arch=arch, test_limit=limit, resume=True)
        if self.ctx.is_main:
            print(f"[benchmark] {arch or 'classifier'} test accuracy {result['test_accuracy']:.4f}")

    def distil(self) -> None:
        """Plain PD teacher_steps -> pd_to, then each method's chain pd_to -> 1, then the ablation."""
        from rdd.distill import run_progressive

        bc, out = self.bc, self.out
        pd_model = stage_model(out / "pd-chain", 2 * bc.pd_to)
        pd_cfg = distill_cfg(self.config("pd_config", "pd"), self.classifier, "pd", bc.teacher_steps, bc.pd_to, bc.pd_iterations)
        self.log.run(f"pd {bc.teacher_steps}->{bc.pd_to}", pd_model, lambda: run_progressive(pd_cfg, self.teacher, out / "pd-chain", self.ctx),
                     (out / "pd-chain",), keep=pd_model)
        chain_base = self.config("distill_config", "chain")
        for method in bc.chain_methods:
            cfg = distill_cfg(chain_base, self.classifier, method, bc.pd_to, 1, bc.chain_iterations)
            self.log.run(f"chain {method}", stage_model(out / f"chain-{method}", 2), lambda cfg=cfg, method=method: run_progressive(
                cfg, pd_model, out / f"chain-{method}", self.ctx), (out / f"chain-{method}",))
        if bc.ablation_methods:
            self.ablation(pd_model, chain_base)

    def ablation(self, pd_model: Path, chain_base: ExperimentConfig) -> None:
        from rdd.distill import run_progressive, run_stage

        bc, out = self.bc, self.out
        two_step = ablation_teacher(bc, out)  # the common 2-step PD teacher of the ablation
        if not two_step.is_file():
            cfg = distill_cfg(chain_base, self.classifier, "pd", bc.pd_to, 2, bc.chain_iterations)
            self.log.run("pd to 2 steps (ablation teacher)", two_step, lambda: run_progressive(
                cfg, pd_model, two_step.parent.parent, self.ctx), (two_step.parent.parent,))
        stage_index = len(bc.chain_iterations) - 1  # the 2 -> 1 stage's temperature
        for method in bc.ablation_methods:
            for seed in bc.ablation_seeds:
                folder = out / "ablation" / f"{method}-seed{seed}"
                cfg = distill_cfg(chain_base, self.classifier, method, 2, 1, [bc.ablation_iterations], seed)
                self.log.run(f"ablation {method} seed {seed}", folder / MODEL_FILE,
                             lambda cfg=cfg, folder=folder: run_stage(cfg, two_step, folder, self.ctx, stage_index=stage_index), (folder,))

    def evaluate(self) -> None:
        """Every table row, shared round-robin over the processes once the first row (on rank 0) has filled the
        reference caches; in a dry run the teacher's long rows sample with dry_run.max_sampling_steps."""
        rows = eval_rows(self.bc, self.out)
        for index, row in enumerate(rows):
            if index == 1:
                barrier()
            if (index == 0 and self.ctx.is_main) or (index > 0 and index % self.ctx.world == self.ctx.rank):
                result_path = self.out / "eval" / f"{row['name']}.json"
                self.log.run(f"eval {row['name']}", result_path, lambda row=row, path=result_path: self.evaluate_row(row, path),
                             collective=False)
        barrier()

    def evaluate_row(self, row: dict, result_path: Path) -> None:
        from rdd.metrics import evaluate_checkpoint

        bc = self.bc
        steps = min(row["steps"], bc.dry_run.max_sampling_steps) if self.dry_run and row["table"] == "teacher" else row["steps"]
        result = evaluate_checkpoint(
            row["ckpt"], steps, row["sampler"], bc.eval_samples, bc.eval_seed, device=self.ctx.device,
            evalnet=str(self.evalnet) if self.evalnet else None, inception_weights=str(self.inception) if self.inception else None,
            reference_cache=str(self.out / "eval" / "reference.npz"), reference_limit=bc.eval_samples if self.dry_run else None)
        fields = {k: str(v) if isinstance(v, Path) else v for k, v in row.items()}
        # the file is the row's resume marker: written whole or not at all
        write_json_atomic(result_path, {**fields, **result, "steps": row["steps"], "steps_sampled": result["steps"]})

    def inception_note(self) -> str | None:
        if self.inception is not None and not self.bc.inception_weights:
            return (f"FID and IS come from a randomly initialised Inception-v3 ({self.inception}): no inception_weights "
                    "were given, so these numbers check the path and measure nothing")
        return None

