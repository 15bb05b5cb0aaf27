"""The Python API: the README's example runs as written, and a loss term or a method is added from a test file alone."""
import re

import pytest
import torch

from helpers import ROOT, TINY_OVERRIDES
from rdd.config import DistillConfig, load_config
from rdd.errors import RddError
from rdd.losses import TERMS, LossTerm, MethodLoss, register_term
from rdd.registry import METHODS, register_method


def readme_example() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Use the losses in your own training loop"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_runs_as_written(capsys):
    exec(compile(readme_example(), "README.md", "exec"), {"__name__": "readme"})
    assert "loss_m_p2p" in capsys.readouterr().out


def test_public_names_have_docstrings():
    import rdd
    import rdd.losses

    for module in (rdd, rdd.losses):
        for name in module.__all__:
            value = getattr(module, name)
            if callable(value):
                assert value.__doc__, f"{module.__name__}.{name} has no docstring"


class Blur(LossTerm):
    """A toy term: the squared error between 2x2-average-pooled x_hat and x~."""

    def forward(self, b):
        pool = torch.nn.functional.avg_pool2d
        return (pool(b.x_student, 2) - pool(b.x_target, 2)).pow(2).mean()


@pytest.fixture
def blur_method():
    """The toy term and a method PD + alpha Blur, registered as docs/extending.md does, for one test."""
    register_term("blur", Blur)
    register_method("pd_blur", [("pd", None), ("blur", "alpha")])
    yield "pd_blur"
    del TERMS["blur"], METHODS["pd_blur"]


def test_a_registered_term_and_method_build_from_config(blur_method):
    loss_fn = MethodLoss.from_config(blur_method, DistillConfig(alpha=0.5))
    x_hat, x_tilde, t = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8), torch.rand(4)
    total, logs = loss_fn(x_hat, x_tilde, t)
    assert set(logs) == {"loss_pd", "loss_blur"}
    torch.testing.assert_close(total, logs["loss_pd"] + 0.5 * logs["loss_blur"])


@pytest.mark.slow
def test_a_tiny_stage_trains_with_a_method_added_here(blur_method, teacher, small_fmnist, tmp_path):
    from rdd.distill import run_stage
    from rdd.distributed import DistContext
    from rdd.metrics_log import read_metrics

    cfg = load_config(ROOT / "configs/fmnist/distill.yaml", TINY_OVERRIDES + [
        f"data.root={small_fmnist}", f"distill.method={blur_method}", "distill.teacher_steps=2", "distill.iterations=[3]",
        "distill.alpha=2.0", "train.ckpt_every=1000"])
    model = run_stage(cfg, teacher, tmp_path / "stage", DistContext(0, 1, torch.device("cpu")))
    assert model.is_file()
    logged = read_metrics(tmp_path / "stage" / "metrics.jsonl")[-1]
    assert logged["loss"] == pytest.approx(logged["loss_pd"] + 2.0 * logged["loss_blur"], rel=1e-5)


def test_unknown_names_are_errors(monkeypatch):
    monkeypatch.setitem(METHODS, "typo", [("m_p2q", None)])
    with pytest.raises(RddError, match="unknown loss term 'm_p2q'"):
        MethodLoss.from_config("typo", DistillConfig())
    with pytest.raises(RddError, match="unknown method"):
        MethodLoss.from_config("rdd2", DistillConfig())
    with pytest.raises(RddError, match="already registered"):
        register_term("cfd", Blur)
    with pytest.raises(RddError, match="already registered"):
        register_method("rdd", [("cfd", None)])


def test_a_term_on_classifier_features_needs_a_classifier():
    with pytest.raises(RddError, match="classifier"):
        MethodLoss.from_config("rcfd", DistillConfig())


def test_old_checkpoint_keys_of_the_queue_and_head_still_load():
    from rdd.classifier import build_classifier

    classifier = build_classifier("densenet-bc-small", 1)
    loss_fn = MethodLoss.from_config("cfd_m", DistillConfig(queue_size=64, push_per_step=8, num_contrast=16), classifier)
    new = loss_fn.terms.state_dict()
    old = {key.removeprefix("m_p2p."): value.clone() + 1 for key, value in new.items()}  # the keys before the ModuleDict
    assert "queue.queue" in old and "head.net.0.weight" in old
    loss_fn.terms.load_state_dict(old)
    for key, value in loss_fn.terms.state_dict().items():
        assert torch.equal(value, old[key.removeprefix("m_p2p.")]), key
