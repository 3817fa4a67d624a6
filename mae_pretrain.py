"""Self-supervised MAE pretraining (He et al., 2022) of a ViT on CIFAR-10 and friends.

    python mae_pretrain.py                           # ViT-T/2, decoder 4 x 192, CIFAR-10
    python mae_pretrain.py --dataset shapes --device cpu --model vit_micro_patch4 \\
        --batch_size 128 --max_train_images 512 --total_epoch 2 --exp_name smoke  # seconds
    python mae_pretrain.py --config outputs/smoke/mae-pretrain/args.json --exp_name smoke_again

The third command replays the smoke run's flags into another folder (flags after --config
override its values). Writes OUTPUT_ROOT/EXP_NAME/mae-pretrain/: the model (MODEL_FN), a
resumable checkpoint.pt, metrics.csv, args.json, summary.json,
images/epoch_XXXX/reconstruction.png, tensorboard/.
Running the same command again resumes an unfinished run and leaves a finished one alone.

--recipe seed (default) augments with flips only, keeps each epoch's last partial batch,
leaves the cls and mask tokens without weight decay and learns its position embeddings;
--recipe paper is the MAE appendix's Table 8: random resized crops (scale 0.2-1) + flip,
drop_last, weight decay on every trainable tensor of more than one dimension, and fixed 2-D
sin-cos position embeddings (not trained), as the official code. Both: AdamW (0.9, 0.95),
base lr 1.5e-4, weight decay 0.05, batch 4096, 40 warmup epochs. The run prints the resolved
recipe and saves it in args.json; flags given explicitly override (see docs/recipes.md).
"""
import os
from dataclasses import asdict

import torch

from mae_cifar import fileio
from mae_cifar.checkpoint import CHECKPOINT_FORMAT, save_checkpoint
from mae_cifar.cli import UsageError, run_cli
from mae_cifar.data.datasets import SPLIT_SEED, image_record, image_shape
from mae_cifar.data.loader import DeviceLoader
from mae_cifar.evaluation import knn
from mae_cifar.evaluation.reconstruction import reconstruction_grid, save_grid
from mae_cifar.training import engine, flags, presets, recipes, run_folder
from mae_cifar.training.objectives import pretrain_step
from model import MAE_ViT, MAEConfig
from utils import seed_everything

STAGE = "mae-pretrain"
CSV_FIELDS = ["epoch", "train_loss", "lr", "eval_loss", "knn_acc", "epoch_seconds",
              "images_per_s"]
DIVERGED_FACTOR = 5  # an eval loss this many times its best so far is reported


def get_args_parser():
    return flags.stage_parser(flags.add_pretrain_args, __doc__)


def model_config(args):
    """The MAE configuration the flags ask for; UsageError when it is invalid."""
    in_chans, image_size = image_shape(args.dataset, args.image_size)
    try:
        return MAEConfig(image_size=image_size, patch_size=args.patch_size, in_chans=in_chans,
                         emb_dim=args.emb_dim, encoder_layer=args.encoder_layer,
                         encoder_head=args.encoder_head, decoder_dim=args.decoder_dim,
                         decoder_layer=args.decoder_layer, decoder_head=args.decoder_head,
                         mask_ratio=args.mask_ratio, norm_pix_loss=args.norm_pix_loss,
                         pos_embed=args.pos_embed)
    except ValueError as e:
        raise flags.model_error(e) from None


def eval_split(data):
    """(split, name): the held-out images pretraining evaluates on (eval_loss, reconstruction
    grids, the kNN monitor's queries), never trained on.

    With --val_split N: 'val', the N training images train_classifier.py --val_split N holds
    out (its validation set; --max_eval_images keeps the first). They are the held-out set
    because eval_loss reads no labels, the kNN monitor reads theirs only as validation does
    (to watch, never to train), and a second held-out slice would take more images from
    pretraining to measure the same thing; the test split then plays no part in pretraining.
    Without --val_split: 'test', as before."""
    return (data.val, "val") if data.val is not None else (data.test, "test")


class Evaluator:
    """eval_loss on fixed held-out images (eval_split) with a fixed mask, and reconstruction
    grids of them."""

    def __init__(self, model, data, args, trainer):
        split, self.split_name = eval_split(data)
        n = min(args.eval_images, len(split))
        loader = DeviceLoader(split, n, data.mean, data.std, shuffle=False)
        self.images = loader.batch(torch.arange(n, device=split.images.device))[0]
        g = torch.Generator().manual_seed(SPLIT_SEED)
        num_patches = model.encoder.patch_embed.num_patches
        self.noise = torch.rand(n, num_patches, generator=g).to(self.images.device)  # (n, L)
        self.model, self.trainer, self.args = model, trainer, args
        self.mean, self.std = loader.mean, loader.std  # (1, C, 1, 1) on the device

    @torch.inference_mode()
    def loss(self):
        self.model.eval()
        bs = 2 * self.args.max_device_batch_size
        total = torch.zeros((), device=self.images.device)
        for x, noise in zip(self.images.split(bs), self.noise.split(bs)):
            with self.trainer.autocast():
                loss, _, _ = self.model(x, noise=noise)
            total += loss.float() * x.shape[0]
        return total.item() / self.images.shape[0]

    def grid(self):
        """(C, H', W') image: rows of masked input | reconstruction | original."""
        n = min(self.args.save_images_n, self.images.shape[0])
        return reconstruction_grid(self.model, self.images[:n], self.noise[:n], self.mean,
                                   self.std, self.args.pad, self.args.pad_value)


def validate(args):
    """Resolve the recipe and the architecture preset, then check this stage's flags (no
    disk) -> the rows of the recipe and of the architecture."""
    flags.resolve_data(args)
    recipe = recipes.resolve(args, "pretrain")
    arch = presets.resolve(args, (*presets.ENCODER_KEYS, *presets.DECODER_KEYS))
    flags.validate_common(args)
    if args.unlabelled and args.dataset != "folder":
        raise UsageError(f"--unlabelled reads the images of --dataset folder; {args.dataset} "
                         "is read with its labels (pretraining does not use them)")
    if not 0 <= args.pad_value <= 1:
        raise UsageError(f"--pad_value must be in [0, 1], got {args.pad_value}")
    run_folder.check_file_names({"--model_fn": args.model_fn, "--csv_fn": args.csv_fn,
                                "--save_images_dir": args.save_images_dir})
    return recipe, arch


def main(args):
    recipe, arch = validate(args)
    cfg = model_config(args)
    dist, run, status = engine.start_stage(args, STAGE, get_args_parser())
    if status == "finished":
        return
    if dist.is_main:
        print(recipes.describe("pretrain", args.recipe, recipe))
        print(presets.describe(args.model, arch))
    data = engine.load_stage_data(args, dist, run, args.val_split,
                                  "ignored" if args.unlabelled else "optional")
    check_unlabelled(args, data)
    seed_everything(args.seed + dist.rank)  # ranks draw their own masks
    engine.configure_backends(dist.device)
    model = MAE_ViT.from_config(cfg).to(dist.device)
    loader = DeviceLoader(data.train, args.batch_size, data.mean, data.std, args.augment,
                          seed=args.seed, rank=dist.rank, world=dist.world,
                          **recipes.loader_kwargs(args))
    run.open(fresh=status == "new")

    def stage():
        recipe = recipes.optimization(args)  # AdamW: the only --optimizer pretraining offers
        trainer = engine.Trainer(args, dist, model, loader, pretrain_step, run,
                                 engine.Checkpointed("mae", asdict(cfg)), recipe)
        train(args, dist, model, data, trainer, run)

    engine.run_stage(stage, run)


def check_unlabelled(args, data):
    """Unlabelled images (data.classes empty) pretrain without the kNN monitor, evaluating on
    held-out images: UsageError naming every flag they need, before the run folder is
    written."""
    if data.classes:
        return
    needed = ["--knn_freq 0 (the kNN monitor needs labels)"] if args.knn_freq else []
    if data.val is None and not len(data.test):
        needed.append("--val_split N (held-out images for eval_loss and the grids: there "
                      "are no test images)")
    if needed:
        raise UsageError(f"{data.source} holds unlabelled images; pass " + " and ".join(needed))


def train(args, dist, model, data, trainer, run):
    trainer.resume()
    if dist.is_main:
        print(trainer.describe())
        print(f"model: {sum(p.numel() for p in model.parameters()):,} parameters; encoder sees "
              f"{model.num_kept(args.mask_ratio)} of {model.encoder.patch_embed.num_patches} "
              "patches")
    evaluator = Evaluator(model, data, args, trainer)
    monitor = knn.KNNMonitor(model, data, args, trainer.autocast, dist.rank, dist.world,
                             queries=eval_split(data)[0])
    images = images_used(args, data, evaluator, monitor)
    if dist.is_main:
        print(f"images: pretraining on {images['pretrain']['count']} training images; "
              f"evaluating on {images['eval']['count']} {evaluator.split_name} images")
    log = trainer.metrics_log(args.csv_fn, CSV_FIELDS, f"{args.exp_name}/{STAGE}")

    def on_epoch_end(epoch, stats):
        eval_loss = evaluator.loss()
        knn_acc = monitor.accuracy() if monitor.due(epoch) else None  # all ranks gather
        row = {"epoch": epoch, "train_loss": stats["loss"],
               "lr": trainer.optimizer.param_groups[0]["lr"], "eval_loss": eval_loss,
               "knn_acc": knn_acc, "epoch_seconds": stats["seconds"],
               "images_per_s": stats["images_per_s"]}
        if not dist.is_main:
            return
        warning = divergence_warning(epoch, eval_loss, log.csv.rows)
        log.log(row)
        print(engine.epoch_line(epoch, args.total_epoch, row))
        if warning:
            print(warning)
        if args.visualize_freq and ((epoch + 1) % args.visualize_freq == 0
                                    or epoch + 1 == args.total_epoch):
            grid = evaluator.grid()
            save_grid(grid, run.file(os.path.join(args.save_images_dir, f"epoch_{epoch:04d}",
                                                  "reconstruction.png")))
            log.image("reconstruction", grid, epoch)

    trainer.fit(on_epoch_end)
    if dist.is_main:
        log.close()
        finish(args, model, trainer, run, log.csv.rows, data, images)


def divergence_warning(epoch, eval_loss, rows):
    """One line when eval_loss is DIVERGED_FACTOR times the best of the earlier epochs' rows
    (metrics.csv's, resumed ones included), else None."""
    earlier = [(float(r["eval_loss"]), int(r["epoch"])) for r in rows if r["eval_loss"]]
    if not earlier:
        return None
    best, at = min(earlier)
    if not eval_loss > DIVERGED_FACTOR * best:
        return None
    return (f"warning: eval_loss {eval_loss:.4g} at epoch {epoch} is {eval_loss / best:.1f}x "
            f"its best ({best:.4g} at epoch {at}): the run may be diverging; a lower "
            "--base_learning_rate or a longer warmup may help")


def images_used(args, data, evaluator, monitor):
    """summary.json's record of the images pretraining trained and evaluated on: each set's
    source split, count and sha256 of its sorted positions (data.image_record)."""
    split, name = eval_split(data)
    source = "train" if name == "val" else "test"  # validation images come from train
    record = {"split_seed": SPLIT_SEED, "val_split": args.val_split, "eval_split": name,
              "pretrain": image_record(data.train, "train"),
              "eval": image_record(split, source, evaluator.images.shape[0])}
    if data.val is not None:
        record["val"] = image_record(data.val, "train")
    if args.knn_freq:
        record["knn_memory"] = image_record(data.train, "train", monitor.n_train)
        record["knn_queries"] = image_record(split, source, monitor.n_test)
    return record


def finish(args, model, trainer, run, rows, data, images):
    """Write the final model and summary.json (the mark of a finished run). The model file
    carries the normalisation its encoder expects (export.py passes it on)."""
    path = run.file(args.model_fn)
    sha256 = save_checkpoint({"format": CHECKPOINT_FORMAT, "kind": "mae",
                              "config": trainer.config, "model": model.state_dict(),
                              "epoch": args.total_epoch, "norm_mean": data.mean.cpu(),
                              "norm_std": data.std.cpu(), "args": vars(args)}, path)
    wall = sum(float(r["epoch_seconds"]) for r in rows)
    fileio.write_json(run.file(run_folder.SUMMARY_FN), {
        "finished": True, "epochs": args.total_epoch,
        "final_train_loss": float(rows[-1]["train_loss"]),
        "final_eval_loss": float(rows[-1]["eval_loss"]),
        "knn_acc": knn.last_value(rows, "knn_acc"), "wall_seconds": wall,
        "model_sha256": sha256, "images": images, **run.summary_record()})
    print(f"finished: final train loss {rows[-1]['train_loss']}, eval loss "
          f"{rows[-1]['eval_loss']} (fixed {images['eval_split']} images and mask); model "
          f"saved to {path}")


if __name__ == "__main__":
    run_cli(main, get_args_parser())
