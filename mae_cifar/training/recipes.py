"""Training recipes as data: one table of resolved settings per stage and recipe.

`paper` is the MAE paper's appendix A.1 at ViT-B's column where sizes differ (our ViT-T has
ViT-B's 12 blocks, and layer decay compounds per block): Table 8 (pretraining), Table 9
(end-to-end fine-tuning) and Table 10 (linear probing), as the official code
(facebookresearch/mae: main_pretrain.py, main_finetune.py, main_linprobe.py) runs them.
`seed` keeps the seed repository's recipe; `fast` is the linear probe on cached features.
docs/recipes.md lists every way a default differs from `paper`, and why.

A run resolves its recipe once: every recipe flag the user did not give takes the table's
value; explicit flags win. The resolved values are printed and saved in args.json.
"""
import argparse
from dataclasses import dataclass, fields

from mae_cifar.cli import UsageError, finite_float, follows
from mae_cifar.data.augment import parse_rand_augment

STAGES = ("pretrain", "finetune", "linprobe")
ADAMW_BETAS = (0.9, 0.999)
ADAMW_BETAS_PRETRAIN = (0.9, 0.95)  # MAE pretraining betas
LARS_MOMENTUM = 0.9  # the MAE linear probe's LARS
NO_RAND_AUGMENT = "none"
PAPER_RAND_AUGMENT = "rand-m9-mstd0.5-inc1"  # RandAugment(9, 0.5)
SEED_HEAD_INIT_STD = 0.02

_SEED_PRETRAIN = dict(
    optimizer="adamw", betas=ADAMW_BETAS_PRETRAIN, base_learning_rate=1.5e-4,
    weight_decay=0.05, batch_size=4096, warmup_epoch=40, min_lr=0.0,
    augment="flip", crop_scale=(0.2, 1.0), drop_last=False, decay_tokens=False,
    pos_embed="learned")
_SEED_FINETUNE = dict(
    optimizer="adamw", betas=ADAMW_BETAS, momentum=LARS_MOMENTUM, base_learning_rate=1e-3,
    weight_decay=0.05, layer_decay=1.0, batch_size=128, warmup_epoch=5, total_epoch=100, min_lr=0.0,
    augment="none", crop_scale=(0.08, 1.0), drop_last=False, rand_augment=NO_RAND_AUGMENT,
    reprob=0.0, smoothing=0.0, mixup=0.0, cutmix=0.0, drop_path=0.0, pool="cls",
    head_init_std=SEED_HEAD_INIT_STD)
# A linear probe trains one BN + linear layer on frozen features: no mixing or regularisation.
PROBE_FIXED = dict(layer_decay=1.0, rand_augment=NO_RAND_AUGMENT, reprob=0.0, smoothing=0.0,
                    mixup=0.0, cutmix=0.0, drop_path=0.0)

RECIPES = {
    "pretrain": {
        "seed": _SEED_PRETRAIN,
        # the official fixed 2-D sin-cos position embeddings (encoder and decoder, never trained)
        "paper": dict(_SEED_PRETRAIN, augment="rrc_flip", drop_last=True, decay_tokens=True,
                      pos_embed="sincos"),
    },
    "finetune": {
        "seed": _SEED_FINETUNE,
        "paper": dict(
            _SEED_FINETUNE, base_learning_rate=5e-4, layer_decay=0.65, batch_size=1024,
            min_lr=1e-6, augment="rrc_flip", drop_last=True, rand_augment=PAPER_RAND_AUGMENT,
            reprob=0.25, smoothing=0.1, mixup=0.8, cutmix=1.0, drop_path=0.1, pool="mean",
            head_init_std=2e-5),
    },
    "linprobe": {
        "seed": dict(_SEED_FINETUNE, **PROBE_FIXED),
        # AdamW at base lr 0.1 without weight decay on cached features (no augmentation).
        # 0.1 is the validation split's choice among 0.001 / 0.01 / 0.1 / 1.0 (best val acc
        # 60.45 / 69.05 / 72.05 / 71.65%: commands/study.sh PART=search on one Fashion-MNIST
        # MAE encoder, results/superseded/fashion_mnist_study_v1/results.md); the test split
        # played no part.
        "fast": dict(_SEED_FINETUNE, **PROBE_FIXED, base_learning_rate=0.1, weight_decay=0.0),
        "paper": dict(
            _SEED_FINETUNE, **PROBE_FIXED, optimizer="lars", base_learning_rate=0.1,
            weight_decay=0.0, batch_size=16384, warmup_epoch=10, total_epoch=90, min_lr=0.0,
            augment="rrc_flip", crop_scale=(0.08, 1.0), drop_last=True, head_init_std=0.01),
    },
}
OPTIMIZER_HELP = {"adamw": "AdamW", "lars": "LARS (timm's, set as the official MAE probe's)"}
DEFAULT_RECIPE = {"pretrain": "seed", "finetune": "seed", "linprobe": "fast"}
# The batch the paper's LARS probe sets its lr for: the linear scaling rule shrinks the lr of
# smaller batches, and LARS's trust ratio (1e-3) leaves a small batch's probe near chance.
LARS_BATCH = RECIPES["linprobe"]["paper"]["batch_size"]


@dataclass(frozen=True)
class Optimization:
    """What engine.Trainer takes from a resolved recipe: the optimizer with its betas (AdamW)
    or momentum (LARS), the layer decay, the floor of the cosine schedule, and whether tokens
    and position embeddings get weight decay. A stage's table without a key keeps its default."""
    optimizer: str = "adamw"
    betas: tuple[float, float] = ADAMW_BETAS
    momentum: float = LARS_MOMENTUM
    layer_decay: float = 1.0
    min_lr: float = 0.0
    decay_tokens: bool = False


def optimization(args):
    """The Optimization of args whose recipe is resolved (resolve())."""
    return Optimization(**{f.name: getattr(args, f.name) for f in fields(Optimization)
                           if getattr(args, f.name, None) is not None})


class RecipeDefault:
    """Marks a parser default that came from a recipe table, not from the command line."""


class _Int(RecipeDefault, int):
    pass


class _Float(RecipeDefault, float):
    pass


class _Str(RecipeDefault, str):
    pass


class _List(RecipeDefault, list):
    pass


def _marked(v):
    """v as a marked default, so --help shows it and resolve() knows it was not given
    (bools cannot be subclassed: they stay None until resolved)."""
    if isinstance(v, bool) or v is None:
        return None
    for base, marked in ((int, _Int), (float, _Float), (str, _Str), (tuple, _List)):
        if isinstance(v, base):
            return marked(v)
    raise TypeError(f"no marked default for {v!r}")


def add_recipe_args(parser, stages):
    """--recipe and the recipe-valued flags of `stages` (beside add_common_args's).

    Recipe flags default to the first stage's default recipe (shown by --help), marked so
    that resolve() can tell a given flag from a default."""
    names = sorted({r for s in stages for r in RECIPES[s]})
    keys = {k for s in stages for r in RECIPES[s].values() for k in r}
    g = parser.add_argument_group("recipe (defaults come from --recipe; flags override)")
    defaults = ", ".join(f"{s} {DEFAULT_RECIPE[s]}" for s in stages)
    g.add_argument("--recipe", default=None, choices=names,
                   help=f"table of settings (recipes.py, docs/recipes.md); default: {defaults}")
    g.add_argument("--min_lr", type=finite_float, default=None,
                   help="the cosine schedule ends at this lr (absolute, not scaled)")
    g.add_argument("--crop_scale", type=finite_float, nargs=2, default=None, metavar=("MIN", "MAX"),
                   help="area range of --augment rrc_flip's random resized crops")
    optimizers = sorted({r["optimizer"] for s in stages for r in RECIPES[s].values()})
    flags = {  # --optimizer offers what the stages' recipes use: pretraining AdamW only
        "optimizer": dict(choices=optimizers,
                          help=", or ".join(OPTIMIZER_HELP[o] for o in optimizers)),
        "betas": dict(type=finite_float, nargs=2, metavar=("B1", "B2"), help="AdamW betas"),
        "momentum": dict(type=finite_float, help="LARS momentum"),
        "drop_last": dict(action=argparse.BooleanOptionalAction,
                          help="skip each epoch's last partial batch (the official code does)"),
        "decay_tokens": dict(action=argparse.BooleanOptionalAction,
                             help="apply weight decay to the cls and mask tokens and learned "
                                  "position embeddings (official pretraining does)"),
        "rand_augment": dict(help=f"'{NO_RAND_AUGMENT}' or a timm RandAugment string "
                                  f"('{PAPER_RAND_AUGMENT}' is the paper's), batched on the "
                                  "device"),
        "reprob": dict(type=finite_float,
                       help="probability of random erasing (one box of N(0, 1) pixels)"),
        "head_init_std": dict(type=finite_float,
                              help="std of the head's initial weights (the bias starts at 0)"),
    }
    for k, kw in flags.items():
        if k in keys:
            g.add_argument("--" + k, default=None, **kw)
    table = RECIPES[stages[0]][DEFAULT_RECIPE[stages[0]]]
    parser.set_defaults(**{k: _marked(table.get(k)) for k in keys})
    follows(parser, "recipe", keys)  # --config A --recipe R: R's values, not A's


def resolve(args, stage):
    """Fill every recipe flag that was not given, and record the recipe's name.

    Returns the list of (key, value, 'recipe' | 'flag') of the resolved table, for printing.
    """
    args.recipe = args.recipe or DEFAULT_RECIPE[stage]
    if args.recipe not in RECIPES[stage]:
        raise UsageError(f"--recipe {args.recipe} has no {stage} table; choose one of "
                         f"{', '.join(RECIPES[stage])}")
    table = RECIPES[stage][args.recipe]
    rows = []
    for k, v in table.items():
        value = getattr(args, k, None)
        given = value is not None and not isinstance(value, RecipeDefault)
        if not given:
            setattr(args, k, list(v) if isinstance(v, tuple) else v)
        rows.append((k, getattr(args, k), "flag" if given else "recipe"))
    _validate(args)
    return rows


def _validate(args):
    """Checks of the resolved values (the pretraining stage lacks the classifier's flags)."""
    lo, hi = args.crop_scale
    if not 0 < lo <= hi <= 1:
        raise UsageError(f"--crop_scale needs 0 < MIN <= MAX <= 1, got {lo} {hi}")
    if args.min_lr < 0:
        raise UsageError(f"--min_lr must be >= 0, got {args.min_lr}")
    if not hasattr(args, "rand_augment"):
        return
    if not 0 <= args.reprob <= 1:
        raise UsageError(f"--reprob must be in [0, 1], got {args.reprob}")
    if args.head_init_std <= 0:
        raise UsageError(f"--head_init_std must be > 0, got {args.head_init_std}")
    try:
        parse_rand_augment(args.rand_augment)
    except ValueError as e:
        raise UsageError(f"--rand_augment: {e}") from None


def lars_warning(args):
    """The warning line of a LARS run below LARS_BATCH, else None."""
    if args.optimizer != "lars" or args.batch_size >= LARS_BATCH:
        return None
    return (f"warning: LARS at --batch_size {args.batch_size}, below the {LARS_BATCH} its lr "
            "is set for (lr = base lr x batch / 256): a short run may train to chance; use "
            f"--batch_size {LARS_BATCH}, a higher --base_learning_rate, or --recipe fast")


def describe(stage, recipe, rows):
    """One line per setting: the resolved recipe a run prints."""
    lines = [f"{stage} recipe '{recipe}' (recipes.py; flags given override):"]
    lines += [f"  {k}: {v}{'  (flag)' if src == 'flag' else ''}" for k, v, src in rows]
    return "\n".join(lines)


def loader_kwargs(args):
    """DeviceLoader's augmentation keywords from resolved args."""
    rand = getattr(args, "rand_augment", NO_RAND_AUGMENT)
    return dict(crop_scale=tuple(args.crop_scale), rand_augment=parse_rand_augment(rand),
                reprob=getattr(args, "reprob", 0.0), drop_last=getattr(args, "drop_last", False))
