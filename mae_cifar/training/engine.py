"""The training machinery both stages share: starting a stage, the runtime helpers, the
training loop and the metrics log.

The loop keeps the GPU busy: losses are summed on the device and read once per log interval;
the learning rate follows a per-step warmup + cosine (or constant) schedule; checkpoints hold
everything a resume needs (model, optimizer, scaler, RNG states, position in the epoch).
"""
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from mae_cifar import distributed
from mae_cifar.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint
from mae_cifar.cli import DATA_KEY, UsageError
from mae_cifar.data.datasets import load_dataset, training_positions
from mae_cifar.training.logs import MetricsLog
from mae_cifar.training.optim import NO_DECAY_NAMES, constant_lr, cosine_lr, param_groups, set_lr
from mae_cifar.training.progress import SLOW_RUN_SECONDS, Progress, duration, watch_signals
from mae_cifar.training.recipes import LARS_MOMENTUM, Optimization
from mae_cifar.training.run_folder import RunFolder
from utils import get_rng_state, set_rng_state

LR_REFERENCE_BATCH = 256  # lr = base_lr * batch_size / 256 (linear scaling rule)
LR_SCHEDULES = ("cosine", "constant")  # after the linear warmup: cosine to min_lr, or the peak
MIN_STEPS_PER_EPOCH = 5  # fewer: the schedule moves in whole-epoch jumps (warned)
MIN_WARMUP_STEPS = 5  # a shorter warmup jumps from lr 0 to the peak (warned)
LOG_INTERVAL = 20  # optimizer steps between host reads of the loss (NaN check, progress bar)
TB_EVENTS = "events.out.tfevents.*"  # TensorBoard's event files
RESUME_KEYS = ("config", "model", "optimizer", "scaler", "epoch", "step", "sums", "rng")


# --------------------------------------------------------------------------- stage
def start_stage(args, stage, parser=None):
    """(dist, run folder, status) of a stage; says so when the run is already finished.
    parser: the stage's, whose defaults stand for flags a saved args.json lacks."""
    dist = distributed.setup(args.device)
    amp_dtype(args.amp, dist.device)  # refused before the run folder is touched
    run = RunFolder(os.path.join(args.output_root, args.exp_name, stage), args, dist.is_main,
                    parser and {a.dest: a.default for a in parser._actions})
    status = run.status()
    if status == "finished" and dist.is_main:
        print(f"{run.path} is finished; nothing to do (--overwrite trains it again)")
    extend_to = vars(args).get("extend_to")  # baselines.py has no --extend_to
    if extend_to is not None:  # args.json keeps --total_epoch; training goes on to N
        args.total_epoch = extend_to
        if status != "finished" and dist.is_main:
            print(f"extending {run.path} to {extend_to} epochs: the lr follows the warmup + "
                  f"cosine of a {extend_to}-epoch run from the current step")
    return dist, run, status


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


def load_stage_data(args, dist, run, val_split=0, labels="required"):
    """The stage's dataset on its device, refused if the run folder's unfinished run trained
    on other data (recorded in args.json and args.data_sha256 otherwise); rank 0 prints the
    arguments and what was loaded. labels: datasets.load_dataset's (a classifier stage
    requires them)."""
    data = load_dataset(args.dataset, args.data_dir, args.image_size, args.max_train_images,
                        args.max_eval_images, val_split, device=dist.device, labels=labels)
    run.check_data(data.sha256)
    setattr(args, DATA_KEY, data.sha256)  # the model files' copy of the flags records it
    data.val_in_pretraining = val_images_in_pretraining(
        getattr(args, "pretrained_model_path", None), args.dataset, data)
    if dist.is_main:
        print_args(args)
        print(f"loaded {data.describe()}")
        if data.val_in_pretraining:
            print(f"warning: {data.val_in_pretraining} of the {len(data.val)} validation images "
                  "were in the MAE's pretraining images (it was pretrained with another "
                  "--val_split, or none): choices made on them favour the encoder; pretrain "
                  "with the same --val_split (recorded as val_images_in_pretraining)")
        if args.batch_size > len(data.train):
            print(f"warning: --batch_size {args.batch_size} exceeds the {len(data.train)} "
                  "training images: each step sees the whole split, and the lr (scaled by the "
                  "batch size) is far from the recipe's")
    return data


def val_images_in_pretraining(path, dataset, data):
    """How many of data.val's images the MAE of model file `path` was pretrained on (from
    the flags its file records: --val_split, --max_train_images), or None where that cannot
    be told: no validation split, no model file, a foreign file or other data."""
    if path is None or data.val is None:
        return None
    try:
        ckpt = load_checkpoint(path, kind="mae")
    except UsageError:  # a timm or official MAE file: its images are not recorded
        return None
    mae = ckpt.get("args")
    if not isinstance(mae, dict) or mae.get("dataset") != dataset or \
            mae.get(DATA_KEY, data.sha256) != data.sha256:
        return None
    val_split, max_train = mae.get("val_split") or 0, mae.get("max_train_images")
    if not isinstance(val_split, int) or not isinstance(max_train, (int, type(None))):
        return None
    try:
        seen = training_positions(data.train_total, val_split, max_train)
    except UsageError:  # a --val_split this dataset cannot hold: other data
        return None
    return int(torch.isin(data.val.index, seen).sum())


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


LOWER_LR = "Try a lower --base_learning_rate or --amp off"


class NonFiniteLoss(Exception):
    """A loss that is not finite; remedy: the sentence that ends the error line."""

    def __init__(self, message, remedy=LOWER_LR):
        super().__init__(message)
        self.remedy = remedy


class Interrupted(Exception):
    """A stop signal; saved: whether a checkpoint was written for it (the Trainer's)."""

    def __init__(self, signum, saved=True):
        super().__init__(signum)
        self.signum, self.saved = signum, saved


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextmanager
def on_stop_signals(handler):
    """handler(signum, frame) for SIGTERM and SIGINT inside the block; the handlers before
    it are restored after (a handler left behind would swallow the signals of a later run in
    the same process)."""
    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    for s in STOP_SIGNALS:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, signal.SIG_DFL if h is None else h)


def raise_interrupted(signum, frame):
    """A stop-signal handler for work with nothing to save yet: stop at once."""
    raise Interrupted(signum, saved=False)


# --------------------------------------------------------------------------- trainer
@dataclass
class Checkpointed:
    """What a run's checkpoints hold besides the optimizer: the file's kind ('mae',
    'classifier'), the model config (a dict, compared on resume), the module whose state is
    saved (None: the trained module; a probe trains the head and saves the classifier), and
    extra entries {key: fn() -> value} (the classifier's best epoch, say)."""
    kind: str
    config: dict
    module: torch.nn.Module | None = None
    extra: dict = field(default_factory=dict)


class Trainer:
    """Optimises `module` on batches of `loader` with `step_fn(model, x, y) -> (loss, sums)`.

    sums is a dict of per-batch device tensors (e.g. correct predictions) that are summed
    over the epoch; the loss is averaged per image. `saved` (Checkpointed) says what
    checkpoints hold. `recipe` is the resolved recipe's recipes.Optimization
    (recipes.optimization(args)): optimizer, betas or momentum, layer decay, min_lr, token
    decay (None: Optimization()'s defaults). `lr_schedule`: one of LR_SCHEDULES.
    """

    def __init__(self, args, dist, module, loader, step_fn, run, saved, recipe=None,
                 lr_schedule="cosine"):
        self.args, self.dist, self.loader, self.step_fn, self.run = args, dist, loader, step_fn, run
        self.kind, self.config, self.extra_state = saved.kind, saved.config, saved.extra
        self.state_module = saved.module or module
        self.module = module
        self.dtype = amp_dtype(args.amp, dist.device)
        self.autocast = autocast_context(self.dtype, dist.device)
        self.compiled = args.compile
        model = torch.compile(module) if args.compile else module
        if dist.world > 1:
            model = DistributedDataParallel(
                model, device_ids=[dist.local_rank] if dist.device.type == "cuda" else None)
        self.model = model
        self.lr = args.base_learning_rate * args.batch_size / LR_REFERENCE_BATCH
        recipe = recipe or Optimization()  # None: AdamW with the defaults of recipes.py
        self.min_lr, self.lr_schedule = recipe.min_lr, lr_schedule
        groups = param_groups(module, args.weight_decay, recipe.layer_decay,
                              () if recipe.decay_tokens else NO_DECAY_NAMES)
        self.optimizer = build_optimizer(recipe.optimizer, groups, self.lr, recipe.betas,
                                         dist.device, recipe.momentum)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.dtype == torch.float16)
        self.steps_per_epoch = len(loader)
        self.total_steps = args.total_epoch * self.steps_per_epoch
        self.warmup_steps = args.warmup_epoch * self.steps_per_epoch
        self.local_batch = args.batch_size // dist.world
        self.micro_batches = -(-self.local_batch // args.max_device_batch_size)
        self.start_epoch, self.start_step, self.sums = 0, 0, None
        self.stop_signal = None
        self.progress = Progress(args.total_epoch, self.steps_per_epoch, args.batch_size,
                                 dist.is_main, args.progress_seconds,
                                 SLOW_RUN_SECONDS if dist.device.type == "cpu" else None)
        self.step_log = None  # fn(global step, loss, lr) at each log interval (rank 0 sets it)

    def metrics_log(self, csv_fn, fieldnames, name):
        """Rank 0's logs of this run (logs.MetricsLog on the optimizer-step axis, the flags
        as hyper-parameters), receiving the per-step scalars; None on other ranks."""
        if not self.dist.is_main:
            return None
        log = MetricsLog(self.run, csv_fn, fieldnames, self.start_epoch, self.steps_per_epoch,
                         self.start_step, vars(self.args), name)
        self.step_log = log.log_step
        return log

    def describe(self):
        return (f"lr = {self.args.base_learning_rate:g} x {self.args.batch_size} / "
                f"{LR_REFERENCE_BATCH} = {self.lr:.3g} ({self.lr_schedule} after warmup); "
                f"{self.steps_per_epoch} steps/epoch; "
                f"{self.dist.world} process(es) x {self.micro_batches} micro-batch(es) of "
                f"<= {-(-self.local_batch // self.micro_batches)} images; "
                f"amp {self.dtype or 'off'}" + "".join("\n" + w for w in self.warnings()))

    def warnings(self):
        """Lines on a schedule that cannot behave as the recipe means it to."""
        out = []
        if self.steps_per_epoch < MIN_STEPS_PER_EPOCH:
            out.append(f"warning: {self.steps_per_epoch} optimizer step(s) per epoch "
                       f"({self.loader.num_images} images, --batch_size "
                       f"{self.args.batch_size}): the schedule moves in jumps of a whole "
                       "epoch; lower --batch_size or use more images")
        if 0 < self.warmup_steps < MIN_WARMUP_STEPS:
            out.append(f"warning: the warmup is {self.warmup_steps} optimizer step(s): the "
                       f"first trains at lr 0 and the next near the peak {self.lr:.3g}; give "
                       "a smaller --batch_size or more --warmup_epoch")
        return out

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
        if self.dist.is_main:  # a failed write: one line from cli.run_cli
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
    def _on_signal(self, signum):
        self.stop_signal = signum

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

    def fit(self, on_epoch_end, done_after=lambda epoch: False):
        """Train from the resume point to total_epoch, or until done_after(epoch) says the
        run is complete after that epoch (early stopping; it must depend only on what the
        checkpoint restores, and agree on every rank); on_epoch_end(epoch, stats) logs.

        The checkpoint is written every save_freq epochs and after the last one; a signal
        received during an epoch saves at the next step boundary (under DDP: the next log
        interval or the epoch end, where the ranks agree) and raises Interrupted.
        """
        if self.start_epoch > 0 and done_after(self.start_epoch - 1):
            return  # stopped early, then interrupted before its final files were written
        watch_signals(self._on_signal, announce=self.dist.is_main)
        for epoch in range(self.start_epoch, self.args.total_epoch):
            stats = self.train_epoch(epoch)
            on_epoch_end(epoch, stats)
            self.stop_signal = self._stop_requested(True)  # a signal during evaluation, too
            last = epoch + 1 == self.args.total_epoch or done_after(epoch)
            if last or (epoch + 1) % self.args.save_freq == 0 or self.stop_signal:
                self.save(epoch + 1, 0)
            if last:
                return
            if self.stop_signal:
                raise Interrupted(self.stop_signal)

    # ---- the loop
    def lr_at(self, step):
        """The learning rate at optimizer step `step` (0-based, counted over the run)."""
        if self.lr_schedule == "constant":
            return constant_lr(step, self.warmup_steps, self.lr)
        return cosine_lr(step, self.total_steps, self.warmup_steps, self.lr, self.min_lr)

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
        bar = tqdm(total=n, initial=start, desc=f"epoch {epoch}/{self.args.total_epoch}",
                   leave=False, disable=not (self.dist.is_main and sys.stderr.isatty()))
        for step, (x, y) in enumerate(self.loader.epoch(epoch, start), start=start):
            lr = self.lr_at(epoch * n + step)
            set_lr(self.optimizer, lr)
            step_losses[step] = self._optimizer_step(x, y, sums)
            bar.update(1)
            last = step == n - 1
            if (step + 1 - start) % LOG_INTERVAL == 0 or last:
                self._check_finite(step_losses, checked, step + 1, epoch)
                seconds, loss = time.perf_counter() - t0, step_losses[step].item()
                done = step + 1 - start  # steps trained in this epoch by this process
                bar.set_postfix(loss=f"{loss:.4f}",
                                img_s=f"{done * self.loader.batch_size / seconds:.0f}")
                self.progress.offer(epoch, step + 1, loss, lr, seconds, done)
                if self.step_log is not None:
                    self.step_log(epoch * n + step, loss, lr)
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
        self.progress.steps_trained(n - start, out["seconds"])
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
    """Run a stage; turn interrupts and non-finite losses into one line and an exit code.
    A stop signal before the Trainer takes over the handlers stops at once; the handlers
    before the stage are restored after it. Rank 0 ends with the stage's total wall time,
    whatever the outcome."""
    started = time.perf_counter()
    try:
        with on_stop_signals(raise_interrupted):
            main_fn()
    except Interrupted as e:
        name = signal.Signals(e.signum).name
        then = f"checkpoint saved to {run.ckpt_path}; run the same command to resume" \
            if e.saved else "nothing saved by this attempt: run the same command again"
        print(f"stopped by {name}: {then}", file=sys.stderr)
        sys.exit(128 + e.signum)
    except NonFiniteLoss as e:
        last = f"the last good checkpoint is kept in {run.ckpt_path}" \
            if os.path.exists(run.ckpt_path) else "no checkpoint had been written"
        print(f"error: {e}; {last}. {e.remedy}", file=sys.stderr)
        sys.exit(3)
    finally:
        run.release()
        distributed.cleanup()
        if run.is_main:
            print(f"total wall time: {duration(time.perf_counter() - started)}", flush=True)


# --------------------------------------------------------------------------- logging
def epoch_line(epoch, total, row):
    """'epoch E/T: key value, ...' of metrics.csv's row: E 0-based as the CSV's epoch, T the
    epochs planned (the last epoch is T - 1)."""
    parts = [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
             for k, v in row.items() if k != "epoch" and v is not None]
    return f"epoch {epoch}/{total}: " + ", ".join(parts)
