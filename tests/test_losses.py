"""Distillation losses against loop-by-loop references of their equations, the pixel queue, LPIPS."""
import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rdd.errors import RddError
from rdd.losses import (
    LPIPSLoss,
    PixelQueue,
    ProjectionHead,
    cfd_loss,
    ii_p2p_loss,
    is_p2p_loss,
    m_p2p_loss,
)

# ---------------------------------------------------------------------------------------------
# Plain-python references: explicit loops over images, pairs and rows, math on floats.


def softmax(row):
    top = max(row)
    exps = [math.exp(x - top) for x in row]
    return [e / sum(exps) for e in exps]


def kl(p_logits, q_logits):
    """KL(softmax(p_logits) || softmax(q_logits)) of one row."""
    p, q = softmax(p_logits), softmax(q_logits)
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def dot(u, v):
    return sum(a * b for a, b in zip(u, v))


def unit(v):
    norm = math.sqrt(dot(v, v))
    return [x / norm for x in v]


def pixels(fmap):
    """(C, H, W) tensor -> A = H*W unit vectors of length C, row-major over (h, w)."""
    c, h, w = fmap.shape
    return [unit([fmap[k, y, x].item() for k in range(c)]) for y in range(h) for x in range(w)]


def scaled(row, tau):
    return [x / tau for x in row]


def ref_cfd(feat_s, feat_t, tau):
    n = len(feat_s)
    return sum(kl(scaled(feat_t[i].tolist(), tau), feat_s[i].tolist()) for i in range(n)) / n


def ref_ii_p2p(map_s, map_t, tau):
    total, rows = 0.0, 0
    for n in range(len(map_s)):
        f_s, f_t = pixels(map_s[n]), pixels(map_t[n])
        for a in range(len(f_s)):
            m_s = [dot(f_s[a], f_s[b]) for b in range(len(f_s))]
            m_t = [dot(f_t[a], f_t[b]) for b in range(len(f_t))]
            total += kl(scaled(m_t, tau), scaled(m_s, tau))
            rows += 1
    return total / rows


def ref_is_p2p(map_s, map_t, tau):
    n = len(map_s)
    f_s = [pixels(m) for m in map_s]
    f_t = [pixels(m) for m in map_t]
    total = 0.0
    for i in range(n):
        for j in range(n):
            pair = 0.0
            for a in range(len(f_s[i])):
                r_s = [dot(f_s[i][a], f_s[j][b]) for b in range(len(f_s[j]))]
                r_t = [dot(f_t[i][a], f_t[j][b]) for b in range(len(f_t[j]))]
                pair += kl(scaled(r_t, tau), scaled(r_s, tau))
            total += pair / len(f_s[i])
    return total / n**2


def ref_m_p2p(map_s, map_t, contrast, tau):
    embeddings = contrast.tolist()
    total, rows = 0.0, 0
    for n in range(len(map_s)):
        f_s, f_t = pixels(map_s[n]), pixels(map_t[n])
        for a in range(len(f_s)):
            p_s = [dot(f_s[a], e) for e in embeddings]
            p_t = [dot(f_t[a], e) for e in embeddings]
            total += kl(scaled(p_t, tau), scaled(p_s, tau))
            rows += 1
    return total / rows


def random_maps(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g, dtype=torch.float64) for _ in range(2)]


def unit_rows(v, c, seed=2):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(v, c, generator=g, dtype=torch.float64), dim=1)


# ---------------------------------------------------------------------------------------------
# Losses


def test_cfd_matches_reference():
    feat_s, feat_t = random_maps(4, 7)
    assert cfd_loss(feat_s, feat_t, 0.85).item() == pytest.approx(ref_cfd(feat_s, feat_t, 0.85), rel=1e-6)


@pytest.mark.parametrize("tau", [1.0, 0.5])
def test_ii_p2p_matches_reference(tau):
    map_s, map_t = random_maps(3, 5, 2, 3)
    assert ii_p2p_loss(map_s, map_t, tau).item() == pytest.approx(ref_ii_p2p(map_s, map_t, tau), rel=1e-6)


@pytest.mark.parametrize("tau", [1.0, 0.5])
def test_is_p2p_matches_reference(tau):
    map_s, map_t = random_maps(3, 5, 2, 3)
    assert is_p2p_loss(map_s, map_t, tau).item() == pytest.approx(ref_is_p2p(map_s, map_t, tau), rel=1e-6)


def test_m_p2p_matches_reference():
    map_s, map_t = random_maps(3, 5, 2, 3)
    contrast = unit_rows(7, 5)
    expected = ref_m_p2p(map_s, map_t, contrast, 0.1)
    assert m_p2p_loss(map_s, map_t, contrast, 0.1).item() == pytest.approx(expected, rel=1e-6)


def test_is_p2p_with_one_image_is_ii_p2p():
    map_s, map_t = random_maps(1, 6, 3, 3)
    torch.testing.assert_close(is_p2p_loss(map_s, map_t, 0.7), ii_p2p_loss(map_s, map_t, 0.7))


LOSSES = {
    "cfd": lambda s, t: cfd_loss(s.flatten(1), t.flatten(1), 1.0),
    "ii_p2p": lambda s, t: ii_p2p_loss(s, t, 0.5),
    "is_p2p": lambda s, t: is_p2p_loss(s, t, 0.5),
    "m_p2p": lambda s, t: m_p2p_loss(s, t, unit_rows(5, s.shape[1]).to(s.dtype), 0.1),
}


@pytest.mark.parametrize("name", LOSSES)
def test_gradcheck_wrt_student(name):
    map_s, map_t = random_maps(2, 3, 2, 2)
    map_s.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda s: LOSSES[name](s, map_t), (map_s,))


@pytest.mark.parametrize("name", LOSSES)
def test_zero_when_student_equals_teacher(name):
    fmap = torch.randn(4, 8, 3, 3)
    assert abs(LOSSES[name](fmap, fmap.clone()).item()) < 1e-7


def test_kl_is_float32_under_autocast():
    map_s, map_t = (m.to(torch.bfloat16) for m in random_maps(2, 4, 2, 2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = ii_p2p_loss(map_s, map_t, 1.0)
    assert loss.dtype == torch.float32


def test_projection_head_keeps_shape_and_its_seed_alone_sets_its_weights():
    assert ProjectionHead(6)(torch.randn(2, 6, 4, 4)).shape == (2, 6, 4, 4)
    head = ProjectionHead(6, seed=3)
    torch.manual_seed(0)
    again = ProjectionHead(6, seed=3)
    state = torch.get_rng_state()
    other = ProjectionHead(6, seed=4)
    assert torch.equal(torch.get_rng_state(), state)  # the global random state is neither read nor moved
    for (name, a), b in zip(head.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name
    assert not torch.equal(head.net[0].weight, other.net[0].weight)


# ---------------------------------------------------------------------------------------------
# Pixel queue


def one_pixel(vector):
    """A (1, C, 1, 1) teacher map holding one pixel."""
    return torch.tensor(vector, dtype=torch.float32).reshape(1, -1, 1, 1)


def test_queue_starts_as_random_unit_vectors():
    queue = PixelQueue(10, 4, seed=0)
    torch.testing.assert_close(queue.queue.norm(dim=1), torch.ones(10))
    torch.testing.assert_close(queue.queue, PixelQueue(10, 4, seed=0).queue)
    assert int(queue.ptr) == 0 and int(queue.filled) == 0
    torch.testing.assert_close(queue.draw(5), queue.queue[[0, 2, 4, 6, 8]])


def test_queue_is_fifo_across_wrap_around():
    queue = PixelQueue(5, 3, seed=0)
    initial = queue.queue.clone()
    singles = [[1.0, 0, 0], [0, 2.0, 0], [0, 0, 3.0]]
    for vector in singles:
        queue.push(one_pixel(vector), k=1)
    torch.testing.assert_close(queue.queue[:3], torch.eye(3))
    torch.testing.assert_close(queue.queue[3:], initial[3:])
    assert (int(queue.ptr), int(queue.filled)) == (3, 3)

    batch = torch.tensor([[1.0, 1, 0], [0, 1, 1], [1, 0, 1], [1, 1, 1]]).T.reshape(1, 3, 2, 2)
    queue.push(batch, k=4)  # all four pixels land in rows 3, 4, 0, 1, in random order
    expected = torch.nn.functional.normalize(batch.flatten(2)[0].T, dim=1)
    matches = torch.cdist(queue.queue[[3, 4, 0, 1]], expected) < 1e-6
    assert (matches.sum(0) == 1).all() and (matches.sum(1) == 1).all()
    torch.testing.assert_close(queue.queue[2], torch.tensor([0.0, 0, 1]))  # oldest survivor
    assert (int(queue.ptr), int(queue.filled)) == (2, 5)


def test_draw_takes_evenly_spaced_filled_entries():
    queue = PixelQueue(10, 6, seed=0)
    for i in range(6):
        queue.push(one_pixel([float(i == j) for j in range(6)]), k=1)
    torch.testing.assert_close(queue.draw(3), torch.eye(6)[[0, 2, 4]])


def test_queue_state_dict_round_trip(tmp_path):
    queue = PixelQueue(8, 4, seed=0)
    queue.push(torch.randn(2, 4, 3, 3), k=5)
    queue.push(torch.randn(2, 4, 3, 3), k=5)
    torch.save(queue.state_dict(), tmp_path / "queue.pt")
    restored = PixelQueue(8, 4, seed=1)
    restored.load_state_dict(torch.load(tmp_path / "queue.pt", weights_only=True))
    for name, buffer in queue.state_dict().items():
        assert torch.equal(restored.state_dict()[name], buffer), name
    torch.testing.assert_close(restored.draw(4), queue.draw(4))


def push_on_rank(rank, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.manual_seed(rank)
    queue = PixelQueue(6, 3, seed=0)
    rank_map = torch.eye(3)[:, [rank, rank + 1]].reshape(1, 3, 1, 2)  # pixels e_rank, e_rank+1
    queue.push(rank_map, k=2, scope="rank")
    torch.save(queue.state_dict(), f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow
def test_queue_gathers_pixels_from_all_ranks(tmp_path):
    mp.spawn(push_on_rank, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    states = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for name in states[0]:
        assert torch.equal(states[0][name], states[1][name]), name
    queue = states[0]["queue"]
    for rank in range(2):  # rank order: rank 0's pixels in rows 0-1, rank 1's in rows 2-3
        rows = queue[2 * rank : 2 * rank + 2]
        assert sorted(rows.argmax(1).tolist()) == [rank, rank + 1]
        torch.testing.assert_close(rows.max(1).values, torch.ones(2))
    assert int(states[0]["ptr"]) == 4 and int(states[0]["filled"]) == 4


# ---------------------------------------------------------------------------------------------
# LPIPS (lpips and torchvision are imported in the tests: the spawned workers above import this
# module, and these two would add seconds to their start)


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
    from torchvision import models

    path = tmp_path_factory.mktemp("vgg") / "vgg16.pth"
    torch.save(models.vgg16().state_dict(), path)
    return path


def test_lpips_loads_local_backbone(vgg_file):
    import lpips

    loss = LPIPSLoss(backbone_weights=vgg_file)
    saved = torch.load(vgg_file, weights_only=True)
    convs = [(name, m) for name, m in loss.lpips.net.named_modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 13
    for name, conv in convs:  # lpips names them slice<k>.<index into vgg16.features>
        assert torch.equal(conv.weight, saved[f"features.{name.split('.')[1]}.weight"]), name
    lin = torch.load(f"{lpips.__path__[0]}/weights/v0.1/vgg.pth", map_location="cpu", weights_only=True)
    assert torch.equal(loss.lpips.lin0.model[1].weight, lin["lin0.model.1.weight"])
    assert not any(p.requires_grad for p in loss.parameters())
    assert not loss.train().training

    x, y = torch.rand(3, 3, 32, 32) * 2 - 1, torch.rand(3, 3, 32, 32) * 2 - 1
    d = loss(x, y)
    assert d.shape == (3,) and (d >= 0).all() and (d > 0).any()
    assert loss(x, x).abs().max() < 1e-7
    gray = torch.rand(2, 1, 16, 16) * 2 - 1  # grayscale and below 32 pixels
    assert loss(gray, gray.flip(-1)).shape == (2,)


def test_lpips_missing_weights_is_an_rdd_error(tmp_path, monkeypatch):
    with pytest.raises(RddError, match="distill.lpips_weights"):
        LPIPSLoss(backbone_weights=tmp_path / "missing.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty torchvision cache
    with pytest.raises(RddError, match="distill.lpips_weights=PATH"):
        LPIPSLoss()
