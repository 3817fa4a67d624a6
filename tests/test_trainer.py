"""engine.Trainer in process, on a tiny MAE (seconds, not script runs): what a checkpoint
holds and a resume restores (epoch, step, the epoch's running sums, optimizer, RNG), when
checkpoints are written, what each epoch reports, the step log, the progress output, non-finite
losses, and the refusal of checkpoints that do not fit. Script runs of the same: test_faults.py
and test_pretrain.py."""
import io
import os
import re
import signal
import sys
import time
from argparse import Namespace
from dataclasses import asdict, dataclass
from types import SimpleNamespace

import pytest
import torch

from mae_cifar.checkpoint import load_checkpoint, save_checkpoint
from mae_cifar.cli import UsageError
from mae_cifar.data.datasets import Split
from mae_cifar.data.loader import DeviceLoader
from mae_cifar.distributed import DistInfo
from mae_cifar.training import engine, objectives
from mae_cifar.training.recipes import ADAMW_BETAS_PRETRAIN, Optimization
from mae_cifar.training.run_folder import CHECKPOINT_FN
from model import MAE_ViT, MAEConfig
from utils import seed_everything

pytestmark = pytest.mark.usefixtures("one_thread")
SMALL = MAEConfig(image_size=8, patch_size=2, emb_dim=16, encoder_layer=1, encoder_head=1,
                  decoder_dim=16, decoder_layer=1)
IMAGES, BATCH, EPOCHS = 36, 6, 2
STEPS = IMAGES // BATCH  # optimizer steps per epoch
LOG_EVERY = 3  # engine.LOG_INTERVAL here: two log intervals per epoch
SEED = 3
CPU = torch.device("cpu")
BEST_EPOCH = 1  # an extra entry of the checkpoint (as the classifier's best epoch)
CLOCK_START, STEP_SECONDS = 1000.0, 0.5  # the fake clock: only optimizer steps take time
MID_EPOCH_1 = STEPS + 2  # a SIGTERM during this step stops at epoch 1, step 2


@pytest.fixture(autouse=True)
def log_every(monkeypatch):
    monkeypatch.setattr(engine, "LOG_INTERVAL", LOG_EVERY)


@pytest.fixture
def clock(monkeypatch):
    """time.perf_counter stands still but for STEP_SECONDS per optimizer step (Attempt)."""
    fake = SimpleNamespace(now=CLOCK_START)
    monkeypatch.setattr(time, "perf_counter", lambda: fake.now)
    return fake


def images():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (IMAGES, 3, SMALL.image_size, SMALL.image_size), generator=g,
                      dtype=torch.uint8)
    return Split(x, torch.zeros(IMAGES, dtype=torch.long))


def small_trainer(ckpt_path, step_fn, save_freq=1, total_epoch=EPOCHS):
    """The tiny MAE's Trainer as mae_pretrain.py sets it up: seeded (as every start of a
    stage is, resumed or not), flips and masks from the global RNG, AdamW, warmup + cosine,
    a progress line at every log interval."""
    seed_everything(SEED)
    model = MAE_ViT.from_config(SMALL)
    loader = DeviceLoader(images(), BATCH, torch.full((3,), 0.5), torch.full((3,), 0.25),
                          "flip", seed=SEED)
    args = Namespace(compile=False, amp="off", base_learning_rate=1e-2, batch_size=BATCH,
                     max_device_batch_size=BATCH, weight_decay=0.05, total_epoch=total_epoch,
                     warmup_epoch=1, save_freq=save_freq, progress_seconds=0)
    saved = engine.Checkpointed("mae", asdict(SMALL), extra={"best_epoch": lambda: BEST_EPOCH})
    return engine.Trainer(args, DistInfo(0, 1, 0, CPU), model, loader, step_fn,
                          SimpleNamespace(ckpt_path=str(ckpt_path)), saved,
                          Optimization(betas=ADAMW_BETAS_PRETRAIN))


@dataclass
class Step:
    loss: float
    images: int
    training: bool  # the module's mode during the step
    lr: float  # the optimizer's


class Attempt:
    """One call of a stage: a fresh Trainer that runs until it returns or stops. Its step_fn
    records every optimizer step; it SIGTERMs the process during step `sigterm_at` and makes
    the loss NaN from step `nan_from` on (steps of this attempt, from 1); each step takes
    STEP_SECONDS of a fake clock if given. Each epoch end keeps the stats and the epoch of the
    checkpoint on disk (None: none yet), and evaluates as the stages do (eval mode)."""

    def __init__(self, ckpt_path, sigterm_at=None, nan_from=None, clock=None, **trainer_args):
        self.path, self.sigterm_at, self.nan_from = ckpt_path, sigterm_at, nan_from
        self.clock = clock
        self.steps, self.epochs, self.on_disk, self.logged = [], [], [], []
        self.trainer = small_trainer(ckpt_path, self.step, **trainer_args)
        self.trainer.step_log = lambda step, loss, lr: self.logged.append((step, loss, lr))
        self.stopped = None  # the Interrupted or NonFiniteLoss that stopped it

    def step(self, model, x, y):
        n = len(self.steps) + 1
        if n == self.sigterm_at:
            os.kill(os.getpid(), signal.SIGTERM)
        loss, sums = objectives.pretrain_step(model, x, y)
        if self.nan_from is not None and n >= self.nan_from:
            loss = loss * float("nan")
        if self.clock is not None:
            self.clock.now += STEP_SECONDS
        lr = self.trainer.optimizer.param_groups[0]["lr"]
        self.steps.append(Step(loss.item(), x.shape[0], model.training, lr))
        return loss, sums

    def epoch_end(self, epoch, stats):
        self.epochs.append(stats)
        exists = os.path.exists(self.path)
        self.on_disk.append(load_checkpoint(self.path)["epoch"] if exists else None)
        self.trainer.module.eval()

    def run(self, resume=False, done_after=lambda epoch: False):
        """-> the checkpoint resumed from, or None."""
        with engine.on_stop_signals(engine.raise_interrupted):  # pytest's handlers come back
            ckpt = self.trainer.resume() if resume else None
            try:
                self.trainer.fit(self.epoch_end, done_after)
            except (engine.Interrupted, engine.NonFiniteLoss) as e:
                self.stopped = e
        return ckpt


def stopped_and_resumed(path, sigterm_at, clock=None):
    """An attempt stopped by SIGTERM during step `sigterm_at`, then the resuming one."""
    stopped = Attempt(path, sigterm_at, clock=clock)
    stopped.run()
    assert isinstance(stopped.stopped, engine.Interrupted), stopped.stopped
    resumed = Attempt(path, clock=clock)
    return stopped, resumed, resumed.run(resume=True)


def flat_params(trainer):
    return torch.cat([p.detach().flatten() for p in trainer.module.parameters()])


def assert_same_optimizer(trainer, reference):
    want, got = reference.optimizer.state_dict(), trainer.optimizer.state_dict()
    assert got["param_groups"] == want["param_groups"]
    for i, entry in want["state"].items():
        assert all(torch.equal(got["state"][i][k], v) for k, v in entry.items()), i


# --------------------------------------------------------------------------- resume
@pytest.mark.parametrize("sigterm_at", [STEPS, MID_EPOCH_1])
def test_a_resume_reproduces_the_uninterrupted_run(tmp_path, capsys, sigterm_at):
    """Stopped at the end of epoch 0 or in the middle of epoch 1, then resumed by a fresh,
    freshly seeded Trainer: the same weights, optimizer state and per-epoch losses (the
    stopped epoch's loss averages its steps before and after the stop)."""
    whole = Attempt(tmp_path / "whole.pt")
    whole.run()
    path = tmp_path / CHECKPOINT_FN
    stopped, resumed, ckpt = stopped_and_resumed(path, sigterm_at)
    assert stopped.stopped.signum == signal.SIGTERM
    epoch, step = divmod(sigterm_at, STEPS)
    assert (ckpt["epoch"], ckpt["step"], ckpt["best_epoch"]) == (epoch, step, BEST_EPOCH)
    assert f"resuming from {path}: epoch {epoch}, step {step}" in capsys.readouterr().out
    assert torch.equal(flat_params(resumed.trainer), flat_params(whole.trainer))
    assert_same_optimizer(resumed.trainer, whole.trainer)
    losses = [e["loss"] for e in stopped.epochs + resumed.epochs]
    assert losses == pytest.approx([e["loss"] for e in whole.epochs], rel=1e-6)
    assert all(s.training for s in whole.steps + stopped.steps + resumed.steps)


def test_random_states_of_an_older_file_or_of_other_processes(tmp_path, capsys):
    """A file of the one-state format (a dict, not a list per process) resumes exactly;
    states of two processes cannot be matched to one, which says so."""
    whole = Attempt(tmp_path / "whole.pt")
    whole.run()
    path = tmp_path / CHECKPOINT_FN
    Attempt(path, MID_EPOCH_1).run()
    ckpt = load_checkpoint(path)
    save_checkpoint({**ckpt, "rng": ckpt["rng"][0]}, path)
    resumed = Attempt(path)
    resumed.run(resume=True)
    assert torch.equal(flat_params(resumed.trainer), flat_params(whole.trainer))
    save_checkpoint({**ckpt, "rng": ckpt["rng"] * 2}, path)
    capsys.readouterr()
    Attempt(path).run(resume=True)
    assert "the checkpoint holds the random state of 2 process(es), this run has 1" in \
        capsys.readouterr().out


def edited(ckpt, key, value):
    return {**{k: v for k, v in ckpt.items() if k != key}, **({} if value is None else
                                                               {key: value})}


@pytest.mark.parametrize("key,change,words", [
    ("config", lambda c: {**c, "emb_dim": 32}, "holds another model (emb_dim 32 (checkpoint) "
                                               "vs 16 (now))"),
    ("optimizer", lambda o: None, "is not a resumable checkpoint (no optimizer;"),
    ("optimizer", lambda o: {**o, "param_groups": o["param_groups"][:1]},
     "does not fit this run: loaded state dict has a different number of parameter groups")])
def test_a_checkpoint_that_does_not_fit_is_refused_in_one_line(tmp_path, key, change, words):
    path = tmp_path / CHECKPOINT_FN
    Attempt(path, sigterm_at=2).run()
    ckpt = load_checkpoint(path)
    save_checkpoint(edited(ckpt, key, change(ckpt[key])), path)
    with pytest.raises(UsageError, match=re.escape(words)) as e:
        small_trainer(path, objectives.pretrain_step).resume()
    assert "\n" not in str(e.value)


# --------------------------------------------------------------------------- checkpoints
def test_checkpoints_every_save_freq_epochs_and_after_the_last(tmp_path):
    attempt = Attempt(tmp_path / CHECKPOINT_FN, save_freq=3, total_epoch=4)
    attempt.run()
    assert attempt.on_disk == [None, None, None, 3]  # seen at each epoch's end
    assert load_checkpoint(tmp_path / CHECKPOINT_FN)["epoch"] == 4


def test_a_run_done_early_resumes_to_nothing_more(tmp_path):
    """done_after (early stopping) says the run is complete after epoch 0: it stops there
    with its checkpoint, and a rerun (interrupted before the final files) trains nothing."""
    path = tmp_path / CHECKPOINT_FN
    first = Attempt(path, save_freq=10, total_epoch=3)
    first.run(done_after=lambda epoch: epoch == 0)
    assert len(first.epochs) == 1 and load_checkpoint(path)["epoch"] == 1
    again = Attempt(path, total_epoch=3)
    again.run(resume=True, done_after=lambda epoch: epoch == 0)
    assert again.steps == [] and again.epochs == []


# --------------------------------------------------------------------------- what epochs report
def test_each_epoch_reports_the_mean_loss_of_its_steps_and_its_images_per_second(tmp_path,
                                                                                 clock):
    """With steps of STEP_SECONDS: an epoch's seconds and images/s count this attempt's
    steps only, its loss all of its steps (the stopped attempt's too)."""
    stopped, resumed, _ = stopped_and_resumed(tmp_path / CHECKPOINT_FN, MID_EPOCH_1, clock)
    steps = stopped.steps + resumed.steps
    for epoch, stats in enumerate(stopped.epochs + resumed.epochs):
        mine = steps[epoch * STEPS:(epoch + 1) * STEPS]
        assert stats["loss"] == pytest.approx(sum(s.loss * s.images for s in mine) /
                                              sum(s.images for s in mine), rel=1e-6)
    trained = STEPS - MID_EPOCH_1 % STEPS  # by the resumed attempt in epoch 1
    assert resumed.epochs[0]["seconds"] == trained * STEP_SECONDS
    assert resumed.epochs[0]["images_per_s"] == BATCH / STEP_SECONDS
    assert resumed.trainer.progress.steps_done == trained


def test_the_step_log_and_progress_lines_name_each_log_interval(tmp_path, clock, capsys):
    """Each attempt logs every LOG_EVERY-th step it trains and each epoch's last, at the
    global step, with that step's loss and lr; every step trains at the lr of its global
    step; the progress line says where in the run it is."""
    stopped, resumed, _ = stopped_and_resumed(tmp_path / CHECKPOINT_FN, MID_EPOCH_1, clock)
    for attempt, logged, first in ((stopped, [2, 5], 0), (resumed, [10, 11], MID_EPOCH_1)):
        assert [g for g, _, _ in attempt.logged] == logged
        for g, loss, lr in attempt.logged:
            assert (loss, lr) == (attempt.steps[g - first].loss, attempt.trainer.lr_at(g))
        for i, s in enumerate(attempt.steps):
            assert s.lr == pytest.approx(attempt.trainer.lr_at(first + i), rel=1e-12)
    lines = [line for line in capsys.readouterr().out.splitlines() if " img/s, loss " in line]
    want = [f"epoch {g // STEPS}/{EPOCHS} step {g % STEPS + 1}/{STEPS}: "  # epochs from 0
            f"{BATCH / STEP_SECONDS:.0f} img/s, loss {loss:.4f}, lr {lr:.3g}, "
            for g, loss, lr in stopped.logged + resumed.logged]
    assert [line[:len(w)] for line, w in zip(lines, want)] == want and len(lines) == len(want)


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_terminal_shows_each_epoch_s_bar_and_a_log_file_none(tmp_path, clock, capsys,
                                                               monkeypatch):
    Attempt(tmp_path / "log.pt", clock=clock).run()
    assert capsys.readouterr().err == ""  # stderr is not a terminal: no bar
    monkeypatch.setattr(sys, "stderr", Terminal())
    Attempt(tmp_path / CHECKPOINT_FN, clock=clock).run()
    bar = sys.stderr.getvalue()
    assert set(re.findall(r"epoch (\d+)/2", bar)) == {"0", "1"}  # 0-based, as the files
    assert f"{STEPS}/{STEPS}" in bar and "loss=" in bar
    assert set(re.findall(r"img_s=(\d+)", bar)) == {f"{BATCH / STEP_SECONDS:.0f}"}
    assert not bar.endswith("\n")  # each epoch's bar is cleared, not left behind


# --------------------------------------------------------------------------- non-finite losses
def test_a_non_finite_loss_stops_at_the_first_bad_step_and_is_never_saved(tmp_path):
    path = tmp_path / CHECKPOINT_FN
    at_interval = Attempt(path, nan_from=LOG_EVERY)  # bad from a log interval's step on
    at_interval.run()
    assert str(at_interval.stopped) == f"loss is not finite at epoch 0, step {LOG_EVERY - 1}"
    assert not path.exists()
    with_signal = Attempt(path, sigterm_at=2, nan_from=2)  # the signal's save comes first
    with_signal.run()
    assert str(with_signal.stopped) == "loss is not finite at epoch 0, step 1"
    assert not path.exists()
