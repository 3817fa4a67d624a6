"""Image classification with a ViT: from scratch, fine-tuned from MAE, or linear probing.

    python train_classifier.py                                  # scratch -> scratch-cls/
    python train_classifier.py --pretrained_model_path outputs/main_exp/mae-pretrain/vit-t-mae.pt
    python train_classifier.py --pretrained_model_path outputs/main_exp/mae-pretrain/vit-t-mae.pt \\
        --linear_probe                                          # -> pretrain-cls-lin/
    python train_classifier.py --linear_probe      # random frozen encoder -> scratch-cls-lin/

The second line fine-tunes (-> pretrain-cls/). --pretrained_model_path also takes timm's
Hugging Face folder (export.py's), a timm ViT state dict (.pth or .safetensors) or an official
MAE pretraining checkpoint ({'model': ...}); their encoder keys are mapped explicitly and the
decoder is ignored. With --val_split the run also keeps its best epoch's model (<model>-best.pt
beside the last; summary.json names both).

Recipes (mae_cifar/training/recipes.py; docs/recipes.md lists how each differs from the paper).
Fine-tuning and training from scratch default to --recipe seed: the seed's AdamW, lr = base lr
x batch / 256, warmup + cosine, no augmentation or regularisation. --recipe paper is the MAE
appendix's fine-tuning (Table 9): layer decay 0.65, RandAugment(9, 0.5), random erasing 0.25,
mixup 0.8, cutmix 1.0, label smoothing 0.1, drop path 0.1, global pooling with fc_norm, batch
1024. --linear_probe defaults to --recipe fast: AdamW at base lr 0.1 without weight decay on
features computed once (no augmentation); --recipe paper is Table 10's probe: LARS, batch
16384, random resized crop + flip through the frozen encoder every step. The run prints the
resolved recipe and saves it in args.json; any flag given explicitly overrides its value.
"""
import os
import time
from dataclasses import asdict

from mae_cifar import cli, fileio, weights
from mae_cifar.checkpoint import CHECKPOINT_FORMAT, save_checkpoint
from mae_cifar.cli import UsageError, run_cli
from mae_cifar.data.loader import DeviceLoader
from mae_cifar.evaluation.features import evaluate, extract_features
from mae_cifar.training import engine, flags, presets, recipes, run_folder
from mae_cifar.training.classifier import (
    MODES,
    best_model_file,
    build_model,
    check_early_stop,
    model_file,
    resolve_recipe,
)
from mae_cifar.training.objectives import Objective
from utils import seed_everything

CSV_FIELDS = ["epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss",
              "test_acc", "epoch_seconds", "images_per_s"]


def get_args_parser():
    return flags.stage_parser(flags.add_classifier_args, __doc__)


# --------------------------------------------------------------------------- main
def check_outputs(args, run):
    """The CSV and model paths, refused now if they would clash or cannot be written."""
    names = {"--csv_fn": csv_name(args)}
    if args.output_model_path == "auto":
        model_fn = MODES[(args.pretrained_model_path is not None, args.linear_probe)][1]
        run_folder.check_file_names({**names, "--model_fn": model_fn,
                                     "--model_fn's best epoch": best_model_file(model_fn)})
        return
    run_folder.check_file_names(names)
    if args.pretrained_model_path and os.path.exists(args.output_model_path) and \
            os.path.samefile(args.output_model_path, args.pretrained_model_path):
        raise UsageError("--model_fn would overwrite --pretrained_model_path")
    run_folder.check_output_path(run, "--model_fn", "output_model_path", names)


def csv_name(args):
    return "metrics.csv" if args.csv_log == "auto" else args.csv_log


def main(args):
    recorded = weights.recorded_args(args.pretrained_model_path) \
        if args.pretrained_model_path else None
    taken = flags.resolve_data(args, recorded)
    if taken and cli.launch_rank() == 0:
        print("from the pretrained model: " + ", ".join(f"--{k} {getattr(args, k)}"
                                                        for k in taken))
    recipe = resolve_recipe(args)
    flags.validate_common(args)
    check_early_stop(args)
    # the upstream's identity is its content: compared on resume, recorded in the results
    args.pretrained_sha256 = run_folder.upstream_hash(args.pretrained_model_path)
    folder, _, mode = MODES[(args.pretrained_model_path is not None, args.linear_probe)]
    dist, run, status = engine.start_stage(args, folder, get_args_parser())
    check_outputs(args, run)
    if status == "finished":
        return
    if dist.is_main:
        print(recipes.describe("linprobe" if args.linear_probe else "finetune", args.recipe,
                               recipe))
        if args.pretrained_model_path is None:  # a model from scratch: the preset's
            print(presets.describe(*presets.choose(args, presets.ENCODER_KEYS)))
    data = engine.load_stage_data(args, dist, run, args.val_split)
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
        saved = engine.Checkpointed(
            "classifier", asdict(model.config), model,
            {"best": lambda: dict(self.best),
             run_folder.UPSTREAM_KEY: lambda: args.pretrained_sha256})
        self.trainer = engine.Trainer(
            args, dist, module, loader, Objective(args, data.num_classes), run, saved,
            recipes.optimization(args), lr_schedule=args.lr_schedule)
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
        log = self.trainer.metrics_log(csv_name(self.args), CSV_FIELDS,
                                       f"{self.args.exp_name}/{self.mode}")
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
            if self.args.val_split and self.dist.is_main:  # test-selected weights: not kept
                self.save_model(best_model_file(self.model_path()), epoch + 1)
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
        """Why the run stopped (epochs 0-based, as everywhere: summary.json and console)."""
        if self.patience_ran_out(stopped_epoch):
            return (f"patience: no val_acc improvement for {self.args.early_stop_patience} "
                    f"epochs after epoch {self.best['epoch']}")
        return "reached total_epoch"

    def model_path(self):
        return model_file(vars(self.args), self.run.path)

    def save_model(self, path, epochs):
        """The model file of the weights after `epochs` epochs (export.py's input)."""
        save_checkpoint({"format": CHECKPOINT_FORMAT, "kind": "classifier",
                         "config": asdict(self.model.config), "model": self.model.state_dict(),
                         "classes": self.data.classes, "norm_mean": self.data.mean,
                         "norm_std": self.data.std, "epoch": epochs, "args": vars(self.args),
                         run_folder.UPSTREAM_KEY: self.args.pretrained_sha256}, path)

    def finish(self):
        rows = self.log.csv.rows
        stopped = int(rows[-1]["epoch"])  # the last epoch trained (0-based, as best_epoch)
        self.save_model(self.model_path(), stopped + 1)
        self.summary = {
            "finished": True, "mode": self.mode, "epochs": stopped + 1,
            "stopped_epoch": stopped, "stop_reason": self.stop_reason(stopped),
            "final_test_acc": float(rows[-1]["test_acc"]),
            "best_val_acc": self.best["val_acc"], "best_epoch": self.best["epoch"],
            "test_acc_at_best": self.best["test_acc"],
            "selection_split": "val" if self.args.val_split else "test",
            # relative to the run folder, which may be moved
            "model_file": os.path.relpath(self.model_path(), self.run.path),
            "best_model_file": os.path.relpath(best_model_file(self.model_path()),
                                               self.run.path) if self.args.val_split else None,
            "val_images_in_pretraining": self.data.val_in_pretraining,
            run_folder.UPSTREAM_KEY: self.args.pretrained_sha256,
            "wall_seconds": sum(float(r["epoch_seconds"]) for r in rows),
            "feature_seconds": self.feature_seconds, **self.run.summary_record()}
        fileio.write_json(self.run.file(run_folder.SUMMARY_FN), self.summary)

    def report(self):
        s = self.summary
        seen = s["val_images_in_pretraining"]
        split = "TEST split (no --val_split; optimistic)" if s["selection_split"] != "val" \
            else f"validation split ({seen} of its images seen in pretraining)" if seen \
            else "held-out validation split"
        print(f"stopped after epoch {s['stopped_epoch']}/{self.args.total_epoch} "
              f"({s['stop_reason']})")
        print(f"final test accuracy (last epoch {s['stopped_epoch']}): "
              f"{s['final_test_acc']:.4f}")
        print(f"best accuracy on the {split}: {s['best_val_acc']:.4f} at epoch "
              f"{s['best_epoch']} (test accuracy then: {s['test_acc_at_best']:.4f})")
        print(f"model saved to {self.model_path()}")
        if s["best_model_file"]:
            print(f"best epoch's model saved to {best_model_file(self.model_path())}")


if __name__ == "__main__":
    run_cli(main, get_args_parser())
