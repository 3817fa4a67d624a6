"""Image classification with a ViT: from scratch, fine-tuned from MAE, or linear probing.

    python train_classifier.py                                  # scratch -> scratch-cls/
    python train_classifier.py --pretrained_model_path outputs/main_exp/mae-pretrain/vit-t-mae.pt
    python train_classifier.py --pretrained_model_path outputs/main_exp/mae-pretrain/vit-t-mae.pt \\
        --linear_probe                                          # -> pretrain-cls-lin/
    python train_classifier.py --linear_probe      # random frozen encoder -> scratch-cls-lin/

The second line fine-tunes (-> pretrain-cls/). --pretrained_model_path also takes a timm ViT
state dict (.pth or .safetensors, e.g. export.py's) or an official MAE pretraining checkpoint
({'model': ...}); their encoder keys are mapped explicitly and the decoder is ignored.

Recipes (recipes.py; docs/recipes.md lists how each differs from the paper). Fine-tuning and
training from scratch default to --recipe seed: the seed's AdamW, lr = base lr x batch / 256,
warmup + cosine, no augmentation or regularisation. --recipe paper is the MAE appendix's
fine-tuning (Table 9): layer decay 0.65, RandAugment(9, 0.5), random erasing 0.25, mixup 0.8,
cutmix 1.0, label smoothing 0.1, drop path 0.1, global pooling with fc_norm, batch 1024.
--linear_probe defaults to --recipe fast: AdamW at base lr 0.1 without weight decay on
features computed once (no augmentation); --recipe paper is Table 10's probe: LARS, batch
16384, random resized crop + flip through the frozen encoder every step. The run prints the
resolved recipe and saves it in args.json; any flag given explicitly overrides its value.
"""
import argparse
import os
import time
from dataclasses import asdict

import torch
import torch.nn.functional as F

import cli
import common_args
import distributed
import engine
import fileio
import recipes
import runfolder
import weights
from cli import HelpFormatter, UsageError, run_cli
from data import DeviceLoader, Split, image_shape
from model import ClassifierConfig, ViT_Classifier
from utils import CHECKPOINT_FORMAT, save_checkpoint, seed_everything

CSV_FIELDS = ["epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss",
              "test_acc", "epoch_seconds", "images_per_s"]
VIT_TINY = dict(patch_size=2, emb_dim=192, encoder_layer=12, encoder_head=3, pos_embed="learned")
MODES = {  # (pretrained, linear probe) -> (stage folder, model file, summary mode)
    (False, False): ("scratch-cls", "vit-t-clf-from_scratch.pt", "scratch"),
    (True, False): ("pretrain-cls", "vit-t-clf-from_pretrained.pt", "finetune"),
    (True, True): ("pretrain-cls-lin", "vit-t-clf-lin-from_pretrained.pt", "linprobe"),
    (False, True): ("scratch-cls-lin", "vit-t-clf-lin-from_scratch.pt", "scratch-linprobe"),
}


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=HelpFormatter)
    common_args.add_common_args(p, batch_size=128, max_device_batch_size=256, base_lr=None,
                           total_epoch=100, warmup_epoch=5, augment=None)
    g = p.add_argument_group("classifier")
    g.add_argument("--pretrained_model_path", "--mae_ckpt", "--pretrained_ckpt",
                   dest="pretrained_model_path", default=None,
                   help="MAE checkpoint to start from (mae_pretrain.py's model file; or a timm "
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
    return p


def add_architecture_args(parser, title):
    """The ViT flags of a model from scratch (baselines.py's random encoder shares them);
    None: VIT_TINY's value (architecture())."""
    g = parser.add_argument_group(title)
    g.add_argument("--patch_size", type=cli.positive_int, default=None, help="patch side")
    g.add_argument("--emb_dim", type=cli.positive_int, default=None, help="width")
    g.add_argument("--encoder_layer", type=cli.positive_int, default=None, help="blocks")
    g.add_argument("--encoder_head", type=cli.positive_int, default=None,
                   help="heads (also: the heads of a timm file, which does not record them)")
    g.add_argument("--pos_embed", default=None, choices=("learned", "sincos"),
                   help="position embedding initialisation")


def architecture(args):
    """{flag: value} of the architecture flags, VIT_TINY's value where one was not given."""
    return {k: VIT_TINY[k] if getattr(args, k) is None else getattr(args, k) for k in VIT_TINY}


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
    if warning and int(os.environ.get("RANK", "0")) == 0:
        print(warning)
    return rows


def check_early_stop(args):
    """Early stopping selects on held-out images only: refused without --val_split."""
    if args.early_stop_patience and not args.val_split:
        raise UsageError("--early_stop_patience stops on the validation accuracy; give "
                         "--val_split N (stopping on the test split would select on it)")


def classifier_config(args, mae_cfg, num_classes):
    """The classifier config; from the MAE checkpoint when there is one."""
    in_chans, image_size = image_shape(args.dataset, args.image_size)
    if mae_cfg is not None:
        arch = {k: getattr(args, k) for k in VIT_TINY}
        clash = [f"--{k} {v} (the checkpoint has {getattr(mae_cfg, k)})"
                 for k, v in arch.items() if v is not None and v != getattr(mae_cfg, k)]
        for k, v in (("in_chans", in_chans), ("image_size", image_size)):
            if v != getattr(mae_cfg, k):
                clash.append(f"{args.dataset} gives {k} {v} (the checkpoint has "
                             f"{getattr(mae_cfg, k)})")
        if clash:
            raise UsageError("the pretrained encoder does not match: " + "; ".join(clash))
        arch = {k: getattr(mae_cfg, k) for k in VIT_TINY}
    else:
        arch = architecture(args)
    try:
        return ClassifierConfig(image_size=image_size, in_chans=in_chans, **arch,
                                num_classes=num_classes, pool=args.pool,
                                head="bn_linear" if args.linear_probe else "linear",
                                drop_path=args.drop_path)
    except ValueError as e:
        raise common_args.model_error(e) from None


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


# --------------------------------------------------------------------------- loss and steps
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


# --------------------------------------------------------------------------- main
def check_outputs(args, run):
    """The CSV and model paths, refused now if they would clash or cannot be written."""
    names = {"--csv_fn": csv_name(args)}
    if args.output_model_path == "auto":
        model_fn = MODES[(args.pretrained_model_path is not None, args.linear_probe)][1]
        runfolder.check_file_names({**names, "--model_fn": model_fn})
        return
    runfolder.check_file_names(names)
    if args.pretrained_model_path and os.path.exists(args.output_model_path) and \
            os.path.samefile(args.output_model_path, args.pretrained_model_path):
        raise UsageError("--model_fn would overwrite --pretrained_model_path")
    runfolder.check_output_path(run, "--model_fn", "output_model_path", names)


def model_file(args, folder):
    """The final model file of the run with flags `args` (a dict, as in args.json) whose
    stage folder is `folder`."""
    if args["output_model_path"] != "auto":
        return args["output_model_path"]
    mode = (args["pretrained_model_path"] is not None, args["linear_probe"])
    return os.path.join(folder, MODES[mode][1])


def csv_name(args):
    return "metrics.csv" if args.csv_log == "auto" else args.csv_log


def main(args):
    recipe = resolve_recipe(args)
    common_args.validate_common(args)
    check_early_stop(args)
    # the upstream's identity is its content: compared on resume, recorded in the results
    args.pretrained_sha256 = runfolder.upstream_hash(args.pretrained_model_path)
    folder, _, mode = MODES[(args.pretrained_model_path is not None, args.linear_probe)]
    dist, run, status = engine.start_stage(args, folder, get_args_parser())
    check_outputs(args, run)
    if status == "finished":
        return
    if dist.is_main:
        print(recipes.describe("linprobe" if args.linear_probe else "finetune", args.recipe,
                               recipe))
    data = engine.load_stage_data(args, dist, args.val_split)
    seed_everything(args.seed)  # same random encoder on every rank and in every run
    model = build_model(args, data.num_classes, dist.device)
    seed_everything(args.seed + dist.rank)
    engine.configure_backends(dist.device)
    cache = args.linear_probe and args.augment == "none" and not args.no_feature_cache
    run.open(fresh=status == "new")
    engine.run_stage(lambda: Stage(args, dist, model, data, run, mode, cache).train(), run)


class Stage:
    """One classifier run: trainer set-up, per-epoch evaluation, best tracking, final files."""

    def __init__(self, args, dist, model, data, run, mode, cache):
        self.args, self.dist, self.model, self.data, self.run = args, dist, model, data, run
        self.mode, self.cache = mode, cache
        self.best = {"val_acc": -1.0, "epoch": -1, "test_acc": 0.0}
        self.eval_bs = 2 * args.max_device_batch_size
        self.norm = (data.mean, data.std)
        self.autocast = engine.autocast_context(engine.amp_dtype(args.amp, dist.device),
                                                dist.device)
        # evaluated every epoch; without --val_split the test split also selects the best epoch
        self.splits = {"test": data.test, **({"val": data.val} if data.val is not None else {})}
        module, train_split = model, data.train
        self.feature_seconds = 0.0  # computing the cached features, not in the epochs' time
        if cache:  # features once; then only the head trains and is evaluated
            started = time.perf_counter()
            module = model.head
            train_split = self.features(data.train)
            self.splits = {k: self.features(v) for k, v in self.splits.items()}
            self.feature_seconds = time.perf_counter() - started
        loader = DeviceLoader(train_split, args.batch_size, data.mean, data.std, args.augment,
                              seed=args.seed, rank=dist.rank, world=dist.world,
                              **recipes.loader_kwargs(args))
        self.trainer = engine.Trainer(
            args, dist, module, loader, Objective(args, data.num_classes), run, "classifier",
            asdict(model.config), recipes.optimization(args), state_module=model,
            extra_state={"best": lambda: dict(self.best),
                         runfolder.UPSTREAM_KEY: lambda: args.pretrained_sha256},
            lr_schedule=args.lr_schedule)
        self.eval_model = module

    def features(self, split):
        return extract_features(self.model, split, self.eval_bs, self.norm, self.autocast)

    def train(self):
        ckpt = self.trainer.resume()
        if ckpt is not None:
            self.best = ckpt["best"]
        if self.dist.is_main:
            print(self.trainer.describe())
            print(f"mode {self.mode}; {'cached features' if self.cache else 'images'}; "
                  f"{sum(p.numel() for p in self.trainer.module.parameters() if p.requires_grad):,}"
                  " trainable parameters")
        log = engine.MetricsLog(self.run, csv_name(self.args), CSV_FIELDS,
                                self.trainer.start_epoch) if self.dist.is_main else None
        self.log = log
        self.trainer.fit(self.on_epoch_end, self.patience_ran_out)
        if self.dist.is_main:
            log.close()
            self.finish()
            self.report()

    def on_epoch_end(self, epoch, stats):
        row = {"epoch": epoch, "lr": self.trainer.optimizer.param_groups[-1]["lr"],
               "train_loss": stats["loss"], "train_acc": stats["correct"]}
        for name, split in self.splits.items():
            loss, acc = evaluate(self.eval_model, split, self.eval_bs, self.norm, self.autocast,
                                 self.dist)
            row[f"{name}_loss"], row[f"{name}_acc"] = loss, acc
        if "val" not in self.splits:  # the same numbers, not a second pass over the test split
            row["val_loss"], row["val_acc"] = row["test_loss"], row["test_acc"]
        row["epoch_seconds"], row["images_per_s"] = stats["seconds"], stats["images_per_s"]
        if row["val_acc"] > self.best["val_acc"]:
            self.best = {"val_acc": row["val_acc"], "epoch": epoch, "test_acc": row["test_acc"]}
        if self.dist.is_main:
            self.log.log(row)
            print(engine.epoch_line(epoch, self.args.total_epoch, row))

    def patience_ran_out(self, epoch):
        """Early stopping: no val_acc improvement in the --early_stop_patience epochs up to
        `epoch`. A function of the best epoch alone, which the checkpoint holds, so a resumed
        run stops where an uninterrupted one does."""
        patience = self.args.early_stop_patience
        return patience > 0 and epoch - self.best["epoch"] >= patience

    def stop_reason(self, stopped_epoch):
        if self.patience_ran_out(stopped_epoch):
            return (f"patience: no val_acc improvement for {self.args.early_stop_patience} "
                    f"epochs after epoch {self.best['epoch']}")
        return "reached total_epoch"

    def model_path(self):
        return model_file(vars(self.args), self.run.path)

    def finish(self):
        rows = self.log.csv.rows
        stopped = int(rows[-1]["epoch"])  # the last epoch trained (0-based, as best_epoch)
        save_checkpoint({"format": CHECKPOINT_FORMAT, "kind": "classifier",
                         "config": asdict(self.model.config), "model": self.model.state_dict(),
                         "classes": self.data.classes, "norm_mean": self.data.mean,
                         "norm_std": self.data.std, "epoch": stopped + 1,
                         "args": vars(self.args),
                         runfolder.UPSTREAM_KEY: self.args.pretrained_sha256}, self.model_path())
        self.summary = {
            "finished": True, "mode": self.mode, "epochs": stopped + 1,
            "stopped_epoch": stopped, "stop_reason": self.stop_reason(stopped),
            "final_test_acc": float(rows[-1]["test_acc"]),
            "best_val_acc": self.best["val_acc"], "best_epoch": self.best["epoch"],
            "test_acc_at_best": self.best["test_acc"],
            "selection_split": "val" if self.args.val_split else "test",
            runfolder.UPSTREAM_KEY: self.args.pretrained_sha256,
            "wall_seconds": sum(float(r["epoch_seconds"]) for r in rows),
            "feature_seconds": self.feature_seconds}
        fileio.write_json(self.run.file(runfolder.SUMMARY_FN), self.summary)

    def report(self):
        s = self.summary
        split = "held-out validation split" if s["selection_split"] == "val" else \
            "TEST split (no --val_split; optimistic)"
        print(f"stopped after epoch {s['stopped_epoch'] + 1}/{self.args.total_epoch} "
              f"({s['stop_reason']})")
        print(f"final test accuracy (last epoch {s['epochs']}): {s['final_test_acc']:.4f}")
        print(f"best accuracy on the {split}: {s['best_val_acc']:.4f} at epoch "
              f"{s['best_epoch'] + 1} (test accuracy then: {s['test_acc_at_best']:.4f})")
        print(f"model saved to {self.model_path()}")


if __name__ == "__main__":
    run_cli(main, get_args_parser())
