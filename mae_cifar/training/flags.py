"""The flag groups the stages share (data, optimisation, runtime, output) and their checks."""
import argparse
import os

from mae_cifar import cli
from mae_cifar.cli import (
    HelpFormatter,
    UsageError,
    add_config_arg,
    finite_float,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    seed_int,
)
from mae_cifar.data.augment import AUGMENTS
from mae_cifar.data.datasets import DATASETS
from mae_cifar.evaluation import knn
from mae_cifar.training import engine, presets, recipes
from mae_cifar.training.progress import PROGRESS_SECONDS
from model import POS_EMBEDS

DATA_DEFAULTS = {"dataset": "cifar10", "data_dir": "./data", "image_size": None}


def resolve_data(args, recorded=None):
    """Fill the dataset flags not given: from `recorded` (the flags of the pretrained model a
    stage starts from, so that it need not be told its data again), else DATA_DEFAULTS.
    -> the names taken from `recorded`. A flag given stays, and a clash is the stage's to
    refuse (the encoder's input size, say)."""
    taken = []
    for k, default in DATA_DEFAULTS.items():
        if getattr(args, k) is not None:
            continue
        if recorded and recorded.get(k) is not None:
            setattr(args, k, recorded[k])
            taken.append(k)
        else:
            setattr(args, k, default)
    return taken


def add_dataset_args(parser):
    """The 'data' group with the flags every script that reads a dataset shares; returns it."""
    g = parser.add_argument_group("data")
    g.add_argument("--dataset", default=None, choices=DATASETS,
                   help="cifar10/cifar100/fashion_mnist download when missing; folder reads "
                        "DATA_DIR/train and DATA_DIR/test (or val); fake and shapes are "
                        f"generated offline (default: the pretrained model's, else "
                        f"{DATA_DEFAULTS['dataset']})")
    g.add_argument("--data_dir", default=None,
                   help="where the dataset lives (default: the pretrained model's, else "
                        f"{DATA_DEFAULTS['data_dir']})")
    g.add_argument("--image_size", type=positive_int, default=None,
                   help="resize images to this side once at load (default: the pretrained "
                        "model's, else the dataset's own, 32 for folder, fake and shapes); "
                        "grey datasets keep 1 channel")
    g.add_argument("--max_eval_images", type=positive_int, default=None,
                   help="use only the first N test (and validation) images")
    return g


def add_common_args(parser, batch_size, max_device_batch_size, base_lr, total_epoch,
                    warmup_epoch, augment):
    """Flags of both stages: --config, data, optimisation, runtime and output; returns the
    data group."""
    add_config_arg(parser)
    data = g = add_dataset_args(parser)
    g.add_argument("--max_train_images", type=positive_int, default=None,
                   help="use only the first N training images (quick runs)")
    g.add_argument("--augment", default=augment, choices=AUGMENTS,
                   help="batched on-device augmentation: horizontal flip, +random crop with "
                        "4px padding, or +random resized crop (areas: --crop_scale)")

    g = parser.add_argument_group("optimisation")
    g.add_argument("--batch_size", type=positive_int, default=batch_size,
                   help="effective batch per optimizer step, over all GPUs and accumulation "
                        "steps; lr and results do not change with the number of GPUs")
    g.add_argument("--max_device_batch_size", type=positive_int, default=max_device_batch_size,
                   help="largest micro-batch one device computes at once; larger per-device "
                        "batches are split and their gradients accumulated")
    g.add_argument("--base_learning_rate", type=positive_float, default=base_lr,
                   help="lr = base_learning_rate * batch_size / 256")
    g.add_argument("--weight_decay", type=finite_float, default=0.05,
                   help="AdamW weight decay (not applied to biases, norms, tokens, pos-embeds)")
    g.add_argument("--total_epoch", type=positive_int, default=total_epoch,
                   help="training epochs")
    g.add_argument("--warmup_epoch", type=non_negative_int, default=warmup_epoch,
                   help="epochs of linear lr warmup, then cosine decay (updated every step); "
                        "more than --total_epoch is cut to half the run, with a note")

    g = parser.add_argument_group("runtime")
    g.add_argument("--seed", type=seed_int, default=42, help="seed of every RNG")
    g.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")
    g.add_argument("--amp", default="auto", choices=("auto", "bf16", "fp16", "off"),
                   help="autocast: auto = bf16 on a CUDA card that has it, off on CPU; "
                        "fp16 uses a GradScaler")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--progress_seconds", type=non_negative_float, default=PROGRESS_SECONDS,
                   help="print a progress line (step, images/s, loss, lr, ETA) at most every N "
                        "seconds, on stdout so that it reaches log files; 0: at every log "
                        "interval")

    g = parser.add_argument_group("output")
    g.add_argument("--output_root", default="outputs", help="root of all experiment folders")
    g.add_argument("--exp_name", default="main_exp",
                   help="experiment folder: OUTPUT_ROOT/EXP_NAME/<stage>/")
    g.add_argument("--save_freq", type=positive_int, default=1,
                   help="write the resumable checkpoint every N epochs (and at the end)")
    g.add_argument("--overwrite", action="store_true",
                   help="delete a finished or unfinished run of this stage and train again")
    g.add_argument("--wandb", action="store_true",
                   help="also log to Weights & Biases (project mae-cifar, or WANDB_PROJECT; "
                        "WANDB_MODE=offline keeps the run in the run folder's wandb/)")
    g.add_argument("--extend_to", type=positive_int, default=None, metavar="N",
                   help="continue this finished run (the same flags) from its last checkpoint "
                        "to N epochs in all: the lr follows the warmup + cosine of an N-epoch "
                        "run from the current step on (docs/outputs.md)")
    return data


def validate_common(args):
    """Checks that need no disk: raise UsageError naming the flag. A warmup longer than the
    run (a default warmup on a short run) is cut to half the run, with one printed line."""
    if args.warmup_epoch > args.total_epoch:
        clamped = args.total_epoch // 2
        if cli.launch_rank() == 0:
            print(f"note: --warmup_epoch {args.warmup_epoch} exceeds --total_epoch "
                  f"{args.total_epoch}; warming up for {clamped} epoch(s), half the run")
        args.warmup_epoch = clamped
    if args.extend_to is not None and args.extend_to <= args.total_epoch:
        raise UsageError(f"--extend_to {args.extend_to} must exceed --total_epoch "
                         f"{args.total_epoch} (the run's epochs in all, not epochs to add)")
    if args.weight_decay < 0:
        raise UsageError(f"--weight_decay must be >= 0, got {args.weight_decay}")
    check_float32("weight_decay", [args.weight_decay])
    lr = args.base_learning_rate * args.batch_size / engine.LR_REFERENCE_BATCH
    opt = recipes.optimization(args)
    limit = lr_limit(opt.betas[0] if opt.optimizer == "adamw" else 0.0)
    if lr > limit:
        raise UsageError(f"--base_learning_rate {args.base_learning_rate:g} gives lr {lr:g} "
                         f"(x --batch_size {args.batch_size} / {engine.LR_REFERENCE_BATCH}), "
                         f"beyond {limit:.4g}, the largest lr whose optimizer steps float32 "
                         "can hold; give a lower --base_learning_rate")
    world = cli.launch_world_size()
    if args.batch_size % world:
        raise UsageError(f"--batch_size {args.batch_size} must be divisible by the number of "
                         f"processes ({world})")
    for name in ("exp_name",):
        value = getattr(args, name)
        if not value or os.sep in value or value in (".", ".."):
            raise UsageError(f"--{name} must be a plain folder name, got {value!r}")


def check_float32(flag, values):
    """UsageError unless every value of --flag is within float32's range, where the
    optimizer computes (beyond it: "value cannot be converted to type float without
    overflow")."""
    big = [v for v in values if abs(v) > cli.FLOAT32_MAX]
    if big:
        raise UsageError(f"--{flag} {big[0]:g} is beyond float32's largest number "
                         f"{cli.FLOAT32_MAX:.4g}; give a value that can train")


def lr_limit(beta1):
    """The largest peak lr an optimizer of first-moment decay beta1 (0: none) can step with:
    Adam's first step is lr / (1 - beta1), a float32 in the optimizer's arithmetic."""
    return cli.FLOAT32_MAX * (1 - beta1)


def model_error(e):
    """A ValueError from a model config, as a UsageError naming the flag."""
    return UsageError(f"invalid model configuration: {e}")


def add_encoder_args(group):
    """--model and the encoder's flags; None: the preset's value (presets.resolve)."""
    presets.add_model_arg(group)
    group.add_argument("--patch_size", type=cli.positive_int, default=None, help="patch side")
    group.add_argument("--emb_dim", type=cli.positive_int, default=None, help="encoder width")
    group.add_argument("--encoder_layer", type=cli.positive_int, default=None,
                       help="encoder blocks")
    group.add_argument("--encoder_head", type=cli.positive_int, default=None,
                       help="encoder attention heads (also: the heads of a timm file, which "
                            "does not record them)")


def add_architecture_args(parser, title):
    """The ViT flags of a model from scratch (baselines.py's random encoder shares them)."""
    g = parser.add_argument_group(title)
    add_encoder_args(g)
    g.add_argument("--pos_embed", default=None, choices=("learned", "sincos"),
                   help="position embedding initialisation (default: learned)")


def add_pretrain_args(p):
    """Every flag of mae_pretrain.py."""
    data = add_common_args(p, batch_size=4096, max_device_batch_size=512, base_lr=1.5e-4,
                           total_epoch=600, warmup_epoch=40, augment="flip")
    data.add_argument(
        "--unlabelled", action="store_true",
        help="with --dataset folder: pretrain on every image under DATA_DIR/train/ (and "
             "test/ or val/) ignoring class folders; a flat folder of images is read so "
             "without it. Needs --knn_freq 0, and --val_split N without test images")
    g = p.add_argument_group("model")
    add_encoder_args(g)
    g.add_argument("--decoder_layer", type=cli.positive_int, default=None,
                   help="decoder blocks (Table 1a of the paper)")
    g.add_argument("--decoder_dim", type=cli.positive_int, default=None,
                   help="decoder width (Table 1b of the paper)")
    g.add_argument("--decoder_head", type=cli.positive_int, default=None,
                   help="decoder heads (default: max(1, decoder_dim // 64))")
    g.add_argument("--mask_ratio", type=cli.finite_float, default=0.75,
                   help="fraction of patches masked, in [0, 1)")
    g.add_argument("--norm_pix_loss", action="store_true",
                   help="reconstruct per-patch normalised pixels (the paper's better target)")
    g.add_argument("--pos_embed", default=None, choices=POS_EMBEDS,
                   help="position embeddings of the encoder and decoder: learned, or the "
                        "official MAE's fixed 2-D sin-cos (never trained); --recipe paper "
                        "selects sincos")

    g = p.add_argument_group("held-out images")
    g.add_argument("--val_split", type=cli.non_negative_int, default=0,
                   help="hold out the N training images train_classifier.py --val_split N "
                        "holds out (the same SPLIT_SEED draw): pretraining never sees them and "
                        "evaluates on them (eval_loss, grids, kNN queries) instead of on the "
                        "test split; 0: pretrain on every training image, evaluate on test")
    g.add_argument("--eval_images", type=cli.positive_int, default=1024,
                   help="held-out images (with one fixed mask) for eval_loss each epoch")

    g = p.add_argument_group("outputs")
    g.add_argument("--model_fn", "--output_model_path", dest="model_fn", default="vit-t-mae.pt",
                   help="file name of the final model, in the run folder")
    g.add_argument("--csv_fn", "--csv_log", dest="csv_fn", default="metrics.csv",
                   help="file name of the per-epoch CSV, in the run folder")
    g.add_argument("--save_images_dir", default="images",
                   help="folder (in the run folder) of reconstruction grids")
    g.add_argument("--save_images_n", type=cli.positive_int, default=16,
                   help="held-out images shown in each reconstruction grid")
    g.add_argument("--visualize_freq", type=cli.non_negative_int, default=10,
                   help="write a reconstruction grid every N epochs (and the last); 0 = off")
    g.add_argument("--pad", type=cli.non_negative_int, default=2,
                   help="pixels between images in the grids")
    g.add_argument("--pad_value", type=cli.finite_float, default=1.0,
                   help="grey level of the grid padding, 0 (black) to 1 (white)")
    knn.add_knn_args(p)
    recipes.add_recipe_args(p, ("pretrain",))


def add_classifier_args(p):
    """Every flag of train_classifier.py (scratch, fine-tune, linear probe)."""
    add_common_args(p, batch_size=128, max_device_batch_size=256, base_lr=None,
                           total_epoch=100, warmup_epoch=5, augment=None)
    g = p.add_argument_group("classifier")
    g.add_argument("--pretrained_model_path", "--mae_ckpt", "--pretrained_ckpt",
                   dest="pretrained_model_path", default=None,
                   help="MAE checkpoint to start from (mae_pretrain.py's model file; or a timm "
                        "folder config.json + model.safetensors as export.py writes, a timm "
                        "ViT state dict .pth/.safetensors, or an official MAE checkpoint); the "
                        "encoder configuration comes from it")
    g.add_argument("--linear_probe", action="store_true",
                   help="freeze the encoder (eval mode) and train BatchNorm + linear on its "
                        "features; without augmentation the features are computed once")
    g.add_argument("--no_feature_cache", action="store_true",
                   help="linear probe: re-run the frozen encoder every step even without "
                        "augmentation (slow; for checking the cache)")
    g.add_argument("--layer_decay", type=cli.finite_float, default=None,
                   help="layer-wise lr decay (1 = off; the paper fine-tunes with 0.75)")
    g.add_argument("--drop_path", type=cli.finite_float, default=None,
                   help="stochastic depth rate")
    g.add_argument("--smoothing", type=cli.finite_float, default=None, help="label smoothing")
    g.add_argument("--mixup", type=cli.finite_float, default=None,
                   help="mixup alpha (0 = off)")
    g.add_argument("--cutmix", type=cli.finite_float, default=None,
                   help="cutmix alpha (0 = off)")
    g.add_argument("--pool", default=None, choices=("cls", "mean"),
                   help="features: the cls token after the final norm, or the official MAE "
                        "global pool (mean of the patch tokens before the final norm, then "
                        "a new LayerNorm fc_norm)")
    g.add_argument("--val_split", type=cli.non_negative_int, default=0,
                   help="hold out N training images for choosing the best epoch; 0: the "
                        "best epoch is chosen on the test set (and labelled so)")
    g.add_argument("--lr_schedule", default="cosine", choices=engine.LR_SCHEDULES,
                   help="after the linear warmup: cosine decay to the recipe's min lr at "
                        "--total_epoch, or constant at the peak lr (no decay, so the lr "
                        "falling to 0 forces no plateau; for --early_stop_patience)")
    g.add_argument("--early_stop_patience", type=cli.non_negative_int, default=0,
                   help="stop once the validation accuracy has not improved for N "
                        "consecutive epochs (needs --val_split; --total_epoch is then the "
                        "maximum); 0: off")
    g.add_argument("--model_fn", "--output_model_path", dest="output_model_path",
                   default="auto",
                   help="where to write the final classifier (auto: in the stage folder)")
    g.add_argument("--csv_fn", "--csv_log", dest="csv_log", default="auto",
                   help="per-epoch CSV file name in the stage folder (auto: metrics.csv)")

    add_architecture_args(p, "model from scratch (default: taken from the MAE checkpoint)")
    recipes.add_recipe_args(p, ("finetune", "linprobe"))


def stage_parser(add_args, description=None):
    """A stage's parser: its flags (add_args), help with defaults shown."""
    parser = argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)
    add_args(parser)
    return parser
