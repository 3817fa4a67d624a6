"""The flag groups the stages share (data, optimisation, runtime, output) and their checks."""
import os

from cli import (
    UsageError,
    add_config_arg,
    finite_float,
    non_negative_int,
    positive_float,
    positive_int,
    seed_int,
)
from data import AUGMENTS, DATASETS


def add_dataset_args(parser):
    """The 'data' group with the flags every script that reads a dataset shares; returns it."""
    g = parser.add_argument_group("data")
    g.add_argument("--dataset", default="cifar10", choices=DATASETS,
                   help="cifar10/cifar100/fashion_mnist download when missing; folder reads "
                        "DATA_DIR/train and DATA_DIR/test (or val); fake is generated offline")
    g.add_argument("--data_dir", default="./data", help="where the dataset lives")
    g.add_argument("--image_size", type=positive_int, default=None,
                   help="resize images to this side once at load (default: the dataset's own, "
                        "32 for folder and fake); grey datasets keep 1 channel")
    g.add_argument("--max_eval_images", type=positive_int, default=None,
                   help="use only the first N test (and validation) images")
    return g


def add_common_args(parser, batch_size, max_device_batch_size, base_lr, total_epoch,
                    warmup_epoch, augment):
    """Flags of both stages: --config, data, optimisation, runtime and output."""
    add_config_arg(parser)
    g = add_dataset_args(parser)
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

    g = parser.add_argument_group("output")
    g.add_argument("--output_root", default="outputs", help="root of all experiment folders")
    g.add_argument("--exp_name", default="main_exp",
                   help="experiment folder: OUTPUT_ROOT/EXP_NAME/<stage>/")
    g.add_argument("--save_freq", type=positive_int, default=1,
                   help="write the resumable checkpoint every N epochs (and at the end)")
    g.add_argument("--overwrite", action="store_true",
                   help="delete a finished or unfinished run of this stage and train again")


def validate_common(args):
    """Checks that need no disk: raise UsageError naming the flag. A warmup longer than the
    run (a default warmup on a short run) is cut to half the run, with one printed line."""
    if args.warmup_epoch > args.total_epoch:
        clamped = args.total_epoch // 2
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"note: --warmup_epoch {args.warmup_epoch} exceeds --total_epoch "
                  f"{args.total_epoch}; warming up for {clamped} epoch(s), half the run")
        args.warmup_epoch = clamped
    if args.weight_decay < 0:
        raise UsageError(f"--weight_decay must be >= 0, got {args.weight_decay}")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if args.batch_size % world:
        raise UsageError(f"--batch_size {args.batch_size} must be divisible by the number of "
                         f"processes ({world})")
    for name in ("exp_name",):
        value = getattr(args, name)
        if not value or os.sep in value or value in (".", ".."):
            raise UsageError(f"--{name} must be a plain folder name, got {value!r}")


def model_error(e):
    """A ValueError from a model config, as a UsageError naming the flag."""
    return UsageError(f"invalid model configuration: {e}")
