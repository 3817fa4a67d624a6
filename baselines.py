"""Baselines on frozen features: a linear probe or weighted kNN on raw pixels or on any block
of an MAE encoder, on the same labelled subset, validation split and test split as
train_classifier.py.

    python baselines.py --features pixels --method linear          # -> pixels-lin/
    python baselines.py --features pixels --method knn             # -> pixels-knn/
    python baselines.py --pretrained_model_path P --method knn     # -> mae-knn/
    python baselines.py --pretrained_model_path P --method linear --pool mean --block 3

Pixels are standardised with the dataset's mean/std and flattened (C*H*W features); encoder
features are the cls token or the mean patch token after block --block (the last block
includes the final norm, as train_classifier.py's probe). The linear probe is
train_classifier.py's BatchNorm + linear head and training loop on cached features; kNN is
knn.py's weighted vote (L2-normalised features, the labelled training images as memory).
Each run writes args.json, metrics.csv and summary.json like the other stages; a finished run
is skipped and an unfinished linear probe resumes.
"""
import time
from dataclasses import dataclass

import torch
from torch import nn

import cli
import common_args
import engine
import fileio
import knn
import runfolder
import train_classifier
from cli import UsageError, run_cli
from data import image_shape
from utils import seed_everything

FEATURES = ("pixels", "encoder")
METHODS = {"linear": "lin", "knn": "knn"}  # --method -> stage folder suffix
FEATURE_PREFIX = {"pixels": "pixels", "encoder": "mae"}  # --features -> stage folder prefix
LAST_BLOCK = -1
KNN_FIELDS = ["epoch", "val_acc", "test_acc", "epoch_seconds"]


def get_args_parser():
    p = train_classifier.get_args_parser()
    p.description = __doc__
    p.set_defaults(linear_probe=True, recipe="fast", total_epoch=50, augment="none")
    g = p.add_argument_group("baseline")
    g.add_argument("--features", default=None, choices=FEATURES,
                   help="raw pixels, or the encoder of --pretrained_model_path (default: "
                        "encoder when --pretrained_model_path is given, else pixels)")
    g.add_argument("--method", default="linear", choices=tuple(METHODS),
                   help="linear probe (BatchNorm + linear, trained) or weighted kNN")
    g.add_argument("--block", type=int, default=LAST_BLOCK,
                   help="encoder features after this block (0-based; -1 = the last, with "
                        "the final norm)")
    g.add_argument("--knn_k", type=cli.positive_int, default=20, help="neighbours that vote")
    g.add_argument("--knn_t", type=cli.positive_float, default=0.07,
                   help="temperature of the vote weights exp(similarity / T)")
    return p


@dataclass
class FeatureConfig:
    """What a baseline's features are; saved in its checkpoint."""

    features: str
    block: int
    pool: str
    dim: int
    num_classes: int


class FrozenFeatures(nn.Module):
    """features(x) -> (B, D) frozen features, and a BatchNorm + linear head on them."""

    def __init__(self, cfg: FeatureConfig, encoder=None):
        super().__init__()
        self.config, self.encoder = cfg, encoder
        if encoder is not None:
            encoder.requires_grad_(False)
        self.head = nn.Sequential(nn.BatchNorm1d(cfg.dim, affine=False, eps=1e-6),
                                  nn.Linear(cfg.dim, cfg.num_classes))

    @torch.inference_mode()
    def features(self, x):
        """(B, C, H, W) normalised images -> (B, D)."""
        if self.encoder is None:
            return x.flatten(1)  # (B, C*H*W)
        enc, block = self.encoder, self.config.block
        if block == LAST_BLOCK:
            return enc.forward_head(enc.forward_features(x), pre_logits=True)  # (B, D)
        x = enc.norm_pre(enc._pos_embed(enc.patch_embed(x)))  # (B, 1+L, D)
        tokens = enc.blocks[:block + 1](x)  # (B, 1+L, D) after block `block`
        return tokens[:, 0] if self.config.pool == "cls" else tokens[:, 1:].mean(1)  # (B, D)

    def forward(self, feats):
        return self.head(feats)


def validate(args):
    """Checks that need no disk; fills --features."""
    if args.features is None:
        args.features = "encoder" if args.pretrained_model_path else "pixels"
    if args.features == "encoder" and not args.pretrained_model_path:
        raise UsageError("--features encoder needs --pretrained_model_path")
    if args.features == "pixels" and args.pretrained_model_path:
        raise UsageError("--features pixels takes no --pretrained_model_path")
    if args.augment != "none":
        raise UsageError("baselines use cached features: --augment must be none")
    if args.features == "pixels" and args.block != LAST_BLOCK:
        raise UsageError("--block applies to --features encoder")


def build(args, num_classes, device):
    """The FrozenFeatures of args (encoder from the MAE checkpoint, or pixels)."""
    encoder = None
    if args.features == "encoder":
        probe = train_classifier.build_model(args, num_classes, device)
        n_blocks = len(probe.blocks)
        if not LAST_BLOCK <= args.block < n_blocks:
            raise UsageError(f"--block must be -1 or in [0, {n_blocks}), got {args.block}")
        probe.reset_classifier(0)
        encoder, dim = probe.eval(), probe.embed_dim
    else:
        in_chans, size = image_shape(args.dataset, args.image_size)
        dim = in_chans * size * size
    cfg = FeatureConfig(args.features, args.block, args.pool, dim, num_classes)
    return FrozenFeatures(cfg, encoder).to(device)


class ProbeStage(train_classifier.Stage):
    """train_classifier's probe loop on FrozenFeatures; the model file is baseline.pt."""

    def model_path(self):
        return self.run.file("baseline.pt")


def stage_name(args):
    return f"{FEATURE_PREFIX[args.features]}-{METHODS[args.method]}"


def run_knn(args, dist, model, data, run):
    """Weighted kNN of val and test images against the labelled training images."""
    started = time.perf_counter()
    norm, bs = (data.mean, data.std), 2 * args.max_device_batch_size
    autocast = engine.autocast_context(None, dist.device)

    def feats(split):
        f = train_classifier.extract_features(model, split, bs, norm, autocast)
        return torch.nn.functional.normalize(f.images, dim=1), f.labels

    memory, labels = feats(data.train)
    row = {"epoch": 0, "val_acc": ""}
    for name, split in (("test", data.test), ("val", data.val)):
        if split is not None:
            q, y = feats(split)
            row[f"{name}_acc"] = knn.knn_accuracy(memory, labels, q, y, data.num_classes,
                                                  args.knn_k, args.knn_t)
    row["epoch_seconds"] = time.perf_counter() - started
    log = engine.MetricsLog(run, "metrics.csv", KNN_FIELDS, 0)
    log.log(row)
    log.close()
    selection = "val" if data.val is not None else "test"
    summary = {"finished": True, "mode": stage_name(args), "epochs": 0,
               "final_test_acc": row["test_acc"], "best_val_acc": row[f"{selection}_acc"],
               "best_epoch": 0, "test_acc_at_best": row["test_acc"],
               "selection_split": selection, "memory_images": len(data.train),
               runfolder.UPSTREAM_KEY: args.pretrained_sha256,
               "wall_seconds": row["epoch_seconds"], "feature_seconds": row["epoch_seconds"]}
    fileio.write_json(run.file(runfolder.SUMMARY_FN), summary)
    print(f"kNN (k={args.knn_k}, T={args.knn_t}) test accuracy {row['test_acc']:.4f}")


def main(args):
    validate(args)
    train_classifier.resolve_recipe(args)
    common_args.validate_common(args)
    # the encoder's identity is its content, as for train_classifier.py's runs
    args.pretrained_sha256 = runfolder.upstream_hash(args.pretrained_model_path)
    dist, run, status = engine.start_stage(args, stage_name(args))
    if status == "finished":
        return
    data = engine.load_stage_data(args, dist, args.val_split)
    seed_everything(args.seed)
    model = build(args, data.num_classes, dist.device)
    run.open(fresh=status == "new" or args.method == "knn")
    if args.method == "knn":
        engine.run_stage(lambda: run_knn(args, dist, model, data, run), run)
        return
    stage = ProbeStage(args, dist, model, data, run, stage_name(args), cache=True)
    engine.run_stage(stage.train, run)


if __name__ == "__main__":
    run_cli(main, get_args_parser())
