"""Batched, on-device augmentation: flips and crops (every stage), and RandAugment and random
erasing (the MAE fine-tuning augmentations).

timm's `rand_augment_transform` works on one PIL image at a time and its `RandomErasing` loops
over the images of a batch in Python; these versions draw every random choice as a tensor and
apply each operation to the whole batch with masks, so a batch never leaves the device and no
Python runs per image.

RandAugment mirrors timm's 'rand-m9-mstd0.5-inc1' (the MAE recipe): NUM_OPS operations per
image, each picked uniformly from the 15 of timm's `_RAND_INCREASING_TRANSFORMS` and applied
with probability OP_PROB at a magnitude drawn per image and operation from N(m, mstd) clipped
to [0, 10]. Ranges at magnitude 10 as in timm: rotate 30 degrees, shear 0.3, translate 0.45 of
the side, colour/contrast/brightness/sharpness factor 1 +- 0.9, posterize to 4 - int(0.4 m)
bits, solarize above 256 - int(25.6 m), solarize-add int(11 m). Differences: geometric ops
use bilinear sampling and shear about the image centre (timm: random bilinear/bicubic, about
the top-left corner); empty areas are filled with the dataset mean, as timm does.
"""
import math
import re

import numpy as np
import torch
import torch.nn.functional as F

LEVEL_MAX = 10.0  # timm's _LEVEL_DENOM: magnitudes are in [0, 10]
NUM_OPS = 2  # timm's default n
OP_PROB = 0.5  # each chosen op is applied with this probability (timm's RandAugment default)
ROTATE_MAX_DEG = 30.0
SHEAR_MAX = 0.3
TRANSLATE_MAX = 0.45  # fraction of the side
ENHANCE_MAX = 0.9  # enhancement factor 1 +- ENHANCE_MAX * level
ENHANCE_MIN = 0.1
POSTERIZE_MAX_BITS = 4
SOLARIZE_ADD_MAX = 110
SOLARIZE_ADD_CAP = 128
SOLARIZE_ADD_THRESHOLD = 128
LEVELS = 256  # uint8 grey levels
# timm rounds levels down from float64; float32's 0.9 is 0.89999998, so nudge before flooring
# (magnitude 9 must give timm's posterize 1 bit, solarize 26, solarize-add 99)
FLOOR_EPS = 1e-4
GREY = (0.299, 0.587, 0.114)  # PIL's RGB -> L weights
SMOOTH = ((1, 1, 1), (1, 5, 1), (1, 1, 1))  # PIL's SMOOTH filter (sharpness degenerates to it)
OPS = ("auto_contrast", "equalize", "invert", "rotate", "posterize", "solarize", "solarize_add",
       "color", "contrast", "brightness", "sharpness", "shear_x", "shear_y", "translate_x",
       "translate_y")
# most ops per image (-nN): one per available op; timm's n is 2, and each op is a pass over
# the batch, so a huge n only stalls training
MAX_OPS = len(OPS)
GEOMETRIC = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")
SPEC = re.compile(r"rand-m(?P<m>[\d.]+)-mstd(?P<mstd>[\d.]+)(-n(?P<n>\d+))?-inc1")
# random erasing as timm's RandomErasing(mode='pixel', max_count=1)
ERASE_AREA = (0.02, 1 / 3)
ERASE_LOG_ASPECT = (math.log(0.3), math.log(1 / 0.3))
ERASE_ATTEMPTS = 10


def parse_rand_augment(spec):
    """'none' -> None; timm's 'rand-m9-mstd0.5-inc1' (optional -nN, N <= MAX_OPS) ->
    (n, m, mstd)."""
    if spec == "none":
        return None
    match = SPEC.fullmatch(spec)
    if match is None:
        raise ValueError(f"expected 'none' or a timm RandAugment string such as "
                         f"'rand-m9-mstd0.5-inc1', got {spec!r}")
    n = int(match["n"]) if match["n"] else NUM_OPS
    if n > MAX_OPS:
        raise ValueError(f"-n{n} applies {n} ops to every image; at most {MAX_OPS} (one per "
                         f"available op; the MAE recipe uses {NUM_OPS})")
    return n, float(match["m"]), float(match["mstd"])


# --------------------------------------------------------------------------- pixel ops
# Each takes x (B, C, H, W) in [0, 1] and per-image levels (B,) in [0, 1] (= m / 10) and
# signs (B,) of +-1; all return (B, C, H, W) in [0, 1].
def _per_image(v):
    return v[:, None, None, None]


def _floor(v):
    return (v + FLOOR_EPS).floor()


def _quantised(x):
    return (x * (LEVELS - 1)).round()


def auto_contrast(x, level, sign):
    """PIL's ImageOps.autocontrast: stretch each channel to 0..255, truncating levels (in
    float64 as PIL, whose truncation float32 would not reproduce)."""
    q = _quantised(x).double()
    lo = q.amin(dim=(2, 3), keepdim=True)
    hi = q.amax(dim=(2, 3), keepdim=True)
    scale = torch.full_like(hi, LEVELS - 1) / (hi - lo).clamp(min=1)  # PIL's 255.0 / (hi - lo)
    stretched = (q * scale - lo * scale).floor().clamp(0, LEVELS - 1) / (LEVELS - 1)
    return torch.where(hi > lo, stretched.to(x.dtype), x)


def equalize(x, level, sign):
    """PIL's ImageOps.equalize per image and channel, from a histogram of 256 levels."""
    b, c, h, w = x.shape
    q = _quantised(x).long().reshape(b * c, h * w)  # (BC, HW)
    hist = torch.zeros(b * c, LEVELS, device=x.device).scatter_add_(
        1, q, torch.ones_like(q, dtype=torch.float))  # (BC, 256)
    last = hist.gather(1, q.amax(dim=1, keepdim=True))  # count of the brightest level
    step = torch.div(h * w - last, LEVELS - 1, rounding_mode="floor")  # (BC, 1)
    before = hist.cumsum(1) - hist  # pixels below each level
    lut = torch.div(before + torch.div(step, 2, rounding_mode="floor"), step.clamp(min=1),
                    rounding_mode="floor").clamp(max=LEVELS - 1)
    out = lut.gather(1, q) / (LEVELS - 1)
    out = torch.where(step > 0, out, q / (LEVELS - 1))  # flat images stay as they are
    return out.reshape(b, c, h, w)


def invert(x, level, sign):
    return 1 - x


def posterize(x, level, sign):
    bits = POSTERIZE_MAX_BITS - _floor(level * POSTERIZE_MAX_BITS)  # (B,) 4 .. 0
    unit = _per_image(2 ** (8 - bits))
    return torch.div(_quantised(x), unit, rounding_mode="floor") * unit / (LEVELS - 1)


def solarize(x, level, sign):
    threshold = _per_image(LEVELS - _floor(level * LEVELS))
    q = _quantised(x)
    return torch.where(q >= threshold, LEVELS - 1 - q, q) / (LEVELS - 1)


def solarize_add(x, level, sign):
    add = _per_image(_floor(level * SOLARIZE_ADD_MAX).clamp(max=SOLARIZE_ADD_CAP))
    q = _quantised(x)
    return torch.where(q < SOLARIZE_ADD_THRESHOLD, (q + add).clamp(max=LEVELS - 1), q) / (
        LEVELS - 1)


def _factor(level, sign):
    return _per_image((1 + sign * level * ENHANCE_MAX).clamp(min=ENHANCE_MIN))


def _blend(degenerate, x, factor):
    return (degenerate + factor * (x - degenerate)).clamp(0, 1)


def _grey(x):
    if x.shape[1] != len(GREY):
        return x.mean(dim=1, keepdim=True)
    w = torch.tensor(GREY, device=x.device, dtype=x.dtype)[None, :, None, None]
    return (x * w).sum(dim=1, keepdim=True)  # (B, 1, H, W)


def color(x, level, sign):
    return _blend(_grey(x), x, _factor(level, sign))


def contrast(x, level, sign):
    return _blend(_grey(x).mean(dim=(1, 2, 3), keepdim=True), x, _factor(level, sign))


def brightness(x, level, sign):
    return _blend(torch.zeros_like(x), x, _factor(level, sign))


def sharpness(x, level, sign):
    c = x.shape[1]
    k = torch.tensor(SMOOTH, device=x.device, dtype=x.dtype)
    k = (k / k.sum()).expand(c, 1, 3, 3)
    smooth = F.conv2d(x, k, padding=1, groups=c)
    smooth[..., 0, :], smooth[..., -1, :] = x[..., 0, :], x[..., -1, :]  # PIL keeps the border
    smooth[..., :, 0], smooth[..., :, -1] = x[..., :, 0], x[..., :, -1]
    return _blend(smooth, x, _factor(level, sign))


PIXEL_OPS = {"auto_contrast": auto_contrast, "equalize": equalize, "invert": invert,
             "posterize": posterize, "solarize": solarize, "solarize_add": solarize_add,
             "color": color, "contrast": contrast, "brightness": brightness,
             "sharpness": sharpness}


def affine_theta(op, level, sign):
    """(B, 2, 3) affine_grid matrices of one geometric op; rows map output to input coords."""
    b = level.shape[0]
    theta = torch.eye(2, 3, device=level.device).repeat(b, 1, 1)
    v = sign * level
    if op == "rotate":
        a = v * math.radians(ROTATE_MAX_DEG)
        theta[:, 0, 0], theta[:, 0, 1] = torch.cos(a), -torch.sin(a)
        theta[:, 1, 0], theta[:, 1, 1] = torch.sin(a), torch.cos(a)
    elif op == "shear_x":
        theta[:, 0, 1] = v * SHEAR_MAX
    elif op == "shear_y":
        theta[:, 1, 0] = v * SHEAR_MAX
    elif op == "translate_x":
        theta[:, 0, 2] = 2 * v * TRANSLATE_MAX  # [-1, 1] coordinates span 2
    elif op == "translate_y":
        theta[:, 1, 2] = 2 * v * TRANSLATE_MAX
    return theta


def warp(x, theta, fill):
    """Affine-warp each image; pixels from outside are `fill` (1, C, 1, 1)."""
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x - fill, grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False) + fill


def rand_augment(x, n, magnitude, mstd, fill, prob=OP_PROB):
    """x (B, C, H, W) in [0, 1] -> RandAugmented, same shape, in [0, 1].

    fill: (1, C, 1, 1) value of pixels that geometric ops bring in (the dataset mean).
    """
    b = x.shape[0]
    for _ in range(n):
        op = torch.randint(len(OPS), (b,), device=x.device)
        applied = torch.rand(b, device=x.device) < prob
        level = (magnitude + mstd * torch.randn(b, device=x.device)).clamp(0, LEVEL_MAX)
        level = level / LEVEL_MAX  # (B,) in [0, 1]
        sign = torch.where(torch.rand(b, device=x.device) < 0.5, -1.0, 1.0)
        theta = torch.eye(2, 3, device=x.device).repeat(b, 1, 1)
        for i, name in enumerate(OPS):
            chosen = applied & (op == i)  # (B,)
            if name in GEOMETRIC:
                theta = torch.where(chosen[:, None, None], affine_theta(name, level, sign), theta)
        out = warp(x, theta, fill)  # identity theta: bilinear at pixel centres, unchanged
        for i, name in enumerate(OPS):
            if name in PIXEL_OPS:
                out = torch.where(_per_image(applied & (op == i)), PIXEL_OPS[name](x, level, sign),
                                  out)
        x = out.clamp(0, 1)
    return x


# --------------------------------------------------------------------------- random erasing
def erase_boxes(b, h, w, prob, device):
    """Per-image boxes like timm's RandomErasing: (erase (B,) bool, top, left, bh, bw (B,))."""
    area = torch.empty(b, ERASE_ATTEMPTS, device=device).uniform_(*ERASE_AREA) * h * w
    aspect = torch.exp(torch.empty(b, ERASE_ATTEMPTS, device=device).uniform_(*ERASE_LOG_ASPECT))
    bh = torch.sqrt(area * aspect).round().long()
    bw = torch.sqrt(area / aspect).round().long()
    fits = (bh < h) & (bw < w)  # (B, A)
    first = fits.float().argmax(dim=1, keepdim=True)  # the first attempt that fits
    bh, bw = bh.gather(1, first)[:, 0], bw.gather(1, first)[:, 0]
    erase = (torch.rand(b, device=device) < prob) & fits.any(dim=1)
    top = (torch.rand(b, device=device) * (h - bh + 1)).floor().long()
    left = (torch.rand(b, device=device) * (w - bw + 1)).floor().long()
    return erase, top, left, bh, bw


def random_erasing(x, prob):
    """x (B, C, H, W) normalised -> one box per chosen image filled with N(0, 1) pixels."""
    b, _, h, w = x.shape
    erase, top, left, bh, bw = erase_boxes(b, h, w, prob, x.device)
    rows = torch.arange(h, device=x.device)[None, :]  # (1, H)
    cols = torch.arange(w, device=x.device)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < (top + bh)[:, None])  # (B, H)
    in_cols = (cols >= left[:, None]) & (cols < (left + bw)[:, None])  # (B, W)
    box = (in_rows[:, :, None] & in_cols[:, None, :] & erase[:, None, None])[:, None]
    return torch.where(box, torch.randn_like(x), x)


# --------------------------------------------------------------------------- flips and crops
AUGMENTS = ("none", "flip", "crop_flip", "rrc_flip")
UINT8_AUGMENTS = ("flip", "crop_flip")  # run on the uint8 batch, before normalisation
CROP_PAD = 4  # pixels of zero padding for crop_flip (the classic CIFAR recipe)
RRC_SCALE = (0.2, 1.0)  # RandomResizedCrop area range of MAE pretraining (fine-tuning: 0.08)
RRC_RATIO = (3 / 4, 4 / 3)


def augment_batch(x, augment, crop_scale=RRC_SCALE):
    """Batched augmentation: (B, C, H, W) -> same shape and range (flips and crops also on
    uint8; rrc_flip needs floats). crop_scale: rrc_flip's range of crop areas."""
    if augment == "crop_flip":
        x = random_crop(x, CROP_PAD)
    elif augment == "rrc_flip":
        x = random_resized_crop(x, crop_scale)
    if augment != "none":
        x = random_flip(x)
    return x


def random_flip(x):
    flip = torch.rand(x.shape[0], device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def random_crop(x, pad):
    """Zero-pad by `pad` and crop back to (H, W) at a random offset per image."""
    b, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))  # (B, C, H+2p, W+2p)
    dy = torch.randint(0, 2 * pad + 1, (b,), device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (b,), device=x.device)
    rows = dy[:, None] + torch.arange(h, device=x.device)  # (B, H)
    cols = dx[:, None] + torch.arange(w, device=x.device)  # (B, W)
    xp = xp.gather(2, rows[:, None, :, None].expand(b, c, h, w + 2 * pad))  # (B, C, H, W+2p)
    return xp.gather(3, cols[:, None, None, :].expand(b, c, h, w))


def rrc_boxes(b, scale, ratio, device):
    """(w, h, cx, cy) of b crops: sides as fractions of the image, centres in [-1, 1].

    The area w * h lies in `scale`: a side clamped to the whole image only happens for areas
    above ratio[0] (>= 0.75), and the other side then keeps the area >= 0.75."""
    area = torch.empty(b, device=device).uniform_(*scale)
    log_r = torch.empty(b, device=device).uniform_(np.log(ratio[0]), np.log(ratio[1]))
    aspect = torch.exp(log_r)
    w = torch.sqrt(area * aspect).clamp(max=1.0)
    h = torch.sqrt(area / aspect).clamp(max=1.0)
    cx = (torch.rand(b, device=device) * 2 - 1) * (1 - w)
    cy = (torch.rand(b, device=device) * 2 - 1) * (1 - h)
    return w, h, cx, cy


def random_resized_crop(x, scale=RRC_SCALE, ratio=RRC_RATIO):
    """RandomResizedCrop per image via one affine grid_sample over the batch."""
    w, h, cx, cy = rrc_boxes(x.shape[0], scale, ratio, x.device)
    zero = torch.zeros_like(w)
    theta = torch.stack([torch.stack([w, zero, cx], 1), torch.stack([zero, h, cy], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
