"""The fidelity switches (rdd.fidelity): each one against its definition, built here from first principles."""
import math
import subprocess
import sys

import pytest
import torch

from helpers import ROOT, TINY_STAGE, run_rdd
from rdd.config import ConfigError, load_config
from rdd.diffusion import COSINE, teacher_two_step_target
from rdd.fidelity import PRESETS, resolve_fidelity
from rdd.losses import M_P2P, DistillBatch, PixelQueue, ProjectionHead, m_p2p_loss


def distill_cfg(*overrides):
    return load_config(ROOT / "configs/fmnist/distill.yaml", list(overrides))


def test_fidelity_presets_and_explicit_keys():
    assert resolve_fidelity(distill_cfg().distill) == resolve_fidelity(distill_cfg("distill.fidelity=paper").distill)
    official = resolve_fidelity(distill_cfg("distill.fidelity=official").distill)
    assert official.as_dict() == PRESETS["official"]
    mixed = resolve_fidelity(distill_cfg("distill.fidelity=official", "distill.queue_layout=pixels",
                                         "distill.num_contrast=2048").distill)
    assert (mixed.queue_layout, mixed.num_contrast, mixed.queue_draw) == ("pixels", 2048, "whole")


@pytest.mark.parametrize("override, listed", [("distill.fidelity=offical", "paper, official"),
                                              ("distill.queue_layout=rows", "pixels, flat_view"),
                                              ("distill.head_optimizer=adam", "joint, separate")])
def test_wrong_switch_value_is_one_line_listing_the_choices(override, listed):
    with pytest.raises(ConfigError, match=listed):
        distill_cfg(override)


def public_rows(normalised_map: torch.Tensor) -> torch.Tensor:
    """Row j of the public enqueue: element c is flat[c * M + j] of the NCHW memory, M = N*H*W."""
    n, c, h, w = normalised_map.shape
    flat, m = normalised_map.flatten().tolist(), n * h * w
    rows = torch.tensor([[flat[ch * m + j] for ch in range(c)] for j in range(m)], dtype=normalised_map.dtype)
    return rows / rows.norm(dim=1, keepdim=True)


def test_official_queue_rows_are_the_public_reshape_of_the_teacher_map():
    map_t = torch.randn(2, 5, 3, 3, dtype=torch.float64)
    normalised = map_t / map_t.norm(dim=1, keepdim=True)  # the public code normalises along C first
    queue = PixelQueue(64, 5, seed=0, layout="flat_view").double()
    queue.push(map_t, 18, generator=torch.Generator().manual_seed(7))
    order = torch.randperm(18, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(queue.queue[:18], public_rows(normalised)[order])
    # ...which are not pixel embeddings, unlike the paper's layout
    pixels = PixelQueue(64, 5, seed=0, layout="pixels").double()
    pixels.push(map_t, 18, generator=torch.Generator().manual_seed(7))
    expected = normalised.permute(0, 2, 3, 1).reshape(18, 5)[order]
    torch.testing.assert_close(pixels.queue[:18], expected)
    assert not torch.allclose(queue.queue[:18], pixels.queue[:18])


def test_official_draw_indices_and_v():
    queue = PixelQueue(20000, 4, draw_from="whole")
    v = resolve_fidelity(distill_cfg("distill.fidelity=official").distill).num_contrast
    assert v == 4096
    drawn = queue.draw_indices(v).tolist()
    # round(linspace(0, N_q - 1, V)); the public code computes linspace in float32, which may tip a
    # value within float32 precision of .5 to the next integer
    for i, index in enumerate(drawn):
        exact = i * 19999 / 4095
        assert index == math.floor(exact + 0.5) or abs(exact - math.floor(exact) - 0.5) < 1e-2
    assert len(set(drawn)) == 4096 and drawn[0] == 0 and drawn[-1] == 19999
    paper = PixelQueue(20000, 4, draw_from="filled")
    paper.filled.fill_(1000)
    assert paper.draw_indices(2048).max() < 1000  # only the filled part


def test_public_wrap_overwrites_the_last_k_rows():
    queue = PixelQueue(10, 3, wrap="public")
    queue.ptr.fill_(8)
    marked = torch.nn.functional.normalize(torch.ones(4, 3), dim=1)
    queue._write(marked)
    torch.testing.assert_close(queue.queue[6:], marked)
    assert int(queue.ptr) == 0


@pytest.mark.parametrize("push_first", [True, False])
def test_push_order(push_first):
    torch.manual_seed(0)
    map_s, map_t = torch.randn(2, 4, 2, 2), torch.randn(2, 4, 2, 2)
    queue, head = PixelQueue(8, 4, seed=1), ProjectionHead(4).eval()
    before = queue.queue.clone()
    term = M_P2P(0.1, queue, head, num_contrast=8, push_per_step=8, push_first=push_first)
    features = lambda fmap: type("Out", (), {"feature_map": fmap})()  # noqa: E731
    batch = DistillBatch(map_s, map_t, torch.ones(2))
    batch.__dict__.update(features_student=features(map_s), features_teacher=features(map_t))
    loss = term(batch)
    contrast = queue.queue if push_first else before  # the batch's own pixels are in the contrast iff pushed first
    torch.testing.assert_close(loss, m_p2p_loss(head(map_s), map_t, contrast, 0.1))
    assert not torch.equal(queue.queue, before)


def test_teacher_clip_changes_the_target_exactly_where_the_teacher_leaves_the_range():
    def teacher(z, t, labels):  # pixelwise, so each output pixel depends on its own input pixel only
        return 1.7 * torch.sin(2.0 * z)

    torch.manual_seed(0)
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    t = torch.full((4,), 0.75)
    z_t = COSINE.diffuse(x, t, torch.randn_like(x))
    clipped = teacher_two_step_target(teacher, z_t, t, 4, clip=True)
    raw = teacher_two_step_target(teacher, z_t, t, 4, clip=False)
    x1 = teacher(z_t, t, None)
    z1 = COSINE.ddim_step(z_t, x1, t, t - 0.25)
    x2 = teacher(z1, t - 0.25, None)
    outside = (x1.abs() > 1) | (x2.abs() > 1)
    assert outside.any() and not outside.all()
    assert torch.equal(clipped != raw, outside)


@pytest.mark.parametrize("channels", [6, 132])
def test_official_head_has_the_public_parameter_count(channels):
    official = ProjectionHead(channels, bias=False)
    # public: conv1x1 (C*C, no bias) + SyncBatchNorm (2C) + conv1x1 (C*C, no bias)
    assert sum(p.numel() for p in official.parameters()) == 2 * channels * channels + 2 * channels
    assert sum(p.numel() for p in ProjectionHead(channels).parameters()) == 2 * channels * channels + 3 * channels


@pytest.mark.slow
@pytest.mark.parametrize("scope, expected", [("global", 8), ("rank", 16)])
def test_k_under_two_gloo_processes(scope, expected, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "tests/ddp_queue_worker.py"), scope, str(tmp_path)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT / "tests",
                            env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT / "src")})
    assert result.returncode == 0, result.stderr[-2000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["filled"] == ranks[1]["filled"] == expected
    torch.testing.assert_close(ranks[0]["queue"], ranks[1]["queue"])
    if scope == "global":  # the 8 rows come from the batch gathered over both ranks
        gathered = torch.nn.functional.normalize(torch.cat([r["map"] for r in ranks]), dim=1)
        candidates = public_rows(gathered.double()).float()
        for row in ranks[0]["queue"][:8]:
            assert (candidates - row).abs().amax(dim=1).min() < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("fidelity", ["official", "paper"])
def test_rdd_stage_runs_in_each_mode(fidelity, teacher, classifier, small_fmnist, tmp_path):
    run_rdd("distill", "--config", "configs/fmnist/distill.yaml", "--teacher", str(teacher), "--method", "rdd",
            *TINY_STAGE, "--set", f"data.root={small_fmnist}", "--set", f"classifier.checkpoint={classifier}",
            "--set", "distill.teacher_steps=4", "--set", "distill.iterations=[3]", "--set", "distill.queue_size=64",
            "--set", "distill.num_contrast=16", "--set", "distill.push_per_step=8", "--set", f"distill.fidelity={fidelity}",
            "--out", str(tmp_path / "stage"))
    state = torch.load(tmp_path / "stage/train_state.pt", weights_only=True)
    head_bias = "m_p2p.head.net.3.bias" in state["objective"]
    assert head_bias == (fidelity == "paper")
    assert (state["objective_optimizer"] is not None) == (fidelity == "official")
    meta = torch.load(tmp_path / "stage/model.pt", weights_only=True)
    assert meta["fidelity_switches"]["queue_layout"] == ("flat_view" if fidelity == "official" else "pixels")
