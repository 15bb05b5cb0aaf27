"""Tables and plots of the Fashion-MNIST study (benchmarks/fmnist/STUDY.md), from committed files alone.

    python benchmarks/fmnist/study_report.py [--record benchmarks/fmnist/study] [--measure-teachers]

Every finished run of `study.sh` keeps its result in `benchmarks/fmnist/study/<sweep>/<point>-seed<S>.json`
(config, seed, FD per snapshot and stage, wall time). This script reads those files, rewrites the
block between the `tables` markers of STUDY.md, draws the chain plot, and prints the block. The
teachers' own DDIM FDs are results too (`teachers.json`); `--measure-teachers` measures the missing
ones (a minute of CPU each), the default only reads them, so a fresh clone rebuilds STUDY.md offline.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

from rdd.tables import markdown_table, mean_std

ROOT = Path(__file__).resolve().parents[2]
STUDY = ROOT / "benchmarks/fmnist/STUDY.md"
METHODS = ("pd-noclip", "rcfd-noclip", "rdd-official", "rdd-paper")
LABELS = {"pd-noclip": "PD, no teacher clip", "rcfd-noclip": "RCFD, no teacher clip",
          "rdd-official": "RDD, fidelity=official", "rdd-paper": "RDD, fidelity=paper"}
# The shipped models' own DDIM: a distilled model samples only at its own step count, so the chain's
# baselines at 4, 2 and 1 steps are its base model's.
TEACHERS = {"two_step": ("assets/fmnist/two_step.pt", [2]), "eight_step": ("assets/fmnist/eight_step.pt", [8]),
            "base": ("assets/fmnist/base.pt", [8, 4, 2, 1])}


def records(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []


def fd_at(record: dict, *, iteration: int | None = None, stage: int | None = None) -> float | None:
    for e in record["evaluations"]:
        if (iteration is None or e["iteration"] == iteration) and (stage is None or e["stage"] == stage):
            return e["fd"]
    return None


def teacher_fds(record: Path, measure: bool) -> dict:
    """{name: {steps: test FD on 10,000 samples}} of the shipped models' own DDIM, cached in teachers.json."""
    path = record / "teachers.json"
    known = json.loads(path.read_text()) if path.is_file() else {}
    for name, (ckpt, steps_list) in TEACHERS.items():
        for steps in steps_list:
            if str(steps) in known.get(name, {}) or not measure or not (ROOT / ckpt).is_file():
                continue
            from rdd.metrics import evaluate_checkpoint

            result = evaluate_checkpoint(ROOT / ckpt, steps, "ddim", 10000, 0, evalnet=str(ROOT / "assets/fmnist/evalnet.pt"),
                                         progress=False, reference_cache=str(ROOT / "runs/study/reference_test.npz"),
                                         reference_split="test", holdout=10000)
            known.setdefault(name, {})[str(steps)] = result["fd"]
            path.write_text(json.dumps(known, indent=2) + "\n")
    return known


def per_second(rows: list[dict], iterations: int) -> str:
    return f"{statistics.mean(r['train_seconds'] for r in rows) / iterations:.2f}" if rows else "–"


def stage_table(record: Path, prefix: str, iterations: int, teacher: float | None) -> tuple[str, set]:
    seeds = sorted({r["seed"] for m in METHODS for r in records(record / f"{prefix}-{m}")})
    snapshots = [500] if iterations > 500 else []  # the snapshot inside a longer run
    head = ["method", *(f"FD at {i}" for i in snapshots), f"FD at {iterations}", *(f"seed {s}" for s in seeds), "s / iteration"]
    rows = []
    for m in METHODS:
        runs = records(record / f"{prefix}-{m}")
        by_seed = {r["seed"]: fd_at(r, iteration=iterations) for r in runs}
        inside = [mean_std([v for r in runs if (v := fd_at(r, iteration=i)) is not None], ".3f") for i in snapshots]
        rows.append([LABELS[m], *inside, mean_std(list(by_seed.values()), ".3f"),
                     *(f"{by_seed[s]:.3f}" if s in by_seed else "–" for s in seeds), per_second(runs, iterations)])
    note = f"\n\nThe 2-step teacher's own DDIM: test FD {teacher:.3f}." if teacher is not None else ""
    return markdown_table(head, rows) + note, set(seeds)


def chain_table(record: Path, teacher: dict) -> tuple[str, dict]:
    steps = [4, 2, 1]
    curves, rows = {}, []
    seeds = sorted({r["seed"] for m in METHODS for r in records(record / f"chain-{m}")})
    for m in METHODS:
        runs = records(record / f"chain-{m}")
        per_stage = [[v for r in runs if (v := fd_at(r, stage=i)) is not None] for i in range(3)]
        curves[m] = per_stage
        rows.append([LABELS[m], *(mean_std(v, ".3f") for v in per_stage), str(len(runs))])
    rows.append(["base model's own DDIM", *(f"{teacher[str(s)]:.3f}" if str(s) in teacher else "–" for s in steps), ""])
    head = ["method", "8 → 4 (4 steps)", "4 → 2 (2 steps)", "2 → 1 (1 step)", "seeds"]
    return markdown_table(head, rows) + f"\n\nSeeds: {', '.join(map(str, seeds)) or 'none yet'}.", curves


def plot_chain(curves: dict, teacher: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    for m, per_stage in curves.items():
        points = [(i, statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0) for i, v in enumerate(per_stage) if v]
        if points:
            ax.errorbar([p[0] for p in points], [p[1] for p in points], yerr=[p[2] for p in points], marker="o",
                        capsize=3, label=LABELS[m])
    own = [(i, teacher[str(s)]) for i, s in enumerate((4, 2, 1)) if str(s) in teacher]
    if own:
        ax.plot([p[0] for p in own], [p[1] for p in own], "k--", marker="x", label="base model, own DDIM")
    ax.set_xticks([0, 1, 2], ["4 steps", "2 steps", "1 step"])
    ax.set_xlabel("after the stage 8 → 4, 4 → 2, 2 → 1")
    ax.set_ylabel("test FD ↓ (10,000 samples)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_sensitivity(runs: list[dict], out: Path) -> list[Path]:
    """FD against each swept value, one line per other setting, as the paper's Fig. 7 and 9 (sweep's own plot)."""
    from types import SimpleNamespace

    from rdd.sweep import plot_sweep

    keys = dict.fromkeys(k for r in runs for k in r["values"])
    grid = [(k, sorted({r["values"][k] for r in runs})) for k in keys]
    plot_sweep(SimpleNamespace(grid=grid, reference="val"), runs, out)
    return [out / f"plot_{k.replace('.', '_')}.png" for k in keys]


def sensitivity_tables(record: Path) -> str:
    parts = []
    for name, title in (("sens-beta", "β"), ("sens-tau-alpha", "τ_M × α")):
        runs = records(record / name)
        if not runs:
            continue
        figures = "".join(f"\n\n![{title}](study/{name}/{f.name})" for f in plot_sensitivity(runs, record / name))
        points: dict = {}
        for r in runs:
            points.setdefault(r["point"].replace("distill.", ""), []).append(r["final_fd"])
        parts.append(f"RDD (paper) {title}, 500 iterations, validation FD:\n\n"
                     + markdown_table(["setting", "FD"], [[p, mean_std(v, ".3f")] for p, v in points.items()]) + figures)
    return "\n\n".join(parts) if parts else "Not run yet."


def build(record: Path, measure: bool) -> str:
    teachers = teacher_fds(record, measure)
    two = teachers.get("two_step", {}).get("2")
    stage1000, _ = stage_table(record, "stage1000", 1000, two)
    stage500, _ = stage_table(record, "stage500", 500, two)
    chain, curves = chain_table(record, teachers.get("base", {}))
    plot_chain(curves, teachers.get("base", {}), record / "chain.png")
    eight = teachers.get("eight_step", {}).get("8")
    if eight is not None:
        chain += f" The chains' 8-step starting model: test FD {eight:.3f}."
    return "\n\n".join([
        "### 2 → 1 at 1,000 iterations (seeds 3–5, test FD, 10,000 samples)", stage1000,
        "### Chains 8 → 4 → 2 → 1, 500 iterations per stage (test FD after every stage, 10,000 samples)", chain,
        "![chain](study/chain.png)",
        "### 2 → 1 at 500 iterations, seed 5", stage500,
        "### Sensitivity (seeds 0–1)", sensitivity_tables(record)])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--record", default=str(ROOT / "benchmarks/fmnist/study"))
    parser.add_argument("--measure-teachers", action="store_true", help="evaluate the shipped models' own DDIM where missing")
    args = parser.parse_args()
    block = build(Path(args.record), args.measure_teachers)
    text = STUDY.read_text()
    begin, end = "<!-- tables:begin -->\n", "<!-- tables:end -->"
    if begin not in text or end not in text:
        raise SystemExit(f"{STUDY} has no {begin.strip()} ... {end} block to fill")
    STUDY.write_text(re.sub(f"{re.escape(begin)}.*?{re.escape(end)}", lambda m: begin + block + "\n" + end, text, flags=re.S))
    print(block)


if __name__ == "__main__":
    main()
