"""The two grid searches baselines.py runs on fixed features, each choosing its cell on the
validation split and evaluating the test split once, for that cell only:
- linear probe: multinomial logistic regression on features standardised with the training
  part's mean and std (std floored, see STD_FLOOR); one head per (lr, weight decay) cell,
  all trained at once on the same mini-batches with Adam (L2 weight decay, warmup + cosine),
  each kept at its best validation epoch (probe_grid, run_linear);
- kNN: knn.py's weighted vote on L2-normalised features, the training part as memory, for
  every (k, T) cell (run_knn).
"""

import math

import torch
import torch.nn.functional as F

from mae_cifar.evaluation import knn
from mae_cifar.training.optim import cosine_lr

# Log grids wide enough that the choice lands inside them on pixels and on MAE features alike
# Adam peak lr (not scaled by batch size); up to 1.0 since MAE features chose 0.1, then the
# grid's end, in the v2 pilot (results/fashion_mnist_study_v2)
PROBE_LRS = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)
PROBE_WEIGHT_DECAYS = (0.0, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)  # L2: loss + wd/2 * ||W||^2
PROBE_BETAS = (0.9, 0.999)  # Adam's (PyTorch's defaults)
KNN_KS = (1, 3, 5, 10, 20, 50, 100, 200)
# DINO's weighted kNN uses T = 0.07; both ends widened after the v2 pilot chose 0.01 and 1.0
KNN_TS = (0.005, 0.01, 0.02, 0.05, 0.07, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
# Standardisation divides each feature by max(std, STD_FLOOR x the mean std over features).
# Fashion-MNIST's border pixels are (nearly) constant on the training images: divided by
# their own std (or BatchNorm's eps 1e-6) the rare image with ink there gets values of
# hundreds or more, and the probe fits noise. With the floor no feature is magnified more
# than 1/STD_FLOOR times as much as a typical one; a constant feature is 0 on the training
# images and bounded on others.
STD_FLOOR = 0.1
LIN_FIELDS = ["epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc"]
KNN_FIELDS = ["epoch", "val_acc", "test_acc"]


# --------------------------------------------------------------------------- linear probe
def fit_standardiser(train):
    """(mean (D,), std (D,)) of the training features, each std floored (see STD_FLOOR)."""
    mean, std = train.mean(0), train.std(0)
    floor = STD_FLOOR * std.mean()
    return mean, std.clamp_min(floor) if floor > 0 else torch.ones_like(std)


def probe_grid(train, val, num_classes, lrs, weight_decays, epochs, warmup, batch_size, seed):
    """One logistic-regression head per (lr, weight decay) cell, trained at once on the same
    mini-batches; the test split is not an argument.

    train, val: (standardised features (N, D), labels (N,)). Returns (grid rows, one per cell
    in grid order: lr, weight_decay, val_acc and best_epoch of its best validation epoch,
    and diverged: whether its training loss was ever not finite),
    per-epoch curves {column: (epochs, cells)}, and the heads at their best epochs (W (G, D,
    C), b (G, C)).
    """
    (x, y), (xv, yv) = train, val
    cells = [(lr, wd) for lr in lrs for wd in weight_decays]
    n, d = x.shape
    ws = [torch.zeros(d, num_classes, device=x.device, requires_grad=True) for _ in cells]
    bs = [torch.zeros(num_classes, device=x.device, requires_grad=True) for _ in cells]
    opt = torch.optim.Adam([g for (lr, wd), w, b in zip(cells, ws, bs)
                            for g in ({"params": [w], "weight_decay": wd, "peak_lr": lr},
                                      {"params": [b], "weight_decay": 0.0, "peak_lr": lr})],
                           betas=PROBE_BETAS)
    steps_per_epoch = math.ceil(n / batch_size)
    total, warm = epochs * steps_per_epoch, warmup * steps_per_epoch
    gen = torch.Generator().manual_seed(seed)
    best_acc = torch.full((len(cells),), -1.0, device=x.device)
    best_epoch = torch.zeros(len(cells), dtype=torch.long, device=x.device)
    best_w = torch.zeros(len(cells), d, num_classes, device=x.device)
    best_b = torch.zeros(len(cells), num_classes, device=x.device)
    curves = {k: [] for k in LIN_FIELDS[2:]}
    finite = torch.ones(len(cells), dtype=torch.bool, device=x.device)
    step = 0
    for epoch in range(epochs):
        sums = torch.zeros(2, len(cells), device=x.device)  # loss sum, correct per cell
        for idx in torch.randperm(n, generator=gen).to(x.device).split(batch_size):
            for group in opt.param_groups:
                group["lr"] = cosine_lr(step, total, warm, group["peak_lr"])
            loss, correct = cell_losses(torch.stack(ws), torch.stack(bs), x[idx], y[idx])
            opt.zero_grad(set_to_none=True)
            loss.sum().backward()
            opt.step()
            finite &= torch.isfinite(loss.detach())
            sums += torch.stack([loss.detach() * len(idx), correct])
            step += 1
        with torch.no_grad():
            w, b = torch.stack(ws), torch.stack(bs)
            val_loss, val_correct = cell_losses(w, b, xv, yv)
            val_acc = val_correct / len(yv)
            better = val_acc > best_acc
            best_acc[better], best_epoch[better] = val_acc[better], epoch
            best_w[better], best_b[better] = w[better], b[better]
        for k, v in zip(curves, (*(sums / n), val_loss, val_acc)):
            curves[k].append(v)
    rows = [{"lr": lr, "weight_decay": wd, "val_acc": a, "best_epoch": e, "diverged": not ok}
            for (lr, wd), a, e, ok in zip(cells, best_acc.tolist(), best_epoch.tolist(),
                                          finite.tolist())]
    return rows, {k: torch.stack(v) for k, v in curves.items()}, (best_w, best_b)


def cell_losses(w, b, x, y):
    """(mean cross-entropy (G,), correct count (G,)) of every cell's head on (x, y).
    w (G, D, C), b (G, C), x (N, D), y (N,)."""
    logits = torch.einsum("nd,gdc->gnc", x, w) + b[:, None]  # (G, N, C)
    ce = F.cross_entropy(logits.flatten(0, 1), y.repeat(len(w)), reduction="none")  # (G*N,)
    correct = (logits.argmax(-1) == y).sum(1).float()  # (G,)
    return ce.view(len(w), -1).mean(1), correct


class Diverged(Exception):
    """Every cell of the probe grid had a training loss that was not finite."""


def choose(rows):
    """Index of the grid row with the highest val_acc among the cells that did not diverge;
    the first in grid order on a tie. Diverged if every cell did."""
    accs = [-math.inf if r.get("diverged") else r["val_acc"] for r in rows]
    if all(r.get("diverged") for r in rows):
        raise Diverged("the linear probe's training loss went non-finite in every cell of "
                       "its grid")
    return int(torch.tensor(accs).argmax())


def run_linear(args, feats, num_classes):
    """The probe grid on standardised features -> (summary fields, metrics.csv rows)."""
    mean, std = fit_standardiser(feats["train"][0])
    feats = {k: ((x - mean) / std, y) for k, (x, y) in feats.items()}
    rows, curves, (w, b) = probe_grid(
        feats["train"], feats["val"], num_classes, args.probe_lrs, args.probe_weight_decays,
        args.total_epoch, args.warmup_epoch, args.batch_size, args.seed)
    i = choose(rows)
    xt, yt = feats["test"]
    _, correct = cell_losses(w[i:i + 1], b[i:i + 1], xt, yt)
    chosen = rows[i]
    steps_per_epoch = math.ceil(len(feats["train"][1]) / args.batch_size)
    metrics = [{"epoch": e, "lr": cosine_lr((e + 1) * steps_per_epoch - 1,
                                            args.total_epoch * steps_per_epoch,
                                            args.warmup_epoch * steps_per_epoch, chosen["lr"]),
                **{k: float(v[e, i]) for k, v in curves.items()}}
               for e in range(args.total_epoch)]
    summary = {"epochs": args.total_epoch, "best_epoch": chosen["best_epoch"],
               "chosen": {"lr": chosen["lr"], "weight_decay": chosen["weight_decay"],
                          "epoch": chosen["best_epoch"]}, "best_val_acc": chosen["val_acc"],
               "test_acc": float(correct[0]) / len(yt), "grid": rows,
               "standardisation": f"training part's mean and std, std floored at "
                                  f"{STD_FLOOR} x its mean over features"}
    return summary, metrics


# --------------------------------------------------------------------------- kNN
def run_knn(args, feats, num_classes):
    """The kNN grid on L2-normalised features -> (summary fields, metrics.csv rows)."""
    (memory, labels), *queries = [(F.normalize(x, dim=1), y) for x, y in
                                  (feats["train"], feats["val"], feats["test"])]
    (xv, yv), (xt, yt) = queries
    acc = knn.knn_grid_accuracy(memory, labels, xv, yv, num_classes, args.knn_ks, args.knn_ts)
    rows = [{"k": k, "T": t, "val_acc": float(acc[i, j])}
            for i, k in enumerate(args.knn_ks) for j, t in enumerate(args.knn_ts)]
    chosen = rows[choose(rows)]
    test_acc = knn.knn_accuracy(memory, labels, xt, yt, num_classes, chosen["k"], chosen["T"])
    summary = {"epochs": 0, "best_epoch": 0, "memory_images": len(labels),
               "chosen": {"k": chosen["k"], "T": chosen["T"]}, "best_val_acc": chosen["val_acc"],
               "test_acc": test_acc, "grid": rows}
    return summary, [{"epoch": 0, "val_acc": chosen["val_acc"], "test_acc": test_acc}]

