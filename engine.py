"""The training machinery both stages share: common flags, the run folder, the training loop.

The loop keeps the GPU busy: losses are summed on the device and read once per log interval;
the learning rate follows a per-step warmup + cosine schedule; checkpoints hold everything a
resume needs (model, optimizer, scaler, RNG states, position in the epoch).
"""
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import nullcontext

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

import distributed
from data import AUGMENTS, DATASETS, load_dataset
from fileio import atomic_write_text, remove_temp_files
from utils import (
    CHECKPOINT_FORMAT,
    CSVLogger,
    UsageError,
    cosine_lr,
    get_rng_state,
    load_checkpoint,
    param_groups,
    save_checkpoint,
    set_lr,
    set_rng_state,
)

ADAMW_BETAS_PRETRAIN = (0.9, 0.95)  # MAE pretraining betas
LR_REFERENCE_BATCH = 256  # lr = base_lr * batch_size / 256 (linear scaling rule)
LOG_INTERVAL = 20  # optimizer steps between host reads of the loss (NaN check, progress bar)
CHECKPOINT_FN = "checkpoint.pt"
ARGS_FN = "args.json"
SUMMARY_FN = "summary.json"
LOCK_FN = ".lock"
# Flags that do not change the numbers a run produces; they may differ on resume (a run
# folder may also be moved or renamed).
NON_RESULT_ARGS = {"overwrite", "compile", "max_device_batch_size", "device", "save_freq",
                   "output_root", "data_dir", "exp_name",
                   # the kNN monitor (knn.py) only observes the encoder; training is unchanged
                   "knn_freq", "knn_k", "knn_t", "knn_feature", "knn_train_images",
                   "knn_eval_images"}


# --------------------------------------------------------------------------- flags
def positive_int(s):
    v = int(s)
    if v <= 0:
        raise ValueError
    return v


positive_int.__name__ = "positive integer"


def non_negative_int(s):
    v = int(s)
    if v < 0:
        raise ValueError
    return v


non_negative_int.__name__ = "non-negative integer"


def positive_float(s):
    v = float(s)
    if not v > 0 or not math.isfinite(v):
        raise ValueError
    return v


positive_float.__name__ = "positive number"


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
    """Flags of both stages: data, optimisation, runtime and output."""
    g = add_dataset_args(parser)
    g.add_argument("--max_train_images", type=positive_int, default=None,
                   help="use only the first N training images (quick runs)")
    g.add_argument("--augment", default=augment, choices=AUGMENTS,
                   help="batched on-device augmentation: horizontal flip, +random crop with "
                        "4px padding, or +random resized crop (scale 0.2-1)")

    g = parser.add_argument_group("optimisation")
    g.add_argument("--batch_size", type=positive_int, default=batch_size,
                   help="effective batch per optimizer step, over all GPUs and accumulation "
                        "steps; lr and results do not change with the number of GPUs")
    g.add_argument("--max_device_batch_size", type=positive_int, default=max_device_batch_size,
                   help="largest micro-batch one device computes at once; larger per-device "
                        "batches are split and their gradients accumulated")
    g.add_argument("--base_learning_rate", type=positive_float, default=base_lr,
                   help="lr = base_learning_rate * batch_size / 256")
    g.add_argument("--weight_decay", type=float, default=0.05,
                   help="AdamW weight decay (not applied to biases, norms, tokens, pos-embeds)")
    g.add_argument("--total_epoch", type=positive_int, default=total_epoch,
                   help="training epochs")
    g.add_argument("--warmup_epoch", type=non_negative_int, default=warmup_epoch,
                   help="epochs of linear lr warmup, then cosine decay (updated every step)")

    g = parser.add_argument_group("runtime")
    g.add_argument("--seed", type=int, default=42, help="seed of every RNG")
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
    """Checks that need no disk: raise UsageError naming the flag."""
    if args.warmup_epoch > args.total_epoch:
        raise UsageError(f"--warmup_epoch {args.warmup_epoch} exceeds --total_epoch "
                         f"{args.total_epoch}")
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


# --------------------------------------------------------------------------- run folder
class RunFolder:
    """One stage's output folder: finished / resumable / new, argument checks and a pid lock."""

    def __init__(self, path, args, is_main=True):
        self.path, self.args, self.is_main = path, vars(args).copy(), is_main
        self.ckpt_path = os.path.join(path, CHECKPOINT_FN)
        self.locked = False

    def file(self, name):
        return os.path.join(self.path, name)

    def status(self):
        """'new', 'resume' or 'finished'; refuses changed flags. Reads only."""
        saved_path = self.file(ARGS_FN)
        if self.args.get("overwrite") or not os.path.exists(saved_path):
            return "new"
        with open(saved_path) as f:
            saved = json.load(f)
        diff = [f"--{k}: {saved.get(k)!r} (saved) vs {self.args.get(k)!r} (now)"
                for k in sorted(set(saved) | set(self.args))
                if k not in NON_RESULT_ARGS and saved.get(k) != self.args.get(k)]
        if diff:
            raise UsageError(f"{self.path} holds a run with other flags: " + "; ".join(diff)
                             + ". Use the same flags to resume, another --exp_name, or "
                               "--overwrite")
        if os.path.exists(self.file(SUMMARY_FN)):
            return "finished"
        return "resume" if os.path.exists(self.ckpt_path) else "new"

    def open(self, fresh):
        """Create the folder (emptied when fresh), take the lock, delete temporary files a
        killed run left, write args.json. Rank 0 writes; every rank calls this, after
        status(): the barriers keep rank 0 from emptying the folder while another rank reads
        it, and the others from going on before it is ready."""
        distributed.barrier()
        if self.is_main:
            self._create(fresh)
        distributed.barrier()

    def _create(self, fresh):
        try:
            if fresh and os.path.isdir(self.path):
                self._check_lock()
                shutil.rmtree(self.path)
            os.makedirs(self.path, exist_ok=True)
            self._take_lock()
            remove_temp_files(self.path)
            write_json(self.file(ARGS_FN), self.args)
        except OSError as e:
            raise UsageError(f"cannot write to {self.path}: {e.strerror or e}; choose a "
                             "writable --output_root") from None

    def _check_lock(self):
        lock = self.file(LOCK_FN)
        try:
            with open(lock) as f:
                pid = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            return
        if pid != os.getpid() and _pid_alive(pid):
            raise UsageError(f"another run (pid {pid}) is writing to {self.path}; wait for it "
                             f"to finish or stop it (then delete {lock} if it persists)")

    def _take_lock(self):
        """Create the lock exclusively (O_EXCL), so two runs starting at once cannot both
        hold it; a lock whose owner is gone is removed and taken."""
        lock = self.file(LOCK_FN)
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                self._check_lock()  # raises while a live process holds it
                os.remove(lock)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()}\n")
            self.locked = True
            return
        raise UsageError(f"could not take the lock {lock}: another run is starting there")

    def release(self):
        if self.locked and os.path.exists(self.file(LOCK_FN)):
            os.remove(self.file(LOCK_FN))
        self.locked = False


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def git_commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=5, cwd=os.path.dirname(__file__)).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def print_args(args):
    print(f"git commit: {git_commit() or 'unknown'}")
    for k, v in sorted(vars(args).items()):
        print(f"  {k}: {v}")


def start_stage(args, stage):
    """(dist, run folder, status) of a stage; says so when the run is already finished."""
    dist = distributed.setup(args.device)
    run = RunFolder(os.path.join(args.output_root, args.exp_name, stage), args, dist.is_main)
    status = run.status()
    if status == "finished" and dist.is_main:
        print(f"{run.path} is finished; nothing to do (--overwrite trains it again)")
    return dist, run, status


def load_stage_data(args, dist, val_split=0):
    """The stage's dataset on its device; rank 0 prints the arguments and what was loaded."""
    data = load_dataset(args.dataset, args.data_dir, args.image_size, args.max_train_images,
                        args.max_eval_images, val_split, device=dist.device)
    if dist.is_main:
        print_args(args)
        print(f"loaded {data.describe()}")
    return data


# --------------------------------------------------------------------------- runtime
def amp_dtype(amp, device):
    """The autocast dtype for --amp on this device, or None for fp32."""
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() \
            else None
    if amp == "fp16" and device.type != "cuda":
        raise UsageError("--amp fp16 needs a CUDA device; use --amp bf16 or off on the CPU")
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]


def autocast_context(dtype, device):
    """A factory of autocast contexts for dtype (None: fp32, a no-op context)."""
    if dtype is None:
        return nullcontext
    return lambda: torch.autocast(device.type, dtype=dtype)


def configure_backends(device):
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


class NonFiniteLoss(Exception):
    pass


class Interrupted(Exception):
    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


# --------------------------------------------------------------------------- trainer
class Trainer:
    """Optimises `module` on batches of `loader` with `step_fn(model, x, y) -> (loss, sums)`.

    sums is a dict of per-batch device tensors (e.g. correct predictions) that are summed
    over the epoch; the loss is averaged per image. `state_module` is what checkpoints hold
    (the whole classifier, say, while only its head trains).
    """

    def __init__(self, args, dist, module, loader, step_fn, run, kind, config,
                 betas=(0.9, 0.999), layer_decay=1.0, state_module=None, extra_state=None):
        self.args, self.dist, self.loader, self.step_fn, self.run = args, dist, loader, step_fn, run
        self.kind, self.config, self.extra_state = kind, config, extra_state or {}
        self.module = module
        self.state_module = state_module or module
        self.dtype = amp_dtype(args.amp, dist.device)
        self.autocast = autocast_context(self.dtype, dist.device)
        self.compiled = args.compile
        model = torch.compile(module) if args.compile else module
        if dist.world > 1:
            model = DistributedDataParallel(
                model, device_ids=[dist.local_rank] if dist.device.type == "cuda" else None)
        self.model = model
        self.lr = args.base_learning_rate * args.batch_size / LR_REFERENCE_BATCH
        fused = {"fused": True} if dist.device.type == "cuda" else {}
        self.optimizer = torch.optim.AdamW(
            param_groups(module, args.weight_decay, layer_decay), lr=self.lr, betas=betas,
            **fused)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.dtype == torch.float16)
        self.steps_per_epoch = len(loader)
        self.total_steps = args.total_epoch * self.steps_per_epoch
        self.warmup_steps = args.warmup_epoch * self.steps_per_epoch
        self.local_batch = args.batch_size // dist.world
        self.micro_batches = -(-self.local_batch // args.max_device_batch_size)
        self.start_epoch, self.start_step, self.sums = 0, 0, None
        self.stop_signal = None

    def describe(self):
        return (f"lr = {self.args.base_learning_rate:g} x {self.args.batch_size} / "
                f"{LR_REFERENCE_BATCH} = {self.lr:.3g}; {self.steps_per_epoch} steps/epoch; "
                f"{self.dist.world} process(es) x {self.micro_batches} micro-batch(es) of "
                f"<= {-(-self.local_batch // self.micro_batches)} images; "
                f"amp {self.dtype or 'off'}")

    # ---- checkpoints
    def state(self, epoch, step, sums, rng):
        """Everything a resume needs; only containers and tensors (weights_only loads it).

        sums: the epoch's running sums over all ranks (None between epochs); rng: a list of
        every rank's RNG state (ranks draw their own masks and augmentations).
        """
        state = {"format": CHECKPOINT_FORMAT, "kind": self.kind, "config": self.config,
                 "args": vars(self.args), "model": self.state_module.state_dict(),
                 "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                 "epoch": epoch, "step": step, "sums": sums, "rng": rng}
        state.update({k: fn() for k, fn in self.extra_state.items()})
        return state

    def save(self, epoch, step):
        """Rank 0 writes the checkpoint; every rank calls this (sums and RNG states are
        gathered from all ranks) and returns once the file is written, so that no rank stops
        before it is there."""
        sums = None if self.sums is None else \
            {k: distributed.all_reduce_sum(v.clone()) for k, v in sorted(self.sums.items())}
        rng = distributed.all_gather_state(get_rng_state())
        if self.dist.is_main:
            try:
                save_checkpoint(self.state(epoch, step, sums, rng), self.run.ckpt_path)
            except OSError as e:
                raise UsageError(f"cannot write checkpoint {self.run.ckpt_path}: "
                                 f"{e.strerror or e}") from None
        distributed.barrier()

    def resume(self):
        """Restore the last checkpoint; returns it (or None for a new run)."""
        if not os.path.exists(self.run.ckpt_path):
            return None
        # on the CPU: RNG states must be CPU tensors; load_state_dict moves the rest
        ckpt = load_checkpoint(self.run.ckpt_path, kind=self.kind)
        self.state_module.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.start_epoch, self.start_step, self.sums = ckpt["epoch"], ckpt["step"], ckpt["sums"]
        if self.sums is not None and not self.dist.is_main:  # rank 0 carries all ranks' sums
            self.sums = {k: torch.zeros_like(v) for k, v in self.sums.items()}
        self._restore_rng(ckpt["rng"])
        if self.dist.is_main:
            print(f"resuming from {self.run.ckpt_path}: epoch {self.start_epoch}, "
                  f"step {self.start_step}")
        return ckpt

    def _restore_rng(self, states):
        """Each rank continues its own random stream; with another number of processes than
        the checkpoint's, ranks keep their fresh seeds (the run is then not bit-exact)."""
        states = states if isinstance(states, list) else [states]  # files of one-state format
        if len(states) == self.dist.world:
            set_rng_state(states[self.dist.rank])
        elif self.dist.is_main:
            print(f"note: the checkpoint holds the random state of {len(states)} process(es), "
                  f"this run has {self.dist.world}; random draws start from fresh seeds")

    # ---- signals
    def _on_signal(self, signum, frame):
        self.stop_signal = signum

    def install_signal_handlers(self):
        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, self._on_signal)

    def _stop_requested(self, at_interval):
        """The signal any rank received, or 0. Under DDP ranks agree at log intervals and
        epoch ends only (one small all-reduce), so every rank stops after the same step."""
        flag = self.stop_signal or 0
        if self.dist.world == 1:
            return flag
        if not at_interval:
            return 0
        t = torch.tensor([flag], device=self.dist.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return int(t.item())

    def fit(self, on_epoch_end):
        """Train from the resume point to total_epoch; on_epoch_end(epoch, stats) logs.

        The checkpoint is written every save_freq epochs and after the last one; a signal
        received during an epoch saves at the next step boundary (under DDP: the next log
        interval or the epoch end, where the ranks agree) and raises Interrupted.
        """
        self.install_signal_handlers()
        for epoch in range(self.start_epoch, self.args.total_epoch):
            stats = self.train_epoch(epoch)
            on_epoch_end(epoch, stats)
            self.stop_signal = self._stop_requested(True)  # a signal during evaluation, too
            last = epoch + 1 == self.args.total_epoch
            if last or (epoch + 1) % self.args.save_freq == 0 or self.stop_signal:
                self.save(epoch + 1, 0)
            if self.stop_signal and not last:
                raise Interrupted(self.stop_signal)

    # ---- the loop
    def train_epoch(self, epoch):
        """One epoch from self.start_step; returns {'loss': mean loss, **mean sums, ...}."""
        self.module.train()
        start = self.start_step
        n = self.steps_per_epoch
        sums = self.sums or {"loss": torch.zeros((), device=self.dist.device),
                             "n": torch.zeros((), device=self.dist.device)}
        sums = {k: v.to(self.dist.device) for k, v in sums.items()}
        self.sums, self.start_step = sums, 0
        step_losses = torch.zeros(n, device=self.dist.device)
        checked = start
        t0 = time.perf_counter()
        bar = tqdm(total=n, initial=start, desc=f"epoch {epoch}", leave=False,
                   disable=not (self.dist.is_main and sys.stderr.isatty()))
        for step, (x, y) in enumerate(self.loader.epoch(epoch, start), start=start):
            set_lr(self.optimizer, cosine_lr(epoch * n + step, self.total_steps,
                                             self.warmup_steps, self.lr))
            step_losses[step] = self._optimizer_step(x, y, sums)
            bar.update(1)
            last = step == n - 1
            if (step + 1 - start) % LOG_INTERVAL == 0 or last:
                self._check_finite(step_losses, checked, step + 1, epoch)
                seen = (step + 1 - start) * self.loader.batch_size
                bar.set_postfix(loss=f"{step_losses[step].item():.4f}",
                                img_s=f"{seen / (time.perf_counter() - t0):.0f}")
                checked = step + 1
            # after the last step fit() asks, once the epoch is evaluated
            signum = 0 if last else self._stop_requested((step + 1 - start) % LOG_INTERVAL == 0)
            if signum:
                self._check_finite(step_losses, checked, step + 1, epoch)  # never save NaNs
                self.save(epoch, step + 1)
                raise Interrupted(signum)
        bar.close()
        totals = {k: distributed.all_reduce_sum(v.clone()) for k, v in sums.items()}
        count = totals.pop("n").item()
        out = {k: (v.item() / count) for k, v in totals.items()}
        out["seconds"] = time.perf_counter() - t0
        out["images_per_s"] = (count - _count_before(start, n, self.loader)) / out["seconds"]
        self.sums = None
        return out

    def _optimizer_step(self, x, y, sums):
        """One optimizer step over the local batch, split into micro-batches."""
        b = x.shape[0]
        chunks = list(zip(x.tensor_split(self.micro_batches), y.tensor_split(self.micro_batches)))
        chunks = [(cx, cy) for cx, cy in chunks if cx.shape[0] > 0]
        step_loss = torch.zeros((), device=x.device)
        for i, (cx, cy) in enumerate(chunks):
            if self.compiled:
                mark_batch_dynamic(cx)
            sync = i == len(chunks) - 1 or not isinstance(self.model, DistributedDataParallel)
            with (nullcontext() if sync else self.model.no_sync()), self.autocast():
                loss, batch_sums = self.step_fn(self.model, cx, cy)
            weight = cx.shape[0] / b
            self.scaler.scale(loss * weight).backward()
            step_loss += loss.detach().float() * weight
            for k, v in batch_sums.items():
                sums[k] = sums.get(k, torch.zeros((), device=x.device)) + v.detach().float()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        sums["loss"] += step_loss * b
        sums["n"] += b
        return step_loss

    def _check_finite(self, step_losses, lo, hi, epoch):
        bad = ~torch.isfinite(step_losses[lo:hi])
        flag = distributed.all_reduce_sum(bad.any().float().reshape(1))
        if flag.item() > 0:
            first = lo + int(bad.nonzero()[0]) if bad.any() else lo
            raise NonFiniteLoss(f"loss is not finite at epoch {epoch}, step {first}")


def mark_batch_dynamic(x):
    """Compile the model for any micro-batch size, once: tensor_split gives micro-batches of
    unequal sizes, and an epoch's last batch is smaller. Without this, Dynamo compiles one
    graph for the first size and a second, dynamic one at the first other size; marking the
    batch dimension up front makes the first graph the dynamic one (no padding: exact)."""
    torch._dynamo.maybe_mark_dynamic(x, 0)


def _count_before(start, n, loader):
    """Images already counted in this epoch before a mid-epoch resume (for images/s)."""
    return min(start * loader.batch_size, loader.num_images)


def run_stage(main_fn, run):
    """Run a stage; turn interrupts and non-finite losses into one line and an exit code."""
    try:
        main_fn()
    except Interrupted as e:
        name = signal.Signals(e.signum).name
        print(f"stopped by {name}: checkpoint saved to {run.ckpt_path}; run the same command "
              "to resume", file=sys.stderr)
        sys.exit(128 + e.signum)
    except NonFiniteLoss as e:
        last = f"the last good checkpoint is kept in {run.ckpt_path}" \
            if os.path.exists(run.ckpt_path) else "no checkpoint had been written"
        print(f"error: {e}; {last}. Try a lower --base_learning_rate or --amp off",
              file=sys.stderr)
        sys.exit(3)
    finally:
        run.release()
        distributed.cleanup()


# --------------------------------------------------------------------------- logging
class MetricsLog:
    """metrics.csv (one row per epoch, rewritten atomically) plus TensorBoard scalars."""

    def __init__(self, run, csv_fn, fieldnames, start_epoch):
        from torch.utils.tensorboard import SummaryWriter

        self.csv = CSVLogger(run.file(csv_fn), fieldnames, start_epoch)
        self.tb = SummaryWriter(run.file("tensorboard"), purge_step=start_epoch or None)

    def log(self, row):
        self.csv.log(row)
        for k, v in row.items():
            if k != "epoch" and isinstance(v, (int, float)) and v is not None:
                self.tb.add_scalar(k, v, row["epoch"])
        self.tb.flush()

    def close(self):
        self.tb.close()


def write_json(path, obj):
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def epoch_line(epoch, total, row):
    parts = [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
             for k, v in row.items() if k != "epoch" and v is not None]
    return f"epoch {epoch + 1}/{total}: " + ", ".join(parts)
