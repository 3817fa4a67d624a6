"""What a long run says while it runs: a progress line on stdout (so it reaches log files)
at most every PROGRESS_SECONDS, a signal acknowledged the moment it arrives, and the total
wall time at the end. Lines are printed by rank 0 only; nothing here reads the device.
"""
import os
import signal
import sys
import threading
import time

PROGRESS_SECONDS = 30.0  # at most one progress line per this many seconds (official MAE: 20 its)
SECONDS_PER_MINUTE = 60
SECONDS_PER_HOUR = 3600
ACKNOWLEDGED = (signal.SIGINT, signal.SIGTERM)
SLOW_RUN_SECONDS = 3600  # on a CPU, a run with more left than this is told how to shrink
SMALL_PRESET = "vit_micro_patch4"  # presets.py: the preset a CPU run is pointed to


def duration(seconds):
    """'42s', '3m05s', '2h07m': a span at the precision a reader needs."""
    s = int(round(seconds))
    if s < SECONDS_PER_MINUTE:
        return f"{s}s"
    if s < SECONDS_PER_HOUR:
        return f"{s // SECONDS_PER_MINUTE}m{s % SECONDS_PER_MINUTE:02d}s"
    return f"{s // SECONDS_PER_HOUR}h{s % SECONDS_PER_HOUR // SECONDS_PER_MINUTE:02d}m"


class Progress:
    """Progress lines of one run: step / total, images/s, loss, lr, elapsed and the ETA of
    the epoch and of the run, measured on the steps this process has trained so far.

    The caller offers a line at its log intervals, where it reads the loss anyway (no extra
    host sync); a line is printed when PROGRESS_SECONDS have passed since the last one, so a
    fast run prints every few seconds of work and a slow one at every interval.
    """

    def __init__(self, total_epochs, steps_per_epoch, batch_size, enabled,
                 interval_s=PROGRESS_SECONDS, slow_after_s=None):
        """slow_after_s: warn once, at the first line offered, when the run's estimated time
        left exceeds this (None: never; the CPU's default, SLOW_RUN_SECONDS)."""
        self.total_epochs, self.steps_per_epoch = total_epochs, steps_per_epoch
        self.batch_size, self.enabled, self.interval_s = batch_size, enabled, interval_s
        self.slow_after_s = slow_after_s
        self.started = time.perf_counter()
        self.last_line = self.started
        self.steps_done = 0  # optimizer steps trained by this process (for the rates)
        self.train_seconds = 0.0
        self.offered = False

    def steps_trained(self, steps, seconds):
        """Account for `steps` optimizer steps that took `seconds` of training."""
        self.steps_done += steps
        self.train_seconds += seconds

    def estimate(self, epoch, step, epoch_seconds, epoch_steps):
        """(seconds per step now, seconds left in the epoch, seconds left in the run) after
        `step` (1-based) of `epoch` (0-based); epoch_seconds / epoch_steps: this epoch's
        training time and steps so far."""
        per_step = epoch_seconds / max(1, epoch_steps)
        run_per_step = (self.train_seconds + epoch_seconds) / max(1, self.steps_done + epoch_steps)
        left_steps = (self.total_epochs - epoch) * self.steps_per_epoch - step
        return per_step, (self.steps_per_epoch - step) * per_step, left_steps * run_per_step

    def line(self, epoch, step, loss, lr, epoch_seconds, epoch_steps):
        """The progress line after `step` of `epoch` (see estimate)."""
        per_step, left_epoch, left_run = self.estimate(epoch, step, epoch_seconds, epoch_steps)
        return (f"epoch {epoch}/{self.total_epochs} step {step}/{self.steps_per_epoch}: "
                f"{self.batch_size / per_step:.0f} img/s, loss {loss:.4f}, lr {lr:.3g}, "
                f"elapsed {duration(time.perf_counter() - self.started)}, ETA epoch "
                f"{duration(left_epoch)}, run {duration(left_run)} (training only)")

    def slow_warning(self, epoch, step, epoch_seconds, epoch_steps):
        """One line when the run's time left exceeds slow_after_s, else None."""
        left = self.estimate(epoch, step, epoch_seconds, epoch_steps)[2]
        if self.slow_after_s is None or left <= self.slow_after_s:
            return None
        return (f"warning: at this speed the run needs about {duration(left)} more; "
                f"--model {SMALL_PRESET}, fewer --total_epoch or --max_train_images make it "
                "minutes on a CPU")

    def offer(self, epoch, step, loss, lr, epoch_seconds, epoch_steps):
        """Print the line if it is due (rank 0, interval_s since the last); the first offer
        also says when the run will take long."""
        if not self.enabled:
            return
        if not self.offered:
            self.offered = True
            warning = self.slow_warning(epoch, step, epoch_seconds, epoch_steps)
            if warning:
                print(warning, flush=True)
        now = time.perf_counter()
        if now - self.last_line >= self.interval_s:
            print(self.line(epoch, step, loss, lr, epoch_seconds, epoch_steps), flush=True)
            self.last_line = now


_watch = {"announce": False, "thread": None}  # one pipe and thread per process


def watch_signals(on_signal, announce):
    """Route SIGINT / SIGTERM to on_signal(signum) and acknowledge them the moment they
    arrive (announce: print the notice; rank 0), even in the middle of a long optimizer step.

    Python runs its signal handlers between bytecodes only, so a 9-minute step would keep
    Ctrl-C silent for 9 minutes. The C-level handler also writes the signal's number to a
    pipe (signal.set_wakeup_fd); a daemon thread blocked on it prints the notice at once,
    while on_signal records the request at the next bytecode.
    """
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, lambda signum, frame: on_signal(signum))
    _watch["announce"] = announce
    if _watch["thread"] is not None or threading.current_thread() is not threading.main_thread():
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    _watch["thread"] = threading.Thread(target=_acknowledge, args=(read_fd,), daemon=True)
    _watch["thread"].start()


def _acknowledge(read_fd):
    while data := os.read(read_fd, 1):
        if _watch["announce"] and data[0] in ACKNOWLEDGED:
            print(f"received {signal.Signals(data[0]).name}: stopping after this step; a "
                  "checkpoint follows", file=sys.stdout, flush=True)
