"""`rdd sweep` at toy scale: a 2 x 2 grid x 2 seeds, its JSON, table and plots, and a second run that skips."""
import json

import pytest
from PIL import Image

from helpers import TINY_STAGE, run_rdd

pytestmark = pytest.mark.slow  # every test here trains a model or starts torchrun


def sweep_args(teacher, classifier, evalnet, small_fmnist, out):
    return ["sweep", "--config", "configs/fmnist/distill.yaml", "--teacher", str(teacher), *TINY_STAGE,
            "--set", f"data.root={small_fmnist}", "--set", f"classifier.checkpoint={classifier}",
            "--set", "distill.method=rdd", "--set", "distill.teacher_steps=4", "--set", "distill.iterations=[4]",
            "--set", "distill.queue_size=64", "--set", "distill.num_contrast=16", "--set", "distill.push_per_step=8",
            "--grid", "distill.beta=0.05,0.2", "--grid", "distill.tau_m=0.1,0.4", "--seeds", "0,1",
            "--eval-at", "2", "--eval-samples", "64", "--evalnet", str(evalnet), "--holdout", "500", "--out", str(out)]


def test_sweep_grid_seeds_outputs_and_resume(teacher, classifier, evalnet, small_fmnist, tmp_path):
    out = tmp_path / "sweep"
    first = run_rdd(*sweep_args(teacher, classifier, evalnet, small_fmnist, out))
    assert "8 runs, 0 done, 8 to run" in first.stdout
    sweep = json.loads((out / "sweep.json").read_text())
    results = sweep["results"]
    assert len(results) == 8
    assert {(r["values"]["distill.beta"], r["values"]["distill.tau_m"], r["seed"]) for r in results} == {
        (b, t, s) for b in ("0.05", "0.2") for t in ("0.1", "0.4") for s in (0, 1)}
    for r in results:  # the snapshot at 2 and the end of the stage, both on the held-out reference
        assert [e["iteration"] for e in r["evaluations"]] == [2, 4] and r["reference"] == "val"
        assert all(e["fd"] > 0 for e in r["evaluations"])
    # runs of different settings differ; the same settings with another seed too
    assert len({round(r["final_fd"], 9) for r in results}) == 8
    table = (out / "sweep.md").read_text()
    assert table.count("| distill.beta=") == 8 and "±" in table  # 4 points x 2 iterations, mean ± std
    for name in ("plot_distill_beta.png", "plot_distill_tau_m.png", "plot_iterations.png"):
        with Image.open(out / name) as image:
            assert image.size[0] > 300
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.pt")}
    second = run_rdd(*sweep_args(teacher, classifier, evalnet, small_fmnist, out))
    assert "8 runs, 8 done, 0 to run" in second.stdout
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.pt")} == before
    # Other evaluation settings: every run is evaluated again (its training is reused), never mixed with the old numbers.
    args = sweep_args(teacher, classifier, evalnet, small_fmnist, out)
    args[args.index("--eval-samples") + 1], args[args.index("--seeds") + 1] = "32", "0"
    assert "4 runs, 0 done, 4 to run" in run_rdd(*args).stdout
    third = json.loads((out / "sweep.json").read_text())["results"]
    assert len(third) == 4 and all(r["eval_samples"] == 32 and r["eval_stamp"]["samples"] == 32 for r in third)


def test_sweep_bad_grid_is_one_line(teacher, tmp_path):
    result = run_rdd("sweep", "--teacher", str(teacher), "--grid", "distill.beta", "--out", str(tmp_path), check=False)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "--grid 'distill.beta'" in result.stderr
    result = run_rdd("sweep", "--config", "configs/fmnist/distill.yaml", "--teacher", str(teacher),
                     "--grid", "distill.bta=1,2", "--out", str(tmp_path), check=False)
    assert result.returncode == 2 and "did you mean 'beta'" in result.stderr
