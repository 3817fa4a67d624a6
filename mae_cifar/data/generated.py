"""Generated images with structure an MAE can learn to fill in, for offline runs: each image
is one shape of ten (the class) in a random colour, place and size on a random background.

A masked patch is predictable from its visible neighbours (the background's colour, the
shape's colour and edges), so a quick run shows reconstructions that fill masked patches with
the right colours and edges, not the dataset's mean grey. Batched tensor operations, no
per-image Python; the same images for the same generator seed.
"""
import torch

SHAPES = ("circle", "square", "diamond", "ring", "cross", "x", "hbar", "vbar", "triangle_up",
          "triangle_down")
CENTRE_RANGE = (0.3, 0.7)  # shape centre, as a fraction of the side
RADIUS_RANGE = (0.25, 0.45)  # shape half-size, as a fraction of the side
NOISE_STD = 0.03  # pixel noise, relative to the [0, 1] range
SQUARE_HALF = 0.8  # half-side of the square, in radii
RING_INNER = 0.6
STROKE = 0.3  # half-width of bars and crosses, in radii


def _inside(shape, dx, dy):
    """(N, H, W) bool: the pixels of `shape` at offsets (dx, dy) from its centre, in radii."""
    ax, ay, r = dx.abs(), dy.abs(), (dx ** 2 + dy ** 2).sqrt()
    within = torch.maximum(ax, ay) <= 1
    return {
        "circle": r <= 1,
        "square": torch.maximum(ax, ay) <= SQUARE_HALF,
        "diamond": ax + ay <= 1,
        "ring": (r >= RING_INNER) & (r <= 1),
        "cross": within & ((ax <= STROKE) | (ay <= STROKE)),
        "x": within & (((dx - dy).abs() <= STROKE) | ((dx + dy).abs() <= STROKE)),
        "hbar": within & (ay <= STROKE),
        "vbar": within & (ax <= STROKE),
        "triangle_up": (dy >= 2 * ax - 1) & (dy <= SQUARE_HALF),
        "triangle_down": (-dy >= 2 * ax - 1) & (-dy <= SQUARE_HALF),
    }[shape]


def shapes(n, size, generator):
    """(images (n, 3, size, size) uint8, labels (n,) int64): label c is SHAPES[c]."""
    g = generator
    labels = torch.randint(0, len(SHAPES), (n,), generator=g)
    centre = torch.empty(n, 2).uniform_(*CENTRE_RANGE, generator=g) * size  # (n, 2): x, y
    radius = torch.empty(n).uniform_(*RADIUS_RANGE, generator=g) * size  # (n,)
    background = torch.rand(n, 3, generator=g) * 0.5  # dark
    colour = 0.5 + torch.rand(n, 3, generator=g) * 0.5  # bright
    coords = torch.arange(size).float() + 0.5
    dx = (coords[None, None, :] - centre[:, 0, None, None]) / radius[:, None, None]  # (n, 1, W)
    dy = (coords[None, :, None] - centre[:, 1, None, None]) / radius[:, None, None]  # (n, H, 1)
    dx, dy = torch.broadcast_tensors(dx, dy)  # (n, H, W)
    mask = torch.zeros(n, size, size, dtype=torch.bool)
    for c, shape in enumerate(SHAPES):  # ten vectorised passes over the batch
        mask |= (labels == c)[:, None, None] & _inside(shape, dx, dy)
    x = torch.where(mask[:, None], colour[:, :, None, None], background[:, :, None, None])
    x = x + NOISE_STD * torch.randn(x.shape, generator=g)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8), labels
