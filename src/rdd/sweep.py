"""`rdd sweep`: one stage (or a chain) over a grid of config values x seeds, evaluated along the way.

Each grid point and seed is one run folder `OUT/runs/<point>/seed<S>`; a run that has its
`result.json` is skipped, so an interrupted sweep resumes where it stopped (an unfinished stage
resumes from its last checkpoint). Every run is evaluated with the evaluation network at the
iterations of `--eval-at` (snapshots of the same run) and, for a chain, after every stage.
The sweep writes `sweep.json`, `sweep.md` (mean ± std over seeds) and one plot per swept key
in the layout of the paper's Fig. 6-9, plus FD over training length when several points are evaluated.
"""
from __future__ import annotations

import itertools
import os
import statistics
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

from rdd.errors import RddError
from rdd.files import cached_json, read_json_record, write_atomic, write_json_atomic, write_text_atomic
from rdd.tables import markdown_table, mean_std

RESULT_FILE = "result.json"


@dataclass
class SweepSpec:
    config: str | None
    teacher: str
    out: str
    grid: list[tuple[str, list[str]]]
    seeds: list[int]
    overrides: list[str] = field(default_factory=list)
    to: int | None = None  # chain target steps; None: one stage teacher -> teacher/2
    eval_at: list[int] = field(default_factory=list)  # iterations to evaluate (the stage's end is always evaluated)
    eval_samples: int = 5000
    eval_seed: int = 0
    evalnet: str | None = None
    reference: str = "val"  # val (held-out training images, for choosing) | test (for reporting)
    holdout: int = 10000
    record: str | None = None  # folder of per-run result files kept outside the (git-ignored) run folders
    plugins: list[str] = field(default_factory=list)  # --plugin: imported again by each run's process


@dataclass
class RunSpec:
    point: str  # e.g. "distill.beta=0.1,distill.tau_m=0.4"
    values: dict
    seed: int
    folder: str
    slug: str


def parse_grid(items: list[str]) -> list[tuple[str, list[str]]]:
    grid = []
    for item in items:
        key, sep, raw = item.partition("=")
        values = [v.strip() for v in raw.split(",") if v.strip()] if sep else []
        if not key.strip() or not values:
            raise RddError(f"--grid '{item}' must look like section.key=v1,v2,... (e.g. distill.beta=0.01,0.1)")
        if key.strip() in (k for k, _ in grid):
            raise RddError(f"--grid {key.strip()} is given twice (only the last would run); list all its values in one --grid")
        grid.append((key.strip(), values))
    return grid


def parse_ints(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise RddError(f"{what} '{text}' must be comma-separated integers, e.g. 0,1,2") from None
    if not values:
        raise RddError(f"{what} is empty; give at least one integer")
    twice = sorted({v for v in values if values.count(v) > 1})
    if twice:
        raise RddError(f"{what} '{text}' names {twice[0]} twice; give each value once")
    return values


def point_name(values: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in values.items()) or "default"


def expand(spec: SweepSpec) -> list[RunSpec]:
    keys = [k for k, _ in spec.grid]
    runs = []
    for combo in itertools.product(*[values for _, values in spec.grid]):
        values = dict(zip(keys, combo))
        name = point_name(values)
        slug = name.replace("/", "_").replace(",", "__")
        runs += [RunSpec(name, values, seed, str(Path(spec.out) / "runs" / slug / f"seed{seed}"), slug) for seed in spec.seeds]
    return runs


def run_overrides(spec: SweepSpec, run: RunSpec) -> list[str]:
    """The sweep's overrides, the grid values, the seed and the snapshots, in the order they apply."""
    overrides = list(spec.overrides) + [f"{k}={v}" for k, v in run.values.items() if k != "method"]
    if "method" in run.values:
        overrides.append(f"distill.method={run.values['method']}")
    overrides += [f"train.seed={run.seed}", f"data.holdout={spec.holdout}",
                  f"train.snapshot_at=[{','.join(map(str, spec.eval_at))}]"]
    return overrides


def run_config(spec: SweepSpec, run: RunSpec, teacher_cfg=None):
    """The run's config: base file and the run's overrides, the data following the teacher where they leave it
    unnamed (as for rdd distill); validated here. `teacher_cfg`: the teacher's, when already loaded."""
    from rdd.distill import load_stage_config

    return load_stage_config(spec.config, run_overrides(spec, run), spec.teacher, "sweep", teacher_cfg)


def check_sweep(spec: SweepSpec) -> list[RunSpec]:
    """Every run's config and every path, checked before the first run starts."""
    from rdd.rundir import check_inputs_outside

    check_inputs_outside(spec.out, {"teacher": spec.teacher, "evaluation network": spec.evalnet})
    if not Path(spec.teacher).exists():
        raise RddError(f"teacher '{spec.teacher}' not found; pass a model.pt (e.g. assets/fmnist/two_step.pt) or a diffusers folder")
    if not spec.evalnet or not Path(spec.evalnet).is_file():
        raise RddError(f"evaluation network '{spec.evalnet}' not found; pass --evalnet (e.g. assets/fmnist/evalnet.pt)")
    if spec.reference not in ("val", "test"):
        raise RddError(f"--reference {spec.reference!r}: choose val (for choosing settings) or test (for reporting)")
    from rdd.config import check_not_set_by_command, command_line_keys

    check_not_set_by_command("sweep", command_line_keys(spec.overrides))
    check_not_set_by_command("sweep", [key for key, _ in spec.grid], "--grid")
    if any(key == "method" for key, _ in spec.grid) and "distill.method" in command_line_keys(spec.overrides):
        raise RddError("--grid method=... and --set distill.method=... both name the method; pass one of them")
    from rdd.distill import check_data_fits_teacher
    from rdd.methods import require_classifier
    from rdd.metrics import load_evalnet_checkpoint
    from rdd.model_io import load_diffusion_model

    load_evalnet_checkpoint(spec.evalnet)  # a safe load: a file carrying code is refused before any run
    _, teacher_cfg, _ = load_diffusion_model(spec.teacher)
    runs = expand(spec)
    for run in runs:
        cfg = run_config(spec, run, teacher_cfg)  # the teacher is read once for every grid point
        require_classifier(cfg)
        check_data_fits_teacher(cfg.data, teacher_cfg, spec.teacher)
        # every stage that runs is evaluated at --eval-at: a one-stage sweep trains distill.iterations[0]
        shortest = cfg.distill.iterations[0] if spec.to is None else min(cfg.distill.iterations)
        late = [i for i in spec.eval_at if i >= shortest]
        if late:
            raise RddError(f"--eval-at {late[0]} is not before the last iteration of a stage ({shortest}), which is "
                           "always evaluated; drop it or train longer")
    return runs


def eval_stamp(spec: SweepSpec) -> dict:
    """Everything besides the model that an evaluation's numbers depend on: results made otherwise are not reused."""
    from rdd.files import digest

    return {"samples": spec.eval_samples, "seed": spec.eval_seed, "evalnet": digest(spec.evalnet),
            "reference": spec.reference, "holdout": spec.holdout}


def evaluate(spec: SweepSpec, ckpt: Path, cache: Path) -> dict:
    from rdd.files import digest
    from rdd.metrics import evaluate_checkpoint

    return cached_json(cache, lambda: evaluate_checkpoint(
        ckpt, None, "ddim", spec.eval_samples, spec.eval_seed, evalnet=spec.evalnet,
        reference_cache=str(Path(spec.out) / f"reference_{spec.reference}.npz"),
        progress=True, reference_split=spec.reference, holdout=spec.holdout), {**eval_stamp(spec), "model": digest(ckpt)})


def execute(spec: SweepSpec, run: RunSpec) -> dict:
    """Train one run (resuming a partial one) and evaluate its snapshots and stages."""
    import time

    import torch

    from rdd.config import per_stage
    from rdd.distill import run_progressive, run_stage
    from rdd.distributed import init_distributed
    from rdd.model_io import load_diffusion_model
    from rdd.plugins import load_plugins

    load_plugins(spec.plugins)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    folder = Path(run.folder)
    cfg = run_config(spec, run)
    ctx = init_distributed()
    start = time.time()
    if spec.to is None:
        stages = [run_stage(cfg, spec.teacher, folder, ctx)]
    else:
        cfg.distill.target_steps = spec.to
        stages = run_progressive(cfg, spec.teacher, folder, ctx)
    seconds = time.time() - start
    evaluations = []
    for index, model in enumerate(stages):
        _, _, meta = load_diffusion_model(model)
        last = per_stage(cfg.distill.iterations, index)
        points = [(i, model.parent / "snapshots" / f"model-{i:07d}.pt") for i in spec.eval_at if i < last] + [(last, model)]
        for iteration, ckpt in points:
            if not ckpt.is_file():
                continue
            r = evaluate(spec, ckpt, model.parent / f"eval-{spec.reference}-{iteration:07d}.json")
            evaluations.append({"stage": index, "steps": meta["sampling_steps"], "iteration": iteration,
                                "fd": r["fd"], "is": r.get("is")})
            print(f"[sweep] {run.point} seed {run.seed}: {meta['sampling_steps']} steps after {iteration} iterations: "
                  f"FD {r['fd']:.3f} ({spec.reference})", flush=True)
    result = {"point": run.point, "values": run.values, "seed": run.seed, "train_seconds": round(seconds, 1),
              "evaluations": evaluations, "final_fd": evaluations[-1]["fd"], "reference": spec.reference,
              "eval_samples": spec.eval_samples, "teacher": spec.teacher, "config_file": spec.config,
              "overrides": run_overrides(spec, run), "threads": torch.get_num_threads(), "eval_stamp": eval_stamp(spec)}
    write_json_atomic(folder / RESULT_FILE, result)
    if spec.record:
        write_json_atomic(record_path(spec, run), result)
    return result


def record_path(spec: SweepSpec, run: RunSpec) -> Path:
    return Path(spec.record) / f"{run.slug}-seed{run.seed}.json"


def finished(spec: SweepSpec, run: RunSpec) -> dict | None:
    """The run's result if it has one: its record (which survives a new machine) or its run folder's."""
    for path in ([record_path(spec, run)] if spec.record else []) + [Path(run.folder) / RESULT_FILE]:
        if path.is_file():
            result = read_json_record(path, "sweep result")
            # a result evaluated otherwise (samples, seed, network, reference) is evaluated again; one from before
            # the stamp is compared by what it recorded
            legacy = "eval_stamp" not in result and (result.get("eval_samples"), result.get("reference")) == (
                spec.eval_samples, spec.reference)
            return result if legacy or result.get("eval_stamp") == eval_stamp(spec) else None
    return None


def run_sweep(spec: SweepSpec, jobs: int = 1) -> Path:
    runs = check_sweep(spec)
    out = Path(spec.out)
    out.mkdir(parents=True, exist_ok=True)
    todo = [r for r in runs if finished(spec, r) is None]
    print(f"[sweep] {len(runs)} runs, {len(runs) - len(todo)} done, {len(todo)} to run ({jobs} at a time)")
    if jobs <= 1:
        for i, run in enumerate(todo, 1):
            print(f"[sweep] {i}/{len(todo)}: {run.point} seed {run.seed}")
            result = execute(spec, run)
            print(f"[sweep] done: {result['point']} seed {result['seed']}: FD {result['final_fd']:.3f}")
    else:
        with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
            for result in pool.map(execute, [spec] * len(todo), todo):
                print(f"[sweep] done: {result['point']} seed {result['seed']}: FD {result['final_fd']:.3f}")
    results = [finished(spec, r) for r in runs]
    write_json_atomic(out / "sweep.json", {"spec": asdict(spec), "results": results})
    write_text_atomic(out / "sweep.md", sweep_table(spec, results))
    plot_sweep(spec, results, out)
    return out


def summarise(results: list[dict]) -> dict:
    """(point, stage, steps, iteration) -> FDs over seeds."""
    table: dict = {}
    for r in results:
        for e in r["evaluations"]:
            table.setdefault((r["point"], e["stage"], e["steps"], e["iteration"]), []).append(e["fd"])
    return table


def sweep_table(spec: SweepSpec, results: list[dict]) -> str:
    rows = [[point, f"{steps}", f"{iteration}", mean_std(fds, ".3f"), f"{len(fds)}"]
            for (point, _, steps, iteration), fds in summarise(results).items()]
    head = (f"# Sweep `{spec.out}`\n\nTeacher `{spec.teacher}`, config `{spec.config}`, seeds {spec.seeds}; "
            f"FD of the evaluation network on {spec.eval_samples} samples against the **{spec.reference}** "
            f"reference (mean ± std over seeds).\n\n")
    return head + markdown_table(["point", "steps", "iteration", "FD", "seeds"], rows) + "\n"


def plot_sweep(spec: SweepSpec, results: list[dict], out: Path) -> None:
    """Per swept key: final FD against the key's values with seed error bars, one line per other setting
    (the paper's Fig. 6-9); and FD against training iterations when several were evaluated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finals: dict = {}
    for r in results:
        finals.setdefault(r["point"], []).append(r["final_fd"])
    values_of = {r["point"]: r["values"] for r in results}
    for key, key_values in spec.grid:
        fig, ax = plt.subplots(figsize=(4.5, 3.2))
        others = sorted({point_name({k: v for k, v in values_of[p].items() if k != key}) for p in finals})
        for other in others:
            xs, means, stds = [], [], []
            for value in key_values:
                point = next((p for p in finals if values_of[p][key] == value
                              and point_name({k: v for k, v in values_of[p].items() if k != key}) == other), None)
                if point is None:
                    continue
                fds = finals[point]
                xs.append(value)
                means.append(statistics.mean(fds))
                stds.append(statistics.stdev(fds) if len(fds) > 1 else 0.0)
            ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=other)
        ax.set_xlabel(key)
        ax.set_ylabel(f"FD ({spec.reference}) ↓")
        if len(others) > 1:
            ax.legend(fontsize=7)
        fig.tight_layout()
        write_atomic(out / f"plot_{key.replace('.', '_')}.png", lambda f: fig.savefig(f, format="png", dpi=120))
        plt.close(fig)
    curves = summarise(results)
    if len({k[3] for k in curves}) > 1:
        fig, ax = plt.subplots(figsize=(5, 3.4))
        for point in dict.fromkeys(k[0] for k in curves):
            keys = sorted(k for k in curves if k[0] == point and k[1] == 0)
            means = [statistics.mean(curves[k]) for k in keys]
            stds = [statistics.stdev(curves[k]) if len(curves[k]) > 1 else 0.0 for k in keys]
            ax.errorbar([k[3] for k in keys], means, yerr=stds, marker="o", capsize=3, label=point)
        ax.set_xscale("log")
        ax.set_xlabel("iterations of the stage")
        ax.set_ylabel(f"FD ({spec.reference}) ↓")
        ax.legend(fontsize=7)
        fig.tight_layout()
        write_atomic(out / "plot_iterations.png", lambda f: fig.savefig(f, format="png", dpi=120))
        plt.close(fig)
