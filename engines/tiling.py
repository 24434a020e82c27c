"""Tiled evaluation of a denoiser on a latent too large (or too costly) for one pass.

The latent is covered by the fewest equal, evenly spaced, overlapping tiles; the denoiser runs on
batches of tiles and the tile outputs are blended with per-pixel weights that sum to one:

- MultiDiffusion (Bar-Tal et al. 2023, "MultiDiffusion: Fusing Diffusion Paths for Controlled
  Image Generation"): the uniform average of every tile covering a pixel.
- Mixture of Diffusers (Jimenez 2023, "Mixture of Diffusers for scene composition and high
  resolution image generation"): a Gaussian centred on each tile (variance 0.01 of the tile size
  squared, as in the paper), so a tile's weight fades out towards its edges and no seam shows.

`margin` gives zero weight to the outermost pixels of every tile edge that lies inside the image:
those pixels saw the tile border (zero padding) instead of their neighbours. With a denoiser whose
receptive field reaches `radius` pixels, margin >= radius and an overlap >= 2 * margin reproduce the
untiled output exactly. Conditioning tensors aligned with the latent (ControlNet hints at
`scale` pixels per latent pixel, masks, concat latents, areas) are cropped with the same tiles.
"""
import dataclasses
import functools
import math

import torch

BLENDS = ("gaussian", "uniform")
GAUSSIAN_VARIANCE = 0.01   # of the tile size squared (Mixture of Diffusers)


@dataclasses.dataclass(frozen=True)
class Tile:
    """A rectangle of the latent: rows y..y+h, columns x..x+w; `index` in its plan."""
    index: int
    y: int
    x: int
    h: int
    w: int

    def slices(self, scale=1):
        return (slice(self.y * scale, (self.y + self.h) * scale), slice(self.x * scale, (self.x + self.w) * scale))


@dataclasses.dataclass(frozen=True)
class TilePlan:
    height: int
    width: int
    tile_height: int
    tile_width: int
    tiles: tuple

    @property
    def overhead(self):
        """Evaluated area over image area: the extra compute tiling costs (1.0 for one tile)."""
        return len(self.tiles) * self.tile_height * self.tile_width / (self.height * self.width)

    def batches(self, size):
        """The tiles in consecutive batches of at most `size`, balanced (7 tiles by 4 -> 4 + 3)."""
        count = math.ceil(len(self.tiles) / max(1, size))
        per = math.ceil(len(self.tiles) / count)
        return [self.tiles[i:i + per] for i in range(0, len(self.tiles), per)]


def _even_starts(size, length, count, align):
    """`count` starts from 0 to size - length, evenly spaced and rounded to multiples of `align`."""
    span = size - length
    return tuple(round(i * span / ((count - 1) * align)) * align if i < count - 1 else span for i in range(count))


def axis_layout(size, max_tile, overlap, align=1):
    """(tile length, starts) along one axis: the fewest tiles of length <= max_tile that cover
    [0, size) with neighbours overlapping by >= overlap, then the shortest such length.

    Starts are multiples of `align` (the last one too: its tile ends at the edge), so every tile
    sees the same downsampling grid as the whole latent.
    """
    if size <= max_tile:
        return size, (0,)
    if not 0 <= overlap < max_tile:
        raise ValueError(f"overlap {overlap} must be at least 0 and smaller than the tile size {max_tile}")
    count = math.ceil((size - overlap) / (max_tile - overlap))
    while count <= size:
        for length in range(math.ceil((size + (count - 1) * overlap) / count), max_tile + 1):
            if (size - length) % align:
                continue
            starts = _even_starts(size, length, count, align)
            gaps = [b - a for a, b in zip(starts, starts[1:])]
            if all(0 < g <= length - overlap for g in gaps):
                return length, starts
        count += 1
    raise ValueError(f"no tiling of {size} by tiles <= {max_tile} with overlap {overlap} aligned to {align}")


@functools.lru_cache(maxsize=256)
def plan_tiles(height, width, tile_height, tile_width, overlap, align=1):
    """The TilePlan covering a height x width latent (row-major tiles, all the same size)."""
    th, ys = axis_layout(height, tile_height, overlap, align)
    tw, xs = axis_layout(width, tile_width, overlap, align)
    tiles = tuple(Tile(i * len(xs) + j, y, x, th, tw) for i, y in enumerate(ys) for j, x in enumerate(xs))
    return TilePlan(height, width, th, tw, tiles)


def _gaussian(offset, length):
    return torch.exp(-torch.as_tensor(offset, dtype=torch.float64) ** 2 / (2 * GAUSSIAN_VARIANCE * length ** 2))


def _profile(length, start, size, blend, margin):
    """One tile's 1-D weight before normalisation, with `margin` zeros on edges inside the image."""
    i = torch.arange(length, dtype=torch.float64)
    if blend == "gaussian":   # shifted to reach 0 on the tile's boundary: no step where it ends
        p = _gaussian(i - (length - 1) / 2, length) - _gaussian(length / 2, length)
    elif blend == "uniform":
        p = torch.ones(length, dtype=torch.float64)
    else:
        raise ValueError(f"blend must be one of {BLENDS}, got {blend!r}")
    if margin:
        if start > 0:
            p[:margin] = 0
        if start + length < size:
            p[length - margin:] = 0
    return p


@functools.lru_cache(maxsize=64)
def _weights(plan, blend, margin):
    raw = torch.stack([torch.outer(_profile(plan.tile_height, t.y, plan.height, blend, margin),
                                   _profile(plan.tile_width, t.x, plan.width, blend, margin)) for t in plan.tiles])
    total = torch.zeros(plan.height, plan.width, dtype=torch.float64)
    for t, r in zip(plan.tiles, raw):
        total[t.slices()] += r
    if not torch.all(total > 0):
        raise ValueError(f"margin {margin} leaves pixels without a tile: it must be at most half the overlap")
    return torch.stack([r / total[t.slices()] for t, r in zip(plan.tiles, raw)]).to(torch.float32)


def blend_weights(plan, blend="gaussian", margin=0, device=None, dtype=torch.float32):
    """Per-tile weights [tiles, tile_height, tile_width]; over the latent they sum to exactly one
    per pixel (up to rounding). One tile covering everything gets weight 1 everywhere."""
    return _weights(plan, blend, margin).to(device=device, dtype=dtype)


def repeat_rows(t, rows):
    """t with its first dim cycled (or cut) to `rows` entries, the way ComfyUI batches conds."""
    if t.shape[0] == rows:
        return t
    return t.repeat((math.ceil(rows / t.shape[0]),) + (1,) * (t.ndim - 1))[:rows]


def crop(t, tile, scale=1):
    """The part of t (spatial in its last two dims, `scale` pixels per latent pixel) under tile."""
    return t[(..., *tile.slices(scale))]


def stack_tiles(t, tiles, scale=1, rows=None):
    """Crops of t under each tile concatenated along dim 0, each first cycled to `rows` entries:
    the layout of a batch of tiles (tile-major, then the latent's batch)."""
    return torch.cat([crop(t if rows is None else repeat_rows(t, rows), tile, scale) for tile in tiles])


def crop_area(area, tile):
    """A ComfyUI area (h, w, y, x) in latent pixels, clipped to tile and made tile-relative; None
    where they do not meet."""
    h, w, y, x = area
    top, left = max(y, tile.y), max(x, tile.x)
    bottom, right = min(y + h, tile.y + tile.h), min(x + w, tile.x + tile.w)
    if bottom <= top or right <= left:
        return None
    return (bottom - top, right - left, top - tile.y, left - tile.x)


def tiled_apply(denoise, x, plan, weights, batch_size=1):
    """Blend denoise() over the tiles of plan: sum_T W_T * denoise(x[T]).

    denoise(x_tiles, tiles) gets a batch of tiles stacked along dim 0 (tile-major, each holding
    x's whole batch) and returns a tensor of the same layout, or a list of them (one result per
    output, e.g. cond and uncond). Returns a tensor shaped like x, or the list.
    """
    rows = x.shape[0]
    outputs = None
    for tiles in plan.batches(batch_size):
        results = denoise(stack_tiles(x, tiles), tiles)
        single = torch.is_tensor(results)
        results = [results] if single else results
        if outputs is None:
            outputs = [torch.zeros(x.shape[:1] + r.shape[1:2] + x.shape[2:], dtype=r.dtype, device=r.device) for r in results]
        for out, result in zip(outputs, results):
            for k, tile in enumerate(tiles):
                out[(..., *tile.slices())] += result[k * rows:(k + 1) * rows] * weights[tile.index]
    return outputs[0] if single else outputs
