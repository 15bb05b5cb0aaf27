"""Reports a person reads at a glance: a Markdown table in the paper's layout, grids of every
model from the same noise side by side, and each stage's loss curves."""
from __future__ import annotations

import json
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torchvision.utils import make_grid  # noqa: E402

from rdd.errors import RddError  # noqa: E402
from rdd.metrics_log import read_metrics  # noqa: E402
from rdd.layout import MODEL_FILE  # noqa: E402


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
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
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
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def fmt(result: dict | None, key: str = "fd") -> str:
    if not result:
        return "–"
    return f"{result[key]:.4g} / {result['is']:.2f}"


def mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.4g} (1 seed)"
    return f"{statistics.mean(values):.4g} ± {statistics.stdev(values):.4g}"


def method_table(results: dict[tuple[str, int], dict], methods: list[str], steps: list[int]) -> list[str]:
    """Rows = steps, columns = methods, cells 'FD / IS' (Table 1's layout)."""
    lines = ["| steps | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for n in steps:
        lines.append(f"| {n} | " + " | ".join(fmt(results.get((m, n))) for m in methods) + " |")
    return lines


def report_folder(root: str | Path, evalnet: str | None = None, num_samples: int = 2000, seed: int = 0) -> Path:
    """`rdd report DIR`: every model.pt under DIR, evaluated (when an evalnet is given), gridded and plotted."""
    from rdd.model_io import load_diffusion_model

    root = Path(root)
    if not root.is_dir():
        raise RddError(f"report folder '{root}' not found; point rdd report at a folder of rdd train/distill runs")
    models = find_models(root)
    if not models:
        raise RddError(f"no {MODEL_FILE} under '{root}'; point rdd report at a folder of rdd train/distill runs")
    out = root / "report"
    entries, results = [], {}
    for model_path in models:
        _, _, meta = load_diffusion_model(model_path)
        steps = meta.get("sampling_steps") or 64
        label = label_of(model_path, root)
        entries.append((label, model_path, steps))
        if evalnet:
            from rdd.metrics import evaluate_checkpoint

            cache = root / "eval" / (label.replace("/", "__") + ".json")
            if cache.is_file():
                result = json.loads(cache.read_text())
            else:
                result = evaluate_checkpoint(model_path, steps, "ddim", num_samples, seed, evalnet=evalnet,
                                             reference_cache=str(root / "eval" / "reference.npz"))
                cache.parent.mkdir(parents=True, exist_ok=True)
                cache.write_text(json.dumps(result, indent=2))
            results[label] = (meta.get("method", "base"), steps, result)
    grid = comparison_grid(entries, out / "grids.png", seed=seed)
    curves = loss_curves({label: path.parent for label, path, _ in entries}, out / "loss_curves.png")
    lines = [f"# Report: {root}", ""]
    if results:
        methods = sorted({m for m, _, _ in results.values()})
        steps = sorted({n for _, n, _ in results.values()})
        by_key = {(m, n): r for m, n, r in results.values()}
        lines += [f"FD / IS of the evaluation network on {num_samples} samples (lower FD is better).", ""]
        lines += method_table(by_key, methods, steps) + [""]
    lines += ["| run | steps | " + ("FD | IS |" if results else ""), "|---|---|" + ("---|---|" if results else "")]
    for label, _, steps in entries:
        extra = f" {results[label][2]['fd']:.4g} | {results[label][2]['is']:.2f} |" if label in results else ""
        lines.append(f"| {label} | {steps} |{extra}")
    lines += ["", "Every row from the same noise:", "", f"![grids]({grid.relative_to(root)})", "",
              "Loss curves:", "", f"![curves]({curves.relative_to(root)})", ""]
    page = root / "report.md"
    page.write_text("\n".join(lines))
    return page


def load_eval_results(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "eval").glob("*.json")) if p.name != "reference.json"]


def ordering_lines(main: dict, ablation: dict[str, list[dict]], steps: list[int]) -> list[str]:
    """Plain statements of Table 1's (RDD < RCFD < PD in FD) and Table 3's (each relational term
    improves on CFD alone) orderings, with the gaps set against the spread over seeds."""
    lines = []
    for n in steps:
        fd = {m: main[(m, n)]["fd"] for m in ("pd", "rcfd", "rdd") if (m, n) in main}
        if len(fd) < 3:
            continue
        holds = fd["rdd"] < fd["rcfd"] < fd["pd"]
        lines.append(f"- {n} step{'s' if n > 1 else ''}: RDD {fd['rdd']:.4g}, RCFD {fd['rcfd']:.4g}, PD {fd['pd']:.4g}: "
                     f"RDD < RCFD < PD {'holds' if holds else 'does not hold'} (one training seed per chain).")
    base = [r["fd"] for r in ablation.get("rcfd", [])]
    spread = (statistics.stdev(base) if len(base) > 1 else 0.0) or float("nan")
    for method in ("cfd_ii", "cfd_is", "cfd_m", "rdd"):
        values = [r["fd"] for r in ablation.get(method, [])]
        if not values or not base:
            continue
        gap = statistics.mean(base) - statistics.mean(values)
        verdict = "improves on" if gap > 0 else "does not improve on"
        lines.append(f"- 1 step, {method}: FD {statistics.mean(values):.4g} vs CFD alone {statistics.mean(base):.4g}: "
                     f"{verdict} CFD by {gap:+.3g}, {abs(gap) / spread:.1f}× the seed std of CFD ({spread:.4g}).")
    return lines or ["- not enough finished rows to compare yet."]


def machine_line() -> str:
    import os
    import platform

    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, {gpu}; Python {platform.python_version()}, torch {torch.__version__}"


def write_benchmark_results(bc, out: Path, dest: Path | None = None, config_path: str = "CONFIG") -> Path:
    """RESULTS.md + results.json of `rdd benchmark`, in the paper's table layouts."""
    dest = Path(dest or out / "results")
    dest.mkdir(parents=True, exist_ok=True)
    rows = load_eval_results(out)
    order = {"DDIM": 0, "DPM-Solver": 1, "PNDM": 2}
    teacher = sorted((r for r in rows if r["table"] == "teacher"), key=lambda r: (order.get(r["method"], 3), r["steps"]))
    main = {(r["method"], int(r["steps"])): r for r in rows if r["table"] == "main"}
    ablation: dict[str, list[dict]] = {}
    for r in rows:
        if r["table"] == "ablation":
            ablation.setdefault(r["method"], []).append(r)
    timings = json.loads((out / "timings.json").read_text()) if (out / "timings.json").is_file() else {}

    steps = [bc.pd_to // 2 ** k for k in range(1, 4) if bc.pd_to // 2 ** k >= 1]
    notes = getattr(bc, "notes", None)
    lines = [f"# {bc.name}: results", ""] + ([Path(notes).read_text().strip(), ""] if notes and Path(notes).is_file() else [])
    lines += [
             f"FD / IS of the independent evaluation network, {bc.eval_samples} samples against the test set "
             "(FD lower is better, IS higher).", "",
             "## Table 1 layout: students of each method", ""]
    lines += method_table(main, bc.chain_methods, sorted(steps, reverse=True))
    pd8 = main.get(("pd", bc.pd_to))
    lines += ["", f"PD {bc.pd_to} steps (the chains' common teacher): {fmt(pd8)}", "",
              "## The teacher without training", "", "| sampler | steps (NFE) | FD | IS |", "|---|---|---|---|"]
    for r in teacher:
        lines.append(f"| {r['method']} | {r['steps']} ({r['nfe']}) | {r['fd']:.4g} | {r['is']:.2f} |")
    lines += ["", "## Table 3 layout: the 2 → 1 stage, 1-step FD over seeds (mean ± std)", "",
              "| method | FD | IS | seeds |", "|---|---|---|---|"]
    for method in bc.ablation_methods:
        rs = ablation.get(method, [])
        lines.append(f"| {method} | {mean_std([r['fd'] for r in rs])} | {mean_std([r['is'] for r in rs])} | {len(rs)} |")
    lines += ["", "## Do the paper's orderings hold here?", ""] + ordering_lines(main, ablation, sorted(steps))
    lines += ["", "## Machine and commands", "", f"- Machine: {machine_line()}.",
              f"- Everything above: `rdd benchmark {config_path} --results {dest}` (resumable: finished stages are "
              "skipped; run folders, logs and checkpoints under `" + str(out) + "`).",
              f"- One row again: `rdd eval --ckpt CKPT --steps N --num {bc.eval_samples} --seed {bc.eval_seed} "
              f"--evalnet {out}/evalnet/evalnet.pt` (the `ckpt` of each row is in results.json)."]
    lines += ["", "## Wall time per stage (s)", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {name} | {sec} |" for name, sec in timings.items()]
    grid_entries = [(f"DDIM teacher {bc.teacher_steps}", out / "teacher" / MODEL_FILE, bc.teacher_steps)]
    if pd8:
        grid_entries.append((f"PD {bc.pd_to}", Path(pd8["ckpt"]), bc.pd_to))
    grid_entries += [(f"{m} {n}", Path(main[(m, n)]["ckpt"]), n) for n in sorted(steps, reverse=True)
                     for m in bc.chain_methods if (m, n) in main]
    grid = comparison_grid(grid_entries, dest / "grids.png", seed=bc.eval_seed)
    runs = {f"{m} {p.name}": p for m in bc.chain_methods for p in sorted((out / f"chain-{m}").glob("stage-*"))}
    runs.update({f"ablation {p.name}": p for p in sorted((out / "ablation").glob("*-seed0"))})
    curves = loss_curves(runs, dest / "loss_curves.png")
    lines += ["", "## Samples from the same noise", "", f"![grids]({grid.name})", "", "## Loss curves", "",
              f"![curves]({curves.name})", ""]
    (dest / "results.json").write_text(json.dumps({"rows": rows, "timings": timings}, indent=2))
    page = dest / "RESULTS.md"
    page.write_text("\n".join(lines))
    return page
