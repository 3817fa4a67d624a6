"""Reconstruction grids: masked input | reconstruction | original, for the pretraining log and
visualize_pred.py."""
import os

import torch
from torchvision.utils import make_grid, save_image

from mae_cifar.fileio import atomic_write


@torch.inference_mode()
def reconstruction_grid(m, x, noise, mean, std, pad, pad_value):
    """(C, H', W') image in [0, 1]: triplets of masked input | reconstruction | original.

    x (n, C, H, W) normalised; noise (n, L) fixes the mask; mean, std (1, C, 1, 1).
    """
    m.eval()
    n = x.shape[0]
    _, pred, mask = m(x, noise=noise)
    pred = pred.float()
    if m.config.norm_pix_loss:  # undo the per-patch normalisation of the target
        target = m.patchify(x)
        pred = pred * (target.var(-1, keepdim=True) + 1e-6) ** 0.5 + target.mean(-1, True)
    mask_px = m.unpatchify(mask[:, :, None].expand(-1, -1, pred.shape[-1]))  # 1 = masked
    recon = m.unpatchify(pred) * mask_px + x * (1 - mask_px)
    masked = x * (1 - mask_px)
    rows = torch.stack([masked, recon, x], dim=1).flatten(0, 1)  # (3n, C, H, W)
    rows = (rows * std + mean).clamp(0, 1)
    return make_grid(rows, nrow=3 * max(1, int(n ** 0.5)) if n > 3 else 3,
                     padding=pad, pad_value=pad_value)


def save_grid(grid, path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_write(path, lambda f: save_image(grid, f, format="png"))
