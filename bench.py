"""Throughput of the project's training path against a seed-style pipeline, in the same run.

    python bench.py --preset tiny --device cpu               # a couple of minutes on a CPU
    python bench.py --compile --out bench.json               # ViT-T/2 MAE, batch 4096, on a GPU
    bash scripts/gpu_check.sh                                # the prepared GPU check

Each phase times the project's code ("fast") and a seed-style reference ("seed") on the same
images and configuration, interleaving their steps so that background load hits both alike;
every figure is the median of the timed steps after warm-up, and each speed-up is fast / seed.

  data      data.DeviceLoader batches (flip + normalise on the device) vs a torchvision
            DataLoader over a Dataset of PIL images with per-sample RandomHorizontalFlip,
            ToTensor and Normalize, then copied to the device.
  pretrain  one optimizer step of MAE pretraining (engine.Trainer's step: autocast, fused
            AdamW on CUDA, torch.compile with --compile) vs the seed's loop: fp32, eager,
            masks from per-sample numpy permutations, loss.item() after every micro-batch.
  finetune  the same for a ViT classifier trained end to end (no augmentation).
  probe     a linear probe of a frozen encoder for --probe_epochs epochs of --epoch_images
            images: features cached once (features.extract_features) + head-only
            epochs, vs re-running the frozen encoder on every image of every epoch. Both are
            extrapolated from per-step medians (one epoch = epoch_images / images per second).

Both paths take optimizer steps of --batch_size images, accumulating gradients over
micro-batches of at most --max_device_batch_size (fast) and --seed_max_device_batch_size (seed)
images, as the stages and the seed do. With --compile --with_eager the pretrain and finetune
phases also time the fast path uncompiled ("eager") in the same interleaved run, and report
compiled / eager. See BENCHMARKS.md for measured tables.
"""
import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
import torchvision
import torchvision.transforms as T
from PIL import Image

from mae_cifar import cli, distributed, fileio
from mae_cifar.cli import HelpFormatter, UsageError, run_cli
from mae_cifar.data.datasets import image_shape, load_dataset
from mae_cifar.data.loader import DeviceLoader
from mae_cifar.evaluation.features import extract_features
from mae_cifar.reporting.run_table import read_json
from mae_cifar.training import classifier, engine, flags, objectives, recipes, run_folder
from model import MLP_RATIO, MAE_ViT, MAEConfig, ViT_Classifier
from utils import seed_everything

PRESETS = {  # the seed's ViT-T/2 MAE (decoder 4 x 192), and a tiny model for CPU checks
    "vit-t": dict(patch_size=2, emb_dim=192, encoder_layer=12, encoder_head=3, decoder_dim=192,
                  decoder_layer=4, batch_size=4096, max_device_batch_size=1024, steps=10,
                  warmup=3, seed_max_device_batch_size=512),
    "tiny": dict(patch_size=2, emb_dim=32, encoder_layer=2, encoder_head=2, decoder_dim=32,
                 decoder_layer=1, batch_size=256, max_device_batch_size=256, steps=10,
                 warmup=2, seed_max_device_batch_size=256),
}
PHASES = ("data", "pretrain", "finetune", "probe")
# Dense bf16 tensor-core peak per GPU in TFLOP/s (NVIDIA datasheets); first substring match.
PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0),
                    ("H200", 989.0), ("A100", 312.0))
SEED_WORKERS = 4  # the seed's DataLoader num_workers
CIFAR10_TRAIN_IMAGES = 50_000
PROBE_EPOCHS = 90


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=HelpFormatter)
    g = p.add_argument_group("configuration (unset flags take the preset's value)")
    g.add_argument("--preset", default="vit-t", choices=tuple(PRESETS),
                   help="vit-t: the seed's ViT-T/2 MAE with a 4 x 192 decoder at batch 4096; "
                        "tiny: width 32, depth 2, batch 256, for a quick CPU run")
    g.add_argument("--patch_size", type=cli.positive_int, help="patch side")
    g.add_argument("--emb_dim", type=cli.positive_int, help="encoder width")
    g.add_argument("--encoder_layer", type=cli.positive_int, help="encoder blocks")
    g.add_argument("--encoder_head", type=cli.positive_int, help="encoder heads")
    g.add_argument("--decoder_dim", type=cli.positive_int, help="decoder width")
    g.add_argument("--decoder_layer", type=cli.positive_int, help="decoder blocks")
    g.add_argument("--mask_ratio", type=cli.finite_float, default=0.75, help="MAE mask ratio")
    g.add_argument("--batch_size", type=cli.positive_int,
                   help="images per optimizer step (and per feature-extraction call)")
    g.add_argument("--max_device_batch_size", type=cli.positive_int,
                   help="largest micro-batch of the fast path; batch_size must be a multiple "
                        "of it (or smaller)")
    g.add_argument("--seed_max_device_batch_size", type=cli.positive_int,
                   help="largest micro-batch of the seed path (the seed's pretraining: 512)")
    g.add_argument("--steps", type=cli.positive_int, help="timed steps per path and phase")
    g.add_argument("--warmup", type=cli.non_negative_int,
                   help="untimed steps first (compilation, allocator, clocks)")

    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="fake", choices=("cifar10", "fashion_mnist", "fake"),
                   help="images to time on (fake: generated 32x32 RGB, like CIFAR-10)")
    g.add_argument("--data_dir", default="./data", help="where the dataset lives")
    g.add_argument("--workers", type=cli.non_negative_int, default=SEED_WORKERS,
                   help="DataLoader worker processes of the seed-style pipeline (the seed's 4)")

    g = p.add_argument_group("runtime")
    g.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")
    g.add_argument("--amp", default="auto", choices=("auto", "bf16", "fp16", "off"),
                   help="autocast of the fast path (auto: bf16 on CUDA, off on CPU); the seed "
                        "path is always fp32")
    g.add_argument("--compile", action="store_true", help="torch.compile the fast path's model")
    g.add_argument("--with_eager", action="store_true",
                   help="with --compile: also time the fast path uncompiled ('eager'), "
                        "interleaved in the same run (pretrain and finetune phases)")
    g.add_argument("--phases", nargs="+", default=list(PHASES), choices=PHASES,
                   help="what to measure")
    g.add_argument("--threads", type=cli.positive_int, default=None,
                   help="torch CPU threads for both paths (default: torch's, one per core); "
                        "1 on a shared machine, where threads wait on descheduled peers")
    g.add_argument("--seed", type=cli.seed_int, default=0, help="seed of every RNG")

    g = p.add_argument_group("linear probe extrapolation")
    g.add_argument("--epoch_images", type=cli.positive_int, default=CIFAR10_TRAIN_IMAGES,
                   help="training images per probe epoch (CIFAR-10's 50,000)")
    g.add_argument("--probe_epochs", type=cli.positive_int, default=PROBE_EPOCHS,
                   help="probe epochs (the MAE paper's 90)")
    p.add_argument("--out", default="outputs/bench.json", help="JSON file of every figure")
    return p


OUTPUT_KEYS = ("args", "environment", "results")  # what makes a JSON file bench.py's output


def check_out(path):
    """UsageError, before anything runs, unless --out is a file path outside run folders,
    not named as a run's own files, and new or an earlier bench.py output."""
    if os.path.isdir(path):
        raise UsageError(f"--out {path} is a folder; give a file path")
    owner = run_folder.run_folder_of(os.path.dirname(os.path.abspath(path)))
    if owner is not None:
        raise UsageError(f"--out {path} is in {owner}, another run's folder; choose a path "
                         "outside run folders")
    name = os.path.basename(path)
    if name in run_folder.RESERVED_NAMES:
        raise UsageError(f"--out {path}: {name} is the name of a run's own file; choose "
                         "another name")
    if os.path.lexists(path) and not earlier_output(path):
        raise UsageError(f"--out {path} exists and is not an earlier bench.py output; choose "
                         "another path, or move that file")


def earlier_output(path):
    """Whether path is a JSON file of OUTPUT_KEYS (a FIFO is never opened)."""
    out = read_json(Path(path))
    return out is not None and all(k in out for k in OUTPUT_KEYS)


def resolve_preset(args):
    """Fill unset flags from the preset; check the batch splits into micro-batches and
    --out (check_out)."""
    check_out(args.out)
    if args.with_eager and not args.compile:
        raise UsageError("--with_eager compares with the compiled fast path: add --compile")
    for k, v in PRESETS[args.preset].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    for flag in ("max_device_batch_size", "seed_max_device_batch_size"):
        setattr(args, flag, min(getattr(args, flag), args.batch_size))
        if args.batch_size % getattr(args, flag):
            raise UsageError(f"--batch_size {args.batch_size} must be a multiple of "
                             f"--{flag} {getattr(args, flag)}")


# --------------------------------------------------------------------------- FLOPs
def blocks_flops(tokens, dim, depth):
    """Forward FLOPs of `depth` pre-norm ViT blocks on `tokens` tokens of width `dim`.

    Per block the linears are qkv (3 D^2), projection (D^2) and MLP (2 r D^2, r = MLP_RATIO)
    multiply-adds per token; attention adds QK^T and AV, n^2 D each. FLOPs = 2 x multiply-adds:
        (8 + 4 r) n D^2 + 4 n^2 D   (= 24 n D^2 + 4 n^2 D for r = 4)
    """
    return depth * ((8 + 4 * MLP_RATIO) * tokens * dim ** 2 + 4 * tokens ** 2 * dim)


def encoder_flops(cfg, tokens):
    """Patch embedding of all L patches (2 L p^2 C D) + encoder blocks on `tokens` tokens."""
    patches = (cfg.image_size // cfg.patch_size) ** 2
    embed = 2 * patches * cfg.patch_size ** 2 * cfg.in_chans * cfg.emb_dim
    return embed + blocks_flops(tokens, cfg.emb_dim, cfg.encoder_layer)


def mae_train_flops(cfg):
    """Training FLOPs per image of MAE pretraining: 3 x forward (backward ~ 2 x forward).

    forward = encoder_flops on the 1 + K visible tokens (cls + K = L (1 - mask_ratio) patches)
            + decoder embedding 2 (1 + K) D Dd
            + decoder blocks on all 1 + L tokens (width Dd)
            + pixel prediction 2 (1 + L) Dd p^2 C.
    Norms, GELU, softmax, the loss and the optimizer (elementwise, ~1 %) are left out.
    """
    patches = (cfg.image_size // cfg.patch_size) ** 2
    visible = 1 + int(patches * (1 - cfg.mask_ratio))
    decoder = (2 * visible * cfg.emb_dim * cfg.decoder_dim
               + blocks_flops(1 + patches, cfg.decoder_dim, cfg.decoder_layer)
               + 2 * (1 + patches) * cfg.decoder_dim * cfg.patch_size ** 2 * cfg.in_chans)
    return 3 * (encoder_flops(cfg, visible) + decoder)


def head_flops(cfg, num_classes):
    """The linear head's forward FLOPs per image: 2 D classes."""
    return 2 * cfg.emb_dim * num_classes


def classifier_flops(cfg, num_classes, train_trunk):
    """Per image: encoder forward on all 1 + L tokens + the head; training multiplies by 3
    what gets gradients (everything, or only the head of a frozen trunk)."""
    trunk = encoder_flops(cfg, 1 + (cfg.image_size // cfg.patch_size) ** 2)
    head = head_flops(cfg, num_classes)
    return 3 * (trunk + head) if train_trunk else trunk + 3 * head


def peak_tflops(device):
    """The card's dense bf16 peak in TFLOP/s, or None (CPU, or a card not in the table)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in name), None)


# --------------------------------------------------------------------------- seed-style path
def seed_random_masking(x, keep):
    """The seed's masking: one np.random.permutation per sample on the host, then a copy.

    x (B, L, D) -> x_kept (B, keep, D), mask (B, L) with 1 = masked, ids_restore (B, L):
    the contract of MAE_ViT.random_masking.
    """
    b, n, d = x.shape
    forward = np.stack([np.random.permutation(n) for _ in range(b)])  # (B, L) shuffled order
    backward = np.argsort(forward, axis=1)  # (B, L) where each patch went
    ids_shuffle = torch.as_tensor(forward, device=x.device)
    ids_restore = torch.as_tensor(backward, device=x.device)
    x_kept = torch.gather(x, 1, ids_shuffle[:, :keep, None].expand(-1, -1, d))  # (B, keep, D)
    mask = (ids_restore >= keep).to(x.dtype)  # (B, L)
    return x_kept, mask, ids_restore


class SeedStyleMAE(MAE_ViT):
    """The project's MAE with the seed's host-side numpy masking."""

    def random_masking(self, x, mask_ratio, noise=None):
        return seed_random_masking(x, self.num_kept(mask_ratio))


class SeedStyleDataset(torch.utils.data.Dataset):
    """torchvision-style: a PIL image per __getitem__ (like datasets.CIFAR10), then per-sample
    transforms: [RandomHorizontalFlip,] ToTensor, Normalize."""

    def __init__(self, split, mean, std, flip):
        self.images = split.images.cpu().permute(0, 2, 3, 1).numpy()  # (N, H, W, C) uint8
        self.labels = split.labels.cpu().tolist()
        steps = [T.RandomHorizontalFlip()] if flip else []
        self.transform = T.Compose(steps + [T.ToTensor(), T.Normalize(mean.tolist(),
                                                                       std.tolist())])

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        img = self.images[i]
        img = Image.fromarray(img[:, :, 0] if img.shape[2] == 1 else img)  # grey -> mode L
        return self.transform(img), self.labels[i]


def forever(loader):
    """Batches of a loader, epoch after epoch."""
    while True:
        yield from loader


@contextmanager
def seed_precision():
    """The seed's numerics: fp32 matmuls without TF32 (PyTorch's default)."""
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def mae_loss(model, x, y):
    return model(x)[0]


def ce_loss(model, x, y):
    return F.cross_entropy(model(x), y)


# --------------------------------------------------------------------------- the benchmark
class Bench:
    """Shared set-up of the phases: device, data, configs, timing and result records."""

    def __init__(self, args):
        self.args = args
        if args.threads:
            torch.set_num_threads(args.threads)
        self.dist = distributed.setup(args.device)
        self.device = self.dist.device
        seed_everything(args.seed)
        engine.configure_backends(self.device)
        self.data = load_dataset(args.dataset, args.data_dir, device=self.device)
        if args.batch_size > len(self.data.train):
            raise UsageError(f"--batch_size {args.batch_size} exceeds the "
                             f"{len(self.data.train)} training images of {args.dataset}")
        in_chans, image_size = image_shape(args.dataset)
        try:
            self.mae_cfg = MAEConfig(image_size, args.patch_size, in_chans, args.emb_dim,
                                     args.encoder_layer, args.encoder_head, args.decoder_dim,
                                     args.decoder_layer, mask_ratio=args.mask_ratio)
        except ValueError as e:
            raise flags.model_error(e) from None
        self.micro_batches = args.batch_size // args.max_device_batch_size
        self.seed_micro_batches = args.batch_size // args.seed_max_device_batch_size
        self.peak = peak_tflops(self.device)

    # ---- data
    def fast_batches(self, split, augment):
        """Endless full batches of the project's DeviceLoader, epoch after epoch."""
        loader = DeviceLoader(split, self.args.batch_size, self.data.mean, self.data.std,
                              augment, seed=self.args.seed)
        epoch = 0
        while True:
            for x, y in loader.epoch(epoch):
                if x.shape[0] == loader.batch_size:
                    yield x, y
            epoch += 1

    def seed_batches(self, flip):
        """Endless micro-batches of the seed-style DataLoader, already on the device.

        An epoch draws max(N, epoch_images) samples (whole permutations of the N images), so
        workers refill their queue at epoch starts as rarely as on CIFAR-10's 50,000 images.
        """
        ds = SeedStyleDataset(self.data.train, self.data.mean, self.data.std, flip)
        sampler = torch.utils.data.RandomSampler(
            ds, num_samples=max(len(ds), self.args.epoch_images))
        loader = torch.utils.data.DataLoader(
            ds, self.args.seed_max_device_batch_size, sampler=sampler, drop_last=True,
            num_workers=self.args.workers, persistent_workers=self.args.workers > 0)
        for x, y in forever(loader):
            yield x.to(self.device), y.to(self.device)

    # ---- steps
    def stage_args(self, parser, **extra):
        """A stage's own defaults with this benchmark's batch, precision and compile flags."""
        ns = parser.parse_args([])
        vars(ns).update(batch_size=self.args.batch_size, amp=self.args.amp,
                        max_device_batch_size=self.args.max_device_batch_size,
                        compile=self.args.compile, dataset=self.args.dataset, **extra)
        return ns

    def trainers(self, ns, make_module, split, step_fn, **kwargs):
        """{'fast': the stage's Trainer} and, with --compile --with_eager, {'eager': the
        same uncompiled}, on models of equal weights from make_module()."""
        out = {"fast": self.trainer(ns, make_module(), split, step_fn, **kwargs)}
        if self.args.compile and self.args.with_eager:
            eager = argparse.Namespace(**{**vars(ns), "compile": False})
            module = make_module()
            module.load_state_dict(out["fast"].module.state_dict())
            out["eager"] = self.trainer(eager, module, split, step_fn, **kwargs)
        return out

    def trainer(self, ns, module, split, step_fn, state_module=None):
        """engine.Trainer, the stages' training step, over the split's DeviceLoader."""
        loader = DeviceLoader(split, ns.batch_size, self.data.mean, self.data.std, ns.augment)
        saved = engine.Checkpointed("bench", {}, state_module)
        return engine.Trainer(ns, self.dist, module, loader, step_fn, None, saved,
                              recipes.optimization(ns))

    def fast_step(self, trainer, batches):
        """One call = one optimizer step of engine.Trainer on the next batch."""
        trainer.module.train()
        sums = {k: torch.zeros((), device=self.device) for k in ("loss", "n")}

        def step():
            x, y = next(batches)
            trainer._optimizer_step(x, y, sums)
        return step

    def seed_step(self, model, batches, loss_fn, ns, **adamw):
        """One call = the seed's optimizer step: micro-batches from its DataLoader, fp32,
        eager, plain AdamW (the stage's lr and weight decay), loss.item() after every
        micro-batch."""
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        lr = ns.base_learning_rate * ns.batch_size / engine.LR_REFERENCE_BATCH
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=ns.weight_decay, **adamw)

        def step():
            with seed_precision():
                for _ in range(self.seed_micro_batches):
                    x, y = next(batches)
                    loss = loss_fn(model, x, y)
                    (loss / self.seed_micro_batches).backward()
                    loss.item()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        return step

    # ---- timing
    def time_call(self, fn):
        """Seconds of one call, started on an idle device (CUDA events on a GPU)."""
        if self.device.type != "cuda":
            t0 = time.perf_counter()
            fn()
            return time.perf_counter() - t0
        torch.cuda.synchronize(self.device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3

    def measure(self, fns):
        """Seconds of every timed call of each fn; warm-up first, then the fns take turns."""
        for _ in range(self.args.warmup):
            for fn in fns.values():
                fn()
        times = {name: [] for name in fns}
        for _ in range(self.args.steps):
            for name, fn in fns.items():
                times[name].append(self.time_call(fn))
        return times

    def record(self, times, images, flops=None):
        """Median and spread of the step times, images/s, TFLOP/s and fraction of peak."""
        med = statistics.median(times)
        out = {"images_per_step": images, "median_s": med, "min_s": min(times),
               "max_s": max(times), "images_per_s": images / med}
        if flops:
            out["gflop_per_image"] = flops / 1e9
            out["tflop_per_s"] = flops * images / med / 1e12
            out["peak_fraction"] = out["tflop_per_s"] / self.peak if self.peak else None
        return out


def compare(fast, seed):
    return {"fast": fast, "seed": seed, "speedup": fast["images_per_s"] / seed["images_per_s"]}


# --------------------------------------------------------------------------- phases
def bench_data(b):
    """DeviceLoader batches with flips vs the seed-style DataLoader, per batch_size images."""
    fast = b.fast_batches(b.data.train, "flip")
    seed = b.seed_batches(flip=True)

    def seed_fetch():
        for _ in range(b.seed_micro_batches):
            next(seed)
    times = b.measure({"fast": lambda: next(fast), "seed": seed_fetch})
    n = b.args.batch_size
    return compare(b.record(times["fast"], n), b.record(times["seed"], n))


def train_phase(b, ns, trainers, reference, seed_loss, flops, **adamw):
    """Optimizer steps of the stage's Trainer(s) vs the seed's loop on the same batch size;
    an 'eager' trainer adds the compile speed-up fast / eager."""
    fns = {name: b.fast_step(t, b.fast_batches(b.data.train, ns.augment))
           for name, t in trainers.items()}
    fns["seed"] = b.seed_step(reference, b.seed_batches(flip=ns.augment != "none"), seed_loss,
                              ns, **adamw)
    times = b.measure(fns)
    n = b.args.batch_size
    out = compare(b.record(times["fast"], n, flops), b.record(times["seed"], n, flops))
    if "eager" in times:
        out["eager"] = b.record(times["eager"], n, flops)
        out["compile_speedup"] = out["fast"]["images_per_s"] / out["eager"]["images_per_s"]
    return out


def bench_pretrain(b):
    ns = b.stage_args(flags.stage_parser(flags.add_pretrain_args))
    recipes.resolve(ns, "pretrain")
    betas = recipes.ADAMW_BETAS_PRETRAIN  # the seed-style reference loop's
    trainers = b.trainers(ns, lambda: MAE_ViT.from_config(b.mae_cfg).to(b.device),
                          b.data.train, objectives.pretrain_step)
    reference = SeedStyleMAE.from_config(b.mae_cfg).to(b.device)
    reference.load_state_dict(trainers["fast"].module.state_dict())
    return train_phase(b, ns, trainers, reference, mae_loss, mae_train_flops(b.mae_cfg),
                       betas=betas)


def classifier_setup(b, linear_probe):
    """The classifier stage's arguments (recipe resolved) and a config of the MAE trunk."""
    ns = b.stage_args(flags.stage_parser(flags.add_classifier_args), linear_probe=linear_probe)
    classifier.resolve_recipe(ns)
    cfg = classifier.classifier_config(ns, b.mae_cfg, b.data.num_classes)
    return ns, cfg


def classifier_pair(cfg, device, linear_probe):
    """Two classifiers with the same weights (fast and seed paths); frozen trunks to probe."""
    pair = [ViT_Classifier(cfg) for _ in range(2)]
    pair[1].load_state_dict(pair[0].state_dict())
    for model in pair:
        if linear_probe:
            model.freeze_trunk()
        model.to(device)
    return pair


def bench_finetune(b):
    ns, cfg = classifier_setup(b, linear_probe=False)
    objective = objectives.Objective(ns, b.data.num_classes)
    trainers = b.trainers(ns, lambda: ViT_Classifier(cfg).to(b.device), b.data.train,
                          objective)
    reference = ViT_Classifier(cfg).to(b.device)
    reference.load_state_dict(trainers["fast"].module.state_dict())
    return train_phase(b, ns, trainers, reference, ce_loss,
                       classifier_flops(cfg, b.data.num_classes, train_trunk=True))


def bench_probe(b):
    """Cached features (one encoder pass + cheap head epochs) vs the encoder every epoch."""
    ns, cfg = classifier_setup(b, linear_probe=True)
    model, reference = classifier_pair(cfg, b.device, linear_probe=True)
    n = b.args.batch_size
    images = b.data.train.head(n)
    autocast = engine.autocast_context(engine.amp_dtype(ns.amp, b.device), b.device)
    norm = (b.data.mean, b.data.std)
    features = {}

    def extract():
        features["split"] = extract_features(model, images, n, norm, autocast)
    times = b.measure({
        "extract": extract,
        "seed": b.seed_step(reference, b.seed_batches(flip=False), ce_loss, ns)})
    objective = objectives.Objective(ns, b.data.num_classes)
    trainer = b.trainer(ns, model.head, features["split"], objective, state_module=model)
    times.update(b.measure({"head": b.fast_step(trainer, b.fast_batches(features["split"],
                                                                         ns.augment))}))
    classes = b.data.num_classes
    rec = {
        "extract": b.record(times["extract"], n, classifier_flops(cfg, 0, train_trunk=False)),
        "head": b.record(times["head"], n, 3 * head_flops(cfg, classes)),
        "seed": b.record(times["seed"], n, classifier_flops(cfg, classes, train_trunk=False))}
    return probe_totals(rec, b.args.epoch_images, b.args.probe_epochs)


def probe_totals(rec, epoch_images, epochs):
    """Extrapolate the per-step medians to `epochs` epochs of `epoch_images` images."""
    per_image = {k: 1 / v["images_per_s"] for k, v in rec.items()}
    fast_epoch = epoch_images * per_image["head"]
    seed_epoch = epoch_images * per_image["seed"]
    fast_total = epoch_images * per_image["extract"] + epochs * fast_epoch
    seed_total = epochs * seed_epoch
    return {**rec, "epoch_images": epoch_images, "epochs": epochs,
            "extract_once_s": epoch_images * per_image["extract"], "fast_epoch_s": fast_epoch,
            "seed_epoch_s": seed_epoch, "fast_total_s": fast_total, "seed_total_s": seed_total,
            "speedup": seed_total / fast_total}


PHASE_FNS = {"data": bench_data, "pretrain": bench_pretrain, "finetune": bench_finetune,
             "probe": bench_probe}


# --------------------------------------------------------------------------- report
def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def environment(device):
    env = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
           "git_commit": engine.git_commit(), "python": platform.python_version(),
           "torch": torch.__version__, "timm": timm.__version__,
           "torchvision": torchvision.__version__, "cpu": cpu_model(),
           "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "device": str(device), "command": " ".join([os.path.basename(sys.executable)]
                                                       + sys.argv)}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def row(phase, path, r):
    pct = fmt(None if r.get("peak_fraction") is None else 100 * r["peak_fraction"], ".1f")
    return (f"{phase:<9} {path:<8} {r['images_per_s']:>11,.0f} {1e3 * r['median_s']:>10.2f} "
            f"{fmt(r.get('gflop_per_image'), '.3f'):>10} {fmt(r.get('tflop_per_s'), '.3f'):>8} "
            f"{pct:>6}")


def print_results(results, peak):
    print(f"{'phase':<9} {'path':<8} {'images/s':>11} {'ms/step':>10} {'GFLOP/img':>10} "
          f"{'TFLOP/s':>8} {'%peak':>6}")
    for phase, res in results.items():
        for path in ("fast", "eager", "extract", "head", "seed"):
            if path in res:
                print(row(phase, path, res[path]))
        if phase == "probe":
            print(f"{'':<9} {res['epochs']} epochs of {res['epoch_images']:,} images: cached "
                  f"{res['fast_total_s']:,.1f} s ({res['extract_once_s']:,.1f} s extraction + "
                  f"{res['fast_epoch_s']:,.2f} s/epoch) vs re-encoding {res['seed_total_s']:,.1f}"
                  f" s ({res['seed_epoch_s']:,.1f} s/epoch)")
        print(f"{'':<9} speed-up {phase}: x{res['speedup']:.2f}")
        if "compile_speedup" in res:
            print(f"{'':<9} compiled / eager {phase}: x{res['compile_speedup']:.2f}")
    if peak is None:
        print("%peak: unknown (CPU, or a GPU missing from PEAK_BF16_TFLOPS)")


def main(args):
    resolve_preset(args)
    b = Bench(args)
    env = environment(b.device)
    print(f"{env['command']}\n{env['date']}  torch {env['torch']}  timm {env['timm']}  "
          f"{env.get('gpu', env['cpu'])}  ({env['cpu_cores']} cores)")
    print(f"model {asdict(b.mae_cfg)}; batch {args.batch_size} in {b.micro_batches} (fast) / "
          f"{b.seed_micro_batches} (seed) micro-batch(es); amp {args.amp}; compile "
          f"{args.compile}; {args.warmup} warm-up + {args.steps} timed steps")
    results = {}
    for phase in args.phases:
        print(f"measuring {phase} ...", flush=True)
        results[phase] = PHASE_FNS[phase](b)
        if b.device.type == "cuda":
            torch.cuda.empty_cache()
    print_results(results, b.peak)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fileio.write_json(args.out, {"args": vars(args), "model": asdict(b.mae_cfg),
                                 "environment": env, "peak_bf16_tflops": b.peak,
                                 "results": results})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    run_cli(main, get_args_parser())
