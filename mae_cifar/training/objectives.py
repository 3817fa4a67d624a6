"""What each stage minimises: step functions (model, x, y) -> (loss, per-batch sums) for the
Trainer."""
import torch
import torch.nn.functional as F


def any_size_mixup(**kwargs):
    """timm's Mixup in 'batch' mode (one lambda per batch, image i mixed with image B-1-i),
    for any batch size: timm refuses odd sizes, but its mixing needs none; the middle image
    of an odd batch is mixed with itself, so it and its label stay as they are."""
    from timm.data import Mixup
    from timm.data.mixup import mixup_target

    class AnySizeMixup(Mixup):
        def __call__(self, x, target):
            lam = self._mix_batch(x)  # in place, on the device
            return x, mixup_target(target, self.num_classes, lam, self.label_smoothing)

    return AnySizeMixup(mode="batch", **kwargs)


class Objective:
    """Training loss with optional mixup/cutmix (timm, on device batches) and smoothing."""

    def __init__(self, args, num_classes):
        self.mixup = None
        if args.mixup > 0 or args.cutmix > 0:
            self.mixup = any_size_mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix,
                                        label_smoothing=args.smoothing, num_classes=num_classes)
        self.smoothing = args.smoothing

    def __call__(self, model, x, y):
        target = y
        if self.mixup is not None:
            x, target = self.mixup(x, y)
        logits = model(x)
        if target.ndim == 2:
            loss = torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
        else:
            loss = F.cross_entropy(logits.float(), y, label_smoothing=self.smoothing)
        return loss, {"correct": (logits.argmax(-1) == y).sum()}


def pretrain_step(model, x, y):
    loss, _, _ = model(x)
    return loss, {}
