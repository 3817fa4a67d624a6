"""The batched on-device loader: a seeded permutation per epoch, sliced into batches,
augmented and normalised on the device (no DataLoader, no per-image Python)."""
import torch

from mae_cifar.cli import UsageError
from mae_cifar.data.augment import (
    AUGMENTS,
    RRC_SCALE,
    UINT8_AUGMENTS,
    augment_batch,
    rand_augment,
    random_erasing,
)


class DeviceLoader:
    """Batches of a device-resident split: a seeded permutation per epoch, sliced in order.

    The permutation depends on (seed, epoch) only, so every rank draws the same one and a
    resumed run sees the same order. With world > 1 each global batch is split into equal,
    disjoint per-rank shards; the last partial batch is rounded down to a multiple of world.
    """

    def __init__(self, split, batch_size, mean=None, std=None, augment="none", shuffle=True,
                 seed=0, rank=0, world=1, crop_scale=RRC_SCALE, rand_augment=None, reprob=0.0,
                 drop_last=False):
        """rand_augment: None or (n, magnitude, mstd) of augment.rand_augment; reprob: the
        probability of random erasing; drop_last: skip the last partial batch (MAE
        pretraining does), else it is kept and rounded down to a multiple of world."""
        if augment not in AUGMENTS:
            raise UsageError(f"unknown augment {augment!r}; choose one of {', '.join(AUGMENTS)}")
        self.split, self.batch_size, self.augment = split, batch_size, augment
        self.shuffle, self.seed, self.rank, self.world = shuffle, seed, rank, world
        self.crop_scale, self.rand_augment, self.reprob = crop_scale, rand_augment, reprob
        if mean is not None:
            self.mean = mean.to(split.images.device)[None, :, None, None]  # (1, C, 1, 1)
            self.std = std.to(split.images.device)[None, :, None, None]
            self.scale = 1.0 / (255 * self.std)  # uint8 -> normalised in one multiply-add
            self.shift = self.mean / self.std
        keep = len(split) % batch_size if drop_last else (len(split) % batch_size) % world
        self.num_images = len(split) - keep
        if drop_last and self.num_images == 0:
            raise UsageError(f"{len(split)} images make no full batch of {batch_size}; "
                             "lower --batch_size or use more images")

    def __len__(self):
        return -(-self.num_images // self.batch_size)

    def order(self, epoch):
        if not self.shuffle:
            return torch.arange(len(self.split))
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(len(self.split), generator=g)

    def indices(self, epoch, step, order=None):
        """This rank's indices of global batch `step` of `epoch`."""
        order = self.order(epoch) if order is None else order
        batch = order[step * self.batch_size:min((step + 1) * self.batch_size, self.num_images)]
        return batch.tensor_split(self.world)[self.rank]

    def epoch(self, epoch, start_step=0):
        """Yield (images (b, C, H, W) normalised float, labels (b,)) from start_step on."""
        order = self.order(epoch).to(self.split.images.device)
        for step in range(start_step, len(self)):
            idx = self.indices(epoch, step, order)
            yield self.batch(idx)

    def batch(self, idx):
        """uint8 images -> augmented, normalised floats; float splits (cached features) pass
        through unchanged."""
        labels = self.split.labels.index_select(0, idx)
        x = self.split.images.index_select(0, idx)
        if x.is_floating_point():
            return x, labels
        if self.augment in UINT8_AUGMENTS:  # exact on integers, and a quarter of the bytes
            x = augment_batch(x, self.augment)
        if self.rand_augment is not None:  # its pixel ops work on [0, 1] values
            x = x.float().div_(255)
            if self.augment not in UINT8_AUGMENTS:
                x = augment_batch(x, self.augment, self.crop_scale)
            x = rand_augment(x, *self.rand_augment, fill=self.mean)
            x = x.sub_(self.mean).div_(self.std)
        else:
            x = x.float().mul_(self.scale).sub_(self.shift)
            if self.augment not in UINT8_AUGMENTS:  # interpolation commutes with normalising
                x = augment_batch(x, self.augment, self.crop_scale)
        if self.reprob > 0:  # on normalised pixels, as timm's RandomErasing
            x = random_erasing(x, self.reprob)
        return x, labels
