"""Tile planner, blend weights and tiled evaluation against untiled references."""
import itertools

import pytest
import torch

from sprint.engines import tiling as T


def local_net(radius, channels=4, seed=0):
    """A purely local denoiser: `radius` 3x3 convolutions (receptive field 2 * radius + 1)."""
    torch.manual_seed(seed)
    layers = []
    for i in range(radius):
        layers += [torch.nn.Conv2d(channels, channels, 3, padding=1), torch.nn.Tanh()]
    return torch.nn.Sequential(*layers[:-1]).eval()


def run_tiled(net, x, plan, blend="gaussian", margin=0, batch_size=1):
    weights = T.blend_weights(plan, blend, margin)
    with torch.no_grad():
        return T.tiled_apply(lambda xt, tiles: net(xt), x, plan, weights, batch_size)


@pytest.mark.parametrize("blend", T.BLENDS)
def test_one_tile_covering_everything_is_the_untiled_model(blend):
    net, x = local_net(3), torch.randn(2, 4, 37, 53)
    plan = T.plan_tiles(37, 53, 64, 64, 8, 8)
    assert len(plan.tiles) == 1 and plan.overhead == 1.0
    with torch.no_grad():
        assert torch.equal(run_tiled(net, x, plan, blend), net(x))


@pytest.mark.parametrize("blend", T.BLENDS)
@pytest.mark.parametrize("shape,tile,align,batch_size", [
    ((37, 53), 24, 1, 1),      # sizes not divisible by anything
    ((64, 64), 40, 8, 3),      # aligned starts, batches of tiles
    ((12, 150), 32, 1, 4),     # wide strip: one row of tiles
])
def test_local_denoiser_is_reproduced_when_overlap_covers_its_receptive_field(blend, shape, tile, align, batch_size):
    radius = 2
    receptive_field = 2 * radius + 1
    net, x = local_net(radius), torch.randn(2, 4, *shape)
    plan = T.plan_tiles(*shape, tile, tile, receptive_field, align)
    assert len(plan.tiles) > 1
    with torch.no_grad():
        want = net(x)
    got = run_tiled(net, x, plan, blend, margin=radius, batch_size=batch_size)
    assert torch.allclose(got, want, atol=1e-5, rtol=0), (got - want).abs().max()
    # averaging in the ring that saw the tiles' zero padding shows: the check has teeth
    assert (run_tiled(net, x, plan, "uniform", margin=0) - want).abs().max() > 1e-3


def check_plan(plan, tile_h, tile_w, overlap, align):
    covered = torch.zeros(plan.height, plan.width, dtype=torch.int64)
    for t in plan.tiles:
        assert (t.h, t.w) == (plan.tile_height, plan.tile_width)
        assert 0 <= t.y and t.y + t.h <= plan.height and 0 <= t.x and t.x + t.w <= plan.width
        covered[t.slices()] += 1
    assert covered.min() >= 1
    for size, max_tile, length, starts in ((plan.height, tile_h, plan.tile_height, sorted({t.y for t in plan.tiles})),
                                           (plan.width, tile_w, plan.tile_width, sorted({t.x for t in plan.tiles}))):
        assert length <= max_tile
        n = len(starts)
        if n == 1:
            assert length == size
            continue
        assert all(s % align == 0 for s in starts)
        assert all(length - (b - a) >= overlap for a, b in zip(starts, starts[1:]))
        # minimal count: n - 1 tiles of any allowed length (the last one must start aligned too),
        # spaced by the largest aligned step that keeps the overlap, cannot cover the axis
        for other in range(overlap + 1, max_tile + 1):
            if (size - other) % align == 0:
                assert other + (n - 2) * ((other - overlap) // align * align) < size


@pytest.mark.parametrize("height,width,tile,overlap,align", [
    (1, 1, 64, 8, 8), (3, 5, 64, 8, 8),          # tiny latents
    (64, 64, 64, 8, 8), (65, 64, 64, 8, 8),      # exactly one tile, one pixel more
    (8, 4096, 96, 8, 8), (4096, 8, 96, 16, 1),   # huge aspect ratios
    (257, 131, 96, 8, 1), (1000, 333, 128, 8, 8), (256, 256, 128, 8, 8),
])
def test_planner_covers_with_the_fewest_tiles(height, width, tile, overlap, align):
    plan = T.plan_tiles(height, width, tile, tile, overlap, align)
    check_plan(plan, tile, tile, overlap, align)


def test_planner_random_sizes():
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        h, w = (int(v) for v in torch.randint(1, 600, (2,), generator=g))
        tile = int(torch.randint(24, 160, (1,), generator=g))
        overlap = int(torch.randint(0, tile // 2, (1,), generator=g))
        align = int((1, 2, 8)[torch.randint(0, 3, (1,), generator=g)])
        check_plan(T.plan_tiles(h, w, tile, tile, overlap, align), tile, tile, overlap, align)


def test_planner_rejects_impossible_requests():
    with pytest.raises(ValueError, match="overlap"):
        T.plan_tiles(100, 100, 32, 32, 32)
    with pytest.raises(ValueError, match="overlap"):
        T.plan_tiles(100, 100, 32, 32, -1)


def test_default_compute_overhead_stays_low():
    # the node's defaults: tiles of at most 128 latent pixels, overlap 8, aligned to 8
    for size in (136, 192, 200, 256, 320, 384, 512):
        assert T.plan_tiles(size, size, 128, 128, 8, 8).overhead <= 1.3, size


def test_batches_are_balanced():
    plan = T.plan_tiles(100, 100, 40, 40, 8)
    assert len(plan.tiles) == 9
    assert [len(b) for b in plan.batches(4)] == [3, 3, 3]
    assert [len(b) for b in plan.batches(1)] == [1] * 9
    assert list(itertools.chain(*plan.batches(5))) == list(plan.tiles)


def canvas(plan, tile, w):
    out = torch.zeros(plan.height, plan.width)
    out[tile.slices()] = w
    return out


@pytest.mark.parametrize("size", [136, 200, 256, 320, 1000])
def test_blend_weights_are_a_partition_of_unity_without_steps(size):
    plan = T.plan_tiles(size, size, 128, 128, 8, 8)
    for blend in T.BLENDS:
        w = T.blend_weights(plan, blend)
        total = sum(canvas(plan, t, w[t.index]) for t in plan.tiles)
        assert torch.allclose(total, torch.ones_like(total), atol=1e-6)

    def step_at_inner_edges(w):
        """The largest weight a tile keeps on its last row/column inside the image (the jump to
        zero just outside it)."""
        worst = 0.0
        for t in plan.tiles:
            rim = [w[t.index][0] if t.y > 0 else None, w[t.index][-1] if t.y + t.h < size else None,
                   w[t.index][:, 0] if t.x > 0 else None, w[t.index][:, -1] if t.x + t.w < size else None]
            worst = max([worst] + [float(r.max()) for r in rim if r is not None])
        return worst

    assert step_at_inner_edges(T.blend_weights(plan, "gaussian")) < 0.02
    # MultiDiffusion's plain average does step (to 1/2 where two tiles meet): the check can fail
    assert step_at_inner_edges(T.blend_weights(plan, "uniform")) >= 0.5


def test_margin_zeroes_inner_rims_and_must_leave_coverage():
    plan = T.plan_tiles(64, 64, 40, 40, 8)
    w = T.blend_weights(plan, "uniform", margin=3)
    first = plan.tiles[0]               # top-left: inner edges at the bottom and the right
    assert torch.all(w[first.index][-3:] == 0) and torch.all(w[first.index][:, -3:] == 0)
    assert torch.all(w[first.index][:3, :3] == 1)   # the image border keeps its weight
    with pytest.raises(ValueError, match="margin"):
        T.blend_weights(plan, "uniform", margin=plan.tile_height)


def test_crops_follow_the_tiles():
    tile = T.Tile(0, 2, 3, 4, 5)
    hint = torch.arange(2 * 3 * 80 * 80, dtype=torch.float32).reshape(2, 3, 80, 80)
    assert torch.equal(T.crop(hint, tile, 8), hint[:, :, 16:48, 24:64])
    other = T.Tile(1, 0, 0, 4, 5)
    stacked = T.stack_tiles(hint[:1], (tile, other), 8, rows=2)   # hint batch 1 cycled to 2 rows
    assert stacked.shape == (4, 3, 32, 40)
    assert torch.equal(stacked[1], hint[0, :, 16:48, 24:64]) and torch.equal(stacked[3], hint[0, :, :32, :40])
    assert T.crop_area((10, 10, 0, 0), tile) == (4, 5, 0, 0)          # tile inside the area
    assert T.crop_area((4, 4, 4, 6), tile) == (2, 2, 2, 3)            # overlapping corner
    assert T.crop_area((2, 2, 20, 20), tile) is None                  # disjoint


def test_tiled_conditioning_is_cropped_with_the_tiles():
    """A local denoiser reading an 8x-resolution hint and a latent-resolution mask: cropping them
    with the tiles reproduces the untiled result, for several outputs at once."""
    net, x = local_net(1), torch.randn(2, 4, 40, 56)
    hint, mask = torch.randn(1, 4, 320, 448), torch.rand(2, 1, 40, 56)

    def denoise(x, hint, mask):
        return [net(x) + torch.nn.functional.avg_pool2d(hint, 8), net(x) * mask]

    plan = T.plan_tiles(40, 56, 24, 24, 3)
    weights = T.blend_weights(plan, "gaussian", margin=1)
    with torch.no_grad():
        want = denoise(x, hint, mask)
        got = T.tiled_apply(lambda xt, tiles: denoise(xt, T.stack_tiles(hint, tiles, 8, rows=2), T.stack_tiles(mask, tiles)),
                            x, plan, weights, batch_size=2)
    for g, w in zip(got, want):
        assert torch.allclose(g, w, atol=1e-5, rtol=0)
