"""Reports a person reads at a glance: a Markdown table in the paper's layout, grids of every
model from the same noise side by side, and each stage's loss curves."""
from __future__ import annotations

import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torchvision.utils import make_grid  # noqa: E402

from rdd.errors import RddError  # noqa: E402
from rdd.files import cached_json, read_json_record, write_atomic, write_json_atomic, write_text_atomic  # noqa: E402
from rdd.layout import MODEL_FILE  # noqa: E402
from rdd.metrics_log import read_metrics  # noqa: E402
from rdd.tables import markdown_table, mean_std  # noqa: E402


def find_models(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob(MODEL_FILE) if "report" not in p.parts)


def label_of(model_path: Path, root: Path) -> str:
    return str(model_path.parent.relative_to(root)) if model_path.parent != root else root.name


def comparison_grid(entries: list[tuple[str, Path, int]], path: Path, num: int = 16, seed: int = 0,
                    sampler_rows: list[tuple[str, Path, int, str]] | None = None) -> Path:
    """One row per model, every row from the same noise (the paper's Fig. 5)."""
    from rdd.sampling import generate
    from rdd.model_io import load_diffusion_model

    rows = [(label, ckpt, steps, "ddim") for label, ckpt, steps in entries] + list(sampler_rows or [])
    fig, axes = plt.subplots(len(rows), 1, figsize=(num * 0.55 + 2.5, len(rows) * 0.75 + 0.3), squeeze=False)
    for ax, (label, ckpt, steps, sampler) in zip(axes[:, 0], rows):
        model, cfg, _ = load_diffusion_model(ckpt)
        images = generate(model, cfg, steps, num, seed, batch_size=num, sampler=sampler, progress=False)
        strip = make_grid(images * 0.5 + 0.5, nrow=num, padding=1, pad_value=1.0).clamp(0, 1)
        ax.imshow(strip.permute(1, 2, 0).numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    fig.tight_layout()
    write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)
    return path


def loss_curves(runs: dict[str, Path], path: Path, columns: int = 3) -> Path:
    """A subplot per run folder with each logged loss term against the step."""
    runs = {name: folder for name, folder in runs.items() if (folder / "metrics.jsonl").is_file()}
    if not runs:
        raise RddError("no metrics.jsonl found: nothing to plot")
    rows = (len(runs) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.0 * rows), squeeze=False)
    for ax, (name, folder) in zip(axes.flat, runs.items()):
        records = read_metrics(folder / "metrics.jsonl")
        keys = [k for k in records[0] if k.startswith("loss")]
        for key in keys:
            ax.plot([r["step"] for r in records], [r[key] for r in records], label=key, linewidth=1)
        ax.set_title(name, fontsize=9)
        ax.set_yscale("log")
        ax.set_xlabel("step", fontsize=8)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(runs):]:
        ax.axis("off")
    fig.tight_layout()
    write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
    return path


def fmt(result: dict | None, key: str = "fd") -> str:
    if not result:
        return "–"
    return f"{result[key]:.4g} / {result['is']:.2f}"


def method_table(results: dict[tuple[str, int], dict], methods: list[str], steps: list[int]) -> list[str]:
    """Rows = steps, columns = methods, cells 'FD / IS' (Table 1's layout)."""
    return markdown_table(["steps", *methods], [[n, *(fmt(results.get((m, n))) for m in methods)] for n in steps]).splitlines()


def run_table(entries: list[tuple[str, Path, int]], results: dict) -> list[str]:
    """One row per run: its label and steps, and FD / IS where it was evaluated."""
    def measured(label: str) -> list[str]:
        return [f"{results[label][2]['fd']:.4g}", f"{results[label][2]['is']:.2f}"] if label in results else []

    headers = ["run", "steps"] + (["FD", "IS"] if results else [])
    return markdown_table(headers, [[label, steps, *measured(label)] for label, _, steps in entries]).splitlines()


def headline_sources(results: dict[str, tuple[str, int, dict]]) -> list[str]:
    """Where a method has several runs at one step count, which one the headline cell shows (the last
    listed, as in the run table below) and which others there are."""
    runs: dict[tuple[str, int], list[str]] = {}
    for label, (method, steps, _) in results.items():
        runs.setdefault((method, steps), []).append(label)
    lines = [f"- {method}, {steps} steps: `{labels[-1]}` (also " + ", ".join(f"`{x}`" for x in labels[:-1]) + ")"
             for (method, steps), labels in sorted(runs.items()) if len(labels) > 1]
    return ["Cells with several runs show one of them:", "", *lines, ""] if lines else []


def _check_report_target(root: Path, evalnet: str | None, overwrite: bool) -> list[Path]:
    """The models under `root`, once the page's files are known to be free to write (or --overwrite)."""
    from rdd.metrics import load_evalnet_checkpoint

    if not root.is_dir():
        raise RddError(f"report folder '{root}' not found; point rdd report at a folder of rdd train/distill runs")
    models = find_models(root)
    if not models:
        raise RddError(f"no {MODEL_FILE} under '{root}'; point rdd report at a folder of rdd train/distill runs")
    taken = [p for p in (root / "report.md", root / "report") if p.exists() or p.is_symlink()]
    if taken and not overwrite:
        raise RddError(f"'{taken[0]}' already exists; pass --overwrite to replace the report, or move it away")
    if evalnet:
        load_evalnet_checkpoint(evalnet)
    return models


def report_folder(root: str | Path, evalnet: str | None = None, num_samples: int = 2000, seed: int = 0,
                  overwrite: bool = False) -> Path:
    """`rdd report DIR`: every model.pt under DIR, evaluated (when an evalnet is given), gridded and plotted.
    A cached evaluation is reused only for the same model file, evaluation network, sample count and seed."""
    from rdd.files import digest
    from rdd.metrics import check_sample_count, evaluate_checkpoint
    from rdd.model_io import load_diffusion_model

    root = Path(root)
    if evalnet:
        check_sample_count(num_samples)
    models = _check_report_target(root, evalnet, overwrite)
    out = root / "report"
    entries, results = [], {}
    for model_path in models:
        _, _, meta = load_diffusion_model(model_path)
        steps = meta.get("sampling_steps") or 64
        label = label_of(model_path, root)
        entries.append((label, model_path, steps))
        if evalnet:
            stamp = {"model": digest(model_path), "evalnet": digest(evalnet), "num": num_samples, "seed": seed, "steps": steps}
            result = cached_json(root / "eval" / (label.replace("/", "__") + ".json"), lambda: evaluate_checkpoint(
                model_path, steps, "ddim", num_samples, seed, evalnet=evalnet, reference_cache=str(root / "eval" / "reference.npz")),
                stamp)
            results[label] = (meta.get("method", "base"), steps, result)
    grid = comparison_grid(entries, out / "grids.png", seed=seed)
    curves = loss_curves({label: path.parent for label, path, _ in entries}, out / "loss_curves.png")
    lines = [f"# Report: {root}", ""]
    if results:
        methods = sorted({m for m, _, _ in results.values()})
        steps = sorted({n for _, n, _ in results.values()})
        by_key = {(m, n): r for m, n, r in results.values()}
        lines += [f"FD / IS of the evaluation network on {num_samples} samples (lower FD is better).", ""]
        lines += method_table(by_key, methods, steps) + [""] + headline_sources(results)
    lines += run_table(entries, results)
    lines += ["", "Every row from the same noise:", "", f"![grids]({grid.relative_to(root)})", "",
              "Loss curves:", "", f"![curves]({curves.relative_to(root)})", ""]
    page = root / "report.md"
    write_text_atomic(page, "\n".join(lines))
    return page


def load_eval_results(out: Path) -> list[dict]:
    return [read_json_record(p, "evaluation result") for p in sorted((out / "eval").glob("*.json")) if p.name != "reference.json"]


def chain_ordering_lines(main: dict, methods: list[str], steps: list[int]) -> list[str]:
    """Table 1's claim: FD falls along `methods` as the benchmark lists them (PD > RCFD > RDD in the paper)."""
    lines, order = [], list(reversed(methods))
    for n in steps:
        fd = {m: main[(m, n)]["fd"] for m in methods if (m, n) in main}
        if len(methods) < 2 or len(fd) < len(methods):
            continue
        holds = all(fd[a] < fd[b] for a, b in zip(order, order[1:]))
        values = ", ".join(f"{m.upper()} {fd[m]:.4g}" for m in order)
        lines.append(f"- {n} step{'s' if n > 1 else ''}: {values}: {' < '.join(m.upper() for m in order)} "
                     f"{'holds' if holds else 'does not hold'} (one training seed per chain).")
    return lines


def ablation_ordering_lines(ablation: dict[str, list[dict]], methods: list[str], baseline: str) -> list[str]:
    """Table 3's claim: each method listed after `baseline` improves on it, the gap set against the baseline's seed spread."""
    base = [r["fd"] for r in ablation.get(baseline, [])]
    spread = (statistics.stdev(base) if len(base) > 1 else 0.0) or float("nan")
    lines = []
    for method in methods[methods.index(baseline) + 1:] if baseline in methods else []:
        values = [r["fd"] for r in ablation.get(method, [])]
        if not values or not base:
            continue
        gap = statistics.mean(base) - statistics.mean(values)
        verdict = "improves on" if gap > 0 else "does not improve on"
        lines.append(f"- 1 step, {method}: FD {statistics.mean(values):.4g} vs {baseline} alone {statistics.mean(base):.4g}: "
                     f"{verdict} {baseline} by {gap:+.3g}, {abs(gap) / spread:.1f}× the seed std of {baseline} ({spread:.4g}).")
    return lines


def machine_line() -> str:
    import os
    import platform

    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, {gpu}; Python {platform.python_version()}, torch {torch.__version__}"


def main_rows(rows: list[dict]) -> dict[tuple[str, int], dict]:
    """Table 1's rows by (method, steps); the one at pd_to steps is the plain PD chain's, every chain's teacher."""
    return {(r["method"], int(r["steps"])): r for r in rows if r["table"] == "main"}


def benchmark_tables(bc, rows: list[dict], steps: list[int]) -> list[str]:
    """RESULTS.md's tables: Table 1's layout, the teacher's training-free rows, Table 3's layout, the orderings."""
    order = {"DDIM": 0, "DPM-Solver": 1, "PNDM": 2}
    teacher = sorted((r for r in rows if r["table"] == "teacher"), key=lambda r: (order.get(r["method"], 3), r["steps"]))
    main = main_rows(rows)
    ablation: dict[str, list[dict]] = {}
    for r in rows:
        if r["table"] == "ablation":
            ablation.setdefault(r["method"], []).append(r)
    chains_teacher = next((r for (_, n), r in main.items() if n == bc.pd_to), None)
    lines = ["## Table 1 layout: students of each method", ""]
    lines += method_table(main, bc.chain_methods, sorted(steps, reverse=True))
    lines += ["", f"PD {bc.pd_to} steps (the chains' common teacher): {fmt(chains_teacher)}", "",
              "## The teacher without training", ""]
    lines += markdown_table(["sampler", "steps (NFE)", "FD", "IS"], [
        [r["method"], f"{r['steps']} ({r['nfe']})", f"{r['fd']:.4g}", f"{r['is']:.2f}"] for r in teacher]).splitlines()
    lines += ["", "## Table 3 layout: the 2 → 1 stage, 1-step FD over seeds (mean ± std)", ""]
    lines += markdown_table(["method", "FD", "IS", "seeds"], [
        [m, mean_std([r["fd"] for r in ablation.get(m, [])]), mean_std([r["is"] for r in ablation.get(m, [])]),
         len(ablation.get(m, []))] for m in bc.ablation_methods]).splitlines()
    orderings = (chain_ordering_lines(main, bc.chain_methods, sorted(steps))
                 + ablation_ordering_lines(ablation, bc.ablation_methods, bc.ablation_baseline))
    return lines + ["", "## Do the paper's orderings hold here?", ""] + (orderings or ["- not enough finished rows to compare yet."])


def benchmark_figures(bc, out: Path, dest: Path, rows: list[dict], steps: list[int]) -> list[str]:
    """The same-noise grid of every chain's models and the loss curves of every stage."""
    main = main_rows(rows)
    grid_entries = [(f"DDIM teacher {bc.teacher_steps}", out / "teacher" / MODEL_FILE, bc.teacher_steps)]
    grid_entries += [(f"PD {n}", Path(r["ckpt"]), n) for (_, n), r in main.items() if n == bc.pd_to]
    grid_entries += [(f"{m} {n}", Path(main[(m, n)]["ckpt"]), n) for n in sorted(steps, reverse=True)
                     for m in bc.chain_methods if (m, n) in main]
    grid = comparison_grid(grid_entries, dest / "grids.png", seed=bc.eval_seed)
    runs = {f"{m} {p.name}": p for m in bc.chain_methods for p in sorted((out / f"chain-{m}").glob("stage-*"))}
    runs.update({f"ablation {p.name}": p for p in sorted((out / "ablation").glob("*-seed0"))})
    curves = loss_curves(runs, dest / "loss_curves.png")
    return ["", "## Samples from the same noise", "", f"![grids]({grid.name})", "", "## Loss curves", "",
            f"![curves]({curves.name})", ""]


DISPLAY = {"pd": "PD", "pd_lpips": "PD+LPIPS", "rcfd": "RCFD", "rdd": "RDD"}


def scores(row: dict) -> tuple[float, float]:
    """(distance, IS) of a row: FID and Inception's IS when measured with Inception, else the evaluation network's FD and IS."""
    return (row["fid"], row["isc"]) if "fid" in row else (row["fd"], row["is"])


def paper_layout(bc, rows: list[dict]) -> list[str]:
    """The paper's table (steps, method, IS, FID) with its numbers beside ours; rows of either side only show a dash."""
    ours = {}
    for r in rows:
        if r["table"] != "ablation":
            ours[(r["method"], int(r["steps"]))] = r
    paper = {(method, int(n)): values for method, by_steps in (bc.paper_results or {}).items() for n, values in by_steps.items()}
    order = list(dict.fromkeys([m for m, _ in paper] + [m for m, _ in ours]))
    keys = sorted(set(ours) | set(paper), key=lambda k: (k[1], order.index(k[0])))

    def cell(value, spec=".2f"):
        return "–" if value is None else f"{value:{spec}}"

    table = []
    for method, steps in keys:
        mine = scores(ours[(method, steps)]) if (method, steps) in ours else (None, None)
        theirs = paper.get((method, steps)) or [None, None]
        sampled = ours.get((method, steps), {}).get("steps_sampled")
        label = DISPLAY.get(method, method) + (f" (sampled with {sampled} steps)" if sampled and sampled != steps else "")
        table.append([steps, label, cell(mine[1]), cell(theirs[1]), cell(mine[0]), cell(theirs[0])])
    metric = "FID" if any("fid" in r for r in rows) else "FD"
    return markdown_table(["steps", "method", "IS (ours)", "IS (paper)", f"{metric} (ours)", "FID (paper)"], table).splitlines()


def stage_table(out: Path) -> list[str]:
    """The dry run's footprint of every stage (rdd.dryrun)."""
    from rdd.dryrun import human_bytes

    path = out / "stages.json"
    if not path.is_file():
        return []
    stages = read_json_record(path, "stages record")

    def count(stats, key):
        return f"{stats[key] / 1e6:.2f} M" if key in stats else "–"

    table = [[name, s.get("global_batch", "–"), count(s, "trainable"), count(s, "frozen"),
              " / ".join(human_bytes(b) for b in s.get("peak_cuda") or s["peak_rss"]),
              human_bytes(s["model_bytes"]) if "model_bytes" in s else "–", human_bytes(s["state_bytes"]) if "state_bytes" in s else "–",
              human_bytes(s["disk_bytes"]), f"{s['seconds_per_iteration']:.2f}" if s.get("seconds_per_iteration") else "–",
              f"{s['cpu_seconds_per_iteration']:.2f}" if s.get("cpu_seconds_per_iteration") else "–", s["seconds"],
              " / ".join(f"{c:.0f}" for c in s.get("cpu_seconds", []))]
             for name, s in stages.items()]
    return ["", "## Every stage's footprint (dry run)", "",
            "Peak memory is per process (resident set on a CPU, max_memory_allocated on a GPU); s/iteration is a stage's "
            "last iteration (the first also pays for warm-up), in wall time and in rank 0's CPU time (what it costs on a "
            "machine shared with other jobs); disk is the stage's folders before the dry run deleted what no later stage reads.", ""] + markdown_table(
        ["stage", "global batch", "trainable", "frozen", "peak memory per process", "model file", "resume state", "disk", "s/iteration",
         "CPU s/iteration", "stage s", "CPU s per process"],
        table).splitlines()


def results_header(bc, rows: list[dict], dry_run: bool, note: str | None) -> list[str]:
    metric = ("FID / IS of Inception-v3 against the training set" if any("fid" in r for r in rows)
              else "FD / IS of the independent evaluation network against the test set")
    lines = [f"# {bc.name}: {'dry run' if dry_run else 'results'}", ""]
    if dry_run:
        lines += [f"**Dry run**: every stage at full width for {bc.dry_run.iterations} iterations, each row on "
                  f"{bc.eval_samples} samples (the FID reference: the first {bc.eval_samples} training images), the teacher's "
                  f"rows with at most {bc.dry_run.max_sampling_steps} sampling steps, no grids. It checks that every stage runs "
                  "and what each costs; the numbers measure nothing.", ""]
        if bc.dry_run.batch_per_process:
            lines += [f"Batch per process reduced to {bc.dry_run.batch_per_process} (dry_run.batch_per_process); "
                      "the configs' per-GPU batch is train.batch_size / paper_gpus "
                      f"({bc.paper_gpus}). The footprint table gives each stage's batch.", ""]
    if note:
        lines += [f"Note: {note}.", ""]
    notes = getattr(bc, "notes", None)
    lines += ([Path(notes).read_text().strip(), ""] if notes and Path(notes).is_file() else [])
    return lines + [f"{metric}, {bc.eval_samples} samples (lower distance is better, IS higher).", ""]


def write_benchmark_results(bc, out: Path, dest: Path | None = None, config_path: str = "CONFIG", dry_run: bool = False,
                            note: str | None = None) -> Path:
    """RESULTS.md + results.json of `rdd benchmark`, in the paper's table layouts."""
    dest = Path(dest or out / "results")
    dest.mkdir(parents=True, exist_ok=True)
    rows = load_eval_results(out)
    timings = read_json_record(out / "timings.json", "timings record") if (out / "timings.json").is_file() else {}
    steps = [bc.pd_to // 2 ** k for k in range(1, 4) if bc.pd_to // 2 ** k >= 1]
    lines = results_header(bc, rows, dry_run, note)
    if bc.paper_results:
        lines += [f"## {bc.paper_table or 'The paper'}: ours beside the paper's", ""] + paper_layout(bc, rows)
    else:
        lines += benchmark_tables(bc, rows, steps)
    command = f"rdd benchmark {config_path}{' --dry-run' if dry_run else ''} --results {dest}"
    lines += ["", "## Machine and commands", "", f"- Machine: {machine_line()}.",
              f"- Everything above: `{command}` (resumable: finished stages are skipped; run folders, logs and checkpoints "
              f"under `{out}`).",
              f"- One row again: `rdd eval --ckpt CKPT --steps N --num-samples {bc.eval_samples} --seed {bc.eval_seed} "
              + (f"--evalnet {out}/evalnet/evalnet.pt" if bc.evalnet_config else f"--inception-weights {bc.inception_weights or 'W'}")
              + "` (the `ckpt` of each row is in results.json)."]
    lines += stage_table(out) + ["", "## Wall time per stage (s)", ""]
    lines += markdown_table(["stage", "seconds"], list(timings.items())).splitlines()
    if not dry_run:
        lines += benchmark_figures(bc, out, dest, rows, steps)
    write_json_atomic(dest / "results.json", {"rows": rows, "timings": timings})
    page = dest / "RESULTS.md"
    write_text_atomic(page, "\n".join(lines) + "\n")
    return page
