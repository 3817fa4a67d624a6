"""Test images under the MAE fine-tuned and the from-scratch classifier, side by side.

    python visualize_pred.py                       # the classifiers of outputs/main_exp
    python visualize_pred.py --indices 3 17 29 \\
        --pretrained_model_path outputs/main_exp/mae-pretrain/vit-t-mae.pt
    python visualize_pred.py --use_first_n --n 8 --save_dir outputs/main_exp/visualize_first

Writes to SAVE_DIR: predictions.png (the chosen test images under both classifiers: true label
below, prediction above, green when right and red when wrong), disagreements.png (up to N test
images on which the classifiers disagree) and, with --pretrained_model_path (the MAE file),
reconstruction.png (masked input | MAE reconstruction | original, of the same images). Prints
each classifier's accuracy on the shown images and on the whole test split. Pass the dataset
flags of the training runs; images are normalised with the statistics stored in each checkpoint.
"""
import argparse
import os
from dataclasses import dataclass

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mae_cifar import cli
from mae_cifar.checkpoint import load_checkpoint
from mae_cifar.cli import HelpFormatter, UsageError, run_cli
from mae_cifar.data.datasets import load_dataset
from mae_cifar.data.loader import DeviceLoader
from mae_cifar.distributed import resolve_device
from mae_cifar.evaluation.reconstruction import reconstruction_grid
from mae_cifar.fileio import atomic_write
from mae_cifar.training import flags
from mae_cifar.training.classifier import MODES
from model import ClassifierConfig, MAE_ViT, MAEConfig, ViT_Classifier, config_from_dict

MAE_FOLDER, MAE_FILE = "mae-pretrain", "vit-t-mae.pt"  # mae_pretrain.py's folder and model file
MODELS = {"pretrained": "fine-tuned from the MAE encoder",  # label -> what it usually is,
          "scratch": "trained from scratch"}                 # in figure order
# label -> (its flag, an old name kept as an alias); args.<flag's name> holds the path
MODEL_FLAGS = {"pretrained": ("--finetuned_model_path",),
               "scratch": ("--scratch_model_path", "--scratch_ckpt")}
# the fine-tuned classifier's old name: deprecated, as train_classifier.py's is the MAE file
OLD_FINETUNED_FLAG = "--pretrained_ckpt"
GRID_COLS = 6  # images per row of block in the prediction figures
PANEL_INCHES = 1.7  # side of one image panel
FIG_DPI = 120
RIGHT, WRONG = "tab:green", "tab:red"
GRID_PAD, GRID_PAD_VALUE = 2, 1.0  # pixels (white) between reconstruction images


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=HelpFormatter)
    g = p.add_argument_group("models")
    for name, what in MODELS.items():
        folder, model_fn, _ = MODES[(name == "pretrained", False)]
        g.add_argument(*MODEL_FLAGS[name], dest=model_dest(name), metavar="PATH", default=None,
                       help=f"classifier labelled '{name}' in the figures, usually {what} "
                            "(train_classifier.py's model file; default: the experiment's "
                            f"{folder}/{model_fn})")
    g.add_argument(OLD_FINETUNED_FLAG, dest=model_dest("pretrained"), metavar="PATH",
                   default=None, action=cli.DeprecatedFlag,
                   note="note: --pretrained_ckpt is deprecated in visualize_pred.py: here it is "
                        "--finetuned_model_path (the fine-tuned classifier), not the MAE file "
                        "(--pretrained_model_path) it names in train_classifier.py",
                   help="deprecated old name of --finetuned_model_path (in "
                        "train_classifier.py --pretrained_ckpt is the MAE file: "
                        "--pretrained_model_path)")
    g.add_argument("--pretrained_model_path", "--mae_ckpt", dest="pretrained_model_path",
                   metavar="PATH", default=None,
                   help="MAE checkpoint (mae_pretrain.py's model file): also draw its "
                        "reconstructions of the shown images (default: the experiment's "
                        f"{MAE_FOLDER}/{MAE_FILE}, when it is there)")
    g.add_argument("--output_root", default="outputs", help="root of the experiment folders")
    g.add_argument("--exp_name", default="main_exp",
                   help="the experiment whose runs are drawn: OUTPUT_ROOT/EXP_NAME/<stage>/")

    g = p.add_argument_group("images")
    g.add_argument("--n", type=cli.positive_int, default=12,
                   help="test images to show (random unless --use_first_n), and the most "
                        "disagreements to show")
    g.add_argument("--indices", type=int, nargs="+", default=None,
                   help="show these test images (0-based; overrides --n and --use_first_n)")
    g.add_argument("--use_first_n", action="store_true",
                   help="show the first N test images instead of N random ones")
    g.add_argument("--seed", type=cli.seed_int, default=0,
                   help="seed of the random choice of images and of the MAE masks")
    flags.add_dataset_args(p)

    g = p.add_argument_group("runtime and output")
    g.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")
    g.add_argument("--batch_size", type=cli.positive_int, default=512,
                   help="test images per forward pass when classifying the whole test split")
    g.add_argument("--save_dir", default=None,
                   help="folder of the figures (created; default: OUTPUT_ROOT/EXP_NAME/"
                        "visualize)")
    return p


def model_dest(name):
    """The args attribute of the classifier labelled name: its flag's name."""
    return MODEL_FLAGS[name][0].removeprefix("--")


# --------------------------------------------------------------------------- models
@dataclass
class Classifier:
    name: str
    path: str
    model: ViT_Classifier
    classes: list
    mean: torch.Tensor  # (C,) normalisation of its training run
    std: torch.Tensor  # (C,)


def rebuild(path, ckpt, config_cls, model_fn):
    """model_fn(config) with the checkpoint's weights loaded strictly, or UsageError."""
    try:
        model = model_fn(config_from_dict(config_cls, ckpt["config"]))
        model.load_state_dict(ckpt["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        msg = " ".join(str(e).split())  # load_state_dict lists keys over many lines
        raise UsageError(f"{path} does not rebuild a {config_cls.__name__} model: "
                         f"{type(e).__name__}: {msg}") from None
    return model.eval()


def load_classifier(name, path, device):
    ckpt = load_checkpoint(path, kind="classifier")
    missing = [k for k in ("classes", "norm_mean", "norm_std") if k not in ckpt]
    if missing:
        raise UsageError(f"{path} lacks {', '.join(missing)}; rerun train_classifier.py")
    model = rebuild(path, ckpt, ClassifierConfig, ViT_Classifier).to(device)
    return Classifier(name, path, model, list(ckpt["classes"]), ckpt["norm_mean"],
                      ckpt["norm_std"])


def load_mae(path, device):
    ckpt = load_checkpoint(path, kind="mae")
    return rebuild(path, ckpt, MAEConfig, MAE_ViT.from_config).to(device)


def shape_text(cfg):
    return f"{cfg.in_chans}x{cfg.image_size}x{cfg.image_size}"


def check_same_shape(clfs):
    shapes = {c.name: shape_text(c.model.config) for c in clfs}
    if len(set(shapes.values())) > 1:
        raise UsageError("the classifiers were trained on different image shapes: "
                         + ", ".join(f"{c.name} {shapes[c.name]} ({c.path})" for c in clfs)
                         + "; compare classifiers trained on the same dataset and --image_size")


def check_matches_data(path, cfg, data, args):
    data_shape = f"{data.in_chans}x{data.image_size}x{data.image_size}"
    if shape_text(cfg) != data_shape:
        raise UsageError(f"{path} was trained on {shape_text(cfg)} images but --dataset "
                         f"{args.dataset} gives {data_shape}; pass the dataset flags of its "
                         "training run (--dataset, --image_size)")


def check_classes(clf, data):
    if clf.classes != data.classes:
        raise UsageError(f"{clf.path} was trained on classes {clf.classes}, but --dataset "
                         f"{data.name} has {data.classes}")


# --------------------------------------------------------------------------- numbers
def select_indices(args, n_test):
    """Test indices (k,) to show: --indices, else the first N, else N random ones."""
    if args.indices is not None:
        bad = [i for i in args.indices if not 0 <= i < n_test]
        if bad:
            raise UsageError(f"--indices {' '.join(map(str, bad))} out of range: the test split "
                             f"has {n_test} images, valid indices are 0 to {n_test - 1}")
        return torch.tensor(args.indices)
    n = min(args.n, n_test)
    if args.use_first_n:
        return torch.arange(n)
    return torch.randperm(n_test, generator=torch.Generator().manual_seed(args.seed))[:n]


@torch.inference_mode()
def predict(clf, split, batch_size):
    """Predicted labels (N,) of every image of split, normalised as in clf's training."""
    loader = DeviceLoader(split, batch_size, clf.mean, clf.std, shuffle=False)
    idx = torch.arange(len(split), device=split.images.device)
    return torch.cat([clf.model(loader.batch(chunk)[0]).argmax(-1)
                      for chunk in idx.split(batch_size)]).cpu()


def accuracy_line(preds, labels, shown):
    """One line: each classifier's accuracy on the shown images and the whole split."""
    right = {name: (p == labels).float() for name, p in preds.items()}
    on_shown = ", ".join(f"{name} {r[shown].mean():.4f}" for name, r in right.items())
    on_all = ", ".join(f"{name} {r.mean():.4f}" for name, r in right.items())
    return (f"accuracy on the {len(shown)} shown images: {on_shown}; on the whole test split "
            f"({len(labels)} images): {on_all}")


def disagreements(preds, n):
    """Indices (k,) of the first n test images on which the classifiers disagree, and the
    total count."""
    first, *others = preds.values()
    differ = torch.zeros_like(first, dtype=torch.bool)
    for p in others:
        differ |= p != first
    idx = differ.nonzero().flatten()
    return idx[:n], len(idx)


# --------------------------------------------------------------------------- figures
def new_figure(cols, rows):
    """A headless (Agg) figure for a rows x cols grid of image panels."""
    fig = Figure(figsize=(cols * PANEL_INCHES, rows * PANEL_INCHES + 0.5), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def show(ax, image):
    """Draw a uint8 (C, H, W) image on ax without ticks."""
    image = image.permute(1, 2, 0).cpu().numpy()  # (H, W, C)
    if image.shape[-1] == 1:
        ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=255)
    else:
        ax.imshow(image)
    ax.set_xticks([])
    ax.set_yticks([])


def prediction_figure(split, idx, preds, classes, title):
    """Test images idx (k,) once per classifier, a row per classifier, GRID_COLS per block.

    split: the CPU test Split; preds {name: (N,) predicted labels of the whole split}.
    """
    k, per_block = len(idx), len(preds)
    cols = min(k, GRID_COLS)
    blocks = -(-k // cols)
    fig = new_figure(cols, blocks * per_block)
    axes = fig.subplots(blocks * per_block, cols, squeeze=False)
    for i in range(blocks * cols):
        block, col = divmod(i, cols)
        for r, (name, p) in enumerate(preds.items()):
            ax = axes[block * per_block + r, col]
            if i >= k:  # the unused end of the last block
                ax.axis("off")
                continue
            j = idx[i]
            show(ax, split.images[j])
            ax.set_title(f"{name}: {classes[p[j]]}", fontsize="small",
                         color=RIGHT if p[j] == split.labels[j] else WRONG)
            ax.set_xlabel(f"true: {classes[split.labels[j]]}", fontsize="small")
    fig.suptitle(title)
    return fig


def disagreement_figure(split, preds, classes, n):
    """Up to n test images on which the classifiers disagree, or a note that there are none."""
    idx, total = disagreements(preds, n)
    if total == 0:
        fig = new_figure(GRID_COLS, 1)
        fig.text(0.5, 0.5, f"no disagreements: the classifiers agree on all {len(split)} test "
                 "images", ha="center", va="center")
        return fig
    return prediction_figure(split, idx, preds, classes,
                             f"{len(idx)} of the {total} test images the classifiers disagree on")


def reconstruction_figure(mae, x, mean, std, seed):
    """masked | reconstruction | original of normalised images x (k, C, H, W)."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.rand(len(x), mae.encoder.patch_embed.num_patches, generator=g)  # (k, L)
    grid = reconstruction_grid(mae, x, noise.to(x.device), mean.to(x)[None, :, None, None],
                               std.to(x)[None, :, None, None], GRID_PAD, GRID_PAD_VALUE)
    cell = x.shape[-1] + GRID_PAD
    fig = new_figure(grid.shape[2] // cell, grid.shape[1] // cell)
    ax = fig.subplots()
    ax.imshow(grid.permute(1, 2, 0).cpu().numpy(), interpolation="nearest")  # (H', W', 3)
    ax.axis("off")
    fig.suptitle(f"masked | MAE reconstruction | original (mask ratio {mae.config.mask_ratio})")
    return fig


def save_figure(fig, path):
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=FIG_DPI))
    print(f"wrote {path}")


# --------------------------------------------------------------------------- main
def locate_runs(args):
    """Fill the model and output paths not given from --output_root / --exp_name, then the
    dataset flags not given from the fine-tuned classifier's run."""
    exp = os.path.join(args.output_root, args.exp_name)
    for name in MODELS:
        folder, model_fn, _ = MODES[(name == "pretrained", False)]
        if getattr(args, model_dest(name)) is None:
            setattr(args, model_dest(name), os.path.join(exp, folder, model_fn))
    mae = os.path.join(exp, MAE_FOLDER, MAE_FILE)
    if args.pretrained_model_path is None and os.path.isfile(mae):
        args.pretrained_model_path = mae
    args.save_dir = args.save_dir or os.path.join(exp, "visualize")
    recorded = load_checkpoint(args.finetuned_model_path, kind="classifier").get("args")
    flags.resolve_data(args, recorded if isinstance(recorded, dict) else None)


def main(args):
    locate_runs(args)
    device = torch.device(resolve_device(args.device))
    clfs, mae, data = load_inputs(args, device)
    shown = select_indices(args, len(data.test))
    print(f"{data.name}: {len(data.test)} test images from {data.source}; showing "
          f"{shown.tolist()}")
    preds = {c.name: predict(c, data.test, args.batch_size) for c in clfs}
    test = data.test.to("cpu")
    print(accuracy_line(preds, test.labels, shown)
          + f"; they disagree on {disagreements(preds, args.n)[1]} images")

    try:
        os.makedirs(args.save_dir, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create --save_dir {args.save_dir}: {e.strerror}") from None
    save_figure(prediction_figure(test, shown, preds, data.classes,
                                  f"test images {shown.tolist()}"),
                os.path.join(args.save_dir, "predictions.png"))
    save_figure(disagreement_figure(test, preds, data.classes, args.n),
                os.path.join(args.save_dir, "disagreements.png"))
    if mae is not None:
        x = DeviceLoader(data.test, len(shown), data.mean, data.std, shuffle=False).batch(
            shown.to(device))[0]  # (k, C, H, W) normalised as in pretraining
        save_figure(reconstruction_figure(mae, x, data.mean, data.std, args.seed),
                    os.path.join(args.save_dir, "reconstruction.png"))


def load_inputs(args, device):
    """(classifiers, MAE or None, Dataset), every one checked against the others."""
    clfs = [load_classifier(name, getattr(args, model_dest(name)), device) for name in MODELS]
    check_same_shape(clfs)
    mae = load_mae(args.pretrained_model_path, device) if args.pretrained_model_path else None
    # Only the test split is shown; the training split is loaded for its statistics.
    data = load_dataset(args.dataset, args.data_dir, args.image_size, max_train=1,
                        max_eval=args.max_eval_images, device=device)
    for c in clfs:
        check_matches_data(c.path, c.model.config, data, args)
        check_classes(c, data)
    if mae is not None:
        check_matches_data(args.pretrained_model_path, mae.config, data, args)
    return clfs, mae, data


if __name__ == "__main__":
    run_cli(main, get_args_parser())
