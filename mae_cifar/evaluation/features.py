"""A model over a whole split, without gradients: a classifier's loss and accuracy, and the
frozen encoder's features (computed once for a linear probe)."""
import torch
import torch.nn.functional as F

from mae_cifar import distributed
from mae_cifar.data.datasets import Split
from mae_cifar.data.loader import DeviceLoader


@torch.inference_mode()
def evaluate(model, split, batch_size, norm, autocast, dist):
    """(mean loss, accuracy) over the whole split; ranks share the work and sum counts."""
    model.eval()
    loader = DeviceLoader(split, batch_size, *norm, shuffle=False)
    idx = torch.arange(len(split), device=split.images.device).tensor_split(dist.world)[dist.rank]
    totals = torch.zeros(3, device=dist.device)  # loss sum, correct, count
    for chunk in idx.split(batch_size):
        x, y = loader.batch(chunk)
        with autocast():
            logits = model(x).float()
        totals += torch.stack([F.cross_entropy(logits, y, reduction="sum"),
                               (logits.argmax(-1) == y).sum().float(),
                               torch.tensor(float(len(y)), device=dist.device)])
    loss_sum, correct, count = distributed.all_reduce_sum(totals).tolist()
    return loss_sum / count, correct / count


@torch.inference_mode()
def extract_features(model, split, batch_size, norm, autocast):
    """Frozen-encoder features of a whole split, once: a float Split (N, D)."""
    model.eval()
    loader = DeviceLoader(split, batch_size, *norm, shuffle=False)
    idx = torch.arange(len(split), device=split.images.device)
    feats = []
    for chunk in idx.split(batch_size):
        x, _ = loader.batch(chunk)
        with autocast():
            feats.append(model.features(x).float())
    return Split(torch.cat(feats), split.labels)
