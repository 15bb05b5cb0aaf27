"""Tables and plots of the Fashion-MNIST study from its sweep folders (benchmarks/fmnist/STUDY.md).

    python benchmarks/fmnist/study_report.py [--runs runs/study] [--out benchmarks/fmnist/study]

Prints the Markdown tables; copies each sweep's plots to --out; measures the 2-step teacher on the
validation and test references once (cached in --runs).
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
from pathlib import Path

from rdd.tables import markdown_table

ROOT = Path(__file__).resolve().parents[2]


def load(runs: Path, name: str) -> list[dict] | None:
    path = runs / name / "sweep.json"
    return json.loads(path.read_text())["results"] if path.is_file() else None


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f} (1 seed)"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def teacher_fd(runs: Path, reference: str, samples: int) -> float:
    from rdd.metrics import evaluate_checkpoint

    cache = runs / f"teacher-{reference}-{samples}.json"
    if not cache.is_file():
        result = evaluate_checkpoint(ROOT / "assets/fmnist/two_step.pt", 2, "ddim", samples, 0,
                                     evalnet=str(ROOT / "assets/fmnist/evalnet.pt"), progress=False,
                                     reference_cache=str(runs / f"reference_{reference}.npz"),
                                     reference_split=reference, holdout=10000)
        cache.write_text(json.dumps(result))
    return json.loads(cache.read_text())["fd"]


def label(point: str) -> str:
    return point.replace("distill.", "").replace("method=", "")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", default=str(ROOT / "runs/study"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks/fmnist/study"))
    args = parser.parse_args()
    runs, out = Path(args.runs), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    print(f"2-step teacher: validation FD (5,000 samples) {teacher_fd(runs, 'val', 5000):.3f}, "
          f"test FD (10,000 samples) {teacher_fd(runs, 'test', 10000):.3f}\n")

    convergence = (load(runs, "convergence") or []) + (load(runs, "convergence-official") or [])
    if convergence:
        iterations = sorted({e["iteration"] for r in convergence for e in r["evaluations"]})
        rows = [[label(r["point"])] + [f"{next(e['fd'] for e in r['evaluations'] if e['iteration'] == i):.3f}" for i in iterations]
                + [f"{r['train_seconds']:.0f}"] for r in convergence]
        print("### Convergence (seed 0, validation FD)\n")
        print(markdown_table(["method", *map(str, iterations), "train s"], rows), "\n")
        plot_convergence(convergence, iterations, teacher_fd(runs, "val", 5000), out / "convergence.png")

    for name, title in (("rcfd-500", "RCFD, 500 iterations"), ("fidelity", "RDD fidelity switches, 500 iterations"),
                        ("beta", "RDD β, 500 iterations"), ("tau-alpha", "RDD τ_M × α, 500 iterations")):
        results = load(runs, name)
        if not results:
            continue
        points: dict = {}
        for r in results:
            points.setdefault(label(r["point"]), []).append(r["final_fd"])
        seeds = sorted({r["seed"] for r in results})
        print(f"### {title} (seeds {', '.join(map(str, seeds))}, validation FD)\n")
        print(markdown_table(["setting", "FD"], [[p, mean_std(v)] for p, v in points.items()]), "\n")
        for plot in (runs / name).glob("plot_*.png"):
            shutil.copy(plot, out / f"{name}-{plot.name}")

    final = {}
    for name, fixed in (("final", None), ("final-selected", "rdd, selected (flat_view queue, no teacher clip)"),
                        ("final-rcfd-selected", "rcfd, no teacher clip")):
        for r in load(runs, name) or []:
            final.setdefault(fixed or label(r["point"]), {})[r["seed"]] = r["final_fd"]
    if final:
        seeds = sorted({s for v in final.values() for s in v})
        print(f"### Final comparison (seeds {', '.join(map(str, seeds))}, test FD, 10,000 samples)\n")
        print(markdown_table(["method", "FD", *(f"seed {s}" for s in seeds)],
                             [[p, mean_std(list(v.values())), *(f"{v[s]:.3f}" if s in v else "–" for s in seeds)]
                              for p, v in final.items()]), "\n")


def plot_convergence(results: list[dict], iterations: list[int], teacher: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.5))
    for r in results:
        fds = [next(e["fd"] for e in r["evaluations"] if e["iteration"] == i) for i in iterations]
        ax.plot(iterations, fds, marker="o", label=label(r["point"]))
    ax.axhline(teacher, color="gray", linestyle="--", label="2-step teacher")
    ax.set_xscale("log")
    ax.set_xlabel("iterations of the 2 → 1 stage (snapshots of one 1,000-iteration run)")
    ax.set_ylabel("validation FD ↓")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
