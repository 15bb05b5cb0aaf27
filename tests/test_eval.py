"""Baseline samplers on our schedule, FD/IS/FID arithmetic and caches, `rdd eval` / `rdd train-evalnet`."""
import json

import numpy as np
import pytest
import torch

from helpers import run_rdd
from rdd import metrics
from rdd.baselines import diffusers_sample
from rdd.cli import main
from rdd.config import DataConfig, ModelConfig
from rdd.data import load_dataset
from rdd.diffusion import ddim_sample
from rdd.errors import RddError
from rdd.model_io import load_diffusion_model
from rdd.networks import build_model
from rdd.sampling import generate


# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("steps", [1, 2, 8])
def test_diffusers_ddim_matches_our_ddim(steps):
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="tiny"), DataConfig()).double().eval()
    noise = torch.randn(4, 1, 16, 16, dtype=torch.float64)
    ours = ddim_sample(model, noise, steps)
    theirs = diffusers_sample(model, noise, steps, None, "ddim")
    assert ours.abs().max() == 1  # x-hat clipping is active, so the clipping conventions are compared too
    torch.testing.assert_close(theirs, ours, atol=1e-6, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("kind,steps", [("dpm-solver", 12), ("pndm", 10), ("dpm-solver", 1), ("pndm", 5)])
def test_dpm_solver_and_pndm_give_finite_images(teacher, kind, steps):
    model, cfg, _ = load_diffusion_model(teacher)
    raw = diffusers_sample(model, torch.randn(8, 1, 16, 16, generator=torch.Generator().manual_seed(0)), steps, None, kind)
    assert raw.isfinite().all() and raw.abs().max() < 2  # PNDM does not clip: its last multistep update overshoots a little
    images = generate(model, cfg, steps, 8, seed=0, batch_size=8, sampler=kind, progress=False)
    assert images.shape == (8, 1, 16, 16) and images.isfinite().all() and images.abs().max() <= 1


def test_pndm_refuses_too_few_steps():
    with pytest.raises(RddError, match="at least 4 steps"):
        diffusers_sample(None, torch.zeros(1, 1, 16, 16), 2, None, "pndm")


# ----------------------------------------------------------------------------------------------

def test_frechet_distance_matches_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=3), rng.normal(size=3)
    s1, s2 = np.diag([1.0, 4.0, 9.0]), np.diag([4.0, 1.0, 1.0])  # commuting: sqrt(S1 S2) = diag(2, 2, 3)
    expected = np.sum((mu1 - mu2) ** 2) + 14 + 6 - 2 * 7
    assert metrics.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


def test_inception_score_bounds():
    confident = torch.eye(10).repeat(10, 1) * 50  # 100 one-hot predictions over 10 classes
    assert metrics.inception_score(confident, splits=1)[0] == pytest.approx(10, rel=1e-6)
    assert metrics.inception_score(torch.zeros(100, 10), splits=10) == pytest.approx((1.0, 0.0))


@pytest.mark.slow
def test_domain_fd_of_test_set_to_itself_is_zero_and_to_noise_large(evalnet, small_fmnist, tmp_path):
    data = DataConfig(root=str(small_fmnist))
    cache = tmp_path / "ref.npz"
    ref = metrics.reference_statistics(evalnet, data, cache, progress=False)
    mtime = cache.stat().st_mtime_ns
    net = metrics.load_evalnet(evalnet, data)
    scale = np.trace(ref[1])
    test_images = load_dataset(data, "test").tensors[0]
    same = metrics.domain_metrics(net, test_images, ref, progress=False)
    noise = metrics.domain_metrics(net, torch.rand_like(test_images) * 2 - 1, ref, progress=False)
    assert abs(same["fd"]) < 1e-3 * scale
    assert noise["fd"] > 1e3 * max(abs(same["fd"]), 1e-6 * scale) and noise["fd"] > 0.1 * scale
    assert 1 <= same["is"] <= 10

    metrics.reference_statistics(evalnet, data, cache, progress=False)  # reused
    assert cache.stat().st_mtime_ns == mtime
    (tmp_path / "link").symlink_to(small_fmnist)  # same images, another data config: the stamp differs
    metrics.reference_statistics(evalnet, DataConfig(root=str(tmp_path / "link")), cache, progress=False)
    assert cache.stat().st_mtime_ns != mtime


@pytest.mark.slow  # trains
def test_reference_statistics_default_to_rdds_cache_folder_not_beside_the_evalnet(evalnet, small_fmnist, tmp_path, monkeypatch):
    assets = tmp_path / "assets"
    assets.mkdir()
    (assets / "evalnet.pt").write_bytes(evalnet.read_bytes())
    assets.chmod(0o555)  # a read-only assets folder works, and stays as it was
    monkeypatch.setenv("RDD_CACHE", str(tmp_path / "cache"))
    data = DataConfig(root=str(small_fmnist))
    try:
        first = metrics.reference_statistics(assets / "evalnet.pt", data, progress=False)
        assert sorted(p.name for p in assets.iterdir()) == ["evalnet.pt"]
    finally:
        assets.chmod(0o755)
    cached = list((tmp_path / "cache" / "reference").iterdir())
    assert len(cached) == 1 and cached[0].name.startswith("test-")
    np.testing.assert_array_equal(metrics.reference_statistics(assets / "evalnet.pt", data, progress=False)[0], first[0])


@pytest.mark.slow
def test_inception_fid_path_loads_weights_and_caches_the_reference(teacher, small_fmnist, tmp_path, monkeypatch):
    import torch_fidelity

    weights = metrics.write_random_inception(tmp_path / "inception.pth")  # what a dry run measures with
    cache = tmp_path / "cache" / "ref.npz"
    batches, calculate = [], torch_fidelity.calculate_metrics  # a spy: the real call runs

    def spied(**kwargs):
        batches.append(kwargs["batch_size"])
        return calculate(**kwargs)
    monkeypatch.setattr(torch_fidelity, "calculate_metrics", spied)

    result = metrics.evaluate_checkpoint(teacher, steps=2, num_samples=12, batch_size=12, inception_weights=str(weights),
                                         reference_cache=str(cache), progress=False, reference_limit=12)
    assert batches == [12]  # --batch-size reaches Inception (it once ran at 64 whatever was asked)
    assert {"fid", "isc", "kid"} <= result.keys() and "fd" not in result
    cached = sorted(cache.parent.glob("*.pt"))
    assert cached and all("inception-v3-compat" in p.name for p in cached)
    mtimes = [p.stat().st_mtime_ns for p in cached]

    # The same reference from the cache: FID of the training images against themselves is ~0.
    _, cfg, _ = load_diffusion_model(teacher)
    reference = load_dataset(cfg.data, "train").tensors[0][:12]  # the cached reference: the first 12 training images
    same = metrics.inception_metrics(reference, reference, weights, cache.parent,
                                     metrics.inception_cache_name(weights, cfg.data, 12), progress=False)
    assert [p.stat().st_mtime_ns for p in cached] == mtimes and sorted(cache.parent.glob("*.pt")) == cached  # not rewritten
    assert abs(same["fid"]) < 1e-3 * result["fid"] and result["fid"] > 0


def test_inception_weights_errors(tmp_path):
    with pytest.raises(RddError, match="not found"):
        metrics.check_inception_weights(tmp_path / "missing.pth")
    torch.save({"fc.weight": torch.zeros(10, 5)}, tmp_path / "other.pth")
    with pytest.raises(RddError, match="Inception-v3"):
        metrics.check_inception_weights(tmp_path / "other.pth")


# ----------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_eval_fd_falls_with_more_teacher_steps(teacher, evalnet, tmp_path):
    out = tmp_path / "eval2.json"
    args = ["eval", "--ckpt", str(teacher), "--num", "200", "--batch-size", "200", "--evalnet", str(evalnet),
            "--reference-cache", str(tmp_path / "ref.npz")]
    printed = run_rdd(*args, "--steps", "2", "--json", str(out)).stdout
    r2 = json.loads(out.read_text())
    assert r2["steps"] == 2 and r2["num_samples"] == 200 and "FD" in printed
    fds = [r2["fd"]] + [metrics.evaluate_checkpoint(teacher, s, num_samples=200, batch_size=200, evalnet=str(evalnet),
                                                     reference_cache=str(tmp_path / "ref.npz"), progress=False)["fd"]
                        for s in (8, 32)]
    assert fds[0] > fds[1] > fds[2], fds


@pytest.mark.slow
def test_eval_of_a_16px_fashion_mnist_model_without_a_metric_network_uses_the_shipped_one(teacher, capsys):
    assert main(["eval", "--ckpt", str(teacher), "--num", "16"]) == 0
    assert " FD " in capsys.readouterr().out  # measured, not refused
