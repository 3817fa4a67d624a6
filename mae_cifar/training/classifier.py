"""The classifier stage's building blocks: which run a flag set is (MODES), the architecture of
a model from scratch, the resolved recipe, and the model built from flags and a checkpoint."""
import os

from mae_cifar import cli, weights
from mae_cifar.cli import UsageError
from mae_cifar.data.datasets import image_shape
from mae_cifar.training import flags, presets, recipes
from model import ClassifierConfig, ViT_Classifier

ARCH_KEYS = (*presets.ENCODER_KEYS, "pos_embed")  # a classifier's architecture flags
DEFAULT_POS_EMBED = "learned"
BEST_SUFFIX = "-best"  # the best epoch's model file: the last one's name with this before .pt


MODES = {  # (pretrained, linear probe) -> (stage folder, model file, summary mode)
    (False, False): ("scratch-cls", "vit-t-clf-from_scratch.pt", "scratch"),
    (True, False): ("pretrain-cls", "vit-t-clf-from_pretrained.pt", "finetune"),
    (True, True): ("pretrain-cls-lin", "vit-t-clf-lin-from_pretrained.pt", "linprobe"),
    (False, True): ("scratch-cls-lin", "vit-t-clf-lin-from_scratch.pt", "scratch-linprobe"),
}


def architecture(args):
    """{flag: value} of a model from scratch: the flags given, the preset's (--model) for the
    others, learned position embeddings unless said otherwise."""
    _, rows = presets.choose(args, presets.ENCODER_KEYS)
    return {**{k: v for k, v, _ in rows}, "pos_embed": args.pos_embed or DEFAULT_POS_EMBED}


def resolve_recipe(args):
    """Fill every recipe flag that was not given -> the rows of the resolved recipe."""
    rows = recipes.resolve(args, "linprobe" if args.linear_probe else "finetune")
    if args.linear_probe:
        given = [k for k, v in recipes.PROBE_FIXED.items() if getattr(args, k) != v]
        if given:
            raise UsageError(f"--linear_probe trains a linear head on frozen features; "
                             f"drop {', '.join('--' + k for k in given)}")
    if not 0 < args.layer_decay <= 1:
        raise UsageError(f"--layer_decay must be in (0, 1], got {args.layer_decay}")
    for k in ("drop_path", "smoothing"):
        if not 0 <= getattr(args, k) < 1:
            raise UsageError(f"--{k} must be in [0, 1), got {getattr(args, k)}")
    if args.mixup < 0 or args.cutmix < 0:
        raise UsageError("--mixup and --cutmix must be >= 0")
    warning = recipes.lars_warning(args)
    if warning and cli.launch_rank() == 0:
        print(warning)
    return rows


def check_early_stop(args):
    """Early stopping selects on held-out images only: refused without --val_split."""
    if args.early_stop_patience and not args.val_split:
        raise UsageError("--early_stop_patience stops on the validation accuracy; give "
                         "--val_split N (stopping on the test split would select on it)")


def check_encoder_flags(args, mae_cfg):
    """UsageError unless the architecture flags given (those of ARCH_KEYS args has, not None;
    a --model preset counts as its flags given) and the dataset's image shape are the
    pretrained encoder's own: a flag the encoder ignored would be recorded in args.json as if
    it had been used."""
    in_chans, image_size = image_shape(args.dataset, args.image_size)
    arch = {k: getattr(args, k, None) for k in ARCH_KEYS}
    if getattr(args, "model", None):
        arch.update({k: v for k, v, _ in presets.choose(args, presets.ENCODER_KEYS)[1]})
    clash = [f"--{k} {v} (the checkpoint has {getattr(mae_cfg, k)})"
             for k, v in arch.items() if v is not None and v != getattr(mae_cfg, k)]
    for k, v in (("in_chans", in_chans), ("image_size", image_size)):
        if v != getattr(mae_cfg, k):
            clash.append(f"{args.dataset} gives {k} {v} (the checkpoint has "
                         f"{getattr(mae_cfg, k)})")
    if clash:
        raise UsageError("the pretrained encoder does not match: " + "; ".join(clash))


def classifier_config(args, mae_cfg, num_classes):
    """The classifier config; from the MAE checkpoint when there is one."""
    in_chans, image_size = image_shape(args.dataset, args.image_size)
    if mae_cfg is not None:
        check_encoder_flags(args, mae_cfg)
        arch = {k: getattr(mae_cfg, k) for k in ARCH_KEYS}
    else:
        arch = architecture(args)
    try:
        return ClassifierConfig(image_size=image_size, in_chans=in_chans, **arch,
                                num_classes=num_classes, pool=args.pool,
                                head="bn_linear" if args.linear_probe else "linear",
                                drop_path=args.drop_path)
    except ValueError as e:
        raise flags.model_error(e) from None


def build_model(args, num_classes, device):
    mae = weights.load_pretrained(args.pretrained_model_path, args.encoder_head) \
        if args.pretrained_model_path else None
    cfg = classifier_config(args, mae[0] if mae else None, num_classes)
    model = ViT_Classifier(cfg)
    if mae:
        # the tensors must be those the configuration describes: one line names the first not
        weights.check_tensors(model.encoder_state_dict(), model.from_encoder(mae[1]),
                              args.pretrained_model_path)
        model.load_encoder(mae[1])
    model.init_head(args.head_init_std)
    if args.linear_probe:
        model.freeze_trunk()
    return model.to(device)


def model_file(args, folder):
    """The final model file of the run with flags `args` (a dict, as in args.json) whose
    stage folder is `folder`."""
    if args["output_model_path"] != "auto":
        return args["output_model_path"]
    mode = (args["pretrained_model_path"] is not None, args["linear_probe"])
    return os.path.join(folder, MODES[mode][1])


def best_model_file(path):
    """The best epoch's model file beside the final model file `path`."""
    root, ext = os.path.splitext(path)
    return root + BEST_SUFFIX + ext
