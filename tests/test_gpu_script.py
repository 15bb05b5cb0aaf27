"""benchmarks/gpu.py, the one script for the GPU figures, runs every part at tiny sizes on the CPU."""
import json
import math
import os
import subprocess
import sys

import pytest

from helpers import ROOT

METHODS = ("pd", "rcfd", "rdd")


def measured(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def real_results_stamp():
    """The committed GPU results, which the smoke must leave alone."""
    files = [ROOT / "benchmarks" / name for name in ("gpu_results.md", "gpu_results.json")]
    return [(f.stat().st_mtime_ns, f.stat().st_size) if f.exists() else None for f in files]


def check_steps(rows, variants, batch):
    assert {(r["method"], r["variant"]) for r in rows} == {(m, v) for m in METHODS for v in variants}
    for row in rows:
        assert "error" not in row, row
        assert all(measured(row[k]) for k in ("step_ms", "it_s", "images_s", "peak_mib", "network_ms", "ratio", "profiled_ratio"))
        assert row["images_s"] == pytest.approx(batch * row["it_s"])


def check_resume(part):
    (run,) = part["runs"]  # bit-exact at once on a CPU, so no second, deterministic pass
    assert run["equal"] and run["differing"] == 0 and run["max_abs_diff"] == 0
    assert run["entries"] > 100  # weights, EMA, head, queue, Adam, RNG and data position all compared
    assert run["checkpoint_step_at_kill"] == 20  # killed between the checkpoints of steps 20 and 30
    assert (run["backend"], run["processes"], run["sync_batchnorm_modules"]) == ("gloo", 1, 0)


def check_plan(part):
    for name in ("cifar10", "imagenet64"):
        rows = part["tables"][name]
        assert len(rows) == 6  # base model, PD chain, pd, rcfd and rdd 8 -> 1, the whole protocol
        assert all(measured(r[p]) for r in rows for p in ("fp32", "bf16 autocast"))
        assert rows[-1]["fp32"] == pytest.approx(sum(r["fp32"] for r in rows[:-1]))


@pytest.mark.slow
def test_gpu_script_smoke_measures_every_part(tmp_path):
    before = real_results_stamp()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--smoke", "--out", str(tmp_path)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert real_results_stamp() == before
    results = json.loads((tmp_path / "gpu_results.json").read_text())
    parts = results["parts"]
    assert not {name: part["error"] for name, part in parts.items() if "error" in part}
    batch = parts["distill_step"]["batch"]
    check_steps(parts["distill_step"]["rows"], ("fp32", "bf16 autocast", "channels_last"), batch)
    check_steps(parts["distill_step_compile"]["rows"], ("torch.compile",), batch)
    terms = {(r["method"], r["term"]): r for r in parts["bf16_vs_fp32"]["rows"]}
    assert {"pd", "cfd", "is_p2p", "m_p2p"} <= {term for _, term in terms}
    assert all(math.isfinite(r["rel_diff"]) and r["rel_diff"] < 0.05 for key, r in terms.items() if "gradient" not in key[1])
    assert all(terms[(m, "student gradient (L2 norm)")]["cosine"] > 0.5 for m in METHODS)
    for row in parts["isp2p"]["rows"]:
        assert row["equal"] and row["loss_rel_diff"] < 1e-4 and measured(row["dense_ms"]) and measured(row["blocked_ms"])
    check_resume(parts["torchrun_resume"])
    sampling = parts["sampling"]
    assert sampling["speedup"] > 2  # 1 step against 8
    assert all(measured(b["images_s"]) for b in sampling["base_training"].values())
    check_plan(parts["plan"])
    report = (tmp_path / "gpu_results.md").read_text()
    assert report.count("\n## ") == 6 and "Failed" not in report
