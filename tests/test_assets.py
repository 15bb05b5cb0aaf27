"""The shipped models load, match their checksums, and reproduce their recorded FD."""
import json

import pytest

from helpers import ROOT
from rdd.demo import ASSETS, verify_assets
from rdd.metrics import evaluate_checkpoint
from rdd.model_io import load_diffusion_model

pytestmark = pytest.mark.slow  # end to end: trains and evaluates real models


def test_shipped_models_match_their_checksums_and_stay_small():
    files = verify_assets(ASSETS)
    teacher = {f"{name}/{part}" for name in ("eps_teacher", "cosine_eps_teacher") for part in
               ("model_index", "unet/config", "unet/diffusion_pytorch_model", "scheduler/scheduler_config")}
    assert set(files) == {"two_step", "classifier", "evalnet", "base", "eight_step"} | teacher
    assert sum(p.stat().st_size for p in files.values()) < 25e6
    for name in ("base", "eight_step", "two_step"):  # each loads as a diffusion model with its step count
        _, _, meta = load_diffusion_model(files[name])
        assert meta["sampling_steps"] == {"base": None, "eight_step": 8, "two_step": 2}[name]


def test_the_shipped_diffusers_teacher_is_a_plain_epsilon_ddpm():
    model, cfg, meta = load_diffusion_model(ASSETS / "eps_teacher")
    assert (model.prediction_type, model.schedule.config["beta_schedule"], meta["sampling_steps"]) == ("epsilon", "linear", None)
    assert json.loads((ASSETS / "eps_teacher/model_index.json").read_text())["_class_name"] == "DDPMPipeline"
    cosine, _, _ = load_diffusion_model(ASSETS / "cosine_eps_teacher")  # the improved-DDPM cosine: alpha_1 = 4.9e-5
    assert (cosine.prediction_type, cosine.schedule.config["beta_schedule"]) == ("epsilon", "squaredcos_cap_v2")


def test_eval_of_the_shipped_two_step_model_reproduces_the_recorded_fd(tmp_path):
    recorded = json.loads((ROOT / "benchmarks/fmnist/demo/results.json").read_text())[0]
    assert recorded["steps"] == 2
    result = evaluate_checkpoint(ASSETS / "two_step.pt", steps=2, num_samples=2000, seed=0, evalnet=str(ASSETS / "evalnet.pt"),
                                 reference_cache=str(tmp_path / "reference.npz"), device="cpu", progress=False)
    assert result["fd"] == pytest.approx(recorded["fd"], rel=0.02)
    assert result["is"] == pytest.approx(recorded["is"], rel=0.02)
