"""benchmarks/distill_step.py profiles the real step through hooks: no copy of the step to drift."""
import argparse
import sys

import pytest

from helpers import ROOT
from rdd.losses.objective import no_phase

sys.path.insert(0, str(ROOT / "benchmarks"))
import distill_step  # noqa: E402  (benchmarks/ is a folder of scripts, not a package)

pytestmark = pytest.mark.slow  # it takes training steps


def test_the_profiled_step_is_the_real_step_timed_per_phase_and_per_term():
    args = argparse.Namespace(lpips_weights=None, channels_last=False, bf16=False, compile=False, compile_backend="eager")
    setup = distill_step.setup_random(ROOT / "configs/fmnist/distill.yaml",
                                      ["distill.teacher_steps=2", "distill.queue_size=64", "distill.num_contrast=16",
                                       "distill.push_per_step=8"], "densenet-bc-small", 4)
    trainer = distill_step.Trainer.for_method(setup, "rdd", args)
    pushed = trainer.objective.terms["m_p2p"].queue.filled.clone()
    times = trainer.profiled_step()
    assert trainer.core.step == 1 and trainer.objective.terms["m_p2p"].queue.filled > pushed  # a real update and push
    expected = {"noise z_t", *distill_step.NETWORK_PHASES, "loss cfd", "loss is_p2p", "loss m_p2p", "losses backward",
                "grad norm + clip", "Adam + scheduler + EMA"}
    assert set(times) == expected and all(seconds > 0 for seconds in times.values())
    assert trainer.core.phase is no_phase and trainer.objective.loss.phase is no_phase  # the hooks are gone again
    trainer.step()
    assert trainer.core.step == 2
