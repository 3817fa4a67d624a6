"""The training machinery both stages share: common flags, the run folder, the training loop.

The loop keeps the GPU busy: losses are summed on the device and read once per log interval;
the learning rate follows a per-step warmup + cosine schedule; checkpoints hold everything a
resume needs (model, optimizer, scaler, RNG states, position in the epoch).
"""
import fcntl
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
from fileio import TEMP_PREFIX, atomic_write_text, file_sha256, remove_temp_files
from utils import (
    CHECKPOINT_FORMAT,
    NO_DECAY_NAMES,
    CSVLogger,
    UsageError,
    add_config_arg,
    check_model_file,
    cosine_lr,
    get_rng_state,
    load_checkpoint,
    os_error_hint,
    param_groups,
    save_checkpoint,
    set_lr,
    set_rng_state,
)

ADAMW_BETAS_PRETRAIN = (0.9, 0.95)  # MAE pretraining betas
LARS_MOMENTUM = 0.9  # the MAE linear probe's LARS
LR_REFERENCE_BATCH = 256  # lr = base_lr * batch_size / 256 (linear scaling rule)
LOG_INTERVAL = 20  # optimizer steps between host reads of the loss (NaN check, progress bar)
CHECKPOINT_FN = "checkpoint.pt"
RESUME_KEYS = ("config", "model", "optimizer", "scaler", "epoch", "step", "sums", "rng")
ARGS_FN = "args.json"
SUMMARY_FN = "summary.json"
LOCK_FN = ".lock"
TENSORBOARD_DIR = "tensorboard"
LOCK_MODE = 0o666  # of a new lock file, before the umask
PID_MAX_CHARS = 16  # a lock file holding more is not a pid
# args.json key of a classifier's upstream: the sha256 of --pretrained_model_path's bytes
# (None from scratch). The path's spelling does not matter; its content does.
UPSTREAM_KEY = "pretrained_sha256"
HASH_SHOWN = 12  # hex digits of a hash shown in messages
# Flags that do not change the numbers a run produces; they may differ on resume (a run
# folder may also be moved or renamed).
NON_RESULT_ARGS = {"overwrite", "compile", "max_device_batch_size", "device", "save_freq",
                   "output_root", "data_dir", "exp_name", "config",
                   # compared by content: UPSTREAM_KEY
                   "pretrained_model_path",
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


def finite_float(s):
    v = float(s)
    if not math.isfinite(v):
        raise ValueError
    return v


finite_float.__name__ = "finite number"

SEED_LIMIT = 2 ** 32  # seeds are in [0, 2**32), as NumPy takes them


def seed_int(s):
    v = int(s)
    if not 0 <= v < SEED_LIMIT:
        raise ValueError
    return v


seed_int.__name__ = f"integer in [0, {SEED_LIMIT})"


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


# --------------------------------------------------------------------------- run folder
# Names of the run folder's own files and folders, refused for output file flags.
RESERVED_NAMES = (ARGS_FN, CHECKPOINT_FN, SUMMARY_FN, LOCK_FN, TENSORBOARD_DIR)


class RunFolder:
    """One stage's output folder and its state: new / unfinished / finished / foreign.

    The state is decided from every file present: a readable args.json (or, if it is gone,
    the flags saved in checkpoint.pt) names the run; summary.json marks it finished, and
    checkpoint.pt makes it resumable. Files that no flags can be found for make the folder
    foreign: it is refused, and only --overwrite deletes anything. While a run writes, it holds
    an fcntl lock on LOCK_FN (released by the kernel when the process dies); only the owner
    removes the file.
    """

    def __init__(self, path, args, is_main=True):
        self.path, self.args, self.is_main = path, vars(args).copy(), is_main
        self.ckpt_path = os.path.join(path, CHECKPOINT_FN)
        self.lock_fd = None
        self.folders = []  # outside folders output files go to (check_output_path)
        self.decided = None  # the status() this process acts on, re-checked under the lock

    def file(self, name):
        return os.path.join(self.path, name)

    def status(self):
        """'new' (nothing to resume: no files, --overwrite, or only the args.json of a run
        stopped before its first checkpoint), 'unfinished' or 'finished'; refuses changed
        flags and foreign folders. Reads only."""
        self.decided = self._status()
        return self.decided

    def _status(self):
        if self.args.get("overwrite") or not self._has_run_files():
            return "new"
        saved = self._saved_args()
        diff = [f"--{k}: {saved.get(k)!r} (saved) vs {self.args.get(k)!r} (now)"
                for k in sorted(set(saved) | set(self.args))
                if k not in NON_RESULT_ARGS and k != UPSTREAM_KEY
                and saved.get(k) != self.args.get(k)]
        if diff:
            raise UsageError(f"{self.path} holds a run with other flags: " + "; ".join(diff)
                             + ". Use the same flags to resume, another --exp_name, or "
                               "--overwrite")
        self._check_upstream(saved)
        if os.path.exists(self.file(SUMMARY_FN)):
            return "finished"
        return "unfinished" if os.path.exists(self.ckpt_path) else "new"

    def _has_run_files(self):
        """Anything besides the lock and killed writers' temporary files."""
        try:
            names = os.listdir(self.path)
        except (FileNotFoundError, NotADirectoryError):  # open() says why it cannot write
            return False
        except OSError as e:
            raise UsageError(f"cannot read {self.path}: {e.strerror}") from None
        return any(n != LOCK_FN and not n.startswith(TEMP_PREFIX) for n in names)

    def _saved_args(self):
        """The flags the folder's run was started with: args.json, else checkpoint.pt's."""
        path = self.file(ARGS_FN)
        if os.path.exists(path):
            try:
                with open(path, encoding="utf-8") as f:
                    saved = json.load(f)
            except (OSError, ValueError) as e:
                raise UsageError(f"{path} is damaged ({e}); restore it, or start again with "
                                 "--overwrite") from None
            if not isinstance(saved, dict):
                raise UsageError(f"{path} is damaged (not a JSON object); restore it, or "
                                 "start again with --overwrite")
            return saved
        if os.path.exists(self.ckpt_path):
            saved = load_checkpoint(self.ckpt_path).get("args")
            if isinstance(saved, dict):
                return saved
        raise UsageError(f"{self.path} holds files of an unknown run (no args.json); use "
                         "another --exp_name, or --overwrite to delete them")

    def _check_upstream(self, saved):
        """A run started from a model file continues only from the same bytes."""
        if UPSTREAM_KEY not in saved:  # a run folder of an older version
            return
        was, now = saved[UPSTREAM_KEY], self.args.get(UPSTREAM_KEY)
        if was != now:
            raise UsageError(
                f"{self.path} was trained from a pretrained model with sha256 "
                f"{str(was)[:HASH_SHOWN]}, but --pretrained_model_path now holds "
                f"{str(now)[:HASH_SHOWN]}; start again with --overwrite (or another "
                "--exp_name)")

    def open(self, fresh):
        """Create the folder, take the lock, re-check the status under it, empty the folder
        when --overwrite says so, delete temporary files a killed run left, write args.json.
        Rank 0 writes; every rank calls this, after status(): the barriers keep rank 0 from
        emptying the folder while another rank reads it, and the others from going on before
        it is ready."""
        distributed.barrier()
        if self.is_main:
            try:
                self._create(fresh)
            except BaseException:
                self.release()
                raise
        distributed.barrier()

    def _create(self, fresh):
        try:
            os.makedirs(self.path, exist_ok=True)
            self._take_lock()
            for folder in self.folders:
                os.makedirs(folder, exist_ok=True)
            if self.decided is not None and self._status() != self.decided:
                raise UsageError(f"{self.path} changed while this run was starting (another "
                                 "run?); run the command again")
            if fresh and self.args.get("overwrite"):
                self._empty()
            remove_temp_files(self.path)
            write_json(self.file(ARGS_FN), self.args)
        except OSError as e:
            hint = os_error_hint(e, "choose a writable --output_root")
            raise UsageError(f"cannot write to {self.path}: {e.strerror or e}; {hint}") from None

    def _empty(self):
        """Delete everything but the lock (deleting it would let a second run take another)."""
        for entry in os.scandir(self.path):
            if entry.name == LOCK_FN:
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.remove(entry.path)

    def _take_lock(self):
        """flock LOCK_FN for this process's life. The lock must still be the file at LOCK_FN
        once held: its owner may have removed it (on release) after we opened it."""
        lock = self.file(LOCK_FN)
        while True:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, LOCK_MODE)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = _read_pid(fd)
                os.close(fd)
                who = f"another run (pid {pid})" if pid else "another run"
                raise UsageError(f"{who} is writing to {self.path}; wait for it to finish or "
                                 "stop it") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(lock).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # a file its owner removed: lock the new one
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.lock_fd = fd

    def release(self):
        """Only the owner releases: remove the file while still holding it, then unlock."""
        if self.lock_fd is None:
            return
        try:
            os.remove(self.file(LOCK_FN))
        except FileNotFoundError:
            pass
        os.close(self.lock_fd)
        self.lock_fd = None


def _read_pid(fd):
    """The pid a lock file names, or None when it holds something else."""
    text = os.pread(fd, PID_MAX_CHARS, 0).decode("ascii", "replace").strip()
    return int(text) if text.isdigit() and len(text) < PID_MAX_CHARS else None



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
    amp_dtype(args.amp, dist.device)  # refused before the run folder is touched
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
        if args.batch_size > len(data.train):
            print(f"warning: --batch_size {args.batch_size} exceeds the {len(data.train)} "
                  "training images: each step sees the whole split, and the lr (scaled by the "
                  "batch size) is far from the recipe's")
    return data


def check_file_names(names):
    """names {flag: file name in the stage folder}: each a plain name, distinct, and not one
    of the run folder's own files; UsageError naming the flag otherwise."""
    seen = {}
    for flag, name in names.items():
        if not name or os.sep in name or name in (".", "..") or name.startswith(TEMP_PREFIX):
            raise UsageError(f"{flag} is a file name in the stage folder, got {name!r}")
        if name in RESERVED_NAMES:
            raise UsageError(f"{flag} {name} would overwrite the run's own {name}; choose "
                             "another name")
        if name in seen:
            raise UsageError(f"{flag} and {seen[name]} both name {name}; choose different "
                             "names")
        seen[name] = flag


def check_output_path(run, flag, path, names):
    """A file path outside the naming rules of check_file_names: refused now, not after
    training, if it cannot be written; its missing folders are created when the run opens.
    names: the stage folder's other output names ({flag: name})."""
    full = os.path.abspath(path)
    folder = os.path.dirname(full)
    if folder == os.path.abspath(run.path):
        check_file_names({**names, flag: os.path.basename(full)})
    if os.path.isdir(full):
        raise UsageError(f"{flag} {path} is a folder; give a file path")
    existing = folder
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path}: cannot create files under {existing}; choose a "
                         "writable path")
    run.folders.append(folder)


def upstream_hash(path):
    """The sha256 of a pretrained model file (None without one), or UsageError."""
    if path is None:
        return None
    check_model_file(path)
    try:
        return file_sha256(path)
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None


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
                 betas=(0.9, 0.999), layer_decay=1.0, state_module=None, extra_state=None,
                 optimizer="adamw", min_lr=0.0, decay_tokens=False, momentum=LARS_MOMENTUM):
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
        self.min_lr = min_lr
        groups = param_groups(module, args.weight_decay, layer_decay,
                              () if decay_tokens else NO_DECAY_NAMES)
        self.optimizer = build_optimizer(optimizer, groups, self.lr, betas, dist.device,
                                         momentum)
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
        if self.dist.is_main:  # a failed write: one line from utils.run_cli
            save_checkpoint(self.state(epoch, step, sums, rng), self.run.ckpt_path)
        distributed.barrier()

    def resume(self):
        """Restore the last checkpoint; returns it (or None for a new run)."""
        if not os.path.exists(self.run.ckpt_path):
            return None
        # on the CPU: RNG states must be CPU tensors; load_state_dict moves the rest
        ckpt = load_checkpoint(self.run.ckpt_path, kind=self.kind)
        self._check_resumable(ckpt)
        try:
            self.state_module.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scaler.load_state_dict(ckpt["scaler"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise UsageError(f"{self.run.ckpt_path} does not fit this run: "
                             f"{str(e).splitlines()[0]}; start again with --overwrite") from None
        self.start_epoch, self.start_step, self.sums = ckpt["epoch"], ckpt["step"], ckpt["sums"]
        if self.sums is not None and not self.dist.is_main:  # rank 0 carries all ranks' sums
            self.sums = {k: torch.zeros_like(v) for k, v in self.sums.items()}
        self._restore_rng(ckpt["rng"])
        if self.dist.is_main:
            print(f"resuming from {self.run.ckpt_path}: epoch {self.start_epoch}, "
                  f"step {self.start_step}")
        return ckpt

    def _check_resumable(self, ckpt):
        """A checkpoint of this model with everything a resume needs, or UsageError."""
        path = self.run.ckpt_path
        missing = [k for k in RESUME_KEYS if k not in ckpt]
        if missing:
            raise UsageError(f"{path} is not a resumable checkpoint (no {', '.join(missing)}; "
                             "a final model file?); restore it, or start again with "
                             "--overwrite")
        if ckpt["config"] != self.config:
            diff = [f"{k} {ckpt['config'].get(k)!r} (checkpoint) vs {v!r} (now)"
                    for k, v in self.config.items() if ckpt["config"].get(k) != v]
            raise UsageError(f"{path} holds another model ({'; '.join(diff)}); was "
                             "args.json edited? Start again with --overwrite")

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
                                             self.warmup_steps, self.lr, self.min_lr))
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


def build_optimizer(name, groups, lr, betas, device, momentum=LARS_MOMENTUM):
    """AdamW (fused on CUDA), or LARS as the official MAE probe: timm's Lars adapts the
    update of each weight matrix by its trust ratio; biases (ndim 1) get plain momentum."""
    if name == "lars":
        from timm.optim import Lars

        for g in groups:
            g["always_adapt"] = all(p.ndim > 1 for p in g["params"])
        return Lars(groups, lr=lr, momentum=momentum)
    fused = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), **fused)


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
        self.tb = SummaryWriter(run.file(TENSORBOARD_DIR), purge_step=start_epoch or None)

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
