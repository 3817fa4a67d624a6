"""A run's logs: metrics.csv (one row per epoch), TensorBoard and, with --wandb, Weights &
Biases. The two loggers get the same scalars under grouped tags (train/…, eval/…, knn/…), at
the optimizer step they belong to, and the run's flags as hyper-parameters.

Per step (every engine.LOG_INTERVAL steps, when the loss is read anyway): train/step_loss (the
step's loss on rank 0's batch) and train/step_lr. Per epoch: the CSV row's columns, at the
epoch's last step. A rerun (a resume, or a restart of a run killed before its first
checkpoint) moves the earlier attempts' events from before its resume point into its own event
file and deletes theirs: the folder holds one event file, each step once; a W&B run is one
invocation (a resume starts another).
"""
import glob
import os

from mae_cifar.fileio import CSVLogger
from mae_cifar.training.run_folder import TENSORBOARD_DIR

WANDB_PROJECT = "mae-cifar"  # the W&B project runs log to (WANDB_PROJECT overrides it)
GROUPED_PREFIXES = ("train", "eval", "knn")  # train_loss -> train/loss, knn_acc -> knn/acc
TRAIN_COLUMNS = ("lr", "epoch_seconds", "images_per_s")  # -> train/lr, ...
# and every other column under eval/ (val_acc -> eval/val_acc, test_loss -> eval/test_loss)
TB_EVENTS = "events.out.tfevents.*"  # SummaryWriter's event file names
HPARAMS_PLUGIN = "hparams"  # its summaries are written anew by every attempt


def scalar_tag(column):
    """The grouped tag of a CSV column."""
    group, _, rest = column.partition("_")
    if group in GROUPED_PREFIXES and rest:
        return f"{group}/{rest}"
    return f"train/{column}" if column in TRAIN_COLUMNS else f"eval/{column}"


def carry_over(files, writer, resume_at):
    """Move the events of earlier attempts' event `files` from before optimizer step
    `resume_at` into `writer`'s file (their hyper-parameters aside: written anew), then delete
    those files: the events after the resume point were trained again."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    for path in sorted(files):
        for event in EventFileLoader(path).Load():
            values = [v for v in event.summary.value
                      if v.metadata.plugin_data.plugin_name != HPARAMS_PLUGIN]
            if values and event.step < resume_at:
                del event.summary.value[:]
                event.summary.value.extend(values)
                writer.file_writer.add_event(event)
        os.remove(path)
    writer.flush()


def hyperparameters(flags):
    """The flags as scalars and strings (what TensorBoard's hparams and W&B's config take)."""
    return {k: v if isinstance(v, (bool, int, float, str)) else str(v)
            for k, v in sorted(flags.items())}


class MetricsLog:
    """metrics.csv plus TensorBoard (and W&B with flags['wandb']) scalars.

    steps_per_epoch and start_step place scalars on the optimizer-step axis (1 and 0: one
    point per epoch); flags (None: none) are logged as hyper-parameters; name names the W&B
    run."""

    def __init__(self, run, csv_fn, fieldnames, start_epoch, steps_per_epoch=1, start_step=0,
                 flags=None, name=None):
        from torch.utils.tensorboard import SummaryWriter

        self.steps_per_epoch = steps_per_epoch
        self.csv = CSVLogger(run.file(csv_fn), fieldnames, start_epoch)
        folder = run.file(TENSORBOARD_DIR)
        earlier = glob.glob(os.path.join(glob.escape(folder), TB_EVENTS))
        self.tb = SummaryWriter(folder)
        carry_over(earlier, self.tb, start_epoch * steps_per_epoch + start_step)
        self.wandb = None
        if flags is not None:
            self._log_hyperparameters(hyperparameters(flags), fieldnames)
            if flags.get("wandb"):
                self.wandb = start_wandb(run, hyperparameters(flags), name)

    def _log_hyperparameters(self, hparams, fieldnames):
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        metrics = {scalar_tag(c): 0.0 for c in fieldnames if c != "epoch"}
        for summary in hparams_summary(hparams, metrics):
            self.tb.file_writer.add_summary(summary)

    def log_step(self, step, loss, lr):
        self._scalars({"train/step_loss": loss, "train/step_lr": lr}, step)

    def log(self, row):
        self.csv.log(row)
        scalars = {scalar_tag(k): v for k, v in row.items()
                   if k != "epoch" and isinstance(v, (int, float))}
        self._scalars(scalars, (row["epoch"] + 1) * self.steps_per_epoch - 1)

    def image(self, tag, grid, epoch):
        """A (C, H, W) image in [0, 1], at the epoch's last step."""
        step = (epoch + 1) * self.steps_per_epoch - 1
        self.tb.add_image(tag, grid, step)
        if self.wandb is not None:
            import wandb

            self.wandb.log({tag: wandb.Image(grid.permute(1, 2, 0).numpy())}, step=step)

    def _scalars(self, scalars, step):
        for k, v in scalars.items():
            self.tb.add_scalar(k, v, step)
        self.tb.flush()
        if self.wandb is not None:
            self.wandb.log(scalars, step=step)

    def close(self):
        self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def start_wandb(run, config, name):
    """A W&B run whose files go to the run folder's wandb/; WANDB_MODE=offline (W&B's own
    setting) keeps it there (`wandb sync` uploads it later)."""
    import wandb

    return wandb.init(project=os.environ.get("WANDB_PROJECT", WANDB_PROJECT), name=name,
                      dir=run.path, config=config)
