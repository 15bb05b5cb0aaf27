"""`rdd benchmark` end to end at toy scale: every stage, every table row, the results page."""
import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

from helpers import ROOT, run_rdd
from rdd.config import read_yaml_config

pytestmark = pytest.mark.slow  # end to end: trains and evaluates real models


def write_yaml(path, base, **sections):
    """`base` resolved (its own `base:` chain included), with `sections` merged in, written to `path`."""
    data = read_yaml_config(ROOT / base)
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(data))
    return str(path)


def toy_benchmark(small_fmnist, tmp_path, teacher_iterations: int, train_limit: int, **protocol) -> Path:
    """A benchmark YAML of tiny sub-configs on the small split; `protocol` sets the stages and rows."""
    data = {"root": str(small_fmnist)}
    tiny_train = {"batch_size": 16, "log_every": 1, "sample_every": 0, "sample_steps": 2, "num_grid": 8}
    bench = {
        "name": "toy", "out": str(tmp_path / "runs"),
        "teacher_config": write_yaml(tmp_path / "teacher.yaml", "configs/fmnist/benchmark-teacher.yaml", data=data, model={"name": "tiny"},
                                     train={**tiny_train, "iterations": teacher_iterations, "warmup": 0, "ckpt_every": 10}),
        "classifier_config": write_yaml(tmp_path / "classifier.yaml", "configs/fmnist/classifier.yaml", data=data,
                                        classifier={"train_limit": train_limit}),
        "evalnet_config": write_yaml(tmp_path / "evalnet.yaml", "configs/fmnist/evalnet.yaml", data=data,
                                     classifier={"train_limit": train_limit}),
        "distill_config": write_yaml(tmp_path / "distill.yaml", "configs/fmnist/benchmark-distill.yaml", data=data,
                                     train={k: v for k, v in tiny_train.items() if k != "sample_steps"}, distill={"queue_size": 64, "num_contrast": 16, "push_per_step": 8}),
        "dpm_solver_steps": 4, "pndm_steps": 5, **protocol,
    }
    config = tmp_path / "benchmark.yaml"
    config.write_text(yaml.safe_dump(bench))
    return config


def test_benchmark_runs_every_stage_and_writes_results(small_fmnist, tmp_path):
    config = toy_benchmark(small_fmnist, tmp_path, 20, 500, teacher_steps=8, pd_to=4, pd_iterations=[2],
                           chain_methods=["pd", "rdd"], chain_iterations=[2], ablation_methods=["rcfd", "cfd_is"],
                           ablation_seeds=[0, 1], ablation_iterations=2, teacher_ddim_steps=[1, 8], eval_samples=100)
    results = tmp_path / "results"
    run_rdd("benchmark", str(config), "--results", str(results))

    rows = json.loads((results / "results.json").read_text())["rows"]
    names = {(r["table"], r["method"], r["steps"]) for r in rows}
    assert {("teacher", "DDIM", 1), ("teacher", "DDIM", 8), ("teacher", "DPM-Solver", 4), ("teacher", "PNDM", 5),
            ("main", "pd", 4), ("main", "pd", 2), ("main", "rdd", 1), ("ablation", "cfd_is", 1)} <= names
    assert len(rows) == 4 + 1 + 2 * 2 + 2 * 2 and all(r["fd"] >= 0 for r in rows)
    page = (results / "RESULTS.md").read_text()
    assert "| steps | pd | rdd |" in page and "cfd_is |" in page and "± " in page and "orderings" in page
    assert Image.open(results / "grids.png").size[1] > 100 and Image.open(results / "loss_curves.png").size[0] > 400

    # A second run finds every stage finished and only rewrites the page.
    again = run_rdd("benchmark", str(config), "--results", str(results))
    assert "running" not in again.stdout and again.stdout.count(": done") >= 10


def test_ablation_without_pd_in_the_chains_makes_its_own_two_step_teacher(small_fmnist, tmp_path):
    config = toy_benchmark(small_fmnist, tmp_path, 10, 300, teacher_steps=16, pd_to=8, pd_iterations=[2],
                           chain_methods=["rcfd"], chain_iterations=[2], ablation_methods=["rcfd"], ablation_seeds=[0],
                           ablation_iterations=2, teacher_ddim_steps=[1], eval_samples=50)
    run_rdd("benchmark", str(config), "--results", str(tmp_path / "results"))
    teacher = tmp_path / "runs" / "ablation" / "pd-to-2" / "stage-4to2" / "model.pt"
    assert teacher.is_file() and not (tmp_path / "runs" / "chain-pd").exists()
    rows = json.loads((tmp_path / "results" / "results.json").read_text())["rows"]
    assert {(r["table"], r["method"], r["steps"]) for r in rows} >= {("main", "rcfd", 1), ("ablation", "rcfd", 1)}
