"""`rdd demo`: the README's main job on Fashion-MNIST, a few minutes on a laptop CPU.

From the shipped 2-step model (assets/fmnist), distil a 1-step student with each of DEMO_METHODS
(plain PD, RCFD and RDD), measure them and the teacher with the shipped evaluation network, and write a
report with the table, a grid of every model from the same noise and the loss curves. Without the
shipped models it trains a small teacher instead.
"""
from __future__ import annotations

import dataclasses
import hashlib
import re
from pathlib import Path

from rdd.config import check_not_set_by_command, command_line_keys, load_config
from rdd.distributed import init_distributed
from rdd.errors import RddError
from rdd.files import write_json_atomic, write_text_atomic
from rdd.layout import ASSETS
from rdd.tables import markdown_table

ROOT = Path(__file__).resolve().parents[2]
DEMO_CONFIG = ROOT / "configs" / "fmnist" / "demo.yaml"


def verify_assets(folder: Path) -> dict[str, Path]:
    """The shipped files named in SHA256SUMS, each checked against its checksum."""
    sums = folder / "SHA256SUMS"
    files = {}
    for number, line in enumerate(sums.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not re.fullmatch(r"[0-9a-fA-F]{64}", parts[0]):
            raise RddError(f"'{sums}' line {number} is malformed ({line.strip()[:40]!r}); each line must be "
                           f"'<sha256>  <file>': restore it with git checkout -- {sums}")
        digest, path = parts[0].lower(), folder / parts[1].lstrip("*")  # sha256sum marks binary mode with '*'
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            raise RddError(f"shipped model '{path}' is missing or damaged (checksum mismatch); restore it with git checkout -- {path}")
        files[str(Path(parts[1].lstrip("*")).with_suffix(""))] = path  # e.g. two_step, eps_teacher/unet/config
    return files


DEMO_METHODS = ("pd", "rcfd", "rdd")  # RCFD beside RDD: the study (benchmarks/fmnist/STUDY.md) compares them


def train_small_teacher(out: Path, overrides: list[str]) -> None:
    from rdd.training import train_base_model

    cfg = load_config(ROOT / "configs" / "fmnist" / "teacher.yaml", overrides, "train")
    train_base_model(cfg, out / "teacher", init_distributed(), resume=True)
    print(f"no shipped models found: trained a small teacher instead; see {out / 'teacher' / 'samples.png'}")


def run_demo(out: str | Path, overrides: list[str], num_samples: int, assets_dir: str | Path = ASSETS) -> Path:
    from rdd.distill import run_stage
    from rdd.metrics import evaluate_checkpoint
    from rdd.report import comparison_grid, loss_curves

    out, assets_dir = Path(out), Path(assets_dir)
    if num_samples < 2:
        raise RddError(f"--num-samples {num_samples}: the Fréchet distance needs at least 2 samples per model")
    if not (assets_dir / "SHA256SUMS").is_file():
        train_small_teacher(out, overrides)
        return out / "teacher" / "samples.png"
    assets = verify_assets(assets_dir)
    missing = sorted({"two_step", "classifier", "evalnet"} - assets.keys())
    if missing:
        raise RddError(f"'{assets_dir / 'SHA256SUMS'}' lists no {', '.join(missing)}; restore it with git checkout -- {assets_dir}")
    ctx = init_distributed()
    check_not_set_by_command("demo", command_line_keys(overrides))
    cfg = load_config(DEMO_CONFIG, overrides, "demo")
    cfg.classifier = dataclasses.replace(cfg.classifier, checkpoint=str(assets["classifier"]))
    students = {}
    for method in DEMO_METHODS:
        stage_cfg = dataclasses.replace(cfg, distill=dataclasses.replace(cfg.distill, method=method))
        students[method] = run_stage(stage_cfg, assets["two_step"], out / method, ctx, stage_index=0)

    rows = [("PD 2 steps (shipped teacher)", assets["two_step"], 2)] + [(f"{m.upper()} 1 step", p, 1) for m, p in students.items()]
    results = []
    for label, ckpt, steps in rows:
        result = evaluate_checkpoint(ckpt, steps, "ddim", num_samples, seed=0, evalnet=str(assets["evalnet"]),
                                     reference_cache=str(out / "reference.npz"))
        results.append({"model": label, "steps": steps, "fd": result["fd"], "is": result["is"], "ckpt": str(ckpt)})
    grid = comparison_grid(rows, out / "grids.png", num=16)
    curves = loss_curves({f"{m} 2->1": p.parent for m, p in students.items()}, out / "loss_curves.png", columns=len(students))

    table = markdown_table(["model", "steps", "FD ↓", "IS ↑"],
                           [[r["model"], r["steps"], f"{r['fd']:.4g}", f"{r['is']:.2f}"] for r in results])
    iterations = cfg.distill.iterations[0]
    page = out / "report.md"
    write_text_atomic(page, "\n".join([
        "# rdd demo: 2 → 1 step on Fashion-MNIST", "",
        f"Distilled from the shipped 2-step model for {iterations} iterations per method; FD and IS of the "
        f"independent evaluation network on {num_samples} samples against the test set.", "",
        table, "", "Same noise, row by row:", "", f"![grids]({grid.name})", "", "Loss curves:", "",
        f"![curves]({curves.name})", ""]))
    write_json_atomic(out / "results.json", results)
    print(table)
    return page
