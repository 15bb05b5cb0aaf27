"""The shipped models load, match their checksums, and reproduce their recorded FD."""
import json

import pytest

from conftest import ROOT
from rdd.demo import ASSETS, verify_assets
from rdd.metrics import evaluate_checkpoint

pytestmark = pytest.mark.slow  # end to end: trains and evaluates real models


def test_shipped_models_match_their_checksums_and_stay_small():
    files = verify_assets(ASSETS)
    assert set(files) == {"two_step", "classifier", "evalnet"}
    assert sum(p.stat().st_size for p in files.values()) < 20e6


def test_eval_of_the_shipped_two_step_model_reproduces_the_recorded_fd(tmp_path):
    recorded = json.loads((ROOT / "benchmarks/fmnist/demo/results.json").read_text())[0]
    assert recorded["steps"] == 2
    result = evaluate_checkpoint(ASSETS / "two_step.pt", steps=2, num_samples=2000, seed=0, evalnet=str(ASSETS / "evalnet.pt"),
                                 reference_cache=str(tmp_path / "reference.npz"), device="cpu", progress=False)
    assert result["fd"] == pytest.approx(recorded["fd"], rel=0.02)
    assert result["is"] == pytest.approx(recorded["is"], rel=0.02)
