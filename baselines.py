"""Baselines tuned on the validation split: a linear probe or weighted kNN on raw pixels (or
a PCA of them) or on any block of an MAE encoder, on the same labelled subset, validation
split and test split as train_classifier.py.

    python baselines.py --val_split 2000 --features pixels --method linear   # -> pixels-lin/
    python baselines.py --val_split 2000 --features pixels --method knn      # -> pixels-knn/
    python baselines.py --val_split 2000 --pca_dim 64 --method linear        # -> pixels-pca64-lin/
    python baselines.py --val_split 2000 --pretrained_model_path P --method knn    # -> mae-knn/
    python baselines.py --val_split 2000 --pretrained_model_path P --pool mean --block 3 \
        --method linear                                   # -> mae-mean-b3-lin/
    python baselines.py --val_split 2000 --features random --patch_size 4 --emb_dim 64 \\
        --method linear                                   # -> random-lin/ (an untrained ViT)

Features are computed once: pixels standardised with the dataset's per-channel mean/std and
flattened (C*H*W), or the encoder's cls token / mean patch token after block --block (the
last block includes the final norm, as train_classifier.py's probe). The encoder is the MAE's
of --pretrained_model_path, or with --features random a ViT of the architecture flags
initialised exactly as train_classifier.py initialises a scratch classifier seeded by
--seed (the random-encoder baseline, tuned by the same grids as the MAE's features).
--pca_dim projects them on their first principal components, fitted on the training part
only. Pixels and encoder features then take the same code path (mae_cifar/evaluation/probe.py),
so each side is tuned as hard as the other:
- linear probe: multinomial logistic regression on features standardised with the training
  part's mean and std (std floored, see STD_FLOOR); one head per cell of the --probe_lrs x
  --probe_weight_decays grid, all trained at once on the same mini-batches with Adam
  (L2 weight decay, warmup + cosine), each kept at its best validation epoch;
- kNN: mae_cifar/evaluation/knn.py's weighted vote on L2-normalised features, the training part
  as memory, for
  every --knn_ks x --knn_ts cell.
The cell with the highest validation accuracy (the first in grid order on a tie) is chosen;
the test split is evaluated once, for that cell only, with the head trained on the training
part (no refit on training + validation). summary.json records the whole grid.
"""
import argparse
import os
import time
from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn

from mae_cifar import cli, fileio, weights
from mae_cifar.cli import HelpFormatter, UsageError, add_config_arg, run_cli
from mae_cifar.data.datasets import SPLIT_SEED, image_record, image_shape
from mae_cifar.evaluation import features, probe
from mae_cifar.training import classifier, engine, flags, logs, run_folder
from model import ENCODER_FIELDS, POOLS, ClassifierConfig, ViT_Classifier
from utils import seed_everything

FEATURES = ("pixels", "encoder", "random")
METHODS = {"linear": "lin", "knn": "knn"}  # --method -> stage folder suffix
# --features -> stage folder prefix
FEATURE_PREFIX = {"pixels": "pixels", "encoder": "mae", "random": "random"}
LAST_BLOCK = -1
DEFAULT_POOL = "cls"


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_config_arg(p)
    g = flags.add_dataset_args(p)
    g.add_argument("--max_train_images", type=cli.positive_int, default=None,
                   help="use only the first N training images (after the validation carve)")
    g.add_argument("--val_split", type=cli.non_negative_int, default=0,
                   help="hold out N training images (train_classifier.py's carving); every "
                        "hyper-parameter is chosen on them; required (> 0)")

    g = p.add_argument_group("features")
    g.add_argument("--features", default=None, choices=FEATURES,
                   help="raw pixels, the encoder of --pretrained_model_path, or a randomly "
                        "initialised encoder of the architecture flags below (default: "
                        "encoder when --pretrained_model_path is given, else pixels)")
    g.add_argument("--pretrained_model_path", "--mae_ckpt", dest="pretrained_model_path",
                   default=None,
                   help="MAE model file (mae_pretrain.py's, export.py's timm folder, a timm ViT "
                        "state dict or an official MAE checkpoint) whose frozen encoder gives "
                        "the features")
    g.add_argument("--pool", default=DEFAULT_POOL, choices=POOLS,
                   help="encoder feature: the cls token, or the mean of the patch tokens")
    g.add_argument("--block", type=int, default=LAST_BLOCK,
                   help="encoder features after this block (0-based; -1 = the last, with "
                        "the final norm)")
    g.add_argument("--pca_dim", type=cli.non_negative_int, default=0,
                   help="project the features on their first N principal components, "
                        "fitted on the training part (e.g. the encoder's width for pixels); "
                        "0 = no projection")

    flags.add_architecture_args(
        p, "random encoder (--features random; train_classifier.py's scratch flags and "
           "defaults)")

    g = p.add_argument_group("method and its validation grid")
    g.add_argument("--method", default="linear", choices=tuple(METHODS),
                   help="linear probe (logistic regression on standardised features) or "
                        "weighted kNN")
    g.add_argument("--probe_lrs", type=cli.positive_float, nargs="+",
                   default=list(probe.PROBE_LRS), help="linear: Adam peak learning rates swept")
    g.add_argument("--probe_weight_decays", type=cli.finite_float, nargs="+",
                   default=list(probe.PROBE_WEIGHT_DECAYS),
                   help="linear: L2 weight decays swept (>= 0; biases are not decayed)")
    g.add_argument("--batch_size", type=cli.positive_int, default=128,
                   help="linear: training images per step")
    g.add_argument("--total_epoch", type=cli.positive_int, default=50,
                   help="linear: epochs; each cell keeps its best validation epoch")
    g.add_argument("--warmup_epoch", type=cli.non_negative_int, default=5,
                   help="linear: epochs of linear lr warmup, then cosine decay to 0")
    g.add_argument("--knn_ks", type=cli.positive_int, nargs="+", default=list(probe.KNN_KS),
                   help="kNN: numbers of neighbours that vote, swept")
    g.add_argument("--knn_ts", type=cli.positive_float, nargs="+", default=list(probe.KNN_TS),
                   help="kNN: temperatures of the vote weights exp(similarity / T), swept")

    g = p.add_argument_group("runtime and output")
    g.add_argument("--seed", type=cli.seed_int, default=42,
                   help="seed of the probe's batch order and of the random encoder's "
                        "initialisation")
    g.add_argument("--device", default="auto",
                   help="auto (CUDA if available), cpu, cuda, cuda:N")
    g.add_argument("--amp", default="off", choices=("auto", "bf16", "fp16", "off"),
                   help="autocast of the frozen encoder's forward (auto = bf16 on a CUDA "
                        "card that has it)")
    g.add_argument("--max_device_batch_size", type=cli.positive_int, default=256,
                   help="images one forward of the encoder computes at once")
    g.add_argument("--output_root", default="outputs", help="root of all experiment folders")
    g.add_argument("--exp_name", default="main_exp",
                   help="experiment folder: OUTPUT_ROOT/EXP_NAME/<stage>/")
    g.add_argument("--overwrite", action="store_true",
                   help="delete a finished or unfinished run of this stage and run again")
    return p


# --------------------------------------------------------------------------- checks
def validate(args):
    """Checks that need no disk; fills --features."""
    if args.features is None:
        args.features = "encoder" if args.pretrained_model_path else "pixels"
    if args.features == "encoder" and not args.pretrained_model_path:
        raise UsageError("--features encoder needs --pretrained_model_path")
    if args.features != "encoder" and args.pretrained_model_path:
        raise UsageError(f"--features {args.features} takes no --pretrained_model_path")
    if args.features == "pixels" and args.block != LAST_BLOCK:
        raise UsageError("--block applies to encoder features (--features encoder or random)")
    if args.features != "random":  # an MAE's architecture comes from its file
        allowed = ("encoder_head",) if args.features == "encoder" else ()  # a timm file's
        given = [k for k in ("model", *classifier.ARCH_KEYS)
                 if getattr(args, k) is not None and k not in allowed]
        if given:
            raise UsageError(f"{', '.join('--' + k for k in given)}: the architecture of "
                             "--features random")
    if not args.val_split:
        raise UsageError("--val_split N is required: baselines choose every hyper-parameter "
                         "on N held-out training images, never on the test split")
    if args.warmup_epoch > args.total_epoch:
        raise UsageError(f"--warmup_epoch {args.warmup_epoch} exceeds --total_epoch "
                         f"{args.total_epoch}")
    if any(wd < 0 for wd in args.probe_weight_decays):
        raise UsageError(f"--probe_weight_decays must be >= 0, got {args.probe_weight_decays}")
    flags.check_float32("probe_weight_decays", args.probe_weight_decays)
    limit = flags.lr_limit(probe.PROBE_BETAS[0])
    if max(args.probe_lrs) > limit:
        raise UsageError(f"--probe_lrs {max(args.probe_lrs):g} is beyond {limit:.4g}, the "
                         "largest lr whose Adam steps float32 can hold; give lower --probe_lrs")
    for flag in ("probe_lrs", "probe_weight_decays", "knn_ks", "knn_ts"):
        values = getattr(args, flag)
        if len(set(values)) < len(values):
            raise UsageError(f"--{flag} lists a value twice: {values}")
    if args.features == "pixels":
        in_chans, size = image_shape(args.dataset, args.image_size)
        check_pca_dim(args.pca_dim, in_chans * size * size)
    if not args.exp_name or os.sep in args.exp_name or args.exp_name in (".", ".."):
        raise UsageError(f"--exp_name must be a plain folder name, got {args.exp_name!r}")
    if cli.launch_world_size() > 1:
        raise UsageError("baselines.py runs in one process (its sweep takes seconds); launch "
                         "it with python, not torchrun")


def check_pca_dim(pca_dim, dim, n_train=None):
    """UsageError unless --pca_dim (0: off) is below the feature dimensions and the number
    of training images (the components are fitted on those)."""
    if pca_dim and pca_dim >= dim:
        raise UsageError(f"--pca_dim {pca_dim} must be below the {dim} feature dimensions")
    if pca_dim and n_train is not None and pca_dim >= n_train:
        raise UsageError(f"--pca_dim {pca_dim} needs more than {pca_dim} training images, "
                         f"got {n_train}")


def check_finite(tensors, what):
    """UsageError naming the first tensor of {name: tensor} holding NaN or Inf."""
    for name, t in tensors.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise UsageError(f"{what}: {name} holds NaN or Inf values; no baseline can be "
                             "computed from them (an encoder that overflows?): pass another "
                             "model file")


# --------------------------------------------------------------------------- features
@dataclass
class FeatureConfig:
    """What a baseline's features are."""

    features: str
    block: int
    pool: str
    dim: int


class FrozenFeatures(nn.Module):
    """features(x) -> (B, D) frozen features: flattened pixels or an encoder's tokens."""

    def __init__(self, cfg: FeatureConfig, encoder=None):
        super().__init__()
        self.config, self.encoder = cfg, encoder
        if encoder is not None:
            encoder.requires_grad_(False)

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


def build_encoder(args, num_classes):
    """The frozen encoder of --pretrained_model_path; UsageError for a file whose tensors do
    not fit its configuration or are not finite (weights.check_tensors)."""
    path = args.pretrained_model_path
    mae_cfg, state = weights.load_pretrained(path, args.encoder_head)
    classifier.check_encoder_flags(args, mae_cfg)
    try:
        cfg = ClassifierConfig(**{k: getattr(mae_cfg, k) for k in ENCODER_FIELDS},
                               num_classes=num_classes, pool=args.pool)
    except ValueError as e:
        raise flags.model_error(e) from None
    model = ViT_Classifier(cfg)
    weights.check_tensors(model.encoder_state_dict(), model.from_encoder(state), path)
    model.load_encoder(state)
    return frozen_trunk(args, model)


def random_encoder(args, num_classes):
    """A frozen ViT of the architecture flags, initialised as train_classifier.py initialises
    a scratch classifier (the caller seeds with --seed first, as train_classifier.py does;
    the trunk draws do not depend on the head, so a scratch classifier of this --seed,
    dataset and architecture starts from exactly these weights)."""
    in_chans, size = image_shape(args.dataset, args.image_size)
    try:
        cfg = ClassifierConfig(image_size=size, in_chans=in_chans,
                               **classifier.architecture(args), num_classes=num_classes,
                               pool=args.pool)
    except ValueError as e:
        raise flags.model_error(e) from None
    return frozen_trunk(args, ViT_Classifier(cfg))


def frozen_trunk(args, model):
    """The classifier without its head, in eval mode; --block checked against its depth."""
    n_blocks = len(model.blocks)
    if not LAST_BLOCK <= args.block < n_blocks:
        raise UsageError(f"--block must be -1 or in [0, {n_blocks}), got {args.block}")
    model.reset_classifier(0)
    return model.eval()


def build(args, data, device):
    """The FrozenFeatures of args (the encoder of the model file, a random one, or pixels)."""
    encoder = None
    if args.features != "pixels":
        build_fn = build_encoder if args.features == "encoder" else random_encoder
        encoder = build_fn(args, data.num_classes)
        dim = encoder.embed_dim
    else:
        in_chans, size = image_shape(args.dataset, args.image_size)
        dim = in_chans * size * size
    check_pca_dim(args.pca_dim, dim, len(data.train))
    return FrozenFeatures(FeatureConfig(args.features, args.block, args.pool, dim),
                          encoder).to(device)


def extract(args, model, data, device):
    """{split: (features (N, D) float32, labels (N,))} of train, val and test; UsageError if
    any feature is not finite."""
    autocast = engine.autocast_context(engine.amp_dtype(args.amp, device), device)
    bs, norm = 2 * args.max_device_batch_size, (data.mean, data.std)
    out = {}
    for name in ("train", "val", "test"):
        f = features.extract_features(model, getattr(data, name), bs, norm, autocast)
        what = args.pretrained_model_path or "the pixels"
        check_finite({f"the {name} features": f.images}, what)
        out[name] = (f.images.float(), f.labels)
    return out


def fit_pca(train, dim):
    """(mean (D,), components (D, dim)) of the training features: the first `dim` right
    singular vectors of the centred training matrix (exact SVD; no test image involved)."""
    mean = train.mean(0)
    _, _, vh = torch.linalg.svd(train - mean, full_matrices=False)  # vh (min(N, D), D)
    return mean, vh[:dim].T


def transform(feats, pca_dim):
    """The feature splits projected on the training part's principal components (pca_dim >
    0), and the PCA, or None."""
    if not pca_dim:
        return feats, None
    mean, comps = fit_pca(feats["train"][0], pca_dim)
    return {k: ((x - mean) @ comps, y) for k, (x, y) in feats.items()}, (mean, comps)


# --------------------------------------------------------------------------- main
GRID_AXES = {"linear": {"probe_lrs": "lr", "probe_weight_decays": "weight_decay"},
             "knn": {"knn_ks": "k", "knn_ts": "T"}}  # --method -> {grid flag: chosen key}


def grid_edges(args, chosen):
    """The grid flags (of more than one value) whose smallest or largest value was chosen."""
    return [flag for flag, key in GRID_AXES[args.method].items()
            if len(values := getattr(args, flag)) > 1
            and chosen[key] in (min(values), max(values))]


def readout_name(pool, block):
    """'' for the default read-out (the cls token after the last block and the final norm),
    else '-<pool>' and, before the last block, '-b<block>': mae-mean-b4-lin."""
    if (pool, block) == (DEFAULT_POOL, LAST_BLOCK):
        return ""
    return f"-{pool}" + ("" if block == LAST_BLOCK else f"-b{block}")


def stage_name(args):
    pca = f"-pca{args.pca_dim}" if args.pca_dim else ""
    readout = "" if args.features == "pixels" else readout_name(args.pool, args.block)
    return f"{FEATURE_PREFIX[args.features]}{pca}{readout}-{METHODS[args.method]}"


def sweep(args, model, data, run, device):
    """Features once, then the method's grid; writes metrics.csv and summary.json."""
    started = time.perf_counter()
    feats, _ = transform(extract(args, model, data, device), args.pca_dim)
    feature_seconds = time.perf_counter() - started
    method = probe.run_linear if args.method == "linear" else probe.run_knn
    try:
        summary, metrics = method(args, feats, data.num_classes)
    except probe.Diverged as e:
        raise engine.NonFiniteLoss(str(e), "Try lower --probe_lrs") from None
    wall = time.perf_counter() - started - feature_seconds
    log = logs.MetricsLog(run, "metrics.csv",
                            probe.LIN_FIELDS if args.method == "linear" else probe.KNN_FIELDS, 0)
    for row in metrics:
        log.log(row)
    log.close()
    test_acc = summary.pop("test_acc")
    edges = grid_edges(args, summary["chosen"])
    for flag in edges:
        print(f"note: the chosen value is at an end of --{flag}; a wider grid may do better")
    diverged = [(r["lr"], r["weight_decay"]) for r in summary["grid"] if r.get("diverged")]
    if diverged:
        print(f"note: the training loss went non-finite in the (lr, weight decay) cells "
              f"{diverged}; they are recorded as diverged and never chosen")
    summary |= {
        "finished": True, "mode": stage_name(args), "selection_split": "val",
        "final_test_acc": test_acc, "test_acc_at_best": test_acc,
        "test_evaluated": "once, for the chosen cell, " + (
            "its head trained on the training part only (no refit on training + validation)"
            if args.method == "linear" else "the training part as memory"),
        "chosen_on_grid_edge": edges, "feature_dim": feats["train"][0].shape[1],
        "architecture": architecture(model),
        "train_images": len(data.train), "val_images": len(data.val),
        "val_images_in_pretraining": data.val_in_pretraining,
        "images": images_used(args, data), run_folder.UPSTREAM_KEY: args.pretrained_sha256,
        "wall_seconds": wall, "feature_seconds": feature_seconds}
    fileio.write_json(run.file(run_folder.SUMMARY_FN), summary)
    print(pd.DataFrame(summary["grid"]).to_string(index=False))
    print(f"{stage_name(args)}: chosen on validation {summary['chosen']} "
          f"(val accuracy {summary['best_val_acc']:.4f}); test accuracy {test_acc:.4f}")


def architecture(model):
    """summary.json's record of the encoder ({ENCODER_FIELDS: value}, and the feature's pool
    and block), or None for pixels."""
    if model.encoder is None:
        return None
    return {**{k: getattr(model.encoder.config, k) for k in ENCODER_FIELDS},
            "pool": model.config.pool, "block": model.config.block}


def images_used(args, data):
    """summary.json's record of the images used: source split, count and sha256 of the
    sorted positions of each set (data.image_record), as mae_pretrain.py records its own."""
    return {"split_seed": SPLIT_SEED, "val_split": args.val_split,
            "train": image_record(data.train, "train"), "val": image_record(data.val, "train"),
            "test": image_record(data.test, "test")}


def main(args):
    flags.resolve_data(args, weights.recorded_args(args.pretrained_model_path)
                       if args.pretrained_model_path else None)
    validate(args)
    # the encoder's identity is its content, as for train_classifier.py's runs
    args.pretrained_sha256 = run_folder.upstream_hash(args.pretrained_model_path)
    dist, run, status = engine.start_stage(args, stage_name(args), get_args_parser())
    if status == "finished":
        return
    data = engine.load_stage_data(args, dist, run, args.val_split)
    seed_everything(args.seed)
    model = build(args, data, dist.device)
    run.open(fresh=True)  # a sweep takes seconds: an unfinished one starts again
    engine.run_stage(lambda: sweep(args, model, data, run, dist.device), run)


if __name__ == "__main__":
    run_cli(main, get_args_parser())
